"""Spatial pass of the augmentation engine: geometry conventions, label integrity, determinism, devices."""
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from nnunet_autoaug.augment import ELASTIC_MIN_SIGMA, AugmentParams, augment_batch, spatial
from nnunet_autoaug.augment.spatial import (_coarse_displacement, _grid_slab, _resample_labels, _sample_maps,
                                           elastic_displacement, rotation_matrix, seeded_generator)

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


# ------------------------------------------------- label resampling against the one-hot grid_sample definition

def reference_labels(seg: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """The engine's former label resampling, which defines the semantics: grid_sample of the whole input crop,
    per-label one-hot masks for 'linear'."""
    if mode == "nearest":
        out = torch.nn.functional.grid_sample(seg.float() + 1, grid, mode="nearest", padding_mode="zeros",
                                              align_corners=True) - 1
        return out.to(seg.dtype)
    labels = torch.unique(seg)
    labels = labels[labels != -1]
    n, c, k = seg.shape[0], seg.shape[1], grid.shape[-1]
    out_shape = grid.shape[1:-1]
    if labels.numel() == 0:
        return torch.full((n, c, *out_shape), -1, dtype=seg.dtype)
    best = torch.full((n, c, *out_shape), -1.0)
    best_idx = torch.zeros((n, c, *out_shape), dtype=torch.long)
    total = torch.zeros_like(best)
    for start in range(0, labels.numel(), 8):
        chunk = labels[start:start + 8]
        onehot = (seg.unsqueeze(2) == chunk.view(1, 1, -1, *[1] * k)).float().flatten(1, 2)
        weights = torch.nn.functional.grid_sample(onehot, grid, mode="bilinear", padding_mode="zeros",
                                                  align_corners=True)
        weights = weights.unflatten(1, (c, chunk.numel()))
        total += weights.sum(2)
        score, idx = weights.max(2)
        better = score > best
        best = torch.where(better, score, best)
        best_idx = torch.where(better, idx + start, best_idx)
    out = torch.where(1 - total >= best, torch.full_like(labels[:1], -1), labels[best_idx])
    return out.to(seg.dtype)


def random_label_map(n: int, channels: int, shape, block: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Labels {-1, 0, 1, 2, 5} in blocks of ``block`` voxels (1: every voxel its own label)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 5, (n, channels, *[max(s // block, 1) for s in shape]), generator=g)
    idx = torch.nn.functional.interpolate(coarse.float(), size=tuple(shape), mode="nearest").long()
    return torch.tensor([-1, 0, 1, 2, 5], dtype=dtype)[idx]


def random_grids(n: int, in_shape, out_shape, seed: int) -> torch.Tensor:
    """Engine grids with random rotations, scales from zoom-in to far zoom-out, mirroring and elastic fields."""
    k, g = len(out_shape), torch.Generator().manual_seed(seed)
    angles = (torch.rand((n,) if k == 2 else (n, 3), generator=g) - 0.5) * 2 * math.pi
    affine = (0.5 + 1.5 * torch.rand((n, k), generator=g)).unsqueeze(-1) * rotation_matrix(angles)
    signs = 1 - 2 * (torch.rand((n, k), generator=g) < 0.5).float()
    displacements = [_coarse_displacement(out_shape, 20 * i, 5.0 + i, seeded_generator(seed + i, "cpu"), "cpu")
                     if i else None for i in range(n)]
    maps = _sample_maps(in_shape, out_shape, affine, signs, displacements)
    return torch.cat([_grid_slab(m, out_shape, 0, out_shape[0]) for m in maps])


def tie_grids(in_shape, out_shape) -> torch.Tensor:
    """Unrotated grids on whole, half and quarter voxels, where labels tie exactly, shifted to reach past the
    border."""
    grids = []
    for step, shift in [(1.0, 0.0), (0.5, 0.5), (0.25, -1.5), (1.5, 3.0)]:
        axes = [torch.arange(o) * step + shift for o in out_shape]
        x = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
        extent = torch.tensor([i - 1 for i in in_shape], dtype=torch.float32)
        grids.append((2 * x / extent - 1).flip(-1))
    return torch.stack(grids).to(torch.float32)


LABEL_CASES = {  # (seg channels, input shape, output shape); dummy 2D folds its slices into the channels
    "2d": (1, (29, 33), (24, 26)),
    "3d": (1, (21, 24, 22), (16, 18, 17)),
    "dummy_2d": (7, (30, 28), (24, 22)),
}


@pytest.mark.parametrize("case", LABEL_CASES)
@pytest.mark.parametrize("block", [1, 4])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_label_resampling_is_identical_to_one_hot_grid_sample(case, block, mode):
    channels, in_shape, out_shape = LABEL_CASES[case]
    for seed in range(3):
        seg = random_label_map(4, channels, in_shape, block, seed)
        for grid in (random_grids(4, in_shape, out_shape, seed), tie_grids(in_shape, out_shape)):
            assert torch.equal(_resample_labels(seg, grid, mode), reference_labels(seg, grid, mode))


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_label_resampling_reads_strided_label_maps_in_place(mode):
    seg = random_label_map(3, 3, (26, 25, 27), 3, seed=7, dtype=torch.int16)
    view = seg[:, 1:2, 1:, :24, 2:]
    grid = random_grids(3, view.shape[2:], (18, 19, 20), seed=7)
    out = _resample_labels(view, grid, mode)
    assert out.dtype == torch.int16
    assert torch.equal(out, reference_labels(view.contiguous(), grid, mode))


@pytest.mark.parametrize("in_shape,out,dummy_2d", [((36, 38, 40), (28, 30, 26), False), ((44, 41), (36, 30), False),
                                                   ((12, 40, 36), (8, 32, 30), True)])
def test_slabs_do_not_change_the_result(monkeypatch, in_shape, out, dummy_2d):
    """The CPU resamples a few output planes at a time (each slab starting on an elastic node); tiny slabs must
    give the whole-volume result up to the rounding of the interpolated grid."""
    data, seg = random_batch(3, in_shape, seed=1)
    params = random_spatial_params(3, seed=1)
    whole = augment_batch(data, seg, params, out, dummy_2d=dummy_2d)
    monkeypatch.setattr(spatial, "SLAB_VOXELS", 300)
    slabbed = augment_batch(data, seg, params, out, dummy_2d=dummy_2d)
    assert torch.allclose(slabbed[0], whole[0], atol=1e-4)
    assert (slabbed[1] != whole[1]).float().mean() < 1e-3


@pytest.mark.parametrize("slab_voxels", [spatial.SLAB_VOXELS, 300])
def test_elastic_map_on_linear_ramp(monkeypatch, slab_voxels):
    """The whole map x_in = offset + c + A (s x_c + d(x_c)), with d = elastic_displacement of the sample's seed:
    a linear ramp input returns the sampled coordinates exactly."""
    monkeypatch.setattr(spatial, "SLAB_VOXELS", slab_voxels)
    in_shape, out = (40, 44, 42), (24, 26, 22)
    data = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in in_shape], indexing="ij"))[None]
    params = make_params(1, rotation=torch.tensor([0.2, -0.15, 0.1]), scale=torch.tensor([1.1, 0.9, 1.05]),
                         mirror=torch.tensor([1.0, 0.0, 1.0]), elastic_alpha=30.0, elastic_sigma=6.0)
    out_data, _ = augment_batch(data, None, params, out)
    d = elastic_displacement(out, 30.0, 6.0, seeded_generator(int(params.seed[0]), "cpu"), "cpu").double()
    centre = torch.tensor([(o - 1) / 2 for o in out], dtype=torch.float64).view(3, 1, 1, 1)
    x_c = torch.stack(torch.meshgrid(*[torch.arange(o, dtype=torch.float64) for o in out], indexing="ij")) - centre
    y = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64).view(3, 1, 1, 1) * x_c + d
    affine = params.scale[0].double().view(3, 1) * rotation_matrix(params.rotation).double()[0]
    offset = torch.tensor([(i - o) // 2 for i, o in zip(in_shape, out)], dtype=torch.float64).view(3, 1, 1, 1)
    expected = offset + centre + torch.einsum("ij,j...->i...", affine, y)
    assert expected.min() > 0 and (expected.flatten(1).amax(1) < torch.tensor(in_shape) - 1).all()
    assert torch.allclose(out_data[0].double(), expected, atol=2e-3)
