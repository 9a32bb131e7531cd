"""Spatial part of the engine: scale, rotation, mirroring and elastic deformation in ONE resampling pass.

Everything here works on k-D data (k = 2 or 3) shaped (N, C, *in_shape); the engine maps 2D, 3D and dummy-2D
batches onto it. Interpolating once (instead of once per op) avoids compounding blur and keeps labels clean.
"""
from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

# Above this sigma the elastic noise is drawn on a coarser grid (see elastic_displacement).
COARSE_MIN_SIGMA = 4.0


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


def _coarse_displacement(shape: Sequence[int], alpha: float, sigma: float, generator: torch.Generator,
                         device: torch.device, coarse: bool = True) -> tuple[torch.Tensor, int]:
    """elastic_displacement on its nodes only: (ndim, *node counts), node spacing f. Both scale factors are
    applied here, on the small grid, because upsampling is linear."""
    ndim, f = len(shape), _coarse_spacing(sigma, coarse)
    noise = torch.rand((ndim, *_node_counts(shape, f)), generator=generator, device=device) * 2 - 1
    sigma_grid = sigma / f
    field = gaussian_filter(noise, sigma_grid, range(1, ndim + 1), radius=int(4 * sigma_grid + 0.5))
    return field * (alpha * f ** (-ndim / 2)), f


def _upsample(field: torch.Tensor, f: int, shape: Sequence[int]) -> torch.Tensor:
    """(C, *nodes) on nodes 0, f, 2f, ... -> (C, *shape) by (bi/tri)linear interpolation (a view for f = 1)."""
    if f > 1:
        fine_shape = [(m - 1) * f + 1 for m in field.shape[1:]]  # nodes land exactly on voxels 0, f, 2f, ...
        mode = "bilinear" if len(shape) == 2 else "trilinear"
        field = F.interpolate(field[None], size=fine_shape, mode=mode, align_corners=True)[0]
    return field[(slice(None), *(slice(0, n) for n in shape))]


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


