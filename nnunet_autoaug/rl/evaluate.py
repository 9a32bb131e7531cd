"""Dice on the search split: the reward of the strategy search.

Sliding-window prediction (nnU-Net's predictor, no mirroring) of every search case in the preprocessed space, Dice per
foreground label or region, averaged over labels and cases (NaN where reference and prediction are both empty, as
nnU-Net's summary). Cheaper than nnU-Net's final validation (no resampling, no export) and never touches the fold's
validation cases.
"""
from __future__ import annotations

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from torch._dynamo import OptimizedModule


def search_split_dice(trainer, keys: list[str]) -> float:
    if not keys:
        raise ValueError("the search split is empty: set trainer.search_fraction > 0 before training")
    network = trainer.network._orig_mod if isinstance(trainer.network, OptimizedModule) else trainer.network
    was_training = network.training
    deep_supervision = trainer.enable_deep_supervision
    if deep_supervision:  # the predictor expects one output, as in nnU-Net's own final validation
        trainer.set_deep_supervision_enabled(False)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=trainer.device.type == "cuda", device=trainer.device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__, None)
    lm = trainer.label_manager
    targets = [np.atleast_1d(r) for r in (lm.foreground_regions if lm.has_regions else lm.foreground_labels)]
    dataset = trainer._dataset(keys)
    per_case = []
    with torch.no_grad():
        for key in keys:
            data, seg, _, _ = dataset.load_case(key)
            logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(data)).float())
            pred = lm.convert_logits_to_segmentation(logits.float().cpu()).numpy()
            ref = np.asarray(seg[0])
            valid = ref >= 0 if lm.ignore_label is None else (ref >= 0) & (ref != lm.ignore_label)
            scores = []
            for target in targets:
                p, r = np.isin(pred, target) & valid, np.isin(ref, target) & valid
                denominator = p.sum() + r.sum()
                scores.append(2 * np.logical_and(p, r).sum() / denominator if denominator else np.nan)
            per_case.append(scores)
    network.train(was_training)
    if deep_supervision:
        trainer.set_deep_supervision_enabled(True)
    per_label = np.nanmean(np.array(per_case, dtype=float), axis=0) if per_case else np.array([np.nan])
    value = float(np.nanmean(per_label)) if np.isfinite(per_label).any() else 0.0
    return value
