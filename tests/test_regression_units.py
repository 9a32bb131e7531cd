"""Hydranet's pieces without nnU-Net: virtual sets, targets, blanks, summed batch vs branches, ICC, global labels."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nnunet_autoaug.regression.data import CaseImages, background_values, fit_to_shape, input_shape_for
from nnunet_autoaug.regression.hydra import (
    SetSumLoss,
    VirtualSets,
    assemble_batch,
    sample_flips,
    sample_virtual_sets,
    set_targets,
    sum_over_sets,
)
from nnunet_autoaug.regression.metrics import icc_absolute_agreement, icc_consistency, regression_metrics
from nnunet_autoaug.regression.network import RegressionNet
from nnunet_autoaug.regression.targets import (
    TARGET_VAR,
    TargetSpec,
    global_label,
    parse_target_spec,
    read_csv_targets,
    require_cases,
)
from nnunet_autoaug.settings import SettingsError

DATASET_JSON = {"labels": {"background": 0, "anterior": 1, "posterior": 2}, "file_ending": ".nii.gz"}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ set sampling
def test_sets_are_drawn_without_replacement_and_cover_cases_uniformly() -> None:
    sets = sample_virtual_sets(num_cases=6, num_sets=3000, set_size=4, blank_probability=0.1, generator=gen())
    assert sets.indices.shape == sets.blank.shape == (3000, 4) and sets.set_size == 4
    assert all(len(set(row)) == 4 for row in sets.indices.tolist())  # distinct inside every set
    counts = torch.bincount(sets.indices.reshape(-1), minlength=6).double()
    expected = 3000 * 4 / 6
    assert torch.all((counts - expected).abs() < 5 * expected ** 0.5)
    # reproducible from the generator, and the generator moves on
    g = gen(1)
    a, b = sample_virtual_sets(10, 5, 4, 0.1, g), sample_virtual_sets(10, 5, 4, 0.1, g)
    again = sample_virtual_sets(10, 5, 4, 0.1, gen(1))
    assert torch.equal(a.indices, again.indices) and torch.equal(a.blank, again.blank)
    assert not torch.equal(a.indices, b.indices)


def test_set_size_larger_than_the_training_set_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 4 training cases, there are 3"):
        sample_virtual_sets(3, 1, 4, 0.1, gen())
    with pytest.raises(ValueError, match="blank_probability"):
        sample_virtual_sets(5, 1, 4, 1.0, gen())


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_blank_probability(p: float) -> None:
    blank = sample_virtual_sets(20, 10000, 4, p, gen(2)).blank
    n = blank.numel()
    assert abs(blank.double().mean().item() - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-12
    if p > 0:  # members are blanked independently: whole-set blanks occur at about p ** 4
        assert abs(blank.all(dim=1).double().mean().item() - p ** 4) < 4 * (p ** 4 / 10000) ** 0.5 + 1e-3


def test_set_targets_are_sums_of_the_labels_that_were_not_blanked() -> None:
    targets = torch.tensor([1.0, 10.0, 100.0, 1000.0, 10000.0])
    sets = VirtualSets(torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1], [2, 0, 4, 1]]),
                       torch.tensor([[False, False, False, False], [True, False, True, False], [True] * 4]))
    assert set_targets(targets, sets).tolist() == [1111.0, 1010.0, 0.0]
    sampled = sample_virtual_sets(5, 50, 3, 0.3, gen(3))
    manual = [sum(targets[i].item() for i, b in zip(row, blank) if not b)
              for row, blank in zip(sampled.indices.tolist(), sampled.blank.tolist())]
    assert set_targets(targets, sampled).tolist() == manual


def test_assemble_batch_layout_blanks_and_flips() -> None:
    images = torch.arange(5 * 2 * 4 * 4 * 4, dtype=torch.float32).reshape(5, 2, 4, 4, 4)
    empty = torch.full((2, 4, 4, 4), -7.0)
    sets = VirtualSets(torch.tensor([[3, 1], [0, 4]]), torch.tensor([[False, True], [False, False]]))
    batch = assemble_batch(images, sets, empty)
    assert batch.shape == (4, 2, 4, 4, 4)
    assert torch.equal(batch[0], images[3]) and torch.equal(batch[1], empty)
    assert torch.equal(batch[2], images[0]) and torch.equal(batch[3], images[4])
    assert torch.equal(images[3], torch.arange(3 * 128, 4 * 128, dtype=torch.float32).reshape(2, 4, 4, 4))  # intact
    flips = torch.tensor([[True, False], [False, False], [False, True], [True, True]])
    flipped = assemble_batch(images, sets, empty, flips, axes=(0, 2))
    assert torch.equal(flipped[0], images[3].flip(1)) and torch.equal(flipped[1], empty)
    assert torch.equal(flipped[2], images[0].flip(3)) and torch.equal(flipped[3], images[4].flip(1).flip(3))
    assert sample_flips(1000, 3, gen()).double().mean().sub(0.5).abs() < 0.05


# ------------------------------------------------------------------------------ summed batch == replicated heads
def test_summed_batch_equals_replicated_shared_weight_branches() -> None:
    torch.manual_seed(0)
    net = RegressionNet(1, (4, 8))
    k, n = 3, 4
    images, targets = torch.randn(7, 1, 8, 8, 8), torch.rand(7) * 3
    sets = sample_virtual_sets(7, k, n, 0.3, gen(4))
    empty = torch.full((1, 8, 8, 8), -1.5)

    # (b) one network, k*n images in one batch, predictions summed per set inside the loss
    batch = assemble_batch(images, sets, empty)
    loss = SetSumLoss(n)(net(batch), set_targets(targets, sets))
    grads = torch.autograd.grad(loss, list(net.parameters()))

    # (a) the paper's picture: n replicated branches (weights shared), each given one member of every set
    branch_inputs = [torch.stack([empty if sets.blank[s, j] else images[sets.indices[s, j]] for s in range(k)])
                     for j in range(n)]
    summed = sum(net(x) for x in branch_inputs)
    reference = (((summed - set_targets(targets, sets)) / n) ** 2).mean()
    reference_grads = torch.autograd.grad(reference, list(net.parameters()))

    assert torch.allclose(sum_over_sets(net(batch), n), summed, atol=1e-5)
    assert torch.allclose(loss, reference, atol=1e-6)
    for g, r in zip(grads, reference_grads):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)

    # also with per-image normalisation; but a BatchNorm after each convolution mixes the members of a batch
    instance = RegressionNet(1, (4, 8), norm="instance")
    assert torch.allclose(sum_over_sets(instance(batch), n), sum(instance(x) for x in branch_inputs), atol=1e-5)
    bn = copy.deepcopy(net)
    for block in list(bn.encoder) + list(bn.decoder):
        for i in reversed([i for i, layer in enumerate(block) if isinstance(layer, torch.nn.Conv3d)]):
            block.insert(i + 1, torch.nn.BatchNorm3d(block[i].out_channels))
    assert not torch.allclose(sum_over_sets(bn(batch), n), sum(bn(x) for x in branch_inputs), atol=1e-3)


def bright_cubes(n: int, generator: torch.Generator, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy scans: background -1 (what an empty scan is after normalisation), one bright cube; label = its volume."""
    images, labels = torch.full((n, 1, size, size, size), -1.0), torch.zeros(n)
    for i in range(n):
        side = int(torch.randint(5, 10, (1,), generator=generator))
        x, y, z = torch.randint(0, size - side + 1, (3,), generator=generator).tolist()
        images[i, :, x:x + side, y:y + side, z:z + side] = 2.0
        labels[i] = side ** 3 / 100
    return images, labels


