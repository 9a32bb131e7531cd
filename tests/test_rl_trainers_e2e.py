"""nnUNetTrainerStrategy (fixed strategy, default fallback, bad input) and the online nnUNetTrainerRL (--c resume)
with the stock nnUNetv2_train."""
from __future__ import annotations

import json

import pytest
import torch

from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.rl.strategy import DEFAULT_STRATEGY, DIMENSIONS, Strategy
from nnunet_autoaug.synthetic import DEFAULT_ID

pytestmark = pytest.mark.e2e


def train(tree: NnUNetTree, trainer: str, fold: int, *extra: str, epochs: int = 1, check: bool = True, **env: str):
    return tree.run("nnUNetv2_train", DEFAULT_ID, "3d_fullres", fold, "-tr", trainer, "-device", "cpu", *extra,
                    check=check, nnUNet_autoaug_epochs=str(epochs), nnUNet_autoaug_iters="2",
                    nnUNet_autoaug_val_iters="1", nnUNet_n_proc_DA="0", OMP_NUM_THREADS="1", **env)


def test_strategy_trainer_defaults_and_refuses_bad_files(nnunet_tree: NnUNetTree, tmp_path) -> None:
    tree, trainer = nnunet_tree, "nnUNetTrainerStrategy"
    log = train(tree, trainer, 0).stdout
    assert "nnunet_autoaug strategy (default)" in log
    fold0 = tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 0)
    assert Strategy.load(fold0 / "autoaug_strategy.json") == DEFAULT_STRATEGY
    checkpoint = torch.load(fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert Strategy.from_json_dict(checkpoint["autoaug"]["strategy"]) == DEFAULT_STRATEGY

    (tmp_path / "bad.json").write_text(json.dumps({**DEFAULT_STRATEGY.to_json_dict(), "learning_rate": 0.5}))
    # (a missing file fails the same way, before super().__init__: tests/test_rl_search.py covers the loader)
    result = train(tree, trainer, 1, check=False, nnUNet_autoaug_strategy=str(tmp_path / "bad.json"))
    assert result.returncode != 0 and "StrategyError" in result.stdout and "learning_rate must be" in result.stdout
    # bad input never creates a results folder
    assert not tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 1).exists()


def _rl_state(tree: NnUNetTree) -> dict:
    fold = tree.output_folder(DEFAULT_ID, "nnUNetTrainerRL", "3d_fullres", 0)
    return torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["autoaug"]["rl"]


def test_rl_trainer_resumes_with_its_controller(nnunet_tree: NnUNetTree) -> None:
    tree = nnunet_tree
    train(tree, "nnUNetTrainerRL", 0, epochs=1, nnUNet_autoaug_rl_every="1", nnUNet_autoaug_seed="3")
    first = _rl_state(tree)
    assert first["controller"]["n_updates"] == 1 and len(first["history"]) == 1 and first["pending"] is None
    log = train(tree, "nnUNetTrainerRL", 0, "--c", epochs=3, nnUNet_autoaug_rl_every="1",
                nnUNet_autoaug_seed="3").stdout
    assert "Epoch 1" in log and "Epoch 0\n" not in log
    # the log names the first epoch each proposal trains, at the start and at an epoch end alike
    assert "RL: new strategy from epoch 1:" in log and "RL: new strategy from epoch 2:" in log
    second = _rl_state(tree)
    # the resumed run continued the same controller: two more updates, the earlier segment kept in its buffer
    assert second["controller"]["n_updates"] == 3 and second["controller"]["n_proposed"] == 3
    assert second["history"][0] == first["history"][0]
    assert second["controller"]["buffer"][0]["unit"] == first["controller"]["buffer"][0]["unit"]
    assert second["history"][1]["unit"] != first["history"][0]["unit"]
    fold = tree.output_folder(DEFAULT_ID, "nnUNetTrainerRL", "3d_fullres", 0)
    history = json.loads((fold / "autoaug_rl_history.json").read_text())
    assert history["dimensions"] == list(DIMENSIONS) and len(history["segments"]) == 3
    assert Strategy.load(fold / "autoaug_strategy.json")  # the controller's mean strategy, trainable as is
    assert (fold / "autoaug_rl.png").stat().st_size > 3000
