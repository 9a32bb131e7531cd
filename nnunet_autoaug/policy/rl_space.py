"""A continuous space of op probabilities (the RL training-strategy search of Yang et al. 2019).

Each op has a fixed magnitude range (nnU-Net's own where nnU-Net has the op); a policy is the probability of
applying each op to a sample. The ``nnunet_default`` preset reproduces nnU-Net's default augmentation with it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from nnunet_autoaug.augment.params import FIELD_SPECS, AugmentParams
from nnunet_autoaug.policy import draw
from nnunet_autoaug.policy.policy import Policy
from nnunet_autoaug.policy.space import Extent, SamplingContext, SearchSpace, check_number

# Scalar ops: op -> (AugmentParams field, draw rule, magnitude range). One coin per sample and op.
SCALAR_OPS: dict[str, tuple[str, str, tuple[float, float]]] = {
    "scaling": ("scale", "uniform", (0.7, 1.4)),  # isotropic, as nnU-Net (p_synchronize_scaling_across_axes=1)
    "noise": ("noise_std", "uniform", (0.0, 0.1)),
    "blur": ("blur_sigma", "uniform", (0.5, 1.0)),
    "sharpen": ("sharpen", "uniform", (0.1, 1.0)),
    "brightness": ("brightness", "around_one", (0.75, 1.25)),
    "shift": ("shift", "uniform", (-0.25, 0.25)),
    "contrast": ("contrast", "around_one", (0.75, 1.25)),
    "lowres": ("lowres", "uniform", (0.5, 1.0)),
    "inv_gamma": ("inv_gamma", "around_one", (0.7, 1.5)),
    "gamma": ("gamma", "around_one", (0.7, 1.5)),
}
# nnU-Net draws these with synchronize_channels=False: one value per image channel (noise shares its std). Blur and
# low resolution also pick each channel of a chosen sample with p_per_channel 0.5; the others change every channel.
PER_CHANNEL_OPS: dict[str, float] = {"blur": 0.5, "brightness": 1.0, "contrast": 1.0, "lowres": 0.5, "inv_gamma": 1.0,
                                     "gamma": 1.0}
ELASTIC_ALPHA, ELASTIC_SIGMA = (0.0, 900.0), (9.0, 13.0)  # nnU-Net v1 defaults, voxels
# rotation: each axis U(-r, r) with r nnU-Net's range for the configuration; mirror: the value is the per-axis p
OPS: tuple[str, ...] = ("rotation", *SCALAR_OPS, "elastic", "mirror")
_RULES: dict[str, Callable] = {"uniform": draw.uniform, "around_one": draw.around_one}


class RLSpace(SearchSpace):
    name = "rl"
    description = "probability of each op (rotation, scaling, elastic, mirror, intensity ops) with fixed magnitudes"

    @property
    def variables(self) -> tuple[str, ...]:
        return OPS

    def check_value(self, variable: str, value: object) -> float:
        return check_number(self.name, variable, value, 0.0, 1.0)

    def random_policy(self, generator: torch.Generator) -> Policy:
        return Policy.create(self.name, dict(zip(OPS, torch.rand(len(OPS), generator=generator).tolist())))

    def sample(self, policies: Sequence[Policy], generator: torch.Generator,
               context: SamplingContext = SamplingContext()) -> AugmentParams:
        n = len(policies)
        p = {op: torch.tensor([pol[op] for pol in policies]) for op in OPS}
        fields: dict[str, torch.Tensor] = {}
        for op, (field, rule, (lo, hi)) in SCALAR_OPS.items():
            if op in PER_CHANNEL_OPS and context.channels > 1:
                on = self._channels_on(p[op], PER_CHANNEL_OPS[op], n, context.channels, generator)
                value = torch.where(on, draw.per_channel(_RULES[rule], lo, hi, n, context.channels, generator),
                                    FIELD_SPECS[field][0])
            else:
                value = torch.where(draw.bernoulli(p[op], n, generator), _RULES[rule](lo, hi, n, generator),
                                    FIELD_SPECS[field][0])
            fields[field] = value[:, None].expand(n, 3).clone() if field == "scale" else value
        r = context.nnunet_rotation
        on = draw.bernoulli(p["rotation"], n, generator)
        fields["rotation"] = torch.stack([torch.where(on, draw.uniform(-r, r, n, generator), 0.0) for _ in range(3)], 1)
        on = draw.bernoulli(p["elastic"], n, generator)
        fields["elastic_alpha"] = torch.where(on, draw.uniform(*ELASTIC_ALPHA, n, generator), 0.0)
        fields["elastic_sigma"] = torch.where(on, draw.uniform(*ELASTIC_SIGMA, n, generator), 0.0)
        fields["mirror"] = draw.mirror(n, p["mirror"], context.mirror_axes, generator)
        return AugmentParams.identity(n, generator).with_values(**fields)

    @staticmethod
    def _channels_on(p: torch.Tensor, p_per_channel: float, n: int, channels: int,
                     generator: torch.Generator) -> torch.Tensor:
        """(n, channels) which channels an op changes, in nnU-Net's two stages: the sample with p / p_per_channel,
        then each of its channels with p_per_channel (capped so that the sample's chance stays <= 1). A channel is
        changed with probability p, the policy's value; for nnunet_default this is nnU-Net's pipeline exactly."""
        gate = (p / p_per_channel).clamp(max=1.0)
        per_channel = torch.where(gate > 0, p / gate.clamp(min=1e-12), 0.0)
        return draw.bernoulli(gate, n, generator)[:, None] & (torch.rand(n, channels, generator=generator)
                                                               < per_channel[:, None])

    def extent(self, policy: Policy | None, context: SamplingContext = SamplingContext()) -> Extent:
        rotates = policy is None or policy["rotation"] > 0
        scales = policy is None or policy["scaling"] > 0
        r = context.nnunet_rotation if rotates else 0.0
        return Extent((r, r, r), SCALAR_OPS["scaling"][2][1] if scales else 1.0,
                      mirrors=policy is None or policy["mirror"] > 0)

    def readable(self, policy: Policy) -> dict[str, object]:
        return {op: round(p, 3) for op, p in policy.values}

    def summary(self, policy: Policy) -> str:
        return " ".join(f"{op}@{p:.2f}" for op, p in policy.values if p > 0) or "no augmentation"


RL_SPACE = RLSpace()

# nnU-Net 2.8's default training augmentation expressed in this space. nnU-Net draws blur and low-resolution per
# channel with p 0.5 inside a p 0.2 / 0.25 gate, so their per-sample probability is 0.1 / 0.125 for one channel.
NNUNET_DEFAULT = {"rotation": 0.2, "scaling": 0.2, "noise": 0.1, "blur": 0.1, "sharpen": 0.0, "brightness": 0.15,
                  "shift": 0.0, "contrast": 0.15, "lowres": 0.125, "inv_gamma": 0.1, "gamma": 0.3, "elastic": 0.0,
                  "mirror": 0.5}
