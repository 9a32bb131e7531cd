"""Intensity ops of the augmentation engine against scipy / numpy references and nnU-Net's bgv2 transforms."""
import math

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from scipy.ndimage import gaussian_filter

from nnunet_autoaug.augment import AugmentParams, augment_batch
from nnunet_autoaug.augment import intensity
from nnunet_autoaug.augment.engine import NOISE_SEED_OFFSET
from nnunet_autoaug.augment.params import FIELD_SPECS, INTENSITY_FIELDS

torch.set_num_threads(2)
SHAPES = [(2, 12, 14, 16), (2, 20, 18)]  # (C, *spatial): 3D and 2D samples
WITH_DUMMY_2D = [(SHAPES[0], False), (SHAPES[0], True), (SHAPES[1], False)]  # dummy 2D exists for 3D data only
# a non-identity value per op, exactly representable in float32 so bgv2 and the engine see the same number
VALUES = {"noise_std": 0.25, "blur_sigma": 1.5, "sharpen": 0.75, "brightness": 1.25, "shift": -0.5,
          "contrast": 1.5, "lowres": 0.5, "inv_gamma": 1.5, "gamma": 0.625}


def images(n: int, shape, seed: int = 0) -> torch.Tensor:
    """Noise with a different mean per sample and channel, so per-channel statistics matter."""
    g = torch.Generator().manual_seed(seed)
    means = torch.arange(n * shape[0], dtype=torch.float32).view(n, shape[0], *[1] * (len(shape) - 1))
    return torch.randn((n, *shape), generator=g) * 2 + means


def values(n: int, value: float) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.float32)


def scipy_blur(x: torch.Tensor, sigma: float, skip_axis0: bool = False) -> np.ndarray:
    """Per channel, replicate ('nearest') padding, radius ceil(3 sigma)."""
    sigmas = [0.0 if skip_axis0 and a == 0 else sigma for a in range(x.ndim - 1)]
    truncate = math.ceil(3 * sigma) / sigma
    return np.stack([gaussian_filter(c.double().numpy(), sigmas, mode="nearest", truncate=truncate) for c in x])


@pytest.mark.parametrize("shape", SHAPES)
def test_noise_uses_the_noise_stream_of_each_sample(shape):
    x, seeds = images(2, shape), torch.tensor([3, 2 ** 62 - 5])
    out = intensity.gaussian_noise(x, torch.tensor([0.5, 2.0]), seeds + NOISE_SEED_OFFSET)
    for i in range(2):
        g = torch.Generator().manual_seed(int(seeds[i]) + NOISE_SEED_OFFSET)
        assert torch.allclose(out[i], x[i] + [0.5, 2.0][i] * torch.randn(x.shape[1:], generator=g))
    assert not torch.allclose(out[0, 0] - x[0, 0], out[0, 1] - x[0, 1])  # independent per channel


@pytest.mark.parametrize("shape,dummy_2d", WITH_DUMMY_2D)
def test_blur_and_sharpen_match_scipy(shape, dummy_2d):
    x = images(2, shape)
    sigma, strength = torch.tensor([0.7, 1.5]), torch.tensor([0.5, 2.0])
    blurred = intensity.gaussian_blur(x, sigma, dummy_2d)
    sharpened = intensity.sharpen(x, strength, dummy_2d)
    for i in range(2):
        expected = scipy_blur(x[i], float(sigma[i]), dummy_2d)
        assert np.allclose(blurred[i].numpy(), expected, atol=1e-5)
        unsharp = x[i].numpy() + float(strength[i]) * (x[i].numpy() - scipy_blur(x[i], 1.0, dummy_2d))
        assert np.allclose(sharpened[i].numpy(), unsharp, atol=1e-4)


