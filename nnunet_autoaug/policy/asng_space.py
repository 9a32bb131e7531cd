"""The ASNG search space of Xu, Li & Zhu (MICCAI 2020): searched intervals [LB, RB] plus application probabilities.

18 categorical variables with 11 levels each; level j of a variable with range (lo, hi) means lo + j (hi - lo) / 10
(so probabilities move in steps of 0.1 and rotation bounds in steps of pi/60). Mirroring is always on (p = 0.5 per
axis) and not searched, as in the paper.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from nnunet_autoaug.augment.params import AugmentParams
from nnunet_autoaug.policy import draw
from nnunet_autoaug.policy.policy import Policy
from nnunet_autoaug.policy.space import Extent, SamplingContext, SearchSpace, check_number

LEVELS = 11
_PI6 = math.pi / 6
# op: (LB range, RB range, draw rule inside [LB, RB]). "around_one" is nnU-Net's 50/50 rule (paper: bg v1 scaling).
INTERVALS: dict[str, tuple[tuple[float, float], tuple[float, float], str]] = {
    "scale": ((0.5, 1.0), (1.0, 1.5), "around_one"),
    "rot_x": ((-_PI6, 0.0), (0.0, _PI6), "uniform"),
    "rot_y": ((-_PI6, 0.0), (0.0, _PI6), "uniform"),
    "rot_z": ((-_PI6, 0.0), (0.0, _PI6), "uniform"),
    "elastic_alpha": ((0.0, 450.0), (450.0, 900.0), "uniform"),
    "elastic_sigma": ((0.0, 7.0), (7.0, 14.0), "uniform"),  # the engine clamps sigma from below
    "gamma": ((0.5, 1.0), (1.0, 1.5), "around_one"),
}
# probability variable: the interval ops it gates (one coin per sample for the whole group)
PROBABILITIES: dict[str, tuple[str, ...]] = {
    "p_scale": ("scale",),
    "p_rot": ("rot_x", "rot_y", "rot_z"),
    "p_eldef": ("elastic_alpha", "elastic_sigma"),
    "p_gamma": ("gamma",),
}
RANGES: dict[str, tuple[float, float]] = {
    **{f"{op}_{side}": r for op, (lb, rb, _) in INTERVALS.items() for side, r in (("lb", lb), ("rb", rb))},
    **{p: (0.0, 1.0) for p in PROBABILITIES},
}


class ASNGSpace(SearchSpace):
    name = "asng"
    description = "Xu et al. 2020: intervals for scale, rotation x/y/z, elastic alpha/sigma, gamma + 4 probabilities"
    levels = LEVELS

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(RANGES)

    def check_value(self, variable: str, value: object) -> float:
        return check_number(self.name, variable, value, 0, LEVELS - 1, integer=True)

    def level_value(self, variable: str, level: torch.Tensor | float) -> torch.Tensor:
        lo, hi = RANGES[variable]
        return lo + torch.as_tensor(level, dtype=torch.float32) * (hi - lo) / (LEVELS - 1)

    def policy_from_levels(self, levels: Sequence[int]) -> Policy:
        """The policy of one ASNG sample (levels in variable order, e.g. the argmax of a one-hot row)."""
        return Policy.create(self.name, dict(zip(self.variables, (int(v) for v in levels))))

    def random_policy(self, generator: torch.Generator) -> Policy:
        return self.policy_from_levels(torch.randint(0, LEVELS, (len(self.variables),), generator=generator).tolist())

    def _values(self, policies: Sequence[Policy]) -> dict[str, torch.Tensor]:
        levels = torch.tensor([[lv for _, lv in p.values] for p in policies], dtype=torch.float32)
        return {v: self.level_value(v, levels[:, i]) for i, v in enumerate(self.variables)}

    def sample(self, policies: Sequence[Policy], generator: torch.Generator,
               context: SamplingContext = SamplingContext()) -> AugmentParams:
        n, v = len(policies), self._values(policies)

        def interval(op: str, channels: int = 1) -> torch.Tensor:
            rule = draw.around_one if INTERVALS[op][2] == "around_one" else draw.uniform
            if channels > 1:
                return draw.per_channel(rule, v[f"{op}_lb"], v[f"{op}_rb"], n, channels, generator)
            return rule(v[f"{op}_lb"], v[f"{op}_rb"], n, generator)

        def gate(prob: str) -> torch.Tensor:
            return draw.bernoulli(v[prob], n, generator)

        params = AugmentParams.identity(n, generator)
        on = gate("p_scale")
        scale = torch.where(on, interval("scale"), 1.0)[:, None].expand(n, 3).clone()
        on = gate("p_rot")
        rotation = torch.stack([torch.where(on, interval(a), 0.0) for a in ("rot_x", "rot_y", "rot_z")], dim=1)
        on = gate("p_eldef")
        alpha, sigma = torch.where(on, interval("elastic_alpha"), 0.0), torch.where(on, interval("elastic_sigma"), 0.0)
        on = gate("p_gamma")  # per image channel within the sampled interval, as nnU-Net draws gamma
        gamma = torch.where(on[:, None] if context.channels > 1 else on, interval("gamma", context.channels), 1.0)
        return params.with_values(scale=scale, rotation=rotation, elastic_alpha=alpha, elastic_sigma=sigma,
                                  gamma=gamma, mirror=draw.mirror(n, 0.5, context.mirror_axes, generator))

    def extent(self, policy: Policy | None, context: SamplingContext = SamplingContext()) -> Extent:
        if policy is None:
            return Extent((_PI6, _PI6, _PI6), max(INTERVALS["scale"][1]))
        val = {k: float(self.level_value(k, lv)) for k, lv in policy.values}
        rot = tuple(max(abs(val[f"{a}_lb"]), abs(val[f"{a}_rb"])) if val["p_rot"] > 0 else 0.0
                    for a in ("rot_x", "rot_y", "rot_z"))
        scale = max(val["scale_lb"], val["scale_rb"], 1.0) if val["p_scale"] > 0 else 1.0
        return Extent(rot, scale)

    def readable(self, policy: Policy) -> dict[str, object]:
        val = {k: float(self.level_value(k, lv)) for k, lv in policy.values}
        out: dict[str, object] = {}
        for op in INTERVALS:
            lb, rb = val[f"{op}_lb"], val[f"{op}_rb"]
            out[op] = [round(math.degrees(lb), 1), round(math.degrees(rb), 1)] if op.startswith("rot") \
                else [round(lb, 3), round(rb, 3)]
        out.update({p: round(val[p], 2) for p in PROBABILITIES})
        return out

    def summary(self, policy: Policy) -> str:
        r = self.readable(policy)
        rot = " ".join(f"{a[-1]}{r[a][0]:+.0f}..{r[a][1]:+.0f}" for a in ("rot_x", "rot_y", "rot_z"))
        return (f"scale {r['scale'][0]:.2f}-{r['scale'][1]:.2f}@{r['p_scale']:.1f} | rot {rot} deg@{r['p_rot']:.1f} | "
                f"elastic a{r['elastic_alpha'][0]:.0f}-{r['elastic_alpha'][1]:.0f} "
                f"s{r['elastic_sigma'][0]:.1f}-{r['elastic_sigma'][1]:.1f}@{r['p_eldef']:.1f} | "
                f"gamma {r['gamma'][0]:.2f}-{r['gamma'][1]:.2f}@{r['p_gamma']:.1f}")


ASNG_SPACE = ASNGSpace()
