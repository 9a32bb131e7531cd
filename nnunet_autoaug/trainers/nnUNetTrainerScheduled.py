"""nnU-Net's own trainers with the ``nnUNet_autoaug_epochs/_iters/_val_iters`` schedule, for equal-budget comparisons.

Identical to the stock trainer they are named after in every other respect (augmentation, loss, optimizer). They
exist because stock trainers fix their schedule in ``__init__``; a benchmark that shortens our trainers' schedule
must shorten the baselines' schedule the same way.
"""
from __future__ import annotations

import json
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA

from nnunet_autoaug.settings import INIT_SEED_VAR, int_from_env, schedule_overrides

PEAK_GPU_MEMORY_FILE = "autoaug_peak_gpu_memory.json"  # read by the benchmark suite


def weight_sum(network: torch.nn.Module) -> float:
    """Sum of every entry of the network's state dict: equal sums show that two runs started from the same weights."""
    return sum(float(v.double().sum()) for v in network.state_dict().values())


class EnvSchedule:
    """Mixin (before the nnU-Net trainer in the bases): schedule attributes and, optionally, the seed of the initial
    weights from the environment."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # read before nnU-Net creates the output folder: a malformed variable must not touch results
        self._schedule_overrides = schedule_overrides()
        self._init_seed = int_from_env(INIT_SEED_VAR)
        self.initial_weight_sum: float | None = None  # set when the seed is given
        super().__init__(plans, configuration, fold, dataset_json, device)

    def apply_schedule_overrides(self) -> None:
        """Set the schedule attributes the environment gives (idempotent; initialize calls it)."""
        for attribute, value in self._schedule_overrides.items():
            setattr(self, attribute, value)

    def initialize(self) -> None:
        # applied here (not in __init__) so env overrides win over `_5epochs`-style subclasses
        self.apply_schedule_overrides()
        if self._schedule_overrides and not self.was_initialized:
            self.print_to_log_file("#" * 72 + f"\nnnunet_autoaug: schedule set by environment variables: "
                                   f"{self._schedule_overrides}\n" + "#" * 72, add_timestamp=False)
        if self._init_seed is None or self.was_initialized:
            super().initialize()
            return
        # paired comparisons: trainers given the same seed start from the same weights (nnU-Net builds the network
        # first thing in initialize, so it takes the first draws); fork_rng keeps the training's draws unseeded
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._init_seed)
            super().initialize()
        self.initial_weight_sum = weight_sum(self.network)
        self.print_to_log_file(f"nnunet_autoaug: initial weights drawn after torch.manual_seed({self._init_seed}) "
                               f"({INIT_SEED_VAR}); sum of the initial weights {self.initial_weight_sum:.6f}")

    def on_train_end(self) -> None:
        super().on_train_end()
        # the device memory a training needs is a cost users compare; a process's RSS does not show it
        if self.device.type == "cuda" and self.local_rank == 0:
            peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            self.print_to_log_file(f"nnunet_autoaug: peak GPU memory allocated by torch in this run: {peak:.0f} MiB")
            with open(os.path.join(self.output_folder, PEAK_GPU_MEMORY_FILE), "w") as f:
                json.dump({"peak_allocated_mib": peak, "device": torch.cuda.get_device_name(self.device)}, f)


class nnUNetTrainerScheduled(EnvSchedule, nnUNetTrainer):
    pass


class nnUNetTrainerNoDAScheduled(EnvSchedule, nnUNetTrainerNoDA):
    pass


class nnUNetTrainerDA5Scheduled(EnvSchedule, nnUNetTrainerDA5):
    pass
