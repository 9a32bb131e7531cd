"""SCNAS building blocks: sampling, derivation, genotype files, the final network against nnU-Net's, registration,
and the memory argument for 2-op sampling."""
from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_autoaug.nas.cli import main as register_main
from nnunet_autoaug.nas.genotype import (
    CELL_TYPES,
    GENOTYPE_FILE,
    N_NODES,
    Genotype,
    GenotypeError,
    derive_genotype,
    edge_index,
    n_edges,
)
from nnunet_autoaug.nas.memory import saved_tensor_bytes
from nnunet_autoaug.nas.ops import PRIMITIVES, ZERO
from nnunet_autoaug.nas.plans import PlansError, register_genotype, registered_genotype
from nnunet_autoaug.nas.sampling import annealed_temperature, gumbel_top2
from nnunet_autoaug.nas.supernet import SCNASSupernet
from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.synthetic import DEFAULT_ID

NAME = "Dataset990_AutoAugSynth"
STRIDES_2D = [[1, 1], [2, 2], [2, 2]]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_alphas(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {t: torch.randn(n_edges(), len(PRIMITIVES), generator=generator) for t in CELL_TYPES}


def some_genotype(dim: int = 3, seed: int = 0) -> Genotype:
    return derive_genotype(random_alphas(seed), dim)


@pytest.fixture(scope="module")
def plans_copy(nnunet_tree: NnUNetTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the synthetic dataset's plans: registration tests must not touch the shared tree."""
    path = tmp_path_factory.mktemp("scnas_plans") / "nnUNetPlans.json"
    shutil.copy(nnunet_tree.preprocessed / NAME / "nnUNetPlans.json", path)
    return path


# --------------------------------------------------------------------------------------------------- sampling
def test_gumbel_top2_draws_two_distinct_ops_with_weights_summing_to_one_and_grads_reaching_alpha() -> None:
    alpha = torch.randn(n_edges(), len(PRIMITIVES), requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        ops, weights = gumbel_top2(alpha, tau=0.5, generator=generator)
        assert ops.shape == weights.shape == (n_edges(), 2)
        assert (ops[:, 0] != ops[:, 1]).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(n_edges()))
    (weights * torch.arange(2.0)).sum().backward()  # any loss that depends on the pair's weights
    sampled = torch.zeros_like(alpha, dtype=torch.bool).scatter_(1, ops, True)
    assert (alpha.grad[sampled] != 0).all() and (alpha.grad[~sampled] == 0).all()


def test_gumbel_top2_samples_proportionally_to_softmax_alpha() -> None:
    # Gumbel-max: the stronger of the two sampled ops is distributed as softmax(alpha)
    alpha = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, 0.0, -2.0, 1.5]]).expand(20000, -1)
    ops, _ = gumbel_top2(alpha, tau=1.0, generator=torch.Generator().manual_seed(1))
    frequency = torch.bincount(ops[:, 0], minlength=len(PRIMITIVES)).double() / len(ops)
    torch.testing.assert_close(frequency, torch.softmax(alpha[0].double(), 0), atol=0.015, rtol=0)


def test_temperature_is_annealed_from_start_to_end() -> None:
    taus = [annealed_temperature(e, 10, 1.0, 0.1) for e in range(10)]
    assert taus[0] == pytest.approx(1.0) and taus[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(taus))


def test_supernet_runs_two_distinct_ops_per_edge_and_alpha_gets_gradients() -> None:
    torch.manual_seed(0)
    net = SCNASSupernet(1, 3, STRIDES_2D, stem_channels=4, generator=torch.Generator().manual_seed(0))
    outputs = net(torch.randn(2, 1, 16, 16))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 16), (2, 3, 8, 8)]
    for ops, weights in net.last_arch.values():
        assert (ops[:, 0] != ops[:, 1]).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(n_edges()))
    sum(o.square().mean() for o in outputs).backward()
    for cell_type, alpha in net.alphas.items():
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0, cell_type
    assert not {id(p) for p in net.arch_parameters()} & {id(p) for p in net.weight_parameters()}