def test_trained_hydranet_predicts_about_zero_for_the_empty_image() -> None:
    """Blanked members add 0 to a set's target, so the only consistent value of f(empty) is 0: after training,
    f(empty) must be near 0 although no training image is empty (every label is at least 1.25 here)."""
    torch.manual_seed(0)
    g = gen(0)
    train_images, train_labels = bright_cubes(24, g)
    test_images, test_labels = bright_cubes(32, g)
    net, n = RegressionNet(1, (8, 16)), 4
    optimizer, loss_fn = torch.optim.Adam(net.parameters(), 1e-3), SetSumLoss(n)
    empty = torch.full((1, 16, 16, 16), -1.0)
    for _ in range(400):
        sets = sample_virtual_sets(len(train_images), 2, n, 0.1, g)
        loss = loss_fn(net(assemble_batch(train_images, sets, empty)), set_targets(train_labels, sets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predictions, f_empty = net(test_images), float(net(empty[None]))
    assert regression_metrics(predictions.numpy(), test_labels.numpy())["icc"] > 0.9
    assert abs(f_empty) < 0.15 * float(test_labels.mean()), f_empty  # the smallest label is 0.33 x the mean


def test_set_loss_is_per_image_scale_and_plain_mse_for_single_images() -> None:
    pred, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 5.0])
    assert torch.isclose(SetSumLoss(1)(pred, target), torch.nn.functional.mse_loss(pred, target))
    pred4 = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    expected = torch.tensor(((4 / 4) ** 2 + (2 / 4) ** 2) / 2)
    assert torch.isclose(SetSumLoss(4)(pred4, torch.tensor([0.0, 2.0])), expected)


def test_network_is_size_agnostic_and_has_no_output_activation() -> None:
    net = RegressionNet(2, (4, 8, 16), input_pool=2)
    assert net.divisor == 8
    assert net.init_kwargs == {"in_channels": 2, "features": (4, 8, 16), "input_pool": 2, "norm": None}
    with torch.no_grad():
        net.out.bias.fill_(-5.0)
        out = net(torch.randn(3, 2, 16, 24, 32))
    assert out.shape == (3,) and (out < 0).all()  # a linear output can go negative
    rebuilt = RegressionNet(**net.init_kwargs)
    rebuilt.load_state_dict(net.state_dict())


