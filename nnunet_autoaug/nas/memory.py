"""What autograd keeps for the backward pass: the memory that 2-op sampling saves over evaluating every op."""
from __future__ import annotations

import torch


def saved_tensor_bytes(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one forward pass of ``net`` on ``x``, counted as they are saved (device
    independent, unlike CUDA's peak-allocation counter)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = net(x)
    del outputs
    return total
