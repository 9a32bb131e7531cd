"""Benchmark (issue 6): SCNAS search cost vs nnU-Net's PlainConvUNet, and the size of the found network.

    python scripts/bench_scnas.py --plans $nnUNet_preprocessed/Dataset004_Hippocampus/nnUNetPlans.json \\
        --json bench_scnas.json [--configuration 3d_fullres] [--genotype scnas_genotype.json] [--device cuda]

Same patch and batch for every network (the plans', or ``--patch``/``--batch``). Per iteration, in seconds:
nnU-Net's step (fwd + bwd + SGD) on PlainConvUNet from the plans, and the SCNAS search step (Adam on alpha from one
batch, then fwd + bwd + SGD on the weights from another), with 2-op Gumbel sampling and, for reference, every op
(DARTS). Memory: peak allocated on CUDA; on the CPU, the bytes autograd saves for the backward pass plus parameter
bytes (a device-independent proxy of activation memory). Size: parameters and forward FLOPs (FlopCounterMode, batch
1) of the found network at the retraining width vs PlainConvUNet. Without ``--genotype`` a genotype derived from
random alphas (seed 0) stands in for a found one.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch.utils.flop_counter import FlopCounterMode

from nnunet_autoaug.nas.genotype import CELL_TYPES, Genotype, derive_genotype, n_edges
from nnunet_autoaug.nas.memory import saved_tensor_bytes
from nnunet_autoaug.nas.network import SCNASUNet
from nnunet_autoaug.nas.ops import PRIMITIVES
from nnunet_autoaug.nas.supernet import SCNASSupernet


def ds_loss(outputs: list[torch.Tensor] | torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy over the deep-supervision outputs with nnU-Net's weights (1/2^i, last 0, normalised)."""
    outputs = outputs if isinstance(outputs, list) else [outputs]
    weights = torch.tensor([1 / 2 ** i for i in range(len(outputs))])
    weights[-1] = 0 if len(outputs) > 1 else 1
    weights = weights / weights.sum()
    return sum(w * torch.nn.functional.cross_entropy(o, t) for w, o, t in zip(weights, outputs, targets))


def random_batch(batch: int, patch: list[int], classes: int, strides: list, device: torch.device) -> tuple:
    x = torch.randn(batch, 1, *patch, device=device)
    targets, size = [], torch.tensor(patch)
    for s in strides[:-1]:
        size = size // torch.tensor(s)
        targets.append(torch.randint(0, classes, (batch, *size.tolist()), device=device))
    return x, targets


class Meter:
    """Seconds per call (after one warm-up) and memory of a training step."""

    def __init__(self, device: torch.device):
        self.device = device

    def run(self, step: Callable[[], None], iterations: int) -> dict:
        step()  # warm-up: allocator, cuDNN autotuning
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        self._sync()
        result = {"seconds_per_iteration": (time.perf_counter() - start) / iterations}
        if self.device.type == "cuda":
            result["peak_allocated_MiB"] = torch.cuda.max_memory_allocated() / 2 ** 20
        return result

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def saved_MiB(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Bytes autograd saves for backward in one forward, plus the parameters, in MiB."""
    parameters = sum(p.numel() * p.element_size() for p in net.parameters())
    return (parameters + saved_tensor_bytes(net, x)) / 2 ** 20


def size_of(net: torch.nn.Module, x: torch.Tensor) -> dict:
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x[:1])
    return {"parameters": sum(p.numel() for p in net.parameters()),
            "GFLOPs_forward_batch1": counter.get_total_flops() / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", required=True)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--classes", type=int, default=None, help="default: labels in dataset.json next to --plans")
    parser.add_argument("--patch", type=int, nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--search-width", type=int, default=48)
    parser.add_argument("--retrain-width", type=int, default=68)
    parser.add_argument("--genotype", default=None)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--skip-darts", action="store_true", help="skip the all-op timing (slow on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    manager = PlansManager(args.plans)
    configuration = manager.get_configuration(args.configuration)
    classes = args.classes or len(json.loads((Path(args.plans).parent / "dataset.json").read_text())["labels"])
    patch, batch = args.patch or configuration.patch_size, args.batch or configuration.batch_size
    strides = [list(s) for s in configuration.pool_op_kernel_sizes]
    x, targets = random_batch(batch, patch, classes, strides, device)
    dim = len(patch)
    genotype = Genotype.load(args.genotype) if args.genotype else derive_genotype(
        {t: torch.randn(n_edges(), len(PRIMITIVES), generator=torch.Generator().manual_seed(0)) for t in CELL_TYPES},
        dim)
    meter = Meter(device)
    result = {"plans": str(args.plans), "configuration": args.configuration, "patch": list(patch), "batch": batch,
              "classes": classes, "device": str(device), "torch_threads": args.threads, "host": platform.node(),
              "search_width": args.search_width, "retrain_width": args.retrain_width,
              "genotype": args.genotype or "derived from random alphas (seed 0)"}

    baseline = nnUNetTrainer.build_network_architecture(manager, configuration, 1, classes, True).to(device)
    sgd = torch.optim.SGD(baseline.parameters(), 1e-2, momentum=0.99, nesterov=True)

    def baseline_step() -> None:
        sgd.zero_grad(set_to_none=True)
        ds_loss(baseline(x), targets).backward()
        sgd.step()

    result["nnunet_train_step"] = {**meter.run(baseline_step, args.iterations), "saved_MiB": saved_MiB(baseline, x)}

    supernet = SCNASSupernet(1, classes, strides, args.search_width).to(device)
    weights_sgd = torch.optim.SGD(supernet.weight_parameters(), 1e-2, momentum=0.99, nesterov=True)
    alpha_adam = torch.optim.Adam(supernet.arch_parameters(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)

    def search_step() -> None:
        grads = torch.autograd.grad(ds_loss(supernet(x), targets), supernet.arch_parameters())
        for alpha, grad in zip(supernet.arch_parameters(), grads):
            alpha.grad = grad
        alpha_adam.step()
        weights_sgd.zero_grad(set_to_none=True)
        ds_loss(supernet(x), targets).backward()
        weights_sgd.step()

    for mode in ("gumbel_top2", "all"):
        supernet.sample_mode = mode
        entry = {"saved_MiB": saved_MiB(supernet, x)}
        if mode == "gumbel_top2" or not args.skip_darts:
            entry.update(meter.run(search_step, args.iterations if mode == "gumbel_top2" else 1))
        result[f"scnas_search_step_{mode}"] = entry
    result["supernet_parameters"] = sum(p.numel() for p in supernet.weight_parameters())

    found = SCNASUNet(1, classes, genotype, strides, args.retrain_width, deep_supervision=True).to(device)
    result["size"] = {"nnunet_plainconvunet": size_of(baseline, x), "scnas_found": size_of(found, x)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
