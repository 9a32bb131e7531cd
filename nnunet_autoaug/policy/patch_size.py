"""How large a crop the data loader must take so that rotation and zoom-out never sample outside it.

nnU-Net sizes its crop from a fixed +-30 deg and scale 0.85 (its own code notes the mismatch with the 0.7-1.4 it
actually samples). Here the crop follows the largest rotation and scale of the policy or search space in use.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from nnunet_autoaug.policy.space import Extent


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    # same convention as the engine: R = R0(a) @ R1(b) @ R2(c), Rk rotating the plane of the other two axes
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    r0 = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    r1 = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    r2 = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return r0 @ r1 @ r2


def required_input_size(patch_size: Sequence[int], extent: Extent, dummy_2d: bool = False,
                        steps: int = 9) -> tuple[int, ...]:
    """Smallest crop (same parity as the patch, so the centre crop is exact) covering every rotated/scaled patch."""
    ps = np.asarray(patch_size, dtype=float)
    ndim = len(ps)
    half = (ps - 1) / 2
    rot = list(extent.max_rotation)
    if ndim == 2:  # the in-plane angle is the one about axis 0: embed the 2D patch as the (1, 2) plane
        half, rot = np.concatenate([[0.0], half]), [rot[0], 0.0, 0.0]
    elif dummy_2d:
        rot = [rot[0], 0.0, 0.0]
    grids = [np.linspace(-r, r, steps) if r > 0 else [0.0] for r in rot]
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))
    reach = np.zeros(3)
    for a, b, c in itertools.product(*grids):
        reach = np.maximum(reach, np.abs(corners @ _rotation(a, b, c).T).max(axis=0))
    scale = np.full(3, max(extent.max_scale, 1.0))
    if ndim == 2:
        reach, scale = reach[1:], scale[1:]
    elif dummy_2d:
        scale[0] = 1.0
    needed = np.ceil(2 * reach * scale + 1 - 1e-6).astype(int)
    needed = np.maximum(needed, ps.astype(int))
    needed += (needed - ps.astype(int)) % 2  # keep (in - out) even: identity maps voxel centres exactly
    return tuple(int(v) for v in needed)
