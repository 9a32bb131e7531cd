"""Per-case predictions of a trained regression model (nnUNetTrainerHydra / nnUNetTrainerRegression) as a CSV.

``nnUNetv2_predict`` writes segmentations, so the regression models have their own command:

    python -m nnunet_autoaug.regression.predict -d 4 -tr nnUNetTrainerHydra -f 0 -o out/
    python -m nnunet_autoaug.regression.predict -d 4 -tr nnUNetTrainerHydra -f 0 1 2 3 4 -i imagesTs -o out/ \
        --truth labelsTs

Without ``-i`` each fold predicts its own validation cases from the preprocessed data (several folds: pooled
cross-validation predictions) and the true values are the global labels stored in the checkpoint. With ``-i`` the
images are preprocessed exactly as nnU-Net does for inference and the folds' predictions are averaged; ``--truth``
(a folder of segmentations, or a CSV case,value) gives the true values. Writes ``regression_predictions.csv`` and,
when true values are known, ``regression_metrics.json`` (MSE, ICC(2,1), ICC(3,1); see metrics.py) into ``-o``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from nnunet_autoaug.regression.data import background_values, fit_to_shape, load_cases
from nnunet_autoaug.regression.metrics import regression_metrics
from nnunet_autoaug.regression.network import RegressionNet, predict_images
from nnunet_autoaug.regression.targets import TargetSpec, global_label, read_csv_targets
from nnunet_autoaug.settings import SettingsError

PREDICTIONS_FILE, METRICS_FILE = "regression_predictions.csv", "regression_metrics.json"


class Model:
    """One fold of a trained regression model, rebuilt from its checkpoint and the model folder's plans."""

    def __init__(self, model_folder: Path, fold: int | str, checkpoint: str, device: torch.device):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        path = model_folder / f"fold_{fold}" / checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint {path}: train the fold first (or pick another --chk)")
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if "regression" not in saved:
            raise ValueError(f"{path} was written by {saved.get('trainer_name')}, not by a regression trainer")
        self.state, self.device = saved["regression"], device
        self.dataset_json = json.loads((model_folder / "dataset.json").read_text())
        self.plans_manager = PlansManager(str(model_folder / "plans.json"))
        self.configuration = saved["init_args"]["configuration"]
        self.configuration_manager = self.plans_manager.get_configuration(self.configuration)
        self.network = RegressionNet(**self.state["network"]).to(device)
        self.network.load_state_dict(saved["network_weights"])
        self.input_shape = tuple(self.state["input_shape"])

    def predict(self, images: torch.Tensor) -> np.ndarray:
        return predict_images(self.network, images, self.device).numpy().astype(np.float64) * self.state["target_scale"]

    def validation_cases(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The fold's validation cases from nnUNet_preprocessed: keys, predictions, true values."""
        from nnunetv2.paths import nnUNet_preprocessed
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        folder = os.path.join(os.fspath(nnUNet_preprocessed), self.plans_manager.dataset_name,
                              self.configuration_manager.data_identifier)
        keys = self.state["val_keys"]
        cases = load_cases(infer_dataset_class(folder), folder, keys, self.input_shape,
                           self.configuration_manager.use_mask_for_norm)
        return keys, self.predict(cases.images), np.array([self.state["targets"][k] for k in keys])

    def preprocess(self, files: list[str]) -> torch.Tensor:
        """nnU-Net's inference preprocessing of one case, fitted to the model's input size: (1, C, *shape)."""
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        data, _, _ = preprocessor.run_case(files, None, self.plans_manager, self.configuration_manager,
                                           self.dataset_json)
        fill = background_values(data, self.configuration_manager.use_mask_for_norm)
        return torch.from_numpy(fit_to_shape(np.asarray(data, dtype=np.float32), self.input_shape, fill))[None]


def image_files(folder: Path, file_ending: str) -> dict[str, list[str]]:
    """{case: [channel files]} for nnU-Net-style names ``<case>_0000<file_ending>``."""
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(file_ending))
    cases = get_identifiers_from_splitted_dataset_folder(str(folder), file_ending)
    return {str(c): create_paths_fn(str(folder), files, file_ending, c) for c in cases}


