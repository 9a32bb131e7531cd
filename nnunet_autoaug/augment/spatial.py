"""Spatial part of the engine: scale, rotation, mirroring and elastic deformation in ONE resampling pass.

Everything here works on k-D data (k = 2 or 3) shaped (N, C, *in_shape); the engine maps 2D, 3D and dummy-2D
batches onto it. Interpolating once (instead of once per op) avoids compounding blur and keeps labels clean.
"""
from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Above this sigma the elastic noise is drawn on a coarser grid (see elastic_displacement).
COARSE_MIN_SIGMA = 4.0
# CPU: output voxels resampled per step. Small steps keep every temporary cache-sized and let the allocator reuse
# it, where whole-volume temporaries would be paged in afresh for each op, at more cost than the op itself.
SLAB_VOXELS = 1 << 16
# _sum_labels' float key of a corner it is done with; label values stay far below it.
_DONE = 2.0 ** 100


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``: per-sample, reproducible streams that do not touch the
    global RNG state (so the engine's draws cannot shift anything else's)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def gaussian_kernel1d(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_filter(x: torch.Tensor, sigma: float, axes: Iterable[int], radius: int,
                    mode: str = "constant") -> torch.Tensor:
    """Separable Gaussian smoothing of ``x`` along ``axes``; ``mode`` is 'constant' (zero) or an F.pad mode.

    Each axis is one conv1d over all other axes folded into the batch, which is O(radius) per voxel instead of
    O(radius**k) for a full k-D kernel.
    """
    kernel = gaussian_kernel1d(sigma, radius, x.device).to(x.dtype).view(1, 1, -1)
    for axis in axes:
        moved = x.movedim(axis, -1)
        rows = moved.reshape(-1, 1, moved.shape[-1])
        if mode == "constant":
            rows = F.conv1d(rows, kernel, padding=radius)
        else:
            rows = F.conv1d(F.pad(rows, (radius, radius), mode=mode), kernel)
        x = rows.reshape(moved.shape).movedim(-1, axis)
    return x


def _coarse_spacing(sigma: float, coarse: bool) -> int:
    return int(sigma // 2) if coarse and sigma >= COARSE_MIN_SIGMA else 1


def _node_counts(shape: Sequence[int], f: int) -> list[int]:
    """Nodes 0, f, 2f, ... per axis, enough to cover every voxel."""
    return [math.ceil((n - 1) / f) + 1 for n in shape]


def _per_axis(field: torch.Tensor, matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """(C, n_0, .., n_k-1) -> (C, m_0, .., m_k-1) applying matrices[a] (m_a, n_a) along axis a: a separable linear
    map as k small matrix products, far cheaper than convolution or interpolation calls on few nodes."""
    for matrix in matrices:
        # contracts the first spatial axis and appends the new one: after k steps the axes are back in order
        field = torch.tensordot(field, matrix, dims=([1], [1]))
    return field


def _gaussian_matrix(n: int, sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    """(n, n) matrix of a Gaussian filter with zero padding (conv1d with the kernel of gaussian_filter)."""
    shift = torch.arange(n, device=device) - torch.arange(n, device=device).view(-1, 1) + radius
    kernel = gaussian_kernel1d(sigma, radius, device)
    return kernel[shift.clamp(0, 2 * radius)] * (shift >= 0) * (shift <= 2 * radius)


def _coarse_displacement(shape: Sequence[int], alpha: float, sigma: float, generator: torch.Generator,
                         device: torch.device, coarse: bool = True) -> tuple[torch.Tensor, int]:
    """elastic_displacement on its nodes only: (ndim, *node counts), node spacing f. Both scale factors are
    applied here, on the small grid, because upsampling is linear."""
    ndim, f = len(shape), _coarse_spacing(sigma, coarse)
    nodes = _node_counts(shape, f)
    noise = torch.rand((ndim, *nodes), generator=generator, device=device) * 2 - 1
    sigma_grid = sigma / f
    radius = int(4 * sigma_grid + 0.5)
    matrices = {n: _gaussian_matrix(n, sigma_grid, radius, device) for n in set(nodes)}  # one per distinct size
    field = _per_axis(noise, [matrices[n] for n in nodes])
    return field * (alpha * f ** (-ndim / 2)), f


def _hat_matrix(voxels: int, nodes: int, f: int, device: torch.device) -> torch.Tensor:
    """(voxels, nodes) linear interpolation weights from the nodes 0, f, 2f, ... (hat functions)."""
    x = torch.arange(voxels, dtype=torch.float32, device=device) / f
    return (1 - (x[:, None] - torch.arange(nodes, dtype=torch.float32, device=device)).abs()).clamp(min=0)


def _upsample(field: torch.Tensor, f: int, shape: Sequence[int]) -> torch.Tensor:
    """(C, *nodes) on nodes 0, f, 2f, ... -> (C, *shape) by (bi/tri)linear interpolation."""
    sizes = list(zip(shape, field.shape[1:]))
    matrices = {size: _hat_matrix(*size, f, field.device) for size in set(sizes)}  # one per distinct size
    return _per_axis(field, [matrices[size] for size in sizes])


def elastic_displacement(shape: Sequence[int], alpha: float, sigma: float, generator: torch.Generator,
                         device: torch.device, coarse: bool = True) -> torch.Tensor:
    """Displacement field (ndim, *shape) in voxels: alpha * (U(-1, 1) noise smoothed by a Gaussian of std sigma).

    Semantics of batchgenerators v1 / the seed paper (scipy gaussian_filter, mode='constant', truncate=4).
    With ``coarse`` and a large sigma the noise is drawn on a grid with integer spacing f, smoothed with sigma / f
    and linearly upsampled: smoothed white noise has std proportional to sigma**(-ndim / 2), so the factor
    f**(-ndim / 2) keeps the displacement statistics, at about f**ndim times less work.
    """
    field, f = _coarse_displacement(shape, alpha, sigma, generator, device, coarse)
    return _upsample(field, f, shape)


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(n,) in-plane angles -> (n, 2, 2); (n, 3) angles about axes 0, 1, 2 -> (n, 3, 3) = R0 @ R1 @ R2.

    Rotations act in voxel-index space; Rk rotates in the plane of the two axes other than k, taken cyclically
    (axes (1, 2) for R0, (2, 0) for R1, (0, 1) for R2), which gives R1 = [[c, 0, s], [0, 1, 0], [-s, 0, c]].
    """
    k, planes = (2, [(0, 1)]) if angles.ndim == 1 else (3, [(1, 2), (2, 0), (0, 1)])
    angles = angles.view(angles.shape[0], -1)
    result = torch.eye(k, device=angles.device)
    for axis, (i, j) in enumerate(planes):
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        r = torch.eye(k, device=angles.device).repeat(angles.shape[0], 1, 1)
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        result = result @ r
    return result


def centre_crop(x: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """View of the centre (offset (in - out) // 2 per axis) of the trailing len(out_shape) axes."""
    in_shape = x.shape[x.ndim - len(out_shape):]
    return x[(..., *(slice((i - o) // 2, (i - o) // 2 + o) for i, o in zip(in_shape, out_shape)))]


def flip_per_sample(x: torch.Tensor, mirror: torch.Tensor, first_axis: int = 2) -> torch.Tensor:
    """Flip sample n of ``x`` along axis first_axis + a wherever mirror[n, a] (bool, CPU). Returns a new tensor."""
    x = x.clone()
    for a in range(mirror.shape[1]):
        rows = mirror[:, a].nonzero().flatten().to(x.device)
        if rows.numel():
            x[rows] = x[rows].flip(first_axis + a)
    return x


def _centred_nodes(out_shape: Sequence[int], f: int, device: torch.device) -> list[torch.Tensor]:
    """Per axis, x_out - c on the nodes 0, f, 2f, ... (c = (out - 1) / 2, the output's centre)."""
    return [torch.arange(m, dtype=torch.float32, device=device) * f - (o - 1) / 2
            for m, o in zip(_node_counts(out_shape, f), out_shape)]


def _affine_nodes(linear: torch.Tensor, shift: torch.Tensor, coords: Sequence[torch.Tensor]) -> torch.Tensor:
    """(k, *nodes), component a = shift[a] + sum_b linear[a, b] * coords[b] with coords[b] along axis b.

    Summed by broadcasting, so only the last addition of each component touches every node.
    """
    k = len(coords)
    axes = [c.view([-1 if a == b else 1 for a in range(k)]) for b, c in enumerate(coords)]
    out = coords[0].new_empty((k, *[c.numel() for c in coords]))
    for a in range(k):
        partial = shift[a] + sum(linear[a, b] * axes[b] for b in range(k - 1))
        torch.add(partial, linear[a, k - 1] * axes[k - 1], out=out[a])
    return out


@dataclass(frozen=True)
class _SampleMap:
    """One sample's map from output voxels to grid_sample's normalised (W, H, D) input coordinates: affine,
    shift + linear @ (x_out - c), or, with a displacement, its values on the nodes 0, f, 2f, ... (f = spacing)."""

    linear: torch.Tensor
    shift: torch.Tensor
    nodes: torch.Tensor | None = None
    spacing: int = 1


def _sample_maps(in_shape: Sequence[int], out_shape: Sequence[int], affine: torch.Tensor, signs: torch.Tensor,
                 displacements: Sequence[tuple[torch.Tensor, int] | None]) -> list[_SampleMap]:
    """x_in = offset + c + A (s x_c + d(x_c)), x_c = x_out - c, c = (out - 1) / 2, per sample.

    A displacement comes as coarse nodes and their spacing (see _coarse_displacement); the whole map is then
    evaluated on those nodes and later interpolated linearly, which is exact for its affine part and gives the
    same d as elastic_displacement, in one pass over the output.
    """
    device = affine.device
    # align_corners=True: -1 and 1 are the centres of the first and last voxel
    extent = torch.tensor([max(i - 1, 1) for i in in_shape], dtype=torch.float32, device=device)
    target = torch.tensor([(i - o) // 2 + (o - 1) / 2 for i, o in zip(in_shape, out_shape)], device=device)
    to_grid = ((2 / extent).view(-1, 1) * affine).flip(1)  # rows in grid_sample's (W, H, D) order
    linear = to_grid * signs.unsqueeze(1)  # mirroring flips x_c before A
    shift = (2 * target / extent - 1).flip(0)
    maps = []
    for j, displacement in enumerate(displacements):
        if displacement is None:
            maps.append(_SampleMap(linear[j], shift))
            continue
        field, f = displacement
        nodes = _affine_nodes(linear[j], shift, _centred_nodes(out_shape, f, device))
        maps.append(_SampleMap(linear[j], shift, nodes + torch.tensordot(to_grid[j], field, 1), f))
    return maps


def _slabs(out_shape: Sequence[int], spacing: int, device: torch.device) -> list[tuple[int, int]]:
    """Ranges of output planes (axis 0) resampled together: all of them on a GPU; on the CPU about SLAB_VOXELS
    voxels, a multiple of the node spacing so that every slab starts on a node."""
    if device.type != "cpu":
        return [(0, out_shape[0])]
    step = max(1, SLAB_VOXELS // (math.prod(out_shape[1:]) * spacing)) * spacing
    return [(start, min(start + step, out_shape[0])) for start in range(0, out_shape[0], step)]


def _grid_slab(sample_map: _SampleMap, out_shape: Sequence[int], start: int, stop: int) -> torch.Tensor:
    """grid_sample grid (1, stop - start, *out_shape[1:], k) of the output planes start:stop."""
    if sample_map.nodes is None:
        coords = _centred_nodes(out_shape, 1, sample_map.shift.device)
        coords[0] = coords[0][start:stop]
        grid = _affine_nodes(sample_map.linear, sample_map.shift, coords)
    else:
        f = sample_map.spacing
        nodes = sample_map.nodes[:, start // f:math.ceil((stop - 1) / f) + 1]
        grid = _upsample(nodes, f, (stop - start, *out_shape[1:]))
    return grid.movedim(0, -1)[None]


def _elastic_nodes(out_shape: Sequence[int], alpha: torch.Tensor, sigma: torch.Tensor, seeds: torch.Tensor,
                   device: torch.device) -> list[tuple[torch.Tensor, int] | None]:
    """Per sample, its coarse displacement (see _coarse_displacement) or None without elastic deformation."""
    return [_coarse_displacement(out_shape, a, s, seeded_generator(seed, device), device) if a > 0 else None
            for a, s, seed in zip(alpha.tolist(), sigma.tolist(), seeds.tolist())]


# ----------------------------------------------------------------------------------------------------- labels
# Labels are gathered from the input by flat index at the few voxels each output voxel reads, so their cost is
# bound by the output size whatever the input size or the number of labels.

def _flat_view(x: torch.Tensor) -> torch.Tensor:
    """1-D view of the memory x spans (any strides): flat-index gathers without a contiguous copy."""
    return x.as_strided((1 + sum((n - 1) * s for n, s in zip(x.shape, x.stride())),), (1,))


def _gather(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return flat.index_select(0, index.flatten()).view(index.shape)


def _voxel_coordinates(grid: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    """(k, n, 1, M) input voxel coordinates that grid_sample (align_corners=True) reads, in its (W, H, D) axis
    order: its un-normalisation op for op, so that floors and weights match it bit for bit."""
    k, n = len(in_shape), grid.shape[0]
    extent = torch.tensor(in_shape[::-1], dtype=grid.dtype, device=grid.device).view(k, *[1] * (grid.ndim - 1)) - 1
    return ((grid.movedim(-1, 0) + 1) / 2 * extent).reshape(k, n, 1, -1)


def _corner_offsets(sizes: Sequence[int], steps: Sequence[int]) -> list[int]:
    """Flat offsets of the 2**k corners from the lowest one, in _corner_grid's order (the last axis slowest); 0
    along a size-1 axis, which has one voxel."""
    axes = list(zip(sizes, steps))[::-1]
    return [sum(b * s for b, (n, s) in zip(bits, axes) if n > 1)
            for bits in itertools.product((0, 1), repeat=len(axes))]


def _index_dtype(span: int) -> torch.dtype:
    """Flat indices are summed in floating point, exact below 2**24 (float32) or 2**53, because int64 arithmetic is
    several times slower on CPUs; they become int64 once, for the gather."""
    return torch.float32 if span <= 2 ** 24 else torch.float64


def _axis_values(values: Sequence[float], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One value per axis as a (k, 1, ..., 1) tensor that broadcasts against ``like`` (k, ...)."""
    return torch.tensor(values, dtype=dtype or like.dtype, device=like.device).view(-1, *[1] * (like.ndim - 1))


def _nearest_labels(flat: torch.Tensor, planes: torch.Tensor, coords: torch.Tensor, sizes: Sequence[int],
                    steps: Sequence[int]) -> torch.Tensor:
    """(n, C, M) label of the nearest voxel (rounding half to even, as grid_sample), -1 outside the input."""
    rounded, top = coords.round(), _axis_values(sizes, coords) - 1
    inside = ((rounded >= 0) & (rounded <= top)).all(0)
    dtype = _index_dtype(len(flat))
    index = ((rounded.clamp(torch.zeros_like(top), top).to(dtype) * _axis_values(steps, coords, dtype)).sum(0)
             + planes).long()
    return torch.where(inside, _gather(flat, index), -1)


def _corner_grid(pairs: Sequence[torch.Tensor],
                 combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(2**k, s) values of all corners from per-axis (2, s) pairs (lower, upper corner) in grid_sample's (W, H, D)
    axis order and its corner order (D slowest); combined first axis to last, as grid_sample multiplies."""
    k = len(pairs)
    views = [p.view(*[2 if d == k - 1 - a else 1 for d in range(k)], -1) for a, p in enumerate(pairs)]
    return functools.reduce(combine, views).flatten(0, k - 1)


def _sum_labels(labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Corner labels and weights (2**k, s), corner order -> per column the label of largest summed weight, or -1
    where 1 - (sum over labels other than -1) is at least as large. Ties go to the lower label, -1 lowest of all.

    Labels are taken in ascending order, one per column and round (rarely more than two rounds), each summed over
    its corners in corner order: the roundings of one-hot grid_sample + argmax, which adds a label's corners in
    corner order and sums over the labels in ascending order. Corners of weight 0 change no sum, so they and
    label -1 drop out; the rounds run on float keys (exact for every label of the dtype) because comparisons,
    arithmetic and min are far cheaper than masked selections.
    """
    weights = weights * (labels != -1)
    wide = labels.dtype in (torch.int32, torch.int64, torch.float64)  # float32 keys would round their labels
    keys = labels.to(torch.float64 if wide else torch.float32) + (weights == 0) * _DONE  # never picks weightless
    total, best = weights.new_zeros(labels.shape[1]), weights.new_zeros(labels.shape[1])
    best_label = keys.new_full((labels.shape[1],), -1)
    while True:
        label = keys.amin(0)
        live = label < _DONE
        if not live.any():
            return torch.where(1 - total >= best, -1, best_label).to(labels.dtype)
        mine = (keys == label).to(weights.dtype)
        score = functools.reduce(operator.add, (weights * mine).unbind(0)) * live
        keys = keys + mine * _DONE
        total = total + score
        best_label = torch.where(score > best, label, best_label)  # strictly: the lower label keeps a tie
        best = torch.maximum(score, best)


def _corner_weights(x: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel coordinates (k, s) -> the weights (2**k, s) of their corners as grid_sample computes them, 0 for
    corners outside the input, and the corners' per-axis coordinates (k, 2, s)."""
    low = x.floor().unsqueeze(1)
    corners = torch.cat([low, low + 1], 1)
    x = x.unsqueeze(1)
    inside = (corners >= 0) & (corners <= _axis_values(sizes, corners) - 1)
    weights = torch.cat([corners[:, 1:] - x, x - low], 1) * inside  # grid_sample's own expressions
    return _corner_grid(weights, operator.mul), corners


def _voxels(positions: torch.Tensor, channels: int, m: int) -> torch.Tensor:
    """Flat positions in (n, C, M) -> their voxels in (n, M), where the coordinates live."""
    return positions if channels == 1 else positions // (channels * m) * m + positions % m


def _border_labels(flat: torch.Tensor, planes: torch.Tensor, coords: torch.Tensor, sizes: Sequence[int],
                   steps: Sequence[int], positions: torch.Tensor) -> torch.Tensor:
    """_sum_labels for voxels at ``positions`` (flat, in (n, C, M)) with corners on both sides of the input's border:
    each corner is gathered on its own, clamped into the input (corners outside weigh 0)."""
    k, m = len(sizes), coords.shape[-1]
    weights, corners = _corner_weights(coords.reshape(k, -1).index_select(1, _voxels(positions, planes.shape[1], m)),
                                       sizes)
    top, dtype = _axis_values(sizes, corners) - 1, _index_dtype(len(flat))
    parts = corners.clamp(torch.zeros_like(top), top).to(dtype) * _axis_values(steps, corners, dtype)
    index = (_corner_grid(parts, operator.add) + planes.flatten()[positions // m]).long()
    return _sum_labels(_gather(flat, index), weights)


def _linear_labels(flat: torch.Tensor, planes: torch.Tensor, coords: torch.Tensor, sizes: Sequence[int],
                   steps: Sequence[int]) -> torch.Tensor:
    """(n, C, M) linear label resampling (see _resample_labels).

    The 2**k corner labels of every output voxel inside the input are gathered at once. Most voxels need no
    weights: one label on all corners wins (-1 included), and without any corner inside the input the result is
    -1. Only label edges, and voxels on the input's border, go through _sum_labels.
    """
    low, size = coords.floor(), _axis_values(sizes, coords)
    half = (size - 2) / 2
    # per axis, <= 0: both corners inside the input; > 1: neither
    excess = ((low - half).abs() - half).amax(0).expand(-1, planes.shape[1], -1).flatten()
    dtype = _index_dtype(len(flat))
    lowest = low.clamp(torch.zeros_like(size), (size - 2).clamp(min=0)).to(dtype)  # all corners in the input
    index = ((lowest * _axis_values(steps, coords, dtype)).sum(0) + planes).long().flatten()
    labels = flat.new_empty((2 ** len(sizes), len(index)))
    for corner, offset in zip(labels, _corner_offsets(sizes, steps)):
        torch.index_select(flat[offset:], 0, index, out=corner)
    inside = excess <= 0
    uniform = inside & (labels.amin(0) == labels.amax(0))
    out = torch.where(uniform, labels[0], -1)
    edges = (inside ^ uniform).nonzero().squeeze(1)
    if edges.numel():
        x = coords.reshape(len(sizes), -1).index_select(1, _voxels(edges, planes.shape[1], coords.shape[-1]))
        out[edges] = _sum_labels(labels.index_select(1, edges), _corner_weights(x, sizes)[0])
    border = (~inside & (excess <= 1)).nonzero().squeeze(1)
    if border.numel():
        out[border] = _border_labels(flat, planes, coords, sizes, steps, border)
    return out.view(*planes.shape[:2], -1)


def _resample_labels(seg: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample label maps (n, C, *in) on a grid_sample grid (n, *out, k) without inventing labels; samples from
    outside the input become -1.

    'nearest' takes the nearest voxel's label. 'linear' takes the label of largest (bi/tri)linear weight; -1
    (padding) and the outside of the input share one weight, 1 - the sum of all other weights, and, as the lowest
    label, win ties. That is argmax over grid_sample'd one-hot masks (bit for bit on the CPU) without ever
    building a one-hot volume.
    """
    n, c, device = seg.shape[0], seg.shape[1], seg.device
    planes = (torch.arange(n, device=device).view(-1, 1, 1) * seg.stride(0)
              + torch.arange(c, device=device).view(1, -1, 1) * seg.stride(1))  # flat offset of each (sample, channel)
    resample = _nearest_labels if mode == "nearest" else _linear_labels
    # axes in grid_sample's (W, H, D) order from here on
    out = resample(_flat_view(seg), planes, _voxel_coordinates(grid, seg.shape[2:]), seg.shape[:1:-1],
                   seg.stride()[:1:-1])
    return out.view(n, c, *grid.shape[1:-1])


def spatial_transform(data: torch.Tensor, seg: torch.Tensor | None, out_shape: Sequence[int], *,
                      scale: torch.Tensor, rotation: torch.Tensor, mirror: torch.Tensor,
                      elastic_alpha: torch.Tensor, elastic_sigma: torch.Tensor, seeds: torch.Tensor,
                      label_interpolation: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """k-D core. Per-sample CPU params: scale (n, k); rotation (n,) for k = 2 or (n, 3) for k = 3; mirror (n, k)
    bool; elastic_alpha, elastic_sigma (n,) with sigma already clamped; seeds (n,) for the elastic noise.

    Samples without rotation, scaling or elastic deformation are cropped and flipped exactly; only the others
    pay for (and are softened by) interpolation. The input crops are only read, never copied.
    """
    device = data.device
    needs_grid = (rotation != 0).view(len(seeds), -1).any(1) | (scale != 1).any(1) | (elastic_alpha > 0)
    exact, resampled = (~needs_grid).nonzero().flatten(), needs_grid.nonzero().flatten()
    out = data.new_empty((data.shape[0], data.shape[1], *out_shape))
    seg_out = None if seg is None else seg.new_empty((seg.shape[0], seg.shape[1], *out_shape))

    if exact.numel():
        rows = exact.to(device)
        out[rows] = flip_per_sample(centre_crop(data, out_shape)[rows], mirror[exact])
        if seg is not None:
            seg_out[rows] = flip_per_sample(centre_crop(seg, out_shape)[rows], mirror[exact])

    if resampled.numel():
        affine = scale[resampled].to(device).unsqueeze(-1) * rotation_matrix(rotation[resampled].to(device))
        signs = 1 - 2 * mirror[resampled].to(device, torch.float32)
        displacements = _elastic_nodes(out_shape, elastic_alpha[resampled], elastic_sigma[resampled],
                                       seeds[resampled], device)
        maps = _sample_maps(data.shape[2:], out_shape, affine, signs, displacements)
        for i, sample_map in zip(resampled.tolist(), maps):
            for start, stop in _slabs(out_shape, sample_map.spacing, device):
                grid = _grid_slab(sample_map, out_shape, start, stop)
                # data[i:i + 1] is read in place, where data[rows] would copy the input crops
                out[i, :, start:stop] = F.grid_sample(data[i:i + 1].float(), grid, mode="bilinear",
                                                      padding_mode="zeros", align_corners=True)[0]
                if seg is not None:
                    seg_out[i, :, start:stop] = _resample_labels(seg[i:i + 1], grid, label_interpolation)[0]
    return out, seg_out
