"""Policies are frozen JSON data validated against their space; samplers are reproducible and respect the policy."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
from types import ModuleType
from typing import Callable

import numpy as np
import pytest
import torch

from nnunet_autoaug.augment import AugmentParams, augment_batch
from nnunet_autoaug.augment.params import FIELD_SPECS
from nnunet_autoaug.policy import (POLICY_FILE, PRESETS, SPACES, Extent, Policy, PolicyError, SamplingContext,
                                   make_generator, required_input_size, resolve_policy)
from nnunet_autoaug.policy.asng_space import ASNG_SPACE
from nnunet_autoaug.policy.asng_theta_space import ASNG_THETA_SPACE
from nnunet_autoaug.policy.draw import around_one
from nnunet_autoaug.policy.meta_space import META_SPACE
from nnunet_autoaug.policy.rl_space import RL_SPACE, SCALAR_OPS as RL_SCALAR_OPS

RL_NAMES = {field: op for op, (field, _, _) in RL_SCALAR_OPS.items()}


def asng_levels(**overrides: int) -> Policy:
    levels = {v: 5 for v in ASNG_SPACE.variables}
    levels.update(overrides)
    return Policy.create("asng", levels)


@pytest.mark.parametrize("space", sorted(SPACES))
def test_json_round_trip(space: str, tmp_path) -> None:
    policy = SPACES[space].random_policy(make_generator(1))
    policy.save(tmp_path / "p.json")
    assert Policy.load(tmp_path / "p.json") == policy
    assert Policy.loads(policy.dumps(), expected_space=space) == policy
    assert hash(policy) == hash(Policy.loads(policy.dumps()))  # frozen value


def test_asng_space_is_the_papers() -> None:
    assert len(ASNG_SPACE.variables) == 18 and ASNG_SPACE.levels == 11
    assert ASNG_SPACE.level_value("scale_lb", 1).item() == pytest.approx(0.55)
    assert ASNG_SPACE.level_value("rot_x_rb", 1).item() == pytest.approx(math.pi / 60)
    assert ASNG_SPACE.level_value("p_rot", 3).item() == pytest.approx(0.3)
    assert ASNG_SPACE.level_value("elastic_alpha_rb", 10).item() == pytest.approx(900)
    assert len(META_SPACE.variables) == 1 + 9 * 5


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["values"].update(bogus_op=1), "unknown field(s) ['bogus_op']"),
    (lambda d: d["values"].update(scale_lb=11), "'scale_lb' of space 'asng' is 11, outside the allowed range"),
    (lambda d: d["values"].update(p_rot=2.5), "'p_rot' of space 'asng' must be an integer level"),
    (lambda d: d["values"].pop("gamma_rb"), "missing field(s) ['gamma_rb']"),
    (lambda d: d.update(space="nope"), "unknown space 'nope'"),
    (lambda d: d.update(version=7), "field 'version' is 7"),
    (lambda d: d.update(extra=1), "unknown top-level field(s) ['extra']"),
])
def test_bad_policy_files_name_the_field(mutate, message: str, tmp_path) -> None:
    d = asng_levels().to_json_dict()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PolicyError) as err:
        Policy.load(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_wrong_space_missing_file_bad_json(tmp_path) -> None:
    (tmp_path / "a.json").write_text(asng_levels().dumps())
    with pytest.raises(PolicyError, match="needs a policy of space 'meta'"):
        Policy.load(tmp_path / "a.json", expected_space="meta")
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.load(tmp_path / "missing.json")
    # a results folder stands for the policy file a trainer wrote into it
    fold = tmp_path / "nnUNetTrainerASNG__nnUNetPlans__3d_fullres" / "fold_0"
    fold.mkdir(parents=True)
    with pytest.raises(PolicyError, match=f"folder '{fold}' holds no {POLICY_FILE}"):
        resolve_policy(str(fold))
    (fold / POLICY_FILE).write_text(asng_levels().dumps())
    assert resolve_policy(str(fold)) == Policy.load(fold / POLICY_FILE) == asng_levels()
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.load(tmp_path / "b.json")
    probs = {c: 0.0 for c in META_SPACE.variables}
    probs["identity"] = 0.5
    with pytest.raises(PolicyError, match="must sum to 1"):
        Policy.create("meta", probs)
    with pytest.raises(PolicyError, match="neither a preset"):
        resolve_policy("nnunet_defualt")


def test_same_generator_state_same_params_and_per_sample_rows() -> None:
    for space in SPACES.values():
        policy = space.random_policy(make_generator(3))
        a = space.sample([policy] * 6, make_generator(9))
        b = space.sample([policy] * 6, make_generator(9))
        c = space.sample([policy] * 6, make_generator(10))
        assert a.to_dict() == b.to_dict()
        assert a.to_dict() != c.to_dict()
        assert len(set(a.seed.tolist())) == 6  # every sample gets its own noise stream


def _first_draw(queue: mp.Queue) -> None:
    queue.put(torch.rand(4, generator=make_generator()).tolist())


def test_unseeded_generators_differ_between_forked_workers() -> None:
    # generators made inside each worker must not repeat each other (torch's global RNG does under fork)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_first_draw, args=(queue,)) for _ in range(3)]
    for w in workers:
        w.start()
    draws = [tuple(queue.get(timeout=60)) for _ in workers]
    for w in workers:
        w.join()
    assert len(set(draws)) == 3


def test_asng_probabilities_and_intervals_are_respected() -> None:
    g = make_generator(0)
    off = ASNG_SPACE.sample([asng_levels(p_scale=0, p_rot=0, p_eldef=0, p_gamma=0)] * 200, g)
    for name in ("scale", "rotation", "elastic_alpha", "gamma"):
        assert off.is_identity(name).all()
    on = ASNG_SPACE.sample([asng_levels(p_scale=10, p_rot=10, p_eldef=10, p_gamma=10, scale_lb=2, scale_rb=6,
                                        rot_y_lb=0, rot_y_rb=10)] * 400, g)
    assert (on.scale[:, 0] >= 0.6 - 1e-6).all() and (on.scale[:, 0] <= 1.3 + 1e-6).all()
    assert (on.scale == on.scale[:, :1]).all()  # isotropic
    assert (on.rotation[:, 1] >= -math.pi / 6 - 1e-6).all() and (on.rotation[:, 1] <= math.pi / 6 + 1e-6).all()
    assert (on.elastic_alpha > 0).all() and (on.gamma != 1).all()
    half = ASNG_SPACE.sample([asng_levels(p_rot=5)] * 4000, g)
    assert abs((~half.is_identity("rotation")).float().mean().item() - 0.5) < 0.04
    assert abs(half.mirror[:, 2].mean().item() - 0.5) < 0.04  # mirroring always on, p 0.5 per axis


def test_around_one_is_nnunets_fifty_fifty_rule() -> None:
    x = around_one(0.5, 1.5, 20000, make_generator(0))
    assert abs((x < 1).float().mean().item() - 0.5) < 0.02
    # uniform on (0.7, 1.5) would put only 37.5% below 1; the rule puts half there
    y = around_one(0.7, 1.5, 20000, make_generator(1))
    assert abs((y < 1).float().mean().item() - 0.5) < 0.02 and y.min() >= 0.7 and y.max() <= 1.5
    z = around_one(1.1, 1.3, 1000, make_generator(2))
    assert (z >= 1.1).all() and (z <= 1.3).all()


def test_nnunet_default_preset_matches_nnunet_probabilities() -> None:
    policy = PRESETS["nnunet_default"]
    params = RL_SPACE.sample([policy] * 8000, make_generator(0), SamplingContext(mirror_axes=(0, 1, 2)))
    applied = lambda name: (~params.is_identity(name)).float().mean().item()  # noqa: E731
    assert applied("rotation") == pytest.approx(0.2, abs=0.02)
    assert applied("scale") == pytest.approx(0.2, abs=0.02)
    assert applied("gamma") == pytest.approx(0.3, abs=0.02)
    assert applied("noise_std") == pytest.approx(0.1, abs=0.015)
    assert applied("elastic_alpha") == 0
    assert params.rotation.abs().max() <= math.radians(30) + 1e-6
    assert params.mirror.mean().item() == pytest.approx(0.5, abs=0.02)
    assert not PRESETS["none"].search_space.extent(PRESETS["none"]).mirrors


PER_CHANNEL_FIELDS = ("blur_sigma", "brightness", "contrast", "lowres", "inv_gamma", "gamma")


def test_multi_channel_images_draw_nnunets_per_channel_ops_per_channel() -> None:
    policy = PRESETS["nnunet_default"]
    one = RL_SPACE.sample([policy] * 8000, make_generator(0), SamplingContext(channels=1))
    assert all(getattr(one, name).shape == (8000,) for name in PER_CHANNEL_FIELDS)  # one channel: one per sample
    three = RL_SPACE.sample([policy] * 8000, make_generator(0), SamplingContext(channels=3))
    for name in PER_CHANNEL_FIELDS:
        values, ident, p = getattr(three, name), FIELD_SPECS[name][0], policy[RL_NAMES[name]]
        changed = values != ident
        assert values.shape == (8000, 3)
        assert changed.float().mean().item() == pytest.approx(p, abs=0.015)  # each channel with the policy's p
        both = changed[:, 0] & changed[:, 1]
        assert (values[both, 0] != values[both, 1]).all()  # its own value in the op's range
        assert abs(np.corrcoef(values[both, 0], values[both, 1])[0, 1]) < 0.15
        # nnU-Net's two stages: the sample with p / p_per_channel, then each of its channels with p_per_channel
        p_per_channel = {"blur_sigma": 0.5, "lowres": 0.5}.get(name, 1.0)
        assert changed.any(1).float().mean().item() == pytest.approx(p * (1 - (1 - p_per_channel) ** 3) /
                                                                     p_per_channel, abs=0.015)
    lo, hi = RL_SCALAR_OPS["brightness"][2]
    assert three.brightness.min() >= lo and three.brightness.max() <= hi
    for name in ("noise_std", "shift", "sharpen"):  # nnU-Net shares the noise std across channels
        assert getattr(three, name).shape == (8000,)

    gamma = ASNG_SPACE.sample([asng_levels(p_gamma=10, gamma_lb=0, gamma_rb=10)] * 500, make_generator(1),
                              SamplingContext(channels=2)).gamma
    assert gamma.shape == (500, 2) and (gamma[:, 0] != gamma[:, 1]).all()
    assert gamma.min() >= 0.5 and gamma.max() <= 1.5


def test_meta_space_choices_apply_one_op_per_sample() -> None:
    probs = torch.zeros(len(META_SPACE.variables))
    probs[META_SPACE.variables.index("rot_y:2")] = 1.0
    policy = META_SPACE.policy_from_probabilities(probs)
    params = META_SPACE.sample([policy] * 100, make_generator(0))
    angles = params.rotation[:, 1].abs().rad2deg()
    assert ((angles >= 20 - 1e-4) & (angles <= 30 + 1e-4)).all()
    assert params.rotation[:, [0, 2]].eq(0).all() and params.is_identity("scale").all()
    assert META_SPACE.extent(policy).max_rotation == pytest.approx((0.0, math.radians(30), 0.0))


@pytest.mark.parametrize("patch, extent, dummy_2d, expected", [
    ((32, 32, 32), Extent((0.0, 0.0, 0.0), 1.0), False, (32, 32, 32)),
    ((32, 32), Extent((math.pi / 4, 0.0, 0.0), 1.0), False, (46, 46)),  # 31 * sqrt(2) + 1 = 44.8 -> parity 46
    ((32, 32, 32), Extent((0.0, 0.0, 0.0), 1.5), False, (48, 48, 48)),  # 31 * 1.5 + 1 = 47.5 -> 48
    ((8, 32, 32), Extent((math.pi / 4, 0.5, 0.5), 1.0), True, (8, 46, 46)),  # dummy 2D: axis 0 untouched
])
def test_required_input_size_known_values(patch, extent, dummy_2d, expected) -> None:
    assert required_input_size(patch, extent, dummy_2d) == expected


@pytest.mark.parametrize("space", sorted(SPACES))
def test_crop_from_space_extent_never_samples_outside(space: str) -> None:
    # the crop sized from the space's extent must contain every rotated/scaled patch: no padding label appears
    s, patch = SPACES[space], (24, 24, 24)
    size = required_input_size(patch, s.extent(None))
    g = make_generator(5)
    worst = s.sample([s.random_policy(g) for _ in range(16)], g)
    rot = s.extent(None).max_rotation
    worst = worst.with_values(rotation=torch.tensor(rot).repeat(16, 1) * torch.where(torch.rand(16, 3) < 0.5, -1, 1),
                              scale=torch.full((16, 3), s.extent(None).max_scale),
                              elastic_alpha=torch.zeros(16))
    seg = torch.zeros((16, 1, *size), dtype=torch.int16)
    _, out = augment_batch(torch.zeros((16, 1, *size)), seg, worst, patch, label_interpolation="nearest")
    assert (out >= 0).all()
    # and the bound is not loose: a crop 15% smaller does sample outside
    cut = [(v - int(0.85 * v)) // 2 for v in size]
    smaller = seg[..., cut[0]:size[0] - cut[0], cut[1]:size[1] - cut[1], cut[2]:size[2] - cut[2]]
    _, out = augment_batch(torch.zeros(smaller.shape), smaller, worst, patch, label_interpolation="nearest")
    assert (out < 0).any()


def test_identity_params_roundtrip_dict() -> None:
    p = AugmentParams.identity(3, make_generator(0))
    assert AugmentParams.from_dict(json.loads(json.dumps(p.to_dict()))).to_dict() == p.to_dict()


def test_show_policy_prints_a_folders_policy_and_names_a_bad_file(tmp_path, capsys) -> None:
    from nnunet_autoaug.cli import show_policy

    (tmp_path / POLICY_FILE).write_text(asng_levels().dumps())
    show_policy([str(tmp_path)])
    out = capsys.readouterr().out
    assert Policy.loads(out[:out.index("summary:")]) == asng_levels()
    assert f"summary: {ASNG_SPACE.summary(asng_levels())}" in out
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(SystemExit) as exit_:
        show_policy([str(tmp_path / "bad.json")])
    assert exit_.value.code == 2 and "invalid policy:" in capsys.readouterr().err


def test_per_channel_draws_match_nnunets_own_pipeline(load_script: Callable[[str], ModuleType]) -> None:
    """scripts/channel_draws.py draws with the transforms of nnU-Net's training pipeline and with nnunet_default."""
    channel_draws = load_script("channel_draws.py")
    result = channel_draws.compare(4000, 2, 0)
    nnunet, ours, before = (result[side] for side in ("nnU-Net 2.8 pipeline", "ours, per channel",
                                                      "ours before (shared)"))
    for field in channel_draws.FIELDS:
        # sampling noise: about 0.006 for the shares, 0.02 for the conditional one (fewer samples)
        for column, tolerance in (("samples", 0.025), ("channels", 0.025), ("all channels, given the sample", 0.08)):
            assert ours[field][column] == pytest.approx(nnunet[field][column], abs=tolerance), (field, column)
        assert ours[field]["values differ, given both"] == nnunet[field]["values differ, given both"] == 1.0
        assert abs(ours[field]["correlation, given both"]) < 0.15 and before[field]["values differ, given both"] == 0
    # blur and low resolution skip each channel of a chosen sample with p 0.5 (nnU-Net's p_per_channel)
    for field in ("blur_sigma", "lowres"):
        assert ours[field]["all channels, given the sample"] < 0.5 < before[field]["all channels, given the sample"]


