"""What a benchmark run compares under: the budget, the plans variant that sets its batch size, and the folds.

The low-data regime is a fixed subset of a fold's training cases with the fold's full validation set. It is stored
as extra entries of nnU-Net's splits_final.json (folds 5-9 mirror folds 0-4), so the stock ``nnUNetv2_train D
3d_fullres 5`` trains it and nothing outside nnU-Net's own split mechanism is involved.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.settings import SCHEDULE_VARS

SPLIT_SEED = 12345  # nnU-Net's default cross-validation seed; the published baselines use the same folds
N_FOLDS = 5
REGIMES = ("full", "lowdata")


@dataclass(frozen=True)
class Budget:
    """Identical for every trainer: epochs x iterations per epoch at a given batch size."""

    epochs: int
    iters: int
    val_iters: int
    batch_size: int | None = None  # None: the batch size nnU-Net planned

    def env(self) -> dict[str, str]:
        values = {"num_epochs": self.epochs, "num_iterations_per_epoch": self.iters,
                  "num_val_iterations_per_epoch": self.val_iters}
        return {var: str(values[attribute]) for var, attribute in SCHEDULE_VARS.items()}

    def describe(self, planned_batch: int) -> str:
        batch = self.batch_size or planned_batch
        return (f"{self.epochs} epochs x {self.iters} iterations x batch {batch} = {self.epochs * self.iters * batch} "
                f"training patches ({self.val_iters} validation iterations per epoch)")


PROTOCOLS = {  # the two documented protocols; both keep nnU-Net's patch size and network
    "cpu": Budget(epochs=10, iters=50, val_iters=10, batch_size=2),  # stock run: 16 min on 2 idle cores, 2 h busy
    "gpu": Budget(epochs=50, iters=250, val_iters=50, batch_size=None),
}
PUBLISHED_BUDGET = "1000 epochs x 250 iterations x planned batch (nnU-Net's default, GPU)"


def plans_identifier(tree: NnUNetTree, dataset_name: str, configuration: str, batch_size: int | None) -> str:
    """nnUNetPlans, or a copy that differs only in the configuration's batch size (reuses the preprocessed data)."""
    if batch_size is None:
        return "nnUNetPlans"
    folder = tree.preprocessed / dataset_name
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    identifier = f"nnUNetPlans_bs{batch_size}"
    plans["plans_name"] = identifier
    plans["configurations"][configuration]["batch_size"] = batch_size
    target = folder / f"{identifier}.json"
    if not target.exists() or json.loads(target.read_text()) != plans:
        target.write_text(json.dumps(plans, indent=2))
    return identifier


def planned_batch_size(tree: NnUNetTree, dataset_name: str, configuration: str) -> int:
    plans = json.loads((tree.preprocessed / dataset_name / "nnUNetPlans.json").read_text())
    return int(plans["configurations"][configuration]["batch_size"])


def nnunet_fold(regime: str, fold: int) -> int:
    """The nnU-Net fold index that trains ``regime`` of cross-validation fold ``fold``."""
    return fold if regime == "full" else N_FOLDS + fold


def _canonical(folds: list[dict]) -> list[tuple]:
    return [(sorted(f["train"]), sorted(f["val"])) for f in folds]


def ensure_splits(tree: NnUNetTree, dataset_name: str, low_data_cases: int) -> list[dict]:
    """nnU-Net's default 5 folds plus one low-data fold per fold (written once; checked on every later run)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    folder = tree.preprocessed / dataset_name
    data = folder / "nnUNetPlans_3d_fullres" if (folder / "nnUNetPlans_3d_fullres").is_dir() else \
        next(p for p in folder.iterdir() if p.is_dir())
    identifiers = sorted(infer_dataset_class(str(data)).get_identifiers(str(data)))  # sorted, as nnU-Net does
    default = generate_crossval_split(identifiers, seed=SPLIT_SEED, n_splits=N_FOLDS)
    low = []
    for split in default:
        train = sorted(split["train"])
        if low_data_cases > len(train):
            raise ValueError(f"--low-data-cases {low_data_cases} exceeds the {len(train)} training cases of a fold")
        chosen = np.random.RandomState(SPLIT_SEED).choice(len(train), low_data_cases, replace=False)
        low.append({"train": sorted(str(train[i]) for i in chosen), "val": [str(k) for k in split["val"]]})
    wanted = [{"train": [str(k) for k in s["train"]], "val": [str(k) for k in s["val"]]} for s in default] + low
    path = folder / "splits_final.json"
    if path.exists():
        existing = json.loads(path.read_text())
        if _canonical(existing[:N_FOLDS]) != _canonical(wanted[:N_FOLDS]):
            raise ValueError(f"{path} does not hold nnU-Net's default folds (seed {SPLIT_SEED}); results would not "
                             f"pair with the published baselines. Move it away and rerun.")
        if _canonical(existing[N_FOLDS:]) == _canonical(wanted[N_FOLDS:]):
            return existing
        if len(existing) > N_FOLDS:
            trained = [p for f in range(N_FOLDS, 2 * N_FOLDS) for p in tree.results.glob(f"{dataset_name}/*/fold_{f}")]
            if trained:
                raise ValueError(f"{path} holds low-data folds of another size and {trained[0]} was trained on "
                                 f"them; use the --low-data-cases of that run or a new --work folder.")
        wanted[:N_FOLDS] = existing[:N_FOLDS]  # keep nnU-Net's own file byte-for-byte where it already exists
    path.write_text(json.dumps(wanted, indent=2))
    return wanted
