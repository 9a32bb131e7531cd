"""Base of every augmentation-policy trainer: workers only crop; the engine augments on the training device.

Subclasses say how large their augmentations can get (``augmentation_extent``) and draw per-sample parameters
(``sample_augment_params``); everything else (planning, loss, inference, results layout) is nnU-Net's.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch._dynamo import OptimizedModule

from nnunet_autoaug.augment import AugmentParams, augment_batch
from nnunet_autoaug.augment.cascade import PreviousStageCorruption, cascade_inputs
from nnunet_autoaug.augment.engine import NOISE_SEED_OFFSET
from nnunet_autoaug.augment.targets import deep_supervision_targets, remove_padding_label, segmentation_to_regions
from nnunet_autoaug.pipeline import train_command
from nnunet_autoaug.plots import plot_augmentation_examples
from nnunet_autoaug.policy import POLICY_FILE, Extent, SamplingContext, make_generator, required_input_size
from nnunet_autoaug.settings import POLICY_VAR, SAVE_EVERY_VAR, SEED_VAR, STRATEGY_VAR, int_from_env
from nnunet_autoaug.trainers.checkpoint import save_checkpoint_with
from nnunet_autoaug.trainers.nnUNetTrainerScheduled import EnvSchedule
from nnunet_autoaug.trainers.search_data import SearchSplitData

CHECKPOINT_KEY = "autoaug"
# the engine draws its elastic noise from seed and its intensity noise from seed + NOISE_SEED_OFFSET: the cascade's
# corruption takes the next stream, independent of both
CASCADE_SEED_OFFSET = NOISE_SEED_OFFSET + 1


class nnUNetTrainerPolicyBase(SearchSplitData, EnvSchedule, nnUNetTrainer):
    # the variables that give a trainer what to train with; a set one that the trainer does not read is logged
    what_to_train_with: dict[str, str] = {POLICY_VAR: "nnUNetTrainerPolicy", STRATEGY_VAR: "nnUNetTrainerStrategy"}
    reads_variable: str | None = None
    # a searcher's file of the distribution it drew its policies from, when it differs from autoaug_policy.json
    distribution_file: str | None = None

    @classmethod
    def retrain_file(cls) -> str:
        """The search output to train a final model with on all training cases (nnUNetTrainerPolicy): the final
        distribution where there is one (with 5 cases it retrained better than its most likely policy,
        docs/BENCHMARKS.md section 4.17), else the searched policy."""
        return cls.distribution_file or POLICY_FILE

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # read our environment before nnU-Net creates the output folder: bad settings must not touch results
        seed, save_every = int_from_env(SEED_VAR), int_from_env(SAVE_EVERY_VAR, minimum=1)
        super().__init__(plans, configuration, fold, dataset_json, device)
        # the cascade's second stage: the previous stage's segmentation becomes corrupted one-hot image channels
        self.previous_stage_corruption = PreviousStageCorruption(
            self.configuration_manager.patch_size, self.label_manager.foreground_labels) if self.is_cascaded else None
        self.save_every = save_every or 1  # search state must survive interruptions: checkpoint every epoch
        self.search_fraction = 0.0  # searchers set e.g. 0.2: share of the fold's training cases held out
        self.search_batch_share = 1.0  # share of a search-split batch a searcher uses per update
        self.label_interpolation = "linear"
        self.augment_seed = seed if seed is not None else int(make_generator().initial_seed())
        self.augment_generator = make_generator(self.augment_seed)
        self.sampling_context = SamplingContext()
        self.search_keys: list[str] = []
        self.dataloader_search = None
        self.last_augment_params: AugmentParams | None = None
        for variable, reader in self.what_to_train_with.items():
            if os.environ.get(variable) and variable != self.reads_variable:
                self.print_to_log_file(f"nnunet_autoaug: {variable} is set, but {type(self).__name__} does not read "
                                       f"it (only {reader} and its subclasses do); it is ignored")

    # ----------------------------------------------------------------------------------------------- subclass API
    def augmentation_extent(self) -> Extent:
        """Largest rotation/scale the trainer will ever sample (sizes the data loader's crop)."""
        raise NotImplementedError

    def sample_augment_params(self, batch_size: int, generator: torch.Generator) -> AugmentParams:
        """Per-sample parameters for the next training batch, drawn with ``generator``."""
        raise NotImplementedError

    def search_state_dict(self) -> dict:
        """Everything beyond nnU-Net's own checkpoint that a resumed run needs (subclasses extend it)."""
        return {"augment_seed": self.augment_seed, "augment_generator": self.augment_generator.get_state()}

    def load_search_state_dict(self, state: dict) -> None:
        self.augment_seed = state["augment_seed"]
        self.augment_generator.set_state(state["augment_generator"])

    @property
    def image_channels(self) -> int:
        """The image's channels (modalities), counted as nnU-Net counts them; a cascade's one-hot channels of the
        previous stage are appended after augmentation and not among them."""
        return len(self.dataset_json["modality" if "modality" in self.dataset_json else "channel_names"])

    # ------------------------------------------------------------------------------------------- nnU-Net hooks
    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self) -> tuple:
        rotation, dummy_2d, _, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch_size = tuple(self.configuration_manager.patch_size)
        self.sampling_context = SamplingContext(len(patch_size), bool(dummy_2d), tuple(mirror_axes),
                                                float(max(abs(r) for r in rotation)), self.image_channels)
        extent = self.augmentation_extent()
        initial = required_input_size(patch_size, extent, bool(dummy_2d))
        if not extent.mirrors:  # trained without flips: test-time mirroring would show unseen views
            self.inference_allowed_mirroring_axes = None
        self.print_to_log_file(f"nnunet_autoaug: crop {initial} for patch {patch_size} (max rotation "
                               f"{np.degrees(extent.max_rotation).round(1).tolist()} deg, max scale "
                               f"{extent.max_scale:.2f})")
        if self.image_channels > 1:
            self.print_to_log_file(f"nnunet_autoaug: {self.image_channels} image channels; the intensity ops that "
                                   f"nnU-Net draws per channel get a value per channel")
        return rotation, dummy_2d, initial, mirror_axes

    @staticmethod
    def get_training_transforms(*args, **kwargs) -> None:
        return None  # workers only crop; see train_step

    def train_step(self, batch: dict) -> dict:
        data, target = self.augment(batch)
        return super().train_step({"data": data, "target": target, "keys": batch["keys"]})

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.local_rank == 0:
            # own generator: the picture must not shift the training stream (resume compares it bit for bit)
            batch = next(self.dataloader_train)
            data, target = self.augment(batch, self.sample_augment_params(batch["data"].shape[0], make_generator(0)))
            plot_augmentation_examples(batch["data"], data, target[0] if isinstance(target, list) else target,
                                       join(self.output_folder, "augmentation_examples.png"))

    def on_train_end(self) -> None:
        super().on_train_end()
        # a searcher's weights never saw its search split: with few cases that costs Dice (docs/BENCHMARKS.md
        # section 4.16), so say how to train a final model with the found policy on every training case
        if self.local_rank == 0 and self.search_keys and isfile(join(self.output_folder, POLICY_FILE)):
            command = train_command(self.plans_manager.dataset_name, self.configuration_name, self.fold,
                                    "nnUNetTrainerPolicy", self.plans_manager.plans_name)
            found = f"  {POLICY_VAR}={self.output_folder} {command}"
            if self.retrain_file() == POLICY_FILE:
                how = f"To train the searched policy on all of the fold's training cases:\n{found}"
            else:
                how = (f"To train on all of the fold's training cases, each sample's policy drawn from the search's "
                       f"final distribution (recommended):\n  {POLICY_VAR}="
                       f"{join(self.output_folder, self.retrain_file())} {command}\nor with its most likely "
                       f"policy:\n{found}")
            self.print_to_log_file(f"nnunet_autoaug: these weights were not trained on the {len(self.search_keys)} "
                                   f"case(s) of the search split. {how}")

    def save_checkpoint(self, filename: str) -> None:
        save_checkpoint_with(self, filename, CHECKPOINT_KEY, self.search_state_dict())

    def load_checkpoint(self, filename_or_checkpoint: str | dict) -> None:
        if isinstance(filename_or_checkpoint, dict):  # nnU-Net's dict path is broken (UnboundLocalError) in 2.8
            raise TypeError("pass the checkpoint's file name")
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        if CHECKPOINT_KEY in checkpoint:
            self.load_search_state_dict(checkpoint[CHECKPOINT_KEY])

    # ---------------------------------------------------------------------------------------------- augmentation
    def augment(self, batch: dict, params: AugmentParams | None = None) -> tuple[torch.Tensor, list | torch.Tensor]:
        """Raw crops -> augmented patch and nnU-Net's targets, on ``self.device``. Records the params used."""
        data = batch["data"].to(self.device, non_blocking=True)
        seg = batch["target"].to(self.device, non_blocking=True)
        if params is None:
            params = self.sample_augment_params(data.shape[0], self.augment_generator)
        self.last_augment_params = params
        data, seg = augment_batch(data, seg, params, self.configuration_manager.patch_size,
                                  dummy_2d=self.sampling_context.dummy_2d, label_interpolation=self.label_interpolation)
        return self.inputs_and_targets(data, seg, params)

    def inputs_and_targets(self, data: torch.Tensor, seg: torch.Tensor,
                           params: AugmentParams) -> tuple[torch.Tensor, list | torch.Tensor]:
        """What nnU-Net's transform pipeline does after its spatial and intensity ops, in the same order: the
        network's input (with the cascade's previous-stage channels) and its targets."""
        masked = [c for c, use in enumerate(self.configuration_manager.use_mask_for_norm or []) if use]
        if masked:  # nnU-Net's MaskImageTransform: zero the image outside the nonzero mask (seg < 0)
            outside = seg[:, 0] < 0
            for c in masked:
                data[:, c][outside] = 0
        seg = remove_padding_label(seg)
        if self.is_cascaded:
            data, seg = cascade_inputs(data, seg, self.label_manager.foreground_labels,
                                       self.previous_stage_corruption, params.seed + CASCADE_SEED_OFFSET)
        if self.label_manager.has_regions:
            regions = list(self.label_manager.foreground_regions)
            if self.label_manager.ignore_label is not None:
                regions.append(self.label_manager.ignore_label)
            seg = segmentation_to_regions(seg, regions)
        scales = self._get_deep_supervision_scales()
        return data, deep_supervision_targets(seg, scales) if scales is not None else seg

    # ------------------------------------------------------------------------------- helpers of the searchers
    def _search_batch(self) -> tuple[torch.Tensor, list | torch.Tensor]:
        """The next search-split batch on the device, cut to ``search_batch_share`` of its samples."""
        batch = next(self.dataloader_search)
        keep = max(1, round(batch["data"].shape[0] * self.search_batch_share))
        target = batch["target"]
        target = [t[:keep].to(self.device) for t in target] if isinstance(target, list) \
            else target[:keep].to(self.device)
        return batch["data"][:keep].to(self.device), target

    def _plain_network(self) -> torch.nn.Module:
        return self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network

    def _autocast(self):  # noqa: ANN202
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()