def test_brightness_and_shift():
    x = images(2, SHAPES[0])
    assert torch.allclose(intensity.brightness(x, torch.tensor([2.0, 0.5])),
                          x * torch.tensor([2.0, 0.5]).view(2, 1, 1, 1, 1))
    assert torch.allclose(intensity.shift(x, torch.tensor([2.0, -0.5])),
                          x + torch.tensor([2.0, -0.5]).view(2, 1, 1, 1, 1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factor", [0.5, 1.75])
def test_contrast_matches_bgv2(shape, factor):
    x = images(3, shape)
    out = intensity.contrast(x, values(3, factor))
    for i in range(3):
        ref = ContrastTransform(factor, preserve_range=True, synchronize_channels=True)(image=x[i].clone())["image"]
        assert torch.allclose(out[i], ref, atol=1e-5)
        xi = x[i].flatten(1).numpy()
        mean, low, high = xi.mean(1, keepdims=True), xi.min(1, keepdims=True), xi.max(1, keepdims=True)
        assert np.allclose(out[i].flatten(1).numpy(), np.clip((xi - mean) * factor + mean, low, high), atol=1e-5)


@pytest.mark.parametrize("shape,dummy_2d", WITH_DUMMY_2D)
@pytest.mark.parametrize("zoom", [0.5, 0.375, 0.8])
def test_lowres_matches_bgv2(shape, zoom, dummy_2d):
    x = images(2, shape)
    out = intensity.simulate_lowres(x, values(2, zoom), dummy_2d)
    ref_t = SimulateLowResolutionTransform(zoom, synchronize_channels=True, synchronize_axes=True,
                                           ignore_axes=(0,) if dummy_2d else None)
    for i in range(2):
        assert torch.allclose(out[i], ref_t(image=x[i].clone())["image"], atol=1e-6)
    assert not torch.allclose(out, x, atol=1e-2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("g", [0.625, 1.5])
def test_gamma_and_inverted_gamma_match_bgv2(shape, g):
    x = images(2, shape)
    for op, invert in ((intensity.gamma, 0), (intensity.inv_gamma, 1)):
        out = op(x, values(2, g))
        for i in range(2):
            ref = GammaTransform(g, p_invert_image=invert, synchronize_channels=True, p_per_channel=1,
                                 p_retain_stats=1)(image=x[i].clone())["image"]
            assert torch.allclose(out[i], ref, atol=1e-5)
        # retained statistics are part of the contract
        assert torch.allclose(out.flatten(2).mean(-1), x.flatten(2).mean(-1), atol=1e-4)
        assert torch.allclose(out.flatten(2).std(-1), x.flatten(2).std(-1), atol=1e-4)


def test_gamma_numpy_reference():
    x = images(1, SHAPES[1])[0, 0].double().numpy()
    low, rng = x.min(), x.max() - x.min()
    y = ((x - low) / rng) ** 1.5 * rng + low
    y = (y - y.mean()) / y.std(ddof=1) * x.std(ddof=1) + x.mean()
    out = intensity.gamma(torch.from_numpy(x)[None, None].float(), values(1, 1.5))
    assert np.allclose(out[0, 0].numpy(), y, atol=1e-4)


@pytest.mark.parametrize("name", INTENSITY_FIELDS)
def test_engine_touches_only_selected_samples(name):
    data = images(3, (2, 26, 26, 26))
    params = AugmentParams.identity(3, torch.Generator().manual_seed(0))
    field = getattr(params, name).clone()
    field[1] = VALUES[name]
    out, _ = augment_batch(data, None, params.with_values(**{name: field}), (20, 20, 20))
    crop = data[:, :, 3:23, 3:23, 3:23]
    assert torch.equal(out[0], crop[0]) and torch.equal(out[2], crop[2])
    expected = intensity.INTENSITY_OPS[name](crop[1:2].clone(), field[1:2], params.seed[1:2] + NOISE_SEED_OFFSET,
                                             False)
    assert torch.equal(out[1:2], expected)
    assert not torch.allclose(out[1], crop[1], atol=1e-3)


def test_engine_applies_ops_in_field_order():
    data = images(1, (1, 24, 24, 24))
    params = AugmentParams.identity(1).with_values(brightness=values(1, 2.0), shift=values(1, 3.0))
    out, _ = augment_batch(data, None, params, (24, 24, 24))
    assert torch.allclose(out, data * 2 + 3)  # brightness before shift, as in FIELD_SPECS


@pytest.mark.parametrize("name", [f for f in INTENSITY_FIELDS if f != "noise_std"])
@pytest.mark.parametrize("shape, dummy_2d", WITH_DUMMY_2D)
def test_per_channel_values_act_on_their_channel_alone(name, shape, dummy_2d):
    """(n, C) values: channel c is what the op makes of channel c with its own value; a channel left at the
    identity keeps its values (up to rounding where the op still runs: contrast and gamma at 1 renormalise).
    nnU-Net draws brightness, contrast, gamma, blur and low resolution per channel."""
    x = images(2, (3, *shape[1:]))
    ident = FIELD_SPECS[name][0]
    per_channel = torch.tensor([[VALUES[name], ident, 0.5 * (VALUES[name] + ident)],
                                [ident, VALUES[name], VALUES[name]]])
    op = intensity.INTENSITY_OPS[name]
    out = op(x.clone(), per_channel, torch.tensor([1, 2]), dummy_2d)
    for c in range(3):
        for i in range(2):
            if per_channel[i, c] == ident:
                assert torch.allclose(out[i, c], x[i, c], atol=1e-4)
            else:
                alone = op(x[i:i + 1, c:c + 1].clone(), per_channel[i:i + 1, c], torch.tensor([1]), dummy_2d)
                assert torch.allclose(out[i, c], alone[0, 0], atol=1e-5), (name, i, c)
    with pytest.raises(ValueError, match="2 per-channel values for an image of 3 channels"):
        op(x.clone(), per_channel[:, :2], torch.tensor([1, 2]), dummy_2d)


def test_per_channel_fields_are_validated_and_count_as_applied_when_any_channel_is():
    params = AugmentParams.identity(2)
    gamma = torch.ones(2, 3)
    gamma[1, 2] = 1.5
    assert params.with_values(gamma=gamma).is_identity("gamma").tolist() == [True, False]
    with pytest.raises(ValueError, match=r"AugmentParams.gamma has shape \(3, 3\), expected \(n, C\) or \(2,\)"):
        params.with_values(gamma=torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"AugmentParams.scale has shape \(2, 4\), expected \(2, 3\)"):
        params.with_values(scale=torch.ones(2, 4))