def true_values(truth: Path, spec: TargetSpec, dataset_json: dict, cases: list[str]) -> dict[str, float]:
    """Global labels of ``cases`` from a CSV or a folder of segmentations (computed as in training)."""
    if truth.is_file():
        values = read_csv_targets(truth)
        return {c: values[c] for c in cases if c in values}
    if spec.kind == "csv":
        raise SettingsError(f"the model learnt values from a CSV ({spec.csv_path}); pass --truth as a CSV, not a "
                            f"folder of segmentations")
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    files = {c: truth / f"{c}{dataset_json['file_ending']}" for c in cases}
    files = {c: p for c, p in files.items() if p.is_file()}
    if not files:
        return {}
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(next(iter(files.values()))), verbose=False)()
    values = {}
    for case, path in files.items():
        seg, properties = reader.read_seg(str(path))
        values[case] = global_label(seg, spec, tuple(properties["spacing"]))
    return values


def spec_of(state: dict) -> TargetSpec:
    if state["target_kind"] == "csv":
        return TargetSpec("csv", csv_path=state["target"])
    return TargetSpec(state["target_kind"], int(state["target"].split(":")[1]))


def write_outputs(out: Path, keys: list[str], predictions: np.ndarray, truth: dict[str, float],
                  info: dict) -> dict | None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / PREDICTIONS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "prediction", "target"])
        writer.writerows([k, repr(float(p)), repr(float(truth[k])) if k in truth else ""]
                         for k, p in zip(keys, predictions))
    known = [i for i, k in enumerate(keys) if k in truth]
    if not known:
        return None
    metrics = {**info, **regression_metrics(predictions[known], np.array([truth[keys[i]] for i in known]))}
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-tr", default="nnUNetTrainerHydra", help="trainer (default nnUNetTrainerHydra)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("-c", default="3d_fullres", help="configuration")
    parser.add_argument("-f", nargs="+", default=["0"], help="fold(s)")
    parser.add_argument("-o", required=True, type=Path, help="output folder")
    parser.add_argument("-i", type=Path, help="folder of images (<case>_0000<ending>); default: the folds' "
                                                "validation cases")
    parser.add_argument("--truth", type=Path, help="with -i: folder of segmentations or CSV case,value")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    model_folder = Path(get_output_folder(args.d, args.tr, args.p, args.c))
    folds = [f if f == "all" else int(f) for f in args.f]
    models = [Model(model_folder, f, args.chk, torch.device(args.device)) for f in folds]
    state = models[0].state
    info = {"model": str(model_folder), "folds": folds, "checkpoint": args.chk, "target": state["target"],
            "unit": state["unit"]}
    if args.i is None:
        keys, predictions, truth = [], [], {}
        for model in models:
            k, p, t = model.validation_cases()
            keys += k
            predictions.append(p)
            truth.update(zip(k, t.tolist()))
        predictions = np.concatenate(predictions)
        info["cases"] = "validation cases of each fold"
    else:
        files = image_files(args.i, models[0].dataset_json["file_ending"])
        keys = list(files)
        predictions = np.array([np.mean([m.predict(m.preprocess(files[k]))[0] for m in models]) for k in keys])
        truth = true_values(args.truth, spec_of(state), models[0].dataset_json, keys) if args.truth else {}
        info["cases"] = f"images in {args.i} (mean over folds)"
    metrics = write_outputs(args.o, keys, predictions, truth, info)
    print(f"{len(keys)} predictions written to {args.o / PREDICTIONS_FILE}")
    if metrics is not None:
        print(f"against {metrics['n']} true values: MSE {metrics['mse']:.6g}, ICC(2,1) {metrics.get('icc', 'n/a')}, "
              f"ICC(3,1) {metrics.get('icc_consistency', 'n/a')} -> {args.o / METRICS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