def test_two_op_sampling_saves_far_less_than_all_op_darts_evaluation() -> None:
    torch.manual_seed(0)
    net = SCNASSupernet(1, 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], stem_channels=4,
                        generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 1, 16, 16, 16)
    sampled = saved_tensor_bytes(net, x)
    net.sample_mode = "all"
    dense = saved_tensor_bytes(net, x)
    assert sampled < 0.5 * dense, (sampled, dense)


# ------------------------------------------------------------------------------------------------- derivation
def test_derivation_is_deterministic_and_follows_the_darts_rule() -> None:
    alphas = random_alphas(3)
    assert derive_genotype(alphas, 3) == derive_genotype({t: a.clone() for t, a in alphas.items()}, 3)
    node, cell = 2, "reduction"
    alphas = {t: torch.zeros(n_edges(), len(PRIMITIVES)) for t in CELL_TYPES}
    alphas[cell][edge_index(node, 3), PRIMITIVES.index("conv_3")] = 3.0
    alphas[cell][edge_index(node, 0), PRIMITIVES.index("avg_pool_3")] = 2.0
    alphas[cell][edge_index(node, 1), ZERO] = 9.0  # zero never counts: this edge is no stronger than the others
    genotype = derive_genotype(alphas, 3)
    assert genotype.cells[cell][node] == (("avg_pool_3", 0), ("conv_3", 3))
    # all-equal logits: ties go to the lowest inputs and the first non-zero op
    assert genotype.cells["expansion"] == ((("identity", 0), ("identity", 1)),) * N_NODES


# -------------------------------------------------------------------------------------------------- genotype
def test_genotype_json_round_trip(tmp_path: Path) -> None:
    genotype = some_genotype(2)
    genotype.save(tmp_path / "g.json")
    assert Genotype.load(tmp_path / "g.json") == genotype
    genotype.save(tmp_path / GENOTYPE_FILE)
    assert Genotype.load(tmp_path) == genotype  # the search's fold folder, as a user would point at it
    assert Genotype.from_dict(json.loads(genotype.to_json())) == genotype
    with pytest.raises(dataclasses.FrozenInstanceError):
        genotype.dim = 3


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["cells"]["reduction"][0][0].__setitem__(0, "conv_5"), "unknown op 'conv_5'"),
    (lambda d: d["cells"]["reduction"][0][0].__setitem__(0, "zero"), "unknown op 'zero'"),
    (lambda d: d["cells"]["expansion"].pop(), "has 3 nodes, expected 4"),
    (lambda d: d["cells"]["decoder_normal"][1][0].__setitem__(1, 5), "input 5 is out of range"),
    (lambda d: d["cells"].pop("reduction"), "must map exactly the cell types"),
    (lambda d: d.__setitem__("dim", 4), "'dim' must be 2 or 3"),
    (lambda d: d["cells"]["encoder_normal"][0].append(["conv_3", 0]), "must have exactly 2 input edges"),
])
def test_bad_genotype_files_fail_with_a_message_naming_the_problem(tmp_path: Path, edit, message: str) -> None:
    data = some_genotype().to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError, match=message) as error:
        Genotype.load(path)
    assert str(path) in str(error.value)


def test_unreadable_genotype_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(GenotypeError, match="does not exist"):
        Genotype.load(tmp_path / "missing.json")
    with pytest.raises(GenotypeError, match="holds no scnas_genotype.json"):
        Genotype.load(tmp_path)  # a search's fold folder stands for the genotype in it
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        Genotype.load(tmp_path / "broken.json")


