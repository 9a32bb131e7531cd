"""The meta-gradient space (Li et al., "Learning the sampling distribution for data augmentation"): one op per sample.

A policy is a probability distribution over *choices*: ``identity`` or an (op, magnitude level) pair, 5 levels per
op. Each level is an interval around its magnitude, as in the published code (e.g. rotation 25 deg means
+-U(20, 30) deg). This is the slides' op list, not the code's 15 independent groups (see docs/ALGORITHMS.md).

``MetaSpace(harmful=...)`` adds deliberately harmful choices for the seed's proof of concept (a learned
distribution must drop them). The engine cannot express them, so ``apply_harmful`` applies them after the engine;
such a space is not registered, so its distributions are never written or read as policy files.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

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

# The published code's "nnU-Net-like" start (--org 2) gives each op group identity probability 1 - p, with p the
# probability nnU-Net applies that op (its values for the groups this space shares with it).
NNUNET_LIKE_P: dict[str, float] = {"scale": 0.2, "rot_x": 0.1, "rot_y": 0.1, "rot_z": 0.1, "mirror": 0.5,
                                   "contrast": 0.15, "brightness": 0.15, "noise": 0.1, "gamma": 0.3}
HARMFUL_PREFIX = "harmful:"
HARMFUL_OPS: dict[str, str] = {
    "image_noise": "the image is replaced by N(0, 1) noise; the labels stay",
    "label_shuffle": "the label values are permuted with no value kept (background included); the image stays",
}


class MetaSpace(SearchSpace):
    name = "meta"
    description = "identity or one (op, magnitude) per sample; ops: scale, rot x/y/z, mirror, contrast, brightness, " \
                  "noise, gamma; 5 magnitudes each"

    def __init__(self, harmful: Sequence[str] = ()) -> None:
        unknown = sorted(set(harmful) - set(HARMFUL_OPS))
        if unknown:
            raise PolicyError(f"unknown harmful op(s) {unknown}; known: {sorted(HARMFUL_OPS)}.")
        self.harmful = tuple(dict.fromkeys(harmful))
        if self.harmful:  # an unregistered name: Policy.create refuses it instead of mixing it up with 'meta'
            self.name = "meta_harmful"
            self.description = f"{MetaSpace.description}; plus harmful: {', '.join(self.harmful)}"

    @property
    def variables(self) -> tuple[str, ...]:
        return CHOICES + tuple(HARMFUL_PREFIX + h for h in self.harmful)

    def op_of(self, choice: str) -> str:
        """``identity``, the op name of an (op, level) choice, or the harmful choice itself."""
        return choice if choice == IDENTITY or choice.startswith(HARMFUL_PREFIX) else choice.split(":")[0]

    def ops(self) -> tuple[str, ...]:
        """Distinct ops in variable order (what the stacked-probability plot shows)."""
        return tuple(dict.fromkeys(self.op_of(c) for c in self.variables))

    def nnunet_like_probabilities(self, harmful_share: float = 0.0) -> torch.Tensor:
        """Start close to nnU-Net's default augmentation (float64, sums to 1).

        One op per sample cannot reproduce nnU-Net's independent coins (their probabilities sum to 1.7), so:
        identity gets the probability that nnU-Net's coins apply none of these ops (prod of 1 - p = 0.133), each op
        a share of the rest proportional to its nnU-Net probability p, split equally over its 5 magnitudes (as the
        published code splits p over a group's levels). Harmful choices, if any, share ``harmful_share`` equally.
        """
        if self.harmful and not 0 < harmful_share < 1:
            raise ValueError(f"harmful_share must be in (0, 1) for a space with harmful ops, got {harmful_share}")
        none = math.prod(1 - p for p in NNUNET_LIKE_P.values())
        total = sum(NNUNET_LIKE_P.values())
        probs = [none] + [(1 - none) * NNUNET_LIKE_P[op] / total / MAGNITUDES for op in OPS for _ in range(MAGNITUDES)]
        probs = torch.tensor(probs, dtype=torch.float64)
        if not self.harmful:
            return probs
        harmful = torch.full((len(self.harmful),), harmful_share / len(self.harmful), dtype=torch.float64)
        return torch.cat([probs * (1 - harmful_share), harmful])

    def apply_harmful(self, choices: torch.Tensor, data: torch.Tensor, seg: torch.Tensor, num_classes: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the harmful choices to the engine's output (rows whose choice is harmful; others unchanged).

        ``seg`` holds label values 0..num_classes-1 and -1 outside the image (kept). Draws come from ``generator``
        on the CPU, so the result does not depend on the device.
        """
        if not self.harmful:
            return data, seg
        data, seg = data.clone(), seg.clone()
        for i, c in enumerate(choices.tolist()):
            choice = self.variables[c]
            if choice == HARMFUL_PREFIX + "image_noise":
                data[i] = torch.randn(data[i].shape, generator=generator).to(data.device, data.dtype)
            elif choice == HARMFUL_PREFIX + "label_shuffle":
                # cyclic shift by a random non-zero offset: a permutation with no fixed point
                offset = int(torch.randint(1, num_classes, (1,), generator=generator))
                inside = seg[i] >= 0
                seg[i] = torch.where(inside, (seg[i] + offset) % num_classes, seg[i])
        return data, seg

    def check_value(self, variable: str, value: object) -> float:
        return check_number(self.name, variable, value, 0.0, 1.0)

    def check_joint(self, values: dict[str, float], source: str) -> None:
        total = sum(values.values())
        if abs(total - 1.0) > 1e-4:
            raise PolicyError(f"{source}: the probabilities of space '{self.name}' must sum to 1, got {total:.6f}.")

    def random_policy(self, generator: torch.Generator) -> Policy:
        return self.policy_from_probabilities(draw.flat_dirichlet((len(self.variables),), generator))

    def policy_from_probabilities(self, probs: torch.Tensor) -> Policy:
        if self.harmful:
            raise PolicyError(f"space '{self.name}' (with harmful ops) is a proof-of-concept space: it has no policy "
                              f"files. Use the plain 'meta' space for policies.")
        probs = probs.double() / probs.double().sum()
        return Policy.create(self.name, dict(zip(self.variables, probs.tolist())))

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
            if c == 0 or c >= len(CHOICES):  # identity; harmful choices are applied after the engine
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
            if choice == IDENTITY or choice.startswith(HARMFUL_PREFIX):
                return choice
            op, level = choice.split(":")
            return f"{op} {OPS[op][2][int(level)]:g}"
        return {label(c): round(p, 4) for c, p in sorted(policy.values, key=lambda cp: -cp[1]) if p > 0}

    def op_probabilities(self, probabilities: Sequence[float]) -> dict[str, float]:
        """Probability per op, summed over its magnitudes (``probabilities`` in variable order)."""
        out = dict.fromkeys(self.ops(), 0.0)
        for choice, p in zip(self.variables, probabilities):
            out[self.op_of(choice)] += float(p)
        return out

    def summary(self, policy: Policy) -> str:
        """The most likely ops, magnitudes summed: one P spreads an op over 5 magnitudes, so per choice it would
        show five near-equal entries of one op."""
        per_op = self.op_probabilities([p for _, p in policy.values])
        return " ".join(f"{op}:{p:.2f}" for op, p in sorted(per_op.items(), key=lambda kv: -kv[1])[:6])


META_SPACE = MetaSpace()
