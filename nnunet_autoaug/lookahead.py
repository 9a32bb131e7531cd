"""One-step look-ahead of the network weights, computed functionally: the real optimizer is never touched.

The ASNG reference code stepped the real optimizer and restored only the weights, so every look-ahead also moved
the optimizer's momentum ("phantom" steps). Here w' is computed from the optimizer's *current* state with
nnU-Net's SGD rule (Nesterov momentum, weight decay, gradient clipping at 12) and evaluated with
``torch.func.functional_call``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import functional_call

GRAD_CLIP = 12.0  # nnU-Net's clip_grad_norm_ in train_step


def clip_gradients(grads: list[torch.Tensor], max_norm: float = GRAD_CLIP) -> list[torch.Tensor]:
    """What clip_grad_norm_ would do to these gradients (same norm and epsilon)."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * factor for g in grads]


def sgd_lookahead(params: dict[str, torch.nn.Parameter], grads: list[torch.Tensor],
                  optimizer: torch.optim.SGD) -> dict[str, torch.Tensor]:
    """w' = one step of ``optimizer``'s SGD rule from its current state, without changing that state."""
    group = optimizer.param_groups[0]
    lr, momentum, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
    stepped = {}
    for (name, w), g in zip(params.items(), grads):
        d = g + wd * w.detach() if wd else g
        if momentum:
            buf = optimizer.state.get(w, {}).get("momentum_buffer")
            buf = d if buf is None else momentum * buf + d  # torch SGD: first step initialises the buffer
            d = d + momentum * buf if nesterov else buf
        stepped[name] = w.detach() - lr * d
    return stepped


def trainable_parameters(network: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Name -> parameter, in one fixed order. Keep this dict: functional_call re-inserts parameters into the
    modules after a call, so a later ``network.parameters()`` may come in a different order."""
    return {name: p for name, p in network.named_parameters() if p.requires_grad}


def parameter_gradients(params: dict[str, torch.nn.Parameter], loss: torch.Tensor,
                        scale: float = 1.0) -> list[torch.Tensor]:
    """Gradients of ``loss`` w.r.t. ``params`` (in that order), leaving every ``.grad`` untouched."""
    grads = torch.autograd.grad(loss * scale, list(params.values()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g / scale for p, g in zip(params.values(), grads)]


def functional_forward(network: torch.nn.Module, weights: dict[str, torch.Tensor], data: torch.Tensor) -> object:
    """The network's output with ``weights`` substituted for its parameters; the network itself is left as it was."""
    # tie_weights=False: nnU-Net's decoder holds the encoder module, so its parameters have two names. With tying,
    # functional_call swaps them twice and "restores" the substitutes: the network would keep detached copies of w'
    # and the optimizer would step parameters no longer in it. One name per parameter suffices (the module object
    # is shared). Buffers go in as copies so that BatchNorm running statistics do not move either.
    buffers = {name: b.clone() for name, b in network.named_buffers()}
    return functional_call(network, {**weights, **buffers}, (data,), tie_weights=False)


def evaluate_at(network: torch.nn.Module, weights: dict[str, torch.Tensor], data: torch.Tensor,
                loss_fn: Callable, target: object) -> float:
    """Loss of the network with ``weights`` substituted for its parameters, no gradient, no side effects."""
    with torch.no_grad():
        return float(loss_fn(functional_forward(network, weights, data), target))