# ---------------------------------------------------------------------------------------------------- metrics
def test_icc_matches_shrout_and_fleiss_worked_example() -> None:
    # Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges
    table = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert round(icc_absolute_agreement(table), 2) == 0.29
    assert round(icc_consistency(table), 2) == 0.71


def test_absolute_agreement_penalises_bias_consistency_does_not() -> None:
    truth = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    perfect = regression_metrics(truth, truth)
    assert perfect["mse"] == 0 and perfect["icc"] == pytest.approx(1) and perfect["icc_consistency"] == pytest.approx(1)
    biased = regression_metrics(truth + 20, truth)
    assert biased["icc_consistency"] == pytest.approx(1) and biased["icc"] < 0.8
    assert biased["mse"] == pytest.approx(400) and biased["bias"] == pytest.approx(20)
    assert regression_metrics(np.zeros(5), truth)["icc"] == pytest.approx(0)  # constant prediction: no agreement


# ----------------------------------------------------------------------------------------------- global labels
def test_target_spec_parsing_and_errors(tmp_path, monkeypatch) -> None:
    assert parse_target_spec("volume:1", DATASET_JSON) == TargetSpec("volume", 1)
    assert parse_target_spec(" count:posterior ", DATASET_JSON) == TargetSpec("count", 2)
    assert str(TargetSpec("count", 2)) == "count:2"
    with pytest.raises(SettingsError, match=f"{TARGET_VAR} is not set.*volume:1 / count:1 \\(anterior\\)"):
        parse_target_spec(None, DATASET_JSON)
    with pytest.raises(SettingsError, match="'3' is not a foreground label"):
        parse_target_spec("volume:3", DATASET_JSON)
    with pytest.raises(SettingsError, match="'volume:0'.*not a foreground label"):
        parse_target_spec("volume:0", DATASET_JSON)
    with pytest.raises(SettingsError, match="neither 'volume:<label>' / 'count:<label>' nor an existing CSV"):
        parse_target_spec("area:1", DATASET_JSON)

    good = tmp_path / "good.csv"
    good.write_text("case,value,comment\ncase_a,1.5,x\ncase_b,-2,y\n")
    spec = parse_target_spec(str(good), DATASET_JSON)
    assert spec.kind == "csv" and read_csv_targets(spec.csv_path) == {"case_a": 1.5, "case_b": -2.0}
    with pytest.raises(SettingsError, match="no value for 1 of the dataset's 3 cases, e.g. \\['case_c'\\]"):
        require_cases(read_csv_targets(good), ["case_a", "case_b", "case_c"], str(good))
    for text, message in [("id,value\na,1\n", "columns case,value"), ("case,value\na,abc\n", "line 2.*'abc'"),
                          ("case,value\na,1\na,2\n", "line 3: case 'a' appears twice"),
                          ("case,value\na,nan\n", "not a finite number")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(SettingsError, match=message):
            parse_target_spec(str(bad), DATASET_JSON)


def test_volume_uses_spacing_and_count_uses_26_connectivity() -> None:
    seg = np.zeros((1, 6, 6, 6), dtype=np.uint8)
    seg[0, 0, 0, 0] = seg[0, 1, 1, 1] = 1  # touch only at a corner: one component
    seg[0, 4:6, 4:6, 4:6] = 1  # a second, separate component
    seg[0, 3, 0, 5] = 2
    assert global_label(seg, TargetSpec("count", 1), (1, 1, 1)) == 2
    assert global_label(seg, TargetSpec("volume", 1), (1.0, 0.5, 2.0)) == 10 * 1.0
    assert global_label(seg, TargetSpec("volume", 2), (3.0, 1.0, 1.0)) == 3.0
    assert global_label(seg, TargetSpec("count", 2), (1, 1, 1)) == 1


# ------------------------------------------------------------------------------------------ images, background
def test_fixed_input_size_centre_crop_pad_and_background() -> None:
    assert input_shape_for([(30, 41, 17), (33, 40, 20)], 4) == (36, 44, 20)
    image = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    fill = background_values(image, [False, True])
    assert fill.tolist() == [0.0, 0.0]  # channel 0: its minimum (0); channel 1 (min 60): mask-normalised -> 0
    fill = background_values(image + 5, [False, False])
    assert fill.tolist() == [5.0, 65.0]
    out = fit_to_shape(image, (5, 4, 3), np.array([-1.0, -2.0]))
    assert out.shape == (2, 5, 4, 3)
    assert (out[0, 0] == -1).all() and (out[1, 4] == -2).all()  # padded rows (one before, one after)
    assert np.array_equal(out[:, 1:4], image[:, :, :, 1:4])  # cropped axis keeps the centre
    cases = CaseImages(["a", "b", "c"], torch.zeros(3, 2, 4, 4, 4), np.array([[-3.0, 0.0], [-1.0, 0.0], [-2.0, 0.0]]))
    empty = cases.empty_image()
    assert empty.shape == (2, 4, 4, 4) and (empty[0] == -2).all() and (empty[1] == 0).all()