# ------------------------------------------------------------------------------- final network vs nnU-Net's
@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_final_network_outputs_match_nnunets_deep_supervision(plans_copy: Path, configuration: str) -> None:
    dim = 3 if configuration == "3d_fullres" else 2
    name = register_genotype(plans_copy, some_genotype(dim), configuration, stem_channels=4)
    manager = PlansManager(load_json(str(plans_copy)))
    base, searched = manager.get_configuration(configuration), manager.get_configuration(name)
    patch = base.patch_size
    x = torch.randn(1, 1, *patch)
    # what nnUNetTrainer.initialize and nnUNetPredictor do: the static builder on the plans
    reference = nnUNetTrainer.build_network_architecture(manager, base, 1, 3, True)
    network = nnUNetTrainer.build_network_architecture(manager, searched, 1, 3, True)
    with torch.no_grad():
        expected = [tuple(o.shape) for o in reference(x)]
        got = [tuple(o.shape) for o in network(x)]
    scales = 1 / torch.tensor(base.pool_op_kernel_sizes, dtype=torch.float64).cumprod(0)[:-1]
    assert got == expected and len(got) == len(scales)  # one output per DS scale, highest resolution first
    inference = nnUNetTrainer.build_network_architecture(manager, searched, 1, 3, False)
    inference.load_state_dict(network.state_dict())  # strict, as the predictor loads it
    with torch.no_grad():
        assert tuple(inference(x).shape) == expected[0]


# ---------------------------------------------------------------------------------------------- registration
def test_registration_is_atomic_and_refuses_mismatches(plans_copy: Path) -> None:
    genotype = some_genotype(3, seed=5)
    assert register_genotype(plans_copy, genotype, "3d_fullres", stem_channels=8, name="3d_fullres_x") == \
        "3d_fullres_x"
    assert [p.name for p in plans_copy.parent.iterdir() if p.name.endswith(".tmp")] == []
    plans = load_json(str(plans_copy))
    assert plans["configurations"]["3d_fullres_x"]["inherits_from"] == "3d_fullres"
    assert registered_genotype(plans, "3d_fullres_x") == genotype
    before = plans_copy.read_text()
    with pytest.raises(GenotypeError, match="2D genotype cannot be registered on the 3D configuration"):
        register_genotype(plans_copy, some_genotype(2), "3d_fullres")
    with pytest.raises(GenotypeError, match="3D genotype cannot be registered on the 2D"):
        register_genotype(plans_copy, genotype, "2d")
    with pytest.raises(PlansError, match="not an SCNAS configuration"):
        register_genotype(plans_copy, genotype, "3d_fullres", name="2d")
    with pytest.raises(PlansError, match="already an SCNAS configuration"):
        register_genotype(plans_copy, genotype, "3d_fullres_x")
    assert plans_copy.read_text() == before
    with pytest.raises(PlansError, match="not a registered SCNAS configuration"):
        registered_genotype(plans, "3d_fullres")


def test_transfer_cli_registers_a_genotype_file_on_a_dataset(nnunet_tree: NnUNetTree, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    preprocessed = tmp_path / "nnUNet_preprocessed"
    shutil.copytree(nnunet_tree.preprocessed / NAME, preprocessed / NAME,
                    ignore=shutil.ignore_patterns("nnUNetPlans_*"))  # the plans are enough
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    genotype = some_genotype(2, seed=9)
    genotype.save(tmp_path / "found.json")
    assert register_main(["-d", str(DEFAULT_ID), "-g", str(tmp_path / "found.json"), "--width", "12"]) == 0
    assert "registered configuration '2d_scnas'" in capsys.readouterr().out
    plans = load_json(str(preprocessed / NAME / "nnUNetPlans.json"))
    assert registered_genotype(plans, "2d_scnas") == genotype
    assert plans["configurations"]["2d_scnas"]["architecture"]["arch_kwargs"]["stem_channels"] == 12
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**genotype.to_dict(), "n_nodes": 5}))
    assert register_main(["-d", str(DEFAULT_ID), "-g", str(bad)]) == 1
    assert "'n_nodes' is 5" in capsys.readouterr().err
