"""Regression of one global number per case on nnU-Net's preprocessed data: Hydranet and its base regressor.

``nnUNetTrainerRegression`` trains the base regressor f (image -> number) on single images;
``nnUNetTrainerHydra`` trains the same f on Hydranet's virtual samples (Dubost et al., MICCAI 2018): sets of
n = 4 distinct images, each blanked with p = 0.1, target = sum of the labels, prediction = sum of f over the set
(see nnunet_autoaug/regression/hydra.py). Both see whole images (fixed-size centre pad), mirrored at random as
conventional augmentation, with the same number of images per step, so they cost the same per iteration.

Which number is learnt is set by ``nnUNet_autoaug_regression_target`` (volume:<label>, count:<label> or a CSV).
nnU-Net's split, logging, progress.png, checkpointing and ``--c`` work as usual; the pseudo-Dice slots carry the
validation ICC(2,1). Outputs in fold_X: regression_targets.csv, and after training validation/
regression_predictions.csv and validation/regression_metrics.json. ``nnUNetv2_predict`` does not apply (it writes
segmentations): use ``python -m nnunet_autoaug.regression.predict`` (docs/HYDRANET.md).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch._dynamo import OptimizedModule

from nnunet_autoaug.regression.data import CaseImages, case_shapes, input_shape_for, load_cases
from nnunet_autoaug.regression.hydra import SetSumLoss
from nnunet_autoaug.regression.loaders import CaseBatchLoader, VirtualSetLoader
from nnunet_autoaug.regression.metrics import regression_metrics
from nnunet_autoaug.regression.network import (
    DEFAULT_FEATURES,
    SMALL_FEATURES,
    SMALL_INPUT_POOL,
    RegressionNet,
    predict_images,
)
from nnunet_autoaug.regression.targets import (
    TARGET_VAR,
    TargetSpec,
    parse_target_spec,
    resolve_targets,
    write_targets_csv,
)
from nnunet_autoaug.settings import SAVE_EVERY_VAR, SEED_VAR, SettingsError, int_from_env
from nnunet_autoaug.trainers.checkpoint import save_checkpoint_with
from nnunet_autoaug.trainers.nnUNetTrainerScheduled import EnvSchedule

CHECKPOINT_KEY = "regression"
TARGETS_FILE, PREDICTIONS_FILE, METRICS_FILE = "regression_targets.csv", "regression_predictions.csv", \
    "regression_metrics.json"


def _settings(plans: dict, configuration: str, dataset_json: dict) -> tuple[TargetSpec, dict[str, float], str]:
    """Validate the environment and compute every case's global label (raises before any folder is created)."""
    spec = parse_target_spec(os.environ.get(TARGET_VAR), dataset_json)
    plans_manager = PlansManager({k: v for k, v in plans.items() if k != "continue_training"})
    cm = plans_manager.get_configuration(configuration)
    if len(cm.patch_size) != 3 or cm.previous_stage_name is not None:
        raise NotImplementedError(f"the regression trainers need whole 3D images: use 3d_fullres (or 3d_lowres), "
                                  f"not {configuration!r}.")
    folder = join(os.fspath(nnUNet_preprocessed), plans_manager.dataset_name, cm.data_identifier)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no preprocessed data in {folder}: run nnUNetv2_plan_and_preprocess first.")
    cases = sorted(infer_dataset_class(folder).get_identifiers(folder))
    raw = Path(nnUNet_raw.get()) / plans_manager.dataset_name if nnUNet_raw.is_set() else None
    targets, source = resolve_targets(spec, cases, dataset_json, raw, folder, tuple(cm.spacing))
    return spec, targets, source


