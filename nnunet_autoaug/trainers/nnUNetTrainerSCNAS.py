"""SCNAS with stock nnU-Net commands: search a cell architecture, then retrain it like any nnU-Net network.

``nnUNetTrainerSCNASSearch`` trains the supernet on a base configuration (e.g. 3d_fullres): per iteration one Adam
step on the architecture logits (alpha) from a batch of the search split (1/5 of the fold's training cases), then
nnU-Net's SGD step on the weights from a training batch (first-order DARTS alternation). At the end it writes the
derived genotype and registers it as the plans configuration ``<base>_scnas``. ``nnUNetTrainerSCNAS`` trains that
configuration from scratch with nnU-Net's recipe; the plans rebuild the network at predict time.
"""
from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from nnunet_autoaug.nas.genotype import GENOTYPE_FILE
from nnunet_autoaug.nas.plans import (PlansError, is_scnas_configuration, register_genotype, registered_genotype,
                                     retrain_command)
from nnunet_autoaug.nas.plots import plot_alpha_history, plot_genotype
from nnunet_autoaug.nas.sampling import annealed_temperature
from nnunet_autoaug.nas.settings import retrain_width, search_width
from nnunet_autoaug.nas.supernet import SCNASSupernet
from nnunet_autoaug.settings import SAVE_EVERY_VAR, SEED_VAR, int_from_env
from nnunet_autoaug.trainers.checkpoint import save_checkpoint_with
from nnunet_autoaug.trainers.nnUNetTrainerScheduled import EnvSchedule
from nnunet_autoaug.trainers.search_data import SearchSplitData

CHECKPOINT_KEY = "scnas"
HISTORY_FILE = "scnas_alpha_history.json"