def test_asng_theta_policies_draw_each_variable_from_its_row_of_theta() -> None:
    theta = np.full((18, 11), 0.0)
    theta[:, 5] = 1.0  # every variable at its middle level ...
    rows = {v: i for i, v in enumerate(ASNG_SPACE.variables)}
    theta[rows["p_rot"]] = 0.0
    theta[rows["p_rot"], [0, 10]] = [0.25, 0.75]  # ... except the rotation probability: 0 or 1
    policy = ASNG_THETA_SPACE.policy_from_theta(theta)
    drawn = ASNG_THETA_SPACE.draw_policies([policy] * 4000, make_generator(0))
    assert {p["p_scale"] for p in drawn} == {5.0}
    assert np.mean([p["p_rot"] == 10 for p in drawn]) == pytest.approx(0.75, abs=0.03)
    assert ASNG_THETA_SPACE.most_likely(policy) == asng_levels(p_rot=10)
    params = ASNG_THETA_SPACE.sample([policy] * 4000, make_generator(1))
    rotated = (params.rotation != 0).any(dim=1).float().mean().item()
    assert rotated == pytest.approx(0.75, abs=0.03)  # p_rot drawn per sample, then the coin of that policy
    # the crop holds the widest policy theta can draw: every variable at level 5, p_rot at 10
    assert ASNG_THETA_SPACE.extent(policy) == ASNG_SPACE.extent(asng_levels(p_rot=10))
    widest, space = ASNG_THETA_SPACE.extent(ASNG_THETA_SPACE.policy_from_theta(np.full((18, 11), 1 / 11))), \
        ASNG_SPACE.extent(None)
    assert widest.max_rotation == pytest.approx(space.max_rotation) and widest.max_scale == space.max_scale


def test_asng_theta_policy_rows_must_sum_to_one(tmp_path) -> None:
    d = ASNG_THETA_SPACE.policy_from_theta(np.full((18, 11), 1 / 11)).to_json_dict()
    d["values"]["gamma_rb:3"] += 0.5
    (tmp_path / "theta.json").write_text(json.dumps(d))
    with pytest.raises(PolicyError, match=r"levels of 'gamma_rb' \(fields 'gamma_rb:0' to 'gamma_rb:10'\) must sum "
                                          r"to 1, got 1\.500000"):
        Policy.load(tmp_path / "theta.json")
    with pytest.raises(PolicyError, match=r"theta must have shape \(18, 11\), got \(18, 10\)"):
        ASNG_THETA_SPACE.policy_from_theta(np.ones((18, 10)))
