"""Run the stock nnU-Net commands in a given nnU-Net folder tree: used by the demo, the tests and the benchmarks.

Everything goes through nnU-Net's own console scripts (as a user would run them), with the environment passed
explicitly, so one Python process can drive several independent nnU-Net trees. ``build_trainer`` is the in-process
exception, for scripts that step a trainer themselves (nnU-Net's paths must be in the environment before it runs).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


def console_script(name: str) -> str:
    """The console script installed next to the running interpreter (the venv's bin/), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def train_command(dataset: str, configuration: str, fold: int | str, trainer: str,
                  plans_identifier: str = "nnUNetPlans") -> str:
    """The nnUNetv2_train line a user types (``-p`` only for non-default plans, e.g. nnUNetResEncUNetMPlans:
    without it nnU-Net would look for the configuration in nnUNetPlans.json)."""
    plans = "" if plans_identifier == "nnUNetPlans" else f" -p {plans_identifier}"
    return f"nnUNetv2_train {dataset} {configuration} {fold} -tr {trainer}{plans}"


def build_trainer(name: str, dataset_folder: Path, configuration: str, device, fold: int = 0,  # noqa: ANN001, ANN201
                  plans_name: str = "nnUNetPlans", with_loaders: bool = True):
    """Trainer ``name`` built and initialised as nnUNetv2_train builds it, with its data loaders, in training mode.

    ``with_loaders=False`` leaves ``trainer.get_dataloaders()`` to the caller (e.g. after changing the crop)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    plans = load_json(str(dataset_folder / f"{plans_name}.json"))
    plans["continue_training"] = False  # what nnUNetv2_train adds before constructing a trainer
    trainer = recursive_find_trainer_class_by_name(name)(plans, configuration, fold,
                                                         load_json(str(dataset_folder / "dataset.json")), device)
    trainer.initialize()
    if with_loaders:
        trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.network.train()
    return trainer


@dataclass
class NnUNetTree:
    """An nnU-Net folder tree (raw / preprocessed / results) plus the environment to run commands in it."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    results_name: str = "nnUNet_results"  # another name gives repeated runs their own results, same data

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / self.results_name

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                    "nnUNet_results": str(self.results), "nnUNet_compile": "f"})
        env.setdefault("nnUNet_n_proc_DA", "1")
        env.setdefault("nnUNet_def_n_proc", "1")
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def run(self, command: str, *args: object, check: bool = True, log: Path | None = None,
            **env: str) -> subprocess.CompletedProcess:
        """Run an nnU-Net console script; output is captured (and written to ``log`` if given)."""
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([console_script(command), *map(str, args)], env=self.env(**env), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(result.stdout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{command} {' '.join(map(str, args))} failed (exit {result.returncode}):\n"
                               f"{result.stdout[-6000:]}")
        return result

    def plan_and_preprocess(self, dataset_id: int, configurations: tuple[str, ...] = ("3d_fullres",)) -> None:
        self.run("nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", *configurations, "-np", "1", "-npfp", "1",
                 "--verify_dataset_integrity")

    def dataset_name(self, dataset_id: int) -> str:
        matches = sorted(p.name for p in self.preprocessed.glob(f"Dataset{dataset_id:03d}_*"))
        if not matches:
            raise FileNotFoundError(f"dataset {dataset_id} is not preprocessed under {self.preprocessed}")
        return matches[0]

    def output_folder(self, dataset_id: int, trainer: str, configuration: str, fold: int | str,
                      plans: str = "nnUNetPlans") -> Path:
        return self.results / self.dataset_name(dataset_id) / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"


def import_msd_task(tree: NnUNetTree, task_folder: Path) -> int:
    """Convert an MSD task folder (e.g. Task04_Hippocampus) into ``tree`` once; returns its dataset id."""
    match = re.match(r"Task(\d+)_", task_folder.name)
    if not (task_folder / "dataset.json").is_file() or not match:
        raise ValueError(f"expected an MSD task folder like Task04_Hippocampus (with dataset.json), got "
                         f"{task_folder}")
    dataset_id = int(match.group(1))
    if not list(tree.raw.glob(f"Dataset{dataset_id:03d}_*")):
        tree.run("nnUNetv2_convert_MSD_dataset", "-i", task_folder, "-np", 1)
    return dataset_id
