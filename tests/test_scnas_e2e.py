"""SCNAS with the stock commands on the synthetic dataset: search (nnUNetv2_train), --c resume of the search,
registration, retraining (nnUNetv2_train on the registered configuration), nnUNetv2_predict, evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.run.run_training import maybe_load_checkpoint

from nnunet_autoaug.nas.genotype import Genotype, derive_genotype, n_edges
from nnunet_autoaug.nas.ops import PRIMITIVES
from nnunet_autoaug.nas.plans import PlansError, registered_genotype
from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.synthetic import DEFAULT_ID
from nnunet_autoaug.trainers.nnUNetTrainerSCNAS import nnUNetTrainerSCNAS, nnUNetTrainerSCNASSearch

pytestmark = pytest.mark.e2e
NAME = "Dataset990_AutoAugSynth"
NNUNET_CHECKPOINT_KEYS = {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                          "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}
# tiny widths and one iteration per epoch: a 3D supernet step takes seconds on a shared CPU
ENV = {"nnUNet_autoaug_scnas_search_width": "4", "nnUNet_autoaug_scnas_width": "4", "nnUNet_autoaug_seed": "5",
       "nnUNet_autoaug_iters": "1", "nnUNet_autoaug_val_iters": "1"}


@pytest.fixture
def tree(nnunet_tree: NnUNetTree) -> NnUNetTree:
    return nnunet_tree  # nnU-Net finds our trainers through the installed start-up hook, as a user's would


@pytest.fixture
def make_trainer(tree: NnUNetTree, monkeypatch: pytest.MonkeyPatch):
    """Construct a trainer in-process the way nnUNetv2_train does (one torch thread: the CPU is shared)."""
    for key, value in {**tree.env(), **ENV}.items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tree.preprocessed / NAME

    def make(cls: type, configuration: str, resume: bool = False, **env: str):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        plans = load_json(str(folder / "nnUNetPlans.json"))
        plans["continue_training"] = resume
        return cls(plans, configuration, 0, load_json(str(folder / "dataset.json")), torch.device("cpu"))
    yield make
    torch.set_num_threads(threads)


def alphas_of(checkpoint: dict) -> dict[str, torch.Tensor]:
    prefix = "alphas."
    return {k[len(prefix):]: v for k, v in checkpoint["network_weights"].items() if k.startswith(prefix)}


def test_search_resume_register_retrain_predict_evaluate(tree: NnUNetTree, make_trainer, tmp_path: Path) -> None:
    log = tree.run("nnUNetv2_train", DEFAULT_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerSCNASSearch", "-device", "cpu",
                   nnUNet_autoaug_epochs="1", **ENV).stdout
    assert "2 of the fold's training cases held out for alpha" in log and "Gumbel temperature" in log
    search = tree.output_folder(DEFAULT_ID, "nnUNetTrainerSCNASSearch", "3d_fullres", 0)
    first = torch.load(search / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert set(first) == NNUNET_CHECKPOINT_KEYS | {"scnas"}
    assert first["scnas"]["search_width"] == 4 and len(first["scnas"]["history"]["tau"]) == 1

    # `nnUNetv2_train ... --c` with 2 epochs, in-process with nnU-Net's own resume function (saves a start-up)
    resumed = make_trainer(nnUNetTrainerSCNASSearch, "3d_fullres", resume=True, nnUNet_autoaug_epochs="2")
    maybe_load_checkpoint(resumed, True, False)
    assert resumed.current_epoch == 1
    for cell_type, alpha in alphas_of(first).items():
        assert torch.equal(resumed.network.alphas[cell_type].detach(), alpha)
    assert resumed.arch_optimizer.state_dict()["state"][0]["step"] == 1  # Adam's state came back too
    resumed.run_training()
    final = torch.load(search / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    state = final["scnas"]
    assert final["current_epoch"] == 2 and len(state["history"]["probabilities"]) == 2
    assert state["arch_optimizer"]["state"][0]["step"] == 2
    # the interrupted search drew exactly the Gumbel noise of an uninterrupted one: 2 epochs x 1 iteration x
    # (alpha step + weight step) x one (edges, ops) draw per cell type; evaluation draws none
    generator = torch.Generator().manual_seed(5)
    for _ in range(2 * 2 * 4):
        torch.rand((n_edges(), len(PRIMITIVES)), generator=generator, dtype=torch.float64)
    assert torch.equal(state["gumbel_generator"], generator.get_state())
    moved = [not torch.equal(a, b) for a, b in zip(alphas_of(first).values(), alphas_of(final).values())]
    assert all(moved)

    # outputs in the fold folder, and the registered configuration
    genotype = Genotype.load(search / "scnas_genotype.json")
    assert genotype == derive_genotype(alphas_of(final), 3)
    for picture in ("scnas_cells.png", "scnas_alphas.png", "progress.png"):
        assert (search / picture).stat().st_size > 0
    history = json.loads((search / "scnas_alpha_history.json").read_text())
    assert len(history["tau"]) == 2 and np.allclose(np.sum(history["probabilities"][-1]["reduction"], axis=-1), 1)
    plans = load_json(str(tree.preprocessed / NAME / "nnUNetPlans.json"))
    assert registered_genotype(plans, "3d_fullres_scnas") == genotype
    assert plans["configurations"]["3d_fullres_scnas"]["architecture"]["arch_kwargs"]["stem_channels"] == 4

    # retrain the found network with nnU-Net's recipe, then the stock predict and evaluate commands
    tree.run("nnUNetv2_train", DEFAULT_ID, "3d_fullres_scnas", 0, "-tr", "nnUNetTrainerSCNAS", "-device", "cpu",
             nnUNet_autoaug_epochs="1", nnUNet_autoaug_iters="2", nnUNet_autoaug_val_iters="1")
    retrained = tree.output_folder(DEFAULT_ID, "nnUNetTrainerSCNAS", "3d_fullres_scnas", 0)
    assert registered_genotype(load_json(str(retrained.parent / "plans.json")), "3d_fullres_scnas") == genotype
    assert (retrained / "validation" / "summary.json").is_file()
    raw, pred = tree.raw / NAME, tmp_path / "pred"
    tree.run("nnUNetv2_predict", "-i", raw / "imagesTs", "-o", pred, "-d", DEFAULT_ID, "-c", "3d_fullres_scnas",
             "-tr", "nnUNetTrainerSCNAS", "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_tta")
    cases = sorted(pred.glob("*.nii.gz"))
    assert [c.name for c in cases] == ["synth_012.nii.gz", "synth_013.nii.gz"]
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(cases[0]))))) <= {0, 1, 2}
    tree.run("nnUNetv2_evaluate_folder", raw / "labelsTs", pred, "-djfile", retrained.parent / "dataset.json",
             "-pfile", retrained.parent / "plans.json", "-np", 1)
    summary = json.loads((pred / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2 and 0 <= summary["foreground_mean"]["Dice"] <= 1


def test_retraining_a_configuration_without_a_genotype_fails_before_any_output(tree: NnUNetTree,
                                                                              make_trainer) -> None:
    with pytest.raises(PlansError, match="not a registered SCNAS configuration"):
        make_trainer(nnUNetTrainerSCNAS, "2d")
    assert not tree.output_folder(DEFAULT_ID, "nnUNetTrainerSCNAS", "2d", 0).parent.exists()
    with pytest.raises(PlansError, match="is not in the plans"):
        make_trainer(nnUNetTrainerSCNAS, "2d_scnas_missing")
