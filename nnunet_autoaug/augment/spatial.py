"""Spatial part of the engine: scale, rotation, mirroring and elastic deformation in ONE resampling pass.

Everything here works on k-D data (k = 2 or 3) shaped (N, C, *in_shape); the engine maps 2D, 3D and dummy-2D
batches onto it. Interpolating once (instead of once per op) avoids compounding blur and keeps labels clean.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

# Above this sigma the elastic noise is drawn on a coarser grid (see elastic_displacement).
COARSE_MIN_SIGMA = 4.0
# Labels resampled per grid_sample call: bounds the one-hot buffer to LABEL_CHUNK input-sized volumes per sample
# even for datasets with 100+ classes, while still sharing the interpolation weights within a chunk.
LABEL_CHUNK = 8


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


def elastic_displacement(shape: Sequence[int], alpha: float, sigma: float, generator: torch.Generator,
                         device: torch.device, coarse: bool = True) -> torch.Tensor:
    """Displacement field (ndim, *shape) in voxels: alpha * (U(-1, 1) noise smoothed by a Gaussian of std sigma).

    Semantics of batchgenerators v1 / the seed paper (scipy gaussian_filter, mode='constant', truncate=4).
    With ``coarse`` and a large sigma the noise is drawn on a grid with integer spacing f, smoothed with sigma / f
    and linearly upsampled: smoothed white noise has std proportional to sigma**(-ndim / 2), so the factor
    f**(-ndim / 2) keeps the displacement statistics, at about f**ndim times less work.
    """
    ndim = len(shape)
    f = int(sigma // 2) if coarse and sigma >= COARSE_MIN_SIGMA else 1
    grid_shape = [math.ceil((n - 1) / f) + 1 for n in shape]
    noise = torch.rand((ndim, *grid_shape), generator=generator, device=device) * 2 - 1
    sigma_grid = sigma / f
    field = gaussian_filter(noise, sigma_grid, range(1, ndim + 1), radius=int(4 * sigma_grid + 0.5))
    if f > 1:
        fine_shape = [(m - 1) * f + 1 for m in grid_shape]  # grid nodes land exactly on voxels 0, f, 2f, ...
        mode = "bilinear" if ndim == 2 else "trilinear"
        field = F.interpolate(field[None], size=fine_shape, mode=mode, align_corners=True)[0]
        field = field[(slice(None), *(slice(0, n) for n in shape))] * f ** (-ndim / 2)
    return field * alpha


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


def _sampling_grid(in_shape: Sequence[int], out_shape: Sequence[int], affine: torch.Tensor, signs: torch.Tensor,
                   displacement: torch.Tensor | None) -> torch.Tensor:
    """grid_sample grid (n, *out, k) for x_in = offset + c + A (M x_c + d(x_c)), x_c = x_out - c, c = (out-1)/2."""
    device, k = affine.device, len(out_shape)
    centre = torch.tensor([(o - 1) / 2 for o in out_shape], device=device)
    offset = torch.tensor([(i - o) // 2 for i, o in zip(in_shape, out_shape)], device=device)
    axes = [torch.arange(o, dtype=torch.float32, device=device) for o in out_shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) - centre
    y = coords * signs.view(-1, *[1] * k, k)
    if displacement is not None:
        y = y + displacement
    x_in = torch.einsum("n...j,nij->n...i", y, affine) + (offset + centre)
    # align_corners=True: -1 and 1 are the centres of the first and last voxel
    extent = torch.tensor([max(i - 1, 1) for i in in_shape], dtype=torch.float32, device=device)
    return (2 * x_in / extent - 1).flip(-1)  # grid_sample wants (W, H, D) order


def _resample_labels(seg: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample a label map without inventing labels; samples from outside the input become -1."""
    if mode == "nearest":
        # +1 so that zero padding lands on -1 after the shift back
        out = F.grid_sample(seg.float() + 1, grid, mode="nearest", padding_mode="zeros", align_corners=True) - 1
        return out.to(seg.dtype)
    # Per-label linear: argmax over interpolated one-hot masks. Label -1 (padding) and 'outside the input' share
    # one score, 1 - sum of all other weights; it is the lowest label, so it wins ties as in a plain argmax.
    labels = torch.unique(seg)
    labels = labels[labels != -1]
    n, c, k = seg.shape[0], seg.shape[1], grid.shape[-1]
    out_shape = grid.shape[1:-1]
    if labels.numel() == 0:
        return torch.full((n, c, *out_shape), -1, dtype=seg.dtype, device=seg.device)
    best = torch.full((n, c, *out_shape), -1.0, device=seg.device)
    best_idx = torch.zeros((n, c, *out_shape), dtype=torch.long, device=seg.device)
    total = torch.zeros_like(best)
    for start in range(0, labels.numel(), LABEL_CHUNK):
        chunk = labels[start:start + LABEL_CHUNK]
        onehot = (seg.unsqueeze(2) == chunk.view(1, 1, -1, *[1] * k)).float().flatten(1, 2)
        weights = F.grid_sample(onehot, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        weights = weights.unflatten(1, (c, chunk.numel()))
        total += weights.sum(2)
        score, idx = weights.max(2)  # first maximum: lower label wins ties, as one argmax over all labels would
        better = score > best
        best = torch.where(better, score, best)
        best_idx = torch.where(better, idx + start, best_idx)
    out = torch.where(1 - total >= best, torch.full_like(labels[:1], -1), labels[best_idx])
    return out.to(seg.dtype)


def spatial_transform(data: torch.Tensor, seg: torch.Tensor | None, out_shape: Sequence[int], *,
                      scale: torch.Tensor, rotation: torch.Tensor, mirror: torch.Tensor,
                      elastic_alpha: torch.Tensor, elastic_sigma: torch.Tensor, seeds: torch.Tensor,
                      label_interpolation: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """k-D core. Per-sample CPU params: scale (n, k); rotation (n,) for k = 2 or (n, 3) for k = 3; mirror (n, k)
    bool; elastic_alpha, elastic_sigma (n,) with sigma already clamped; seeds (n,) for the elastic noise.

    Samples without rotation, scaling or elastic deformation are cropped and flipped exactly; only the others
    pay for (and are softened by) interpolation.
    """
    device, k = data.device, len(out_shape)
    in_shape = data.shape[2:]
    needs_grid = (rotation != 0).view(len(seeds), -1).any(1) | (scale != 1).any(1) | (elastic_alpha > 0)
    exact, resampled = (~needs_grid).nonzero().flatten(), needs_grid.nonzero().flatten()
    out = data.new_empty((data.shape[0], data.shape[1], *out_shape))
    seg_out = None if seg is None else seg.new_empty((seg.shape[0], seg.shape[1], *out_shape))

    if exact.numel():
        rows = exact.to(device)
        out[rows] = flip_per_sample(centre_crop(data[rows], out_shape), mirror[exact])
        if seg is not None:
            seg_out[rows] = flip_per_sample(centre_crop(seg[rows], out_shape), mirror[exact])

    if resampled.numel():
        rows = resampled.to(device)
        affine = scale[resampled].to(device).unsqueeze(-1) * rotation_matrix(rotation[resampled].to(device))
        signs = 1 - 2 * mirror[resampled].to(device, torch.float32)
        displacement = None
        if (elastic_alpha[resampled] > 0).any():
            displacement = torch.zeros((len(resampled), k, *out_shape), device=device)
            for j, i in enumerate(resampled.tolist()):
                if elastic_alpha[i] > 0:
                    gen = seeded_generator(int(seeds[i]), device)
                    displacement[j] = elastic_displacement(out_shape, float(elastic_alpha[i]),
                                                           float(elastic_sigma[i]), gen, device)
            displacement = displacement.movedim(1, -1)
        grid = _sampling_grid(in_shape, out_shape, affine, signs, displacement)
        out[rows] = F.grid_sample(data[rows].float(), grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=True).to(data.dtype)
        if seg is not None:
            seg_out[rows] = _resample_labels(seg[rows], grid, label_interpolation)
    return out, seg_out
