"""Global labels: one number per case, from the segmentations or from a CSV.

``nnUNet_autoaug_regression_target`` selects it:

- ``volume:<label>``: volume of that label (value or name from dataset.json) in physical units cubed (mm^3 for
  NIfTI), i.e. voxel count times the voxel volume;
- ``count:<label>``: number of connected components of that label (26-connectivity in 3D);
- a path to a CSV file with the columns ``case,value`` (one row per case identifier).

Volumes and counts come from the ORIGINAL segmentations in ``$nnUNet_raw/<dataset>/labelsTr`` (read with the
dataset's own reader, at the original spacing), because nnU-Net resamples and crops. Only when the raw dataset is
not available are they computed from the preprocessed segmentation times the voxel volume of the target spacing
(exact for volumes up to resampling; counts can differ where resampling merges or splits components).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_autoaug.settings import SettingsError

TARGET_VAR = "nnUNet_autoaug_regression_target"
KINDS = ("volume", "count")


@dataclass(frozen=True)
class TargetSpec:
    kind: str  # "volume", "count" or "csv"
    label: int | None = None
    csv_path: str | None = None

    def __str__(self) -> str:
        return self.csv_path if self.kind == "csv" else f"{self.kind}:{self.label}"

    @property
    def unit(self) -> str:
        return {"volume": "mm^3", "count": "connected components",
                "csv": "as in the CSV"}[self.kind]


def _labels(dataset_json: dict) -> dict[str, int]:
    return {name: value for name, value in dataset_json.get("labels", {}).items() if isinstance(value, int)}


def parse_target_spec(raw: str | None, dataset_json: dict) -> TargetSpec:
    """Validate the value of ``nnUNet_autoaug_regression_target`` (raises SettingsError saying how to fix it)."""
    labels = {k: v for k, v in _labels(dataset_json).items() if v != 0}
    choices = ", ".join(f"volume:{v} / count:{v} ({k})" for k, v in labels.items())
    hint = f"Set it to one of {choices}, or to the path of a CSV file with the columns case,value."
    if raw is None or not raw.strip():
        raise SettingsError(f"environment variable {TARGET_VAR} is not set: the regression trainers need to know "
                            f"which global label to learn. {hint}")
    raw = raw.strip()
    kind, sep, label = raw.partition(":")
    if sep and kind in KINDS:
        if label in labels:
            return TargetSpec(kind, labels[label])
        if label.lstrip("-").isdigit() and int(label) in labels.values():
            return TargetSpec(kind, int(label))
        raise SettingsError(f"{TARGET_VAR}={raw!r}: {label!r} is not a foreground label of this dataset "
                            f"(dataset.json labels: {labels}; region-based labels are not supported). {hint}")
    if not Path(raw).is_file():
        raise SettingsError(f"{TARGET_VAR}={raw!r} is neither 'volume:<label>' / 'count:<label>' nor an existing "
                            f"CSV file. {hint}")
    read_csv_targets(raw)  # fail now on a malformed file
    return TargetSpec("csv", csv_path=str(Path(raw).resolve()))


def read_csv_targets(path: str | Path) -> dict[str, float]:
    """``case,value`` rows -> {case: value}; every value must be a finite number and every case unique."""
    values: dict[str, float] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"case", "value"} <= {c.strip() for c in reader.fieldnames}:
            raise SettingsError(f"{path}: the CSV needs a header with the columns case,value (got "
                                f"{reader.fieldnames}).")
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            try:
                value = float(row["value"])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise SettingsError(f"{path}, line {line}: value {row['value']!r} of case {row['case']!r} is not a "
                                    f"finite number.")
            if row["case"] in values:
                raise SettingsError(f"{path}, line {line}: case {row['case']!r} appears twice.")
            values[row["case"]] = value
    return values


def require_cases(values: dict[str, float], cases: list[str], source: str) -> dict[str, float]:
    missing = sorted(set(cases) - set(values))
    if missing:
        raise SettingsError(f"{source} has no value for {len(missing)} of the dataset's {len(cases)} cases, e.g. "
                            f"{missing[:5]}. Add a row for every case identifier (the preprocessed file names "
                            f"without extension), or remove those cases from the dataset.")
    return {c: values[c] for c in cases}


def global_label(seg: np.ndarray, spec: TargetSpec, spacing: tuple[float, ...]) -> float:
    """The global label of one segmentation (any leading singleton channel axis is ignored)."""
    mask = np.squeeze(np.asarray(seg) == spec.label)
    if spec.kind == "volume":
        return float(mask.sum()) * float(np.prod(spacing))
    if spec.kind == "count":
        structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)  # faces, edges and corners
        return float(ndimage.label(mask, structure=structure)[1])
    raise ValueError(f"no global label of kind {spec.kind!r} is computed from segmentations")


def raw_label_files(raw_dataset_folder: Path, dataset_json: dict, cases: list[str]) -> dict[str, Path]:
    """Where nnU-Net keeps each case's original segmentation (honours an explicit 'dataset' file list)."""
    if "dataset" in dataset_json:
        listed = {k: Path(os.path.expandvars(v["label"])) for k, v in dataset_json["dataset"].items()}
        return {c: p if p.is_absolute() else raw_dataset_folder / p for c, p in listed.items() if c in cases}
    return {c: raw_dataset_folder / "labelsTr" / f"{c}{dataset_json['file_ending']}" for c in cases}


def targets_from_raw(spec: TargetSpec, files: dict[str, Path], dataset_json: dict) -> dict[str, float]:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    example = str(next(iter(files.values())))
    reader = determine_reader_writer_from_dataset_json(dataset_json, example, verbose=False)()
    values = {}
    for case, path in files.items():
        seg, properties = reader.read_seg(str(path))
        values[case] = global_label(seg, spec, tuple(properties["spacing"]))
    return values


def targets_from_preprocessed(spec: TargetSpec, preprocessed_folder: str, cases: list[str],
                              spacing: tuple[float, ...]) -> dict[str, float]:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset = infer_dataset_class(preprocessed_folder)(preprocessed_folder, list(cases))
    return {c: global_label(np.asarray(dataset.load_case(c)[1]), spec, spacing) for c in cases}


def resolve_targets(spec: TargetSpec, cases: list[str], dataset_json: dict, raw_dataset_folder: Path | None,
                    preprocessed_folder: str, spacing: tuple[float, ...]) -> tuple[dict[str, float], str]:
    """{case: global label} for ``cases`` and a line saying where the values came from."""
    if spec.kind == "csv":
        return require_cases(read_csv_targets(spec.csv_path), cases, spec.csv_path), f"CSV {spec.csv_path}"
    if raw_dataset_folder is not None and raw_dataset_folder.is_dir():
        files = raw_label_files(raw_dataset_folder, dataset_json, cases)
        if len(files) == len(cases) and all(p.is_file() for p in files.values()):
            return targets_from_raw(spec, files, dataset_json), f"original segmentations in {raw_dataset_folder}"
    searched = "" if raw_dataset_folder is None else f" under {raw_dataset_folder}"
    source = (f"preprocessed segmentations in {preprocessed_folder} x voxel volume of the target spacing "
              f"{tuple(spacing)} (no original labels found{searched})")
    return targets_from_preprocessed(spec, preprocessed_folder, cases, spacing), source


def write_targets_csv(path: str | Path, values: dict[str, float], split: dict[str, str] | None = None) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "value"] + (["split"] if split else []))
        for case, value in values.items():
            writer.writerow([case, repr(value)] + ([split.get(case, "")] if split else []))