class nnUNetTrainerSCNASSearch(SearchSplitData, EnvSchedule, nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # settings and configuration are checked before nnU-Net creates the output folder
        widths, seed = (search_width(), retrain_width()), int_from_env(SEED_VAR)
        save_every = int_from_env(SAVE_EVERY_VAR, minimum=1)
        if is_scnas_configuration(PlansManager(plans).get_configuration(configuration).configuration):
            raise PlansError(f"{configuration!r} already holds a searched network: search on the configuration it "
                             f"inherits from, or retrain it with -tr nnUNetTrainerSCNAS.")
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded or self.is_ddp:
            raise NotImplementedError("nnUNetTrainerSCNASSearch supports neither cascades nor DDP.")
        self.search_width, self.retrain_width = widths
        self.save_every = save_every or 1  # the search state must survive interruptions
        self.search_fraction = 0.2  # 4:1 split of the fold's training cases: weights vs alpha
        self.search_split_use = "alpha (SCNAS architecture logits)"
        self.tau_start, self.tau_end = 1.0, 0.1  # exponential annealing over the epochs (docs/SCNAS.md)
        self.arch_lr, self.arch_betas, self.arch_weight_decay = 3e-4, (0.5, 0.999), 1e-3  # DARTS' alpha optimizer
        self.validate_supernet = False  # the supernet is not the model; validate the retrained network instead
        self.gumbel_seed = seed if seed is not None else torch.Generator().seed()
        self.gumbel_generator = torch.Generator().manual_seed(self.gumbel_seed)
        self.arch_optimizer: torch.optim.Optimizer | None = None
        self.search_keys: list[str] = []
        self.dataloader_search = None
        self.history: dict[str, list] = {"tau": [], "arch_loss": [], "probabilities": []}
        self._arch_losses: list[float] = []

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        strides = [list(s) for s in configuration_manager.pool_op_kernel_sizes]
        return SCNASSupernet(num_input_channels, num_output_channels, strides, search_width(),
                             deep_supervision=enable_deep_supervision)

    def _do_i_compile(self) -> bool:
        return False  # the sampled path changes every step: compile would retrace forever

    def initialize(self) -> None:
        super().initialize()
        self.network.generator = self.gumbel_generator
        self.arch_optimizer = torch.optim.Adam(self.network.arch_parameters(), lr=self.arch_lr, betas=self.arch_betas,
                                               weight_decay=self.arch_weight_decay)

    def configure_optimizers(self) -> tuple:
        # nnU-Net's recipe, on the weights only: alpha has its own optimizer and its own data
        optimizer = torch.optim.SGD(self.network.weight_parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    # ------------------------------------------------------------------------------------------- the search
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.network.tau = annealed_temperature(self.current_epoch, self.num_epochs, self.tau_start, self.tau_end)
        self.print_to_log_file(f"SCNAS: Gumbel temperature {self.network.tau:.4f}")
        self._arch_losses = []

    def train_step(self, batch: dict) -> dict:
        self._arch_losses.append(self.arch_step(next(self.dataloader_search)))
        alphas = self.network.arch_parameters()
        for alpha in alphas:  # the weight step must neither move alpha nor spend memory on its graph
            alpha.requires_grad_(False)
        try:
            return super().train_step(batch)
        finally:
            for alpha in alphas:
                alpha.requires_grad_(True)

    def arch_step(self, batch: dict) -> float:
        """One first-order Adam step on alpha from a search-split batch; the weights get no gradient."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)
        alphas = self.network.arch_parameters()
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss = self.loss(self.network(data), target)
        # under AMP, scale like the weight step does, so small alpha gradients do not underflow in fp16
        scale = self.grad_scaler.get_scale() if self.grad_scaler is not None else 1.0
        grads = torch.autograd.grad(loss * scale, alphas, allow_unused=True)
        grads = [torch.zeros_like(a) if g is None else g / scale for a, g in zip(alphas, grads)]
        if all(torch.isfinite(g).all() for g in grads):
            for alpha, grad in zip(alphas, grads):
                alpha.grad = grad
            self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)
        return float(loss.detach().cpu())

    def on_epoch_end(self) -> None:
        # before super(): it writes the checkpoints, which must include this epoch's history
        self.history["tau"].append(self.network.tau)
        self.history["arch_loss"].append(float(np.mean(self._arch_losses)) if self._arch_losses else None)
        self.history["probabilities"].append(self.network.probabilities())
        self.print_to_log_file(f"SCNAS: search-split loss {self.history['arch_loss'][-1]}")
        if self.local_rank == 0:
            self.write_search_outputs(pictures=False)
        super().on_epoch_end()

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.local_rank == 0:
            self.write_search_outputs(pictures=True)
            plans_file = join(self.preprocessed_dataset_folder_base, self.plans_manager.plans_name + ".json")
            name = register_genotype(plans_file, self.network.genotype(), self.configuration_name,
                                     stem_channels=self.retrain_width, source=join(self.output_folder, GENOTYPE_FILE))
            self.print_to_log_file(f"SCNAS: registered configuration {name!r} in {plans_file}. Retrain with\n  "
                                   + retrain_command(self.plans_manager.dataset_name, name,
                                                     self.plans_manager.plans_name))

    def write_search_outputs(self, pictures: bool) -> None:
        genotype = self.network.genotype()
        genotype.save(join(self.output_folder, GENOTYPE_FILE))
        with open(join(self.output_folder, HISTORY_FILE), "w") as f:
            json.dump({"cell_types": list(self.network.alphas), **self.history}, f)
        if pictures:
            plot_genotype(genotype, join(self.output_folder, "scnas_cells.png"))
            probabilities = [[epoch[t] for t in self.network.alphas] for epoch in self.history["probabilities"]]
            if probabilities:
                plot_alpha_history(probabilities, self.history["tau"], join(self.output_folder, "scnas_alphas.png"))

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        if self.validate_supernet:
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("SCNAS: no validation of the supernet (it is not the final model); retrain the "
                               "registered configuration with nnUNetTrainerSCNAS and validate that.")

    # ------------------------------------------------------------------------------------------- checkpoints
    def search_state_dict(self) -> dict:
        return {"arch_optimizer": self.arch_optimizer.state_dict(), "gumbel_seed": self.gumbel_seed,
                "gumbel_generator": self.gumbel_generator.get_state(), "history": self.history,
                "search_width": self.search_width, "search_keys": self.search_keys}

    def save_checkpoint(self, filename: str) -> None:
        save_checkpoint_with(self, filename, CHECKPOINT_KEY, self.search_state_dict())

    def load_checkpoint(self, filename_or_checkpoint: str | dict) -> None:
        checkpoint = _load_nnunet_checkpoint(self, filename_or_checkpoint, before_weights=self._check_search_width)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None:
            self.arch_optimizer.load_state_dict(state["arch_optimizer"])
            self.gumbel_seed = state["gumbel_seed"]
            self.gumbel_generator.set_state(state["gumbel_generator"])
            self.history = state["history"]

    def _check_search_width(self, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None and state["search_width"] != self.search_width:
            raise RuntimeError(f"the checkpoint's supernet has stem width {state['search_width']}, but "
                               f"nnUNet_autoaug_scnas_search_width gives {self.search_width}. Resume with the same "
                               f"setting.")


class nnUNetTrainerSCNAS(EnvSchedule, nnUNetTrainer):
    """Retrains a registered SCNAS configuration from scratch with nnU-Net's recipe; nothing else differs."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        registered_genotype(plans, configuration)  # clear error before nnU-Net creates an output folder
        super().__init__(plans, configuration, fold, dataset_json, device)

    def load_checkpoint(self, filename_or_checkpoint: str | dict) -> None:
        _load_nnunet_checkpoint(self, filename_or_checkpoint)


def _load_nnunet_checkpoint(trainer: nnUNetTrainer, filename: str | dict,
                            before_weights: Callable[[dict], None] | None = None) -> dict:
    """nnUNetTrainer.load_checkpoint without its per-key ``network.state_dict()`` call, which is quadratic in the
    number of tensors: minutes for a supernet's thousands. Our checkpoints hold unwrapped weights (save_checkpoint_with
    and nnU-Net both unwrap), so that loop's 'module.' renaming has nothing to do."""
    if isinstance(filename, dict):  # nnU-Net's dict path is broken (UnboundLocalError) in 2.8
        raise TypeError("pass the checkpoint's file name")
    if not trainer.was_initialized:
        trainer.initialize()
    checkpoint = torch.load(filename, map_location=trainer.device, weights_only=False)
    if before_weights is not None:
        before_weights(checkpoint)
    trainer.my_init_kwargs = checkpoint["init_args"]
    trainer.current_epoch = checkpoint["current_epoch"]
    trainer.logger.load_checkpoint(checkpoint["logging"])
    trainer._best_ema = checkpoint["_best_ema"]
    trainer.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                              trainer.inference_allowed_mirroring_axes)
    network = trainer.network.module if trainer.is_ddp else trainer.network
    network = network._orig_mod if isinstance(network, OptimizedModule) else network
    network.load_state_dict(checkpoint["network_weights"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer_state"])
    if trainer.grad_scaler is not None and checkpoint["grad_scaler_state"] is not None:
        trainer.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
    return checkpoint
