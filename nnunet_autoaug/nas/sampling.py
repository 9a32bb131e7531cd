"""Which ops an edge runs, and with what weights: SCNAS' Gumbel-top-2 sampling and the dense DARTS mixture."""
from __future__ import annotations

import torch


def gumbel_top2(alpha: torch.Tensor, tau: float, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``alpha`` (edges, ops): 2 distinct ops drawn without replacement from softmax(alpha) (Gumbel-top-k),
    weighted by softmax((alpha + g) / tau) renormalised over the pair. Gradients reach alpha through the weights.

    The noise is drawn on the CPU from ``generator`` so a resumed search continues the same stream on any device.
    """
    u = torch.rand(alpha.shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    perturbed = alpha + (-torch.log(-torch.log(u))).to(alpha.device, alpha.dtype)
    ops = perturbed.detach().topk(2, dim=-1).indices
    return ops, torch.softmax(perturbed.gather(-1, ops) / tau, dim=-1)


def strongest_two(alpha: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise-free counterpart for evaluation: the 2 most likely ops, weighted like gumbel_top2."""
    ops = alpha.detach().topk(2, dim=-1).indices
    return ops, torch.softmax(alpha.gather(-1, ops) / tau, dim=-1)


def all_ops(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DARTS: every op on every edge, weighted by softmax(alpha) (the memory baseline SCNAS avoids)."""
    ops = torch.arange(alpha.shape[-1], device=alpha.device).expand(alpha.shape)
    return ops, torch.softmax(alpha, dim=-1)


def annealed_temperature(epoch: int, num_epochs: int, start: float, end: float) -> float:
    """Exponential decay from ``start`` (first epoch) to ``end`` (last epoch)."""
    if num_epochs <= 1:
        return end
    return float(start * (end / start) ** (min(epoch, num_epochs - 1) / (num_epochs - 1)))