class nnUNetTrainerRegression(EnvSchedule, nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # read and check our environment before nnU-Net creates the output folder: bad settings must not touch it
        spec, targets, source = _settings(plans, configuration, dataset_json)
        seed, save_every = int_from_env(SEED_VAR), int_from_env(SAVE_EVERY_VAR, minimum=1)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            raise NotImplementedError(f"{self.__class__.__name__} does not support multi-GPU (DDP) training")
        self.target_spec, self.targets, self.target_source = spec, targets, source
        self.set_size = 1  # images per virtual sample (Hydranet: 4)
        self.blank_probability = 0.0  # chance that a member is replaced by the empty image (Hydranet: 0.1)
        self.images_per_step = 8  # forward passes per iteration, equal for both trainers (Hydranet: 2 sets of 4)
        self.mirror = True  # random flips on every axis: the conventional augmentation of both trainers
        self.initial_lr = 1e-3  # Adam (see configure_optimizers)
        self.num_epochs = 100
        self.num_iterations_per_epoch = 100
        self.enable_deep_supervision = False
        self.save_every = save_every or 10
        self.seed = seed if seed is not None else int(torch.Generator().seed() % 2 ** 63)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.input_shape: tuple[int, ...] | None = None
        self.target_scale = 1.0
        self.train_cases: CaseImages | None = None
        self.val_cases: CaseImages | None = None
        self.last_validation: dict = {}

    # ------------------------------------------------------------------------------------------ network, loss
    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> RegressionNet:
        return RegressionNet(num_input_channels, DEFAULT_FEATURES)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        pass  # a single scalar output: nothing to switch

    def _build_loss(self) -> SetSumLoss:
        # nnU-Net's own train_step runs unchanged: the loss sums the predictions of each set (hydra.py)
        return SetSumLoss(self.set_size)

    def configure_optimizers(self) -> tuple:
        # Adam, as is usual for regression CNNs; nnU-Net's SGD (momentum 0.99) is tuned for segmentation logits
        optimizer = torch.optim.Adam(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _plain_network(self) -> RegressionNet:
        return self.network._orig_mod if isinstance(self.network, OptimizedModule) else self.network

    # ---------------------------------------------------------------------------------------------------- data
    def prepare_data(self) -> None:
        """Load the fold's cases as whole images at the dataset's fixed input size (once)."""
        if self.train_cases is not None:
            return
        if not self.was_initialized:
            self.initialize()
        train_keys, val_keys = self.do_split()
        folder, use_mask = self.preprocessed_dataset_folder, self.configuration_manager.use_mask_for_norm
        self.input_shape = input_shape_for(case_shapes(self.dataset_class, folder, sorted(self.targets)),
                                           self._plain_network().divisor)
        self.train_cases = load_cases(self.dataset_class, folder, sorted(train_keys), self.input_shape, use_mask)
        self.val_cases = load_cases(self.dataset_class, folder, sorted(val_keys), self.input_shape, use_mask)
        if len(self.train_cases.keys) < self.set_size:
            raise ValueError(f"{self.__class__.__name__} builds sets of {self.set_size} distinct images but fold "
                             f"{self.fold} has only {len(self.train_cases.keys)} training cases")
        # scale only (no shift): a shift would break "label of a set = sum of its members' labels" and f(empty) = 0
        rms = float(np.sqrt(np.mean(np.square(self._targets_of(self.train_cases, scaled=False).numpy()))))
        self.target_scale = rms if rms > 0 else 1.0
        if "num_val_iterations_per_epoch" not in self._schedule_overrides:  # every validation case once per epoch
            self.num_val_iterations_per_epoch = -(-len(self.val_cases.keys) // self.images_per_step)

    def _targets_of(self, cases: CaseImages, scaled: bool = True) -> torch.Tensor:
        values = torch.tensor([self.targets[k] for k in cases.keys], dtype=torch.float32)
        return values / self.target_scale if scaled else values

    def get_dataloaders(self) -> tuple:
        self.prepare_data()
        train = VirtualSetLoader(self.train_cases, self._targets_of(self.train_cases), self.set_size,
                                 max(1, self.images_per_step // self.set_size), self.blank_probability, self.generator,
                                 (0, 1, 2) if self.mirror else ())
        return train, CaseBatchLoader(self.val_cases, self._targets_of(self.val_cases), self.images_per_step)

    def on_train_start(self) -> None:
        super().on_train_start()
        split = {**{k: "train" for k in self.train_cases.keys}, **{k: "val" for k in self.val_cases.keys}}
        if self.local_rank == 0:
            write_targets_csv(join(self.output_folder, TARGETS_FILE), self.targets, split)
        empty = self.train_cases.empty_image().flatten(1)[:, 0].tolist()
        self.print_to_log_file(
            f"nnunet_autoaug regression: target {self.target_spec} [{self.target_spec.unit}] from "
            f"{self.target_source}; {len(self.train_cases.keys)} training / {len(self.val_cases.keys)} validation "
            f"cases; whole images padded to {self.input_shape}; target scale (RMS of training labels) "
            f"{self.target_scale:.4g}; sets of {self.set_size}, blank probability {self.blank_probability}, empty "
            f"image value per channel {np.round(empty, 4).tolist()}; seed {self.seed}")

    # ---------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict) -> dict:
        prediction = self.network(batch["data"].to(self.device, non_blocking=True)).float().cpu()
        return {"prediction": prediction.numpy(), "target": batch["target"].numpy(), "keys": list(batch["keys"])}

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        per_case = {}
        for out in val_outputs:
            per_case.update(zip(out["keys"], zip(out["prediction"].tolist(), out["target"].tolist())))
        prediction, target = (np.array(v, dtype=np.float64) for v in zip(*per_case.values()))
        metrics = regression_metrics(prediction * self.target_scale, target * self.target_scale)
        metrics["empty_image_prediction"] = self.predict_empty()
        icc = metrics.get("icc", float("nan"))
        icc = icc if math.isfinite(icc) else 0.0  # nnU-Net's EMA of the "pseudo Dice" must stay finite
        self.logger.log("mean_fg_dice", icc, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [icc], self.current_epoch)
        self.logger.log("val_losses", float(np.mean((prediction - target) ** 2)), self.current_epoch)
        self.last_validation = metrics

    def on_epoch_end(self) -> None:
        m = self.last_validation
        self.print_to_log_file(f"validation ({m['n']} cases): ICC(2,1) {m.get('icc', float('nan')):.4f}, RMSE "
                               f"{m['rmse']:.4g}, bias {m['bias']:.4g}; f(empty image) "
                               f"{m['empty_image_prediction']:.4g} [{self.target_spec.unit}] (the pseudo Dice below "
                               f"is this ICC)")
        super().on_epoch_end()

    def predict_empty(self) -> float:
        """f(empty image) in target units: Hydranet should have learnt about zero."""
        self.prepare_data()
        empty = self.train_cases.empty_image()[None]
        return float(predict_images(self._plain_network(), empty, self.device)[0]) * self.target_scale

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Every validation case once: per-case CSV and metrics JSON in fold_X/validation (no segmentations)."""
        self.prepare_data()
        cases = self.val_cases
        predictions = predict_images(self._plain_network(), cases.images, self.device, self.images_per_step)
        predictions = predictions.numpy().astype(np.float64) * self.target_scale
        targets = self._targets_of(cases, scaled=False).numpy().astype(np.float64)
        metrics = {"trainer": self.__class__.__name__, "fold": self.fold, "target": str(self.target_spec),
                   "unit": self.target_spec.unit, "target_source": self.target_source,
                   "num_training_cases": len(self.train_cases.keys), "epochs_trained": self.current_epoch,
                   **regression_metrics(predictions, targets),
                   "empty_image_prediction": self.predict_empty(),
                   "mean_abs_target": float(np.abs(targets).mean()) if len(targets) else float("nan")}
        if self.local_rank != 0:
            return
        folder = join(self.output_folder, "validation")
        maybe_mkdir_p(folder)
        with open(join(folder, PREDICTIONS_FILE), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case", "prediction", "target"])
            writer.writerows([k, repr(float(p)), repr(float(t))] for k, p, t in zip(cases.keys, predictions, targets))
        with open(join(folder, METRICS_FILE), "w") as f:
            json.dump(metrics, f, indent=2)
        for key in ("icc", "icc_consistency", "mse"):
            if key in metrics:
                self.logger.log_summary(f"final_val/{key}", metrics[key])
        self.print_to_log_file(f"Validation complete: {json.dumps(metrics)}", also_print_to_console=True)

    # ----------------------------------------------------------------------------------------------- checkpoints
    def regression_state(self) -> dict:
        """What a resumed run and the predictor need beyond nnU-Net's own checkpoint (plain data only)."""
        return {"target": str(self.target_spec), "target_kind": self.target_spec.kind, "unit": self.target_spec.unit,
                "target_source": self.target_source, "targets": dict(self.targets), "target_scale": self.target_scale,
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "empty_value": self.train_cases.empty_image().flatten(1)[:, 0].tolist() if self.train_cases else None,
                "network": dict(self._plain_network().init_kwargs), "set_size": self.set_size,
                "blank_probability": self.blank_probability, "images_per_step": self.images_per_step,
                "seed": self.seed, "generator": self.generator.get_state(),
                "train_keys": list(self.train_cases.keys) if self.train_cases else None,
                "val_keys": list(self.val_cases.keys) if self.val_cases else None}

    def save_checkpoint(self, filename: str) -> None:
        save_checkpoint_with(self, filename, CHECKPOINT_KEY, self.regression_state())

    def load_checkpoint(self, filename_or_checkpoint: str | dict) -> None:
        if isinstance(filename_or_checkpoint, dict):  # nnU-Net's dict path is broken (UnboundLocalError) in 2.8
            raise TypeError("pass the checkpoint's file name")
        state = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False).get(CHECKPOINT_KEY)
        if state is not None and (state["target"] != str(self.target_spec) or state["targets"] != self.targets):
            raise SettingsError(f"{filename_or_checkpoint} was trained on {TARGET_VAR}={state['target']}, but the "
                                f"current setting is {self.target_spec} or its values changed since. Set {TARGET_VAR} "
                                f"back (and restore the labels/CSV), or train into another fold/results folder.")
        super().load_checkpoint(filename_or_checkpoint)
        if state is not None:
            self.seed = state["seed"]
            self.generator.set_state(state["generator"])


class nnUNetTrainerHydra(nnUNetTrainerRegression):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.set_size = 4  # n in the paper
        self.blank_probability = 0.1  # p in the paper


class nnUNetTrainerRegression_small(nnUNetTrainerRegression):
    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> RegressionNet:
        return RegressionNet(num_input_channels, SMALL_FEATURES, SMALL_INPUT_POOL)


class nnUNetTrainerHydra_small(nnUNetTrainerRegression_small, nnUNetTrainerHydra):
    pass
