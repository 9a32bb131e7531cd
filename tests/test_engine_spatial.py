"""Spatial pass of the augmentation engine: geometry conventions, label integrity, determinism, devices."""
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from nnunet_autoaug.augment import ELASTIC_MIN_SIGMA, AugmentParams, augment_batch
from nnunet_autoaug.augment.spatial import elastic_displacement, rotation_matrix

torch.set_num_threads(2)
LABELS = (0, 1, 2, 5)  # 5 stands in for an ignore label: arbitrary values must survive


def make_params(batch_size: int, seed: int = 0, **values) -> AugmentParams:
    """Identity params with some fields overridden (scalars and single rows are broadcast to the batch)."""
    params = AugmentParams.identity(batch_size, torch.Generator().manual_seed(seed))
    changes = {}
    for name, value in values.items():
        ident = getattr(params, name)
        changes[name] = torch.as_tensor(value, dtype=torch.float32).expand_as(ident).clone()
    return params.with_values(**changes)


def random_batch(batch_size: int, shape, channels: int = 2, seed: int = 0):
    """Smooth-ish image and a blocky label map with values LABELS and a -1 padded border region."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn((batch_size, channels, *shape), generator=g)
    coarse = torch.randint(0, len(LABELS), (batch_size, 1, *[max(s // 6, 1) for s in shape]), generator=g)
    idx = torch.nn.functional.interpolate(coarse.float(), size=tuple(shape), mode="nearest").long()
    seg = torch.tensor(LABELS, dtype=torch.float32)[idx]
    seg[(slice(None), slice(None), slice(0, 3))] = -1  # nnU-Net pads crops outside the image with -1
    return data, seg


def random_spatial_params(batch_size: int, seed: int = 0) -> AugmentParams:
    g = torch.Generator().manual_seed(seed)
    return make_params(batch_size, seed=seed,
                       rotation=(torch.rand((batch_size, 3), generator=g) - 0.5) * 2 * math.pi,
                       scale=0.7 + 0.6 * torch.rand((batch_size, 3), generator=g),
                       elastic_alpha=torch.full((batch_size,), 8.0), elastic_sigma=torch.full((batch_size,), 6.0),
                       mirror=(torch.rand((batch_size, 3), generator=g) < 0.5).float())


def centre(x: torch.Tensor, out) -> torch.Tensor:
    return x[(..., *(slice((i - o) // 2, (i - o) // 2 + o) for i, o in zip(x.shape[2:], out)))]


@pytest.mark.parametrize("in_shape,out", [((30, 33, 28), (24, 24, 24)), ((31, 40), (24, 30))])
def test_identity_is_exact_centre_crop(in_shape, out):
    data, seg = random_batch(3, in_shape)
    out_data, out_seg = augment_batch(data, seg, make_params(3), out)
    assert torch.equal(out_data, centre(data, out))
    assert torch.equal(out_seg, centre(seg, out))


def test_mirror_is_flip_of_centre_crop():
    data, seg = random_batch(3, (28, 30, 32))
    mirror = torch.tensor([[1.0, 0, 0], [0, 1, 1], [1, 1, 1]])
    out_data, out_seg = augment_batch(data, seg, make_params(3, mirror=mirror), (24, 24, 24))
    for i, row in enumerate(mirror):
        dims = [a + 1 for a in range(3) if row[a]]
        assert torch.equal(out_data[i], centre(data, (24,) * 3)[i].flip(dims))
        assert torch.equal(out_seg[i], centre(seg, (24,) * 3)[i].flip(dims))


# +90 degrees about axis k in voxel-index space, pinned as torch.rot90 (k_rot, dims) of a (C, X, Y, Z) sample
ROT90 = {0: (-1, (2, 3)), 1: (1, (1, 3)), 2: (-1, (1, 2))}


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("label_interpolation", ["linear", "nearest"])
def test_rotation_90_matches_rot90(axis, label_interpolation):
    data, seg = random_batch(2, (20, 20, 20))
    rotation = torch.zeros(3)
    rotation[axis] = math.pi / 2
    out_data, out_seg = augment_batch(data, seg, make_params(2, rotation=rotation), (20, 20, 20),
                                      label_interpolation=label_interpolation)
    k, dims = ROT90[axis]
    for i in range(2):
        assert torch.allclose(out_data[i], torch.rot90(data[i], k, dims), atol=1e-4)
        assert torch.equal(out_seg[i], torch.rot90(seg[i], k, dims))


def test_rotation_matrix_composes_r0_r1_r2():
    a = torch.tensor([0.3, -1.1, 2.0])
    c, s = a.cos(), a.sin()
    r0 = torch.tensor([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    r1 = torch.tensor([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    r2 = torch.tensor([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    assert torch.allclose(rotation_matrix(a[None])[0], r0 @ r1 @ r2, atol=1e-6)
    assert torch.allclose(rotation_matrix(a[:1])[0], torch.tensor([[c[0], -s[0]], [s[0], c[0]]]))


def test_scale_on_linear_ramp():
    in_shape, out = (40, 36, 38), (24, 24, 24)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in in_shape], indexing="ij")
    data = torch.stack(grids)[None]  # channel a = voxel index along axis a
    scale = torch.tensor([1.3, 0.8, 1.2])
    out_data, _ = augment_batch(data, None, make_params(1, scale=scale), out)
    for a in range(3):
        c = (out[a] - 1) / 2
        expected = (in_shape[a] - out[a]) // 2 + c + scale[a] * (torch.arange(out[a]) - c)
        view = [1, 1, 1]
        view[a] = -1
        assert torch.allclose(out_data[0, a], expected.view(view).expand(out), atol=1e-3)


@pytest.mark.parametrize("label_interpolation", ["linear", "nearest"])
def test_labels_keep_their_values(label_interpolation):
    data, seg = random_batch(4, (36, 36, 36))
    params = random_spatial_params(4)
    _, out_seg = augment_batch(data, seg, params, (28, 28, 28), label_interpolation=label_interpolation)
    assert set(out_seg.unique().tolist()) <= set(LABELS) | {-1}
    assert set(out_seg.unique().tolist()) >= set(LABELS)
    # zooming out of a patch with no margin samples outside the input: those voxels must be -1
    zoom_out = params.with_values(scale=torch.full((4, 3), 1.6))
    _, out_seg = augment_batch(data, seg, zoom_out, (36, 36, 36), label_interpolation=label_interpolation)
    assert (out_seg[:, :, 0, 0, 0] == -1).all()
    assert set(out_seg.unique().tolist()) <= set(LABELS) | {-1}


def test_linear_and_nearest_labels_agree_almost_everywhere():
    data, seg = random_batch(2, (36, 36, 36))
    params = random_spatial_params(2, seed=3)
    _, linear = augment_batch(data, seg, params, (28, 28, 28))
    _, nearest = augment_batch(data, seg, params, (28, 28, 28), label_interpolation="nearest")
    assert (linear == nearest).float().mean() > 0.9


def test_integer_label_dtype_is_kept():
    data, seg = random_batch(2, (30, 30, 30))
    _, out_seg = augment_batch(data, seg.to(torch.int16), random_spatial_params(2), (24, 24, 24))
    assert out_seg.dtype == torch.int16
    assert set(out_seg.unique().tolist()) <= set(LABELS) | {-1}


def test_reproducible_and_seeded():
    data, seg = random_batch(2, (32, 32, 32))
    params = random_spatial_params(2)
    first = augment_batch(data, seg, params, (24, 24, 24))
    second = augment_batch(data, seg, params, (24, 24, 24))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    reseeded = params.with_values(seed=params.seed + 7)
    assert not torch.allclose(augment_batch(data, seg, reseeded, (24, 24, 24))[0], first[0])
    # without elastic deformation the seed must not matter
    rigid = params.with_values(elastic_alpha=torch.zeros(2))
    assert torch.equal(augment_batch(data, seg, rigid, (24, 24, 24))[0],
                       augment_batch(data, seg, rigid.with_values(seed=params.seed + 7), (24, 24, 24))[0])


def test_elastic_sigma_is_clamped():
    data, seg = random_batch(1, (30, 30, 30))
    params = random_spatial_params(1)
    clamped = augment_batch(data, seg, params.with_values(elastic_sigma=torch.tensor([0.5])), (24, 24, 24))[0]
    at_min = augment_batch(data, seg, params.with_values(elastic_sigma=torch.tensor([ELASTIC_MIN_SIGMA])),
                           (24, 24, 24))[0]
    assert torch.equal(clamped, at_min)
    unclamped = augment_batch(data, seg, params.with_values(elastic_sigma=torch.tensor([0.5])), (24, 24, 24),
                              min_elastic_sigma=0.0)[0]
    assert not torch.allclose(unclamped, at_min)


def test_samples_are_independent_of_the_batch():
    data, seg = random_batch(4, (32, 32, 32))
    params = random_spatial_params(4).with_values(rotation=torch.tensor([[0.3, 0, 0], [0, 0, 0]] * 2),
                                                  elastic_alpha=torch.tensor([8.0, 0, 0, 4]),
                                                  scale=torch.tensor([[1.0] * 3, [1.0] * 3, [1.1] * 3, [1.0] * 3]))
    out_data, out_seg = augment_batch(data, seg, params, (24, 24, 24))
    for i in range(4):
        one_data, one_seg = augment_batch(data[i:i + 1], seg[i:i + 1], params.select(torch.tensor([i])), (24, 24, 24))
        assert torch.allclose(one_data, out_data[i:i + 1], atol=1e-6)
        assert torch.equal(one_seg, out_seg[i:i + 1])


def test_2d_shapes_and_rotation():
    data, seg = random_batch(3, (36, 40))
    out_data, out_seg = augment_batch(data, seg, random_spatial_params(3), (32, 32))
    assert out_data.shape == (3, 2, 32, 32) and out_seg.shape == (3, 1, 32, 32)
    assert set(out_seg.unique().tolist()) <= set(LABELS) | {-1}
    data, seg = random_batch(2, (24, 24))
    rotation = torch.tensor([math.pi / 2, 1.0, 1.0])  # angles about axes 1 and 2 do not exist in 2D
    out_data, out_seg = augment_batch(data, seg, make_params(2, rotation=rotation), (24, 24))
    assert torch.allclose(out_data, torch.rot90(data, -1, (2, 3)), atol=1e-4)
    assert torch.equal(out_seg, torch.rot90(seg, -1, (2, 3)))


def test_dummy_2d_ignores_out_of_plane_ops_and_keeps_slices_apart():
    data, seg = random_batch(2, (10, 36, 36))
    params = random_spatial_params(2).with_values(mirror=torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    out = (6, 28, 28)
    ref_data, ref_seg = augment_batch(data, seg, params, out, dummy_2d=True)
    ignored = params.with_values(rotation=params.rotation * torch.tensor([1.0, 5.0, -3.0]),
                                 scale=params.scale * torch.tensor([1.7, 1.0, 1.0]))
    other_data, other_seg = augment_batch(data, seg, ignored, out, dummy_2d=True)
    assert torch.equal(other_data, ref_data) and torch.equal(other_seg, ref_seg)
    # perturb input slice 4 (output slice 2 after the offset of 2; sample 0 is mirrored along axis 0 -> slice 3)
    changed = data.clone()
    changed[:, :, 4] += 10
    new_data, _ = augment_batch(changed, seg, params, out, dummy_2d=True)
    differs = (new_data != ref_data).flatten(3).any(-1).any(1)  # (B, slices)
    assert differs.tolist() == [[s == 3 for s in range(6)], [s == 2 for s in range(6)]]


def test_elastic_coarse_field_matches_exact_statistics():
    for shape, sigma, n in [((40, 40, 40), 5.0, 6), ((128, 128), 5.0, 8), ((128, 128), 10.0, 8)]:
        coarse = torch.stack([elastic_displacement(shape, 1.0, sigma, torch.Generator().manual_seed(i), "cpu")
                              for i in range(n)])
        exact = torch.stack([elastic_displacement(shape, 1.0, sigma, torch.Generator().manual_seed(i), "cpu",
                                                  coarse=False) for i in range(n)])
        assert coarse.shape == exact.shape == (n, len(shape), *shape)
        rng = np.random.default_rng(0)
        reference = np.std([gaussian_filter(rng.uniform(-1, 1, shape), sigma, mode="constant", truncate=4.0)
                            for _ in range(n * len(shape))])
        assert coarse.std().item() == pytest.approx(reference, rel=0.15)
        assert exact.std().item() == pytest.approx(reference, rel=0.15)
    field = elastic_displacement((32, 32), 3.0, 6.0, torch.Generator().manual_seed(0), "cpu")
    assert torch.allclose(field, 3 * elastic_displacement((32, 32), 1.0, 6.0, torch.Generator().manual_seed(0), "cpu"))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_device_smoke(device):
    data, seg = random_batch(3, (32, 32, 32))
    params = random_spatial_params(3).with_values(noise_std=torch.full((3,), 0.1), gamma=torch.full((3,), 1.3),
                                                  lowres=torch.tensor([0.5, 1.0, 0.7]))
    params = params.with_values(rotation=params.rotation * torch.tensor([[1.0], [0.0], [1.0]]),
                                scale=torch.where(torch.arange(3)[:, None] == 1, 1.0, params.scale),
                                elastic_alpha=torch.tensor([8.0, 0.0, 8.0]))
    out_data, out_seg = augment_batch(data.to(device), seg.to(device), params, (24, 24, 24))
    assert out_data.device.type == device and out_seg.device.type == device
    assert out_data.shape == (3, 2, 24, 24, 24) and torch.isfinite(out_data).all()
    assert set(out_seg.unique().tolist()) <= set(LABELS) | {-1}
    assert torch.equal(out_seg[1].cpu(), centre(seg, (24,) * 3)[1].flip([a + 1 for a in range(3)
                                                                         if params.mirror[1, a]]))
    again = augment_batch(data.to(device), seg.to(device), params, (24, 24, 24))
    assert torch.equal(again[0], out_data) and torch.equal(again[1], out_seg)


def test_inputs_are_not_modified():
    data, seg = random_batch(2, (30, 30, 30))
    data_copy, seg_copy = data.clone(), seg.clone()
    params = make_params(2, mirror=torch.tensor([1.0, 0, 1]), brightness=2.0, gamma=1.5, shift=1.0)
    augment_batch(data, seg, params, (24, 24, 24))
    augment_batch(data, seg, random_spatial_params(2), (24, 24, 24), dummy_2d=True)
    assert torch.equal(data, data_copy) and torch.equal(seg, seg_copy)