def _affine_nodes(linear: torch.Tensor, shift: torch.Tensor, coords: Sequence[torch.Tensor],
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """(k, *nodes), component a = shift[a] + sum_b linear[a, b] * coords[b] with coords[b] along axis b.

    Summed by broadcasting, so only the last addition of each component touches every node.
    """
    k = len(coords)
    axes = [c.view([-1 if a == b else 1 for a in range(k)]) for b, c in enumerate(coords)]
    if out is None:
        out = coords[0].new_empty((k, *[c.numel() for c in coords]))
    for a in range(k):
        partial = shift[a] + sum(linear[a, b] * axes[b] for b in range(k - 1))
        torch.add(partial, linear[a, k - 1] * axes[k - 1], out=out[a])
    return out


def _sampling_grid(in_shape: Sequence[int], out_shape: Sequence[int], affine: torch.Tensor, signs: torch.Tensor,
                   displacements: Sequence[tuple[torch.Tensor, int] | None]) -> torch.Tensor:
    """grid_sample grid (n, *out, k) for x_in = offset + c + A (s x_c + d(x_c)), x_c = x_out - c, c = (out-1)/2.

    Built directly in grid_sample's normalised (W, H, D) coordinates. A displacement comes as its coarse nodes and
    spacing f (see _coarse_displacement); the whole map is then evaluated on those nodes and interpolated linearly,
    which is exact for its affine part and gives the same d as elastic_displacement, in one pass over the output.
    """
    device, k = affine.device, len(out_shape)
    # align_corners=True: -1 and 1 are the centres of the first and last voxel
    extent = torch.tensor([max(i - 1, 1) for i in in_shape], dtype=torch.float32, device=device)
    target = torch.tensor([(i - o) // 2 + (o - 1) / 2 for i, o in zip(in_shape, out_shape)], device=device)
    to_grid = ((2 / extent).view(-1, 1) * affine).flip(1)  # rows in grid_sample's (W, H, D) order
    linear = to_grid * signs.unsqueeze(1)  # mirroring flips x_c before A
    shift = (2 * target / extent - 1).flip(0)
    grid = torch.empty((len(displacements), k, *out_shape), device=device)
    for j, displacement in enumerate(displacements):
        if displacement is None:
            _affine_nodes(linear[j], shift, _centred_nodes(out_shape, 1, device), out=grid[j])
            continue
        field, f = displacement
        nodes = _affine_nodes(linear[j], shift, _centred_nodes(out_shape, f, device))
        grid[j] = _upsample(nodes + torch.tensordot(to_grid[j], field, 1), f, out_shape)
    return grid.movedim(1, -1)


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


def _gather(flat: torch.Tensor, index: torch.Tensor, offset: int = 0) -> torch.Tensor:
    return flat[offset:].index_select(0, index.flatten()).view(index.shape)


def _voxel_coordinates(grid: torch.Tensor, in_shape: Sequence[int]) -> list[torch.Tensor]:
    """Per input axis (axis 0 first), the (n, M) voxel coordinates grid_sample (align_corners=True) reads: its
    un-normalisation op for op, so that floors and weights match it bit for bit."""
    k = len(in_shape)
    return [((grid[..., k - 1 - a] + 1) / 2 * (in_shape[a] - 1)).flatten(1) for a in range(k)]


def _corner_offsets(in_shape: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Flat offsets of the 2**k corners from the lowest one (0 along a size-1 axis, which has one voxel)."""
    steps = [s if n > 1 else 0 for n, s in zip(in_shape, strides)]
    return [sum(b * s for b, s in zip(bits, steps)) for bits in itertools.product((0, 1), repeat=len(steps))]


def _nearest_labels(flat: torch.Tensor, planes: torch.Tensor, coords: Sequence[torch.Tensor],
                    in_shape: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
    """(n, C, M) label of the nearest voxel (rounding half to even, as grid_sample), -1 outside the input."""
    index, inside = planes, torch.ones_like(coords[0], dtype=torch.bool)
    for x, n, stride in zip(coords, in_shape, strides):
        i = x.round()
        inside &= (i >= 0) & (i <= n - 1)
        index = index + (i.clamp(0, n - 1).long() * stride).unsqueeze(1)
    return torch.where(inside.unsqueeze(1), _gather(flat, index), -1)


def _argmax_labels(labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rows of corner labels and weights (s, 2**k), corner order -> the label of largest summed weight, or -1 where
    1 - (sum over labels other than -1) is at least as large. Ties go to the lower label, -1 lowest of all.

    Roundings follow one-hot grid_sample + argmax: a label's weight sums its corners in corner order (the sort is
    stable), the total sums labels in ascending order.
    """
    labels, order = labels.sort(dim=1, stable=True)
    weights = weights.gather(1, order)
    total, best = weights.new_zeros(len(labels)), weights.new_zeros(len(labels))
    best_label = torch.full_like(labels[:, 0], -1)
    score = weights[:, 0]
    for j in range(labels.shape[1]):
        label = labels[:, j]
        if j:
            score = torch.where(label == labels[:, j - 1], score + weights[:, j], weights[:, j])
        counted = label != -1
        if j + 1 < labels.shape[1]:
            counted &= label != labels[:, j + 1]  # the label's last corner: its score is complete
        total = total + torch.where(counted, score, 0)
        better = counted & (score > best)
        best = torch.where(better, score, best)
        best_label = torch.where(better, label, best_label)
    return torch.where(1 - total >= best, -1, best_label)


def _weighted_labels(flat: torch.Tensor, planes: torch.Tensor, coords: Sequence[torch.Tensor],
                     in_shape: Sequence[int], strides: Sequence[int], positions: torch.Tensor) -> torch.Tensor:
    """Linear label resampling, exact and general, at ``positions`` (flat indices into (n, C, M))."""
    c, m = planes.shape[1], coords[0].shape[1]
    plane = positions // m
    voxel = plane // c * m + positions % m
    weight, index, valid = [], [], []  # per axis: (lower corner, upper corner)
    for x, n, stride in zip(coords, in_shape, strides):
        x = x.flatten()[voxel]
        low = x.floor()
        weight.append(((low + 1) - x, x - low))  # grid_sample's own expressions
        index.append(tuple(i.clamp(0, n - 1).long() * stride for i in (low, low + 1)))
        valid.append(((low >= 0) & (low <= n - 1), (low >= -1) & (low <= n - 2)))
    base, labels, weights = planes.flatten()[plane], [], []
    for bits in itertools.product((0, 1), repeat=len(coords)):
        corner = list(zip(bits, weight, index, valid))
        labels.append(flat.index_select(0, base + sum(i[b] for b, _, i, _ in corner)))
        w = math.prod(w[b] for b, w, _, _ in reversed(corner))  # W, H, D factor order, as grid_sample
        weights.append(torch.where(functools.reduce(operator.and_, (v[b] for b, _, _, v in corner)), w, 0))
    return _argmax_labels(torch.stack(labels, 1), torch.stack(weights, 1))


def _linear_labels(flat: torch.Tensor, planes: torch.Tensor, coords: Sequence[torch.Tensor],
                   in_shape: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
    """(n, C, M) linear label resampling (see _resample_labels).

    Most output voxels need no weights: if all 2**k corners are inside the input and carry one label, that label
    wins (-1 included), and without any corner inside the input the result is -1. Only the others (label edges
    and the input's border) go through _weighted_labels.
    """
    inside = torch.ones_like(coords[0], dtype=torch.bool)
    beyond = torch.zeros_like(inside)
    index = planes
    for x, n, stride in zip(coords, in_shape, strides):
        low = x.floor()
        lowest = low.clamp(0, max(n - 2, 0))
        inside &= (lowest == low) & (n > 1)
        beyond |= (low < -1) | (low > n - 1)
        index = index + (lowest.long() * stride).unsqueeze(1)
    offsets = _corner_offsets(in_shape, strides)
    first = _gather(flat, index)
    uniform = inside.unsqueeze(1)
    for offset in offsets[1:]:
        uniform = uniform & (_gather(flat, index, offset) == first)
    out = torch.where(uniform, first, -1)
    positions = (~(uniform | beyond.unsqueeze(1))).flatten().nonzero().squeeze(1)
    if positions.numel():
        out.view(-1)[positions] = _weighted_labels(flat, planes, coords, in_shape, strides, positions)
    return out


def _resample_labels(seg: torch.Tensor, grid: torch.Tensor, mode: str,
                     samples: torch.Tensor | None = None) -> torch.Tensor:
    """Resample label maps without inventing labels: (n, C, *in) on a grid_sample grid (r, *out, k) ->
    (r, C, *out), row j from seg[samples[j]] (default: j). Samples from outside the input become -1.

    'nearest' takes the nearest voxel's label. 'linear' takes the label of largest (bi/tri)linear weight; -1
    (padding) and the outside of the input share one weight, 1 - the sum of all other weights, and, as the lowest
    label, win ties. That is argmax over grid_sample'd one-hot masks (bit for bit on the CPU) without ever
    building a one-hot volume.
    """
    r, c, device = grid.shape[0], seg.shape[1], seg.device
    if samples is None:
        samples = torch.arange(r, device=device)
    in_shape, strides = seg.shape[2:], seg.stride()[2:]
    planes = (samples * seg.stride(0)).view(-1, 1, 1) + torch.arange(c, device=device).view(1, -1, 1) * seg.stride(1)
    coords = _voxel_coordinates(grid, in_shape)
    resample = _nearest_labels if mode == "nearest" else _linear_labels
    out = resample(_flat_view(seg), planes, coords, in_shape, strides)
    return out.view(r, c, *grid.shape[1:-1])


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
        grid = _sampling_grid(data.shape[2:], out_shape, affine, signs, displacements)
        for j, i in enumerate(resampled.tolist()):  # per sample: data[i:i + 1] is a view, data[rows] a copy
            out[i] = F.grid_sample(data[i:i + 1].float(), grid[j:j + 1], mode="bilinear", padding_mode="zeros",
                                   align_corners=True)[0]
        if seg is not None:
            rows = resampled.to(device)
            seg_out[rows] = _resample_labels(seg, grid, label_interpolation, rows)
    return out, seg_out
