"""The meta-gradient space (Li et al., "Learning the sampling distribution for data augmentation"): one op per sample.

A policy is a probability distribution over *choices*: ``identity`` or an (op, magnitude level) pair, 5 levels per
op. Each level is an interval around its magnitude, as in the published code (e.g. rotation 25 deg means
+-U(20, 30) deg). This is the slides' op list, not the code's 15 independent groups (see docs/ALGORITHMS.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from nnunet_autoaug.augment.params import AugmentParams
from nnunet_autoaug.policy import draw
from nnunet_autoaug.policy.policy import Policy
from nnunet_autoaug.policy.space import Extent, PolicyError, SamplingContext, SearchSpace, check_number

# op: (kind, AugmentParams field, 5 magnitudes, half-width of each level's interval)
OPS: dict[str, tuple[str, str, tuple[float, ...], float]] = {
    "scale": ("zoom", "scale", (0.05, 0.15, 0.25, 0.35, 0.45), 0.05),  # factor 1+-m (zoom in or out, 50/50)
    "rot_x": ("rotate", "rotation", (5.0, 15.0, 25.0, 35.0, 45.0), 5.0),  # degrees, random sign
    "rot_y": ("rotate", "rotation", (5.0, 15.0, 25.0, 35.0, 45.0), 5.0),
    "rot_z": ("rotate", "rotation", (5.0, 15.0, 25.0, 35.0, 45.0), 5.0),
    "mirror": ("mirror", "mirror", (0.1, 0.3, 0.5, 0.7, 0.9), 0.0),  # per-axis flip probability
    "contrast": ("factor", "contrast", (0.1, 0.2, 0.3, 0.4, 0.5), 0.05),  # factor 1+-m, 50/50 above/below 1
    "brightness": ("factor", "brightness", (0.05, 0.1, 0.15, 0.2, 0.25), 0.025),
    "noise": ("uniform", "noise_std", (0.025, 0.05, 0.075, 0.1, 0.125), 0.0125),
    "gamma": ("factor", "gamma", (0.1, 0.2, 0.3, 0.4, 0.5), 0.05),
}
MAGNITUDES = 5
IDENTITY = "identity"
CHOICES: tuple[str, ...] = (IDENTITY, *(f"{op}:{lv}" for op in OPS for lv in range(MAGNITUDES)))
_AXIS = {"rot_x": 0, "rot_y": 1, "rot_z": 2}


class MetaSpace(SearchSpace):
    name = "meta"
    description = "identity or one (op, magnitude) per sample; ops: scale, rot x/y/z, mirror, contrast, brightness, " \
                  "noise, gamma; 5 magnitudes each"

    @property
    def variables(self) -> tuple[str, ...]:
        return CHOICES

    def check_value(self, variable: str, value: object) -> float:
        return check_number(self.name, variable, value, 0.0, 1.0)

    def check_joint(self, values: dict[str, float], source: str) -> None:
        total = sum(values.values())
        if abs(total - 1.0) > 1e-4:
            raise PolicyError(f"{source}: the probabilities of space '{self.name}' must sum to 1, got {total:.6f}.")

    def random_policy(self, generator: torch.Generator) -> Policy:
        w = -torch.log(torch.rand(len(CHOICES), generator=generator).clamp_min(1e-12))  # flat Dirichlet
        return self.policy_from_probabilities(w / w.sum())

    def policy_from_probabilities(self, probs: torch.Tensor) -> Policy:
        probs = probs.double() / probs.double().sum()
        return Policy.create(self.name, dict(zip(CHOICES, probs.tolist())))

    def sample_choices(self, policies: Sequence[Policy], generator: torch.Generator) -> torch.Tensor:
        probs = torch.tensor([[p for _, p in pol.values] for pol in policies], dtype=torch.float64)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    def sample(self, policies: Sequence[Policy], generator: torch.Generator,
               context: SamplingContext = SamplingContext()) -> AugmentParams:
        return self.params_for_choices(self.sample_choices(policies, generator), generator, context)

    def params_for_choices(self, choices: torch.Tensor, generator: torch.Generator,
                           context: SamplingContext = SamplingContext()) -> AugmentParams:
        """Parameters for given choice indices: the meta-gradient trainer picks the choice by Gumbel-max itself."""
        n = len(choices)
        params = AugmentParams.identity(n, generator)
        fields = {name: getattr(params, name).clone() for name in ("scale", "rotation", "mirror", "contrast",
                                                                     "brightness", "noise_std", "gamma")}
        for i, c in enumerate(choices.tolist()):
            if c == 0:
                continue
            op, level = CHOICES[c].split(":")
            kind, field, mags, width = OPS[op]
            m = draw.uniform(mags[int(level)] - width, mags[int(level)] + width, 1, generator)
            if kind == "zoom":
                factor = 1 + m
                fields[field][i] = torch.where(draw.bernoulli(0.5, 1, generator), 1 / factor, factor)
            elif kind == "rotate":
                fields[field][i, _AXIS[op]] = torch.deg2rad(m * draw.random_sign(1, generator))[0]
            elif kind == "mirror":
                fields[field][i] = draw.mirror(1, m, context.mirror_axes, generator)[0]
            elif kind == "factor":
                fields[field][i] = (1 + m * draw.random_sign(1, generator))[0]
            else:
                fields[field][i] = m[0]
        return params.with_values(**fields)

    def extent(self, policy: Policy | None, context: SamplingContext = SamplingContext()) -> Extent:
        used = set(CHOICES) if policy is None else {c for c, p in policy.values if p > 0}
        rot = []
        for axis in ("rot_x", "rot_y", "rot_z"):
            levels = [lv for lv in range(MAGNITUDES) if f"{axis}:{lv}" in used]
            rot.append(math.radians(OPS[axis][2][max(levels)] + OPS[axis][3]) if levels else 0.0)
        zooms = [lv for lv in range(MAGNITUDES) if f"scale:{lv}" in used]
        scale = 1 + OPS["scale"][2][max(zooms)] + OPS["scale"][3] if zooms else 1.0
        return Extent(tuple(rot), scale, mirrors=any(c.startswith("mirror:") for c in used))

    def readable(self, policy: Policy) -> dict[str, object]:
        def label(choice: str) -> str:
            if choice == IDENTITY:
                return choice
            op, level = choice.split(":")
            return f"{op} {OPS[op][2][int(level)]:g}"
        return {label(c): round(p, 4) for c, p in sorted(policy.values, key=lambda cp: -cp[1]) if p > 0}

    def summary(self, policy: Policy) -> str:
        top = list(self.readable(policy).items())[:5]
        return " ".join(f"{k}:{v:.2f}" for k, v in top)


META_SPACE = MetaSpace()
