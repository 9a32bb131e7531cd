"""A distribution over ASNG policies: the theta of a search (probability of each level of each ASNG variable).

An ASNG search trains its weights with policies drawn from theta, not with the most likely policy it reports; when
theta has not settled, that one policy is the mode of a broad distribution, and can be a harsh one (docs/BENCHMARKS.md
sections 4.16-4.17).
A policy of this space replays theta instead: every sample draws its own ASNG policy (each variable's level from
its row of theta), then that policy's parameters. The search writes its final theta as ``autoaug_theta.json``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nnunet_autoaug.augment.params import AugmentParams
from nnunet_autoaug.policy.asng_space import ASNG_SPACE, LEVELS
from nnunet_autoaug.policy.draw import flat_dirichlet
from nnunet_autoaug.policy.policy import Policy
from nnunet_autoaug.policy.space import Extent, PolicyError, SamplingContext, SearchSpace, check_number

THETA_FILE = "autoaug_theta.json"  # what the ASNG trainers write next to autoaug_policy.json


class ASNGThetaSpace(SearchSpace):
    name = "asng_theta"
    description = "a distribution over ASNG policies: for each ASNG variable, the probability of each of its 11 levels"

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(f"{v}:{level}" for v in ASNG_SPACE.variables for level in range(LEVELS))

    def check_value(self, variable: str, value: object) -> float:
        return check_number(self.name, variable, value, 0.0, 1.0)

    def check_joint(self, values: dict[str, float], source: str) -> None:
        rows = np.array(list(values.values())).reshape(len(ASNG_SPACE.variables), LEVELS)
        for variable, total in zip(ASNG_SPACE.variables, rows.sum(axis=1)):
            if abs(total - 1.0) > 1e-4:
                raise PolicyError(f"{source}: the probabilities of the levels of '{variable}' (fields "
                                  f"'{variable}:0' to '{variable}:{LEVELS - 1}') must sum to 1, got {total:.6f}.")

    def theta(self, policy: Policy) -> np.ndarray:
        """(variables, levels) probabilities."""
        return np.array([p for _, p in policy.values]).reshape(len(ASNG_SPACE.variables), LEVELS)

    def policy_from_theta(self, theta: np.ndarray | Sequence[Sequence[float]]) -> Policy:
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (len(ASNG_SPACE.variables), LEVELS):
            raise PolicyError(f"theta must have shape ({len(ASNG_SPACE.variables)}, {LEVELS}), got {theta.shape}.")
        theta = theta / theta.sum(axis=1, keepdims=True)
        return Policy.create(self.name, dict(zip(self.variables, theta.ravel().tolist())))

    def most_likely(self, policy: Policy) -> Policy:
        """The ASNG policy of the most likely levels (what the search reports as autoaug_policy.json)."""
        return ASNG_SPACE.policy_from_levels(self.theta(policy).argmax(axis=1).tolist())

    def draw_policies(self, policies: Sequence[Policy], generator: torch.Generator) -> list[Policy]:
        """One ASNG policy per sample, each variable's level drawn from its row of the sample's theta."""
        theta = torch.tensor(np.stack([self.theta(p) for p in policies]))  # (n, variables, levels)
        levels = torch.multinomial(theta.reshape(-1, LEVELS), 1, generator=generator).reshape(len(policies), -1)
        return [ASNG_SPACE.policy_from_levels(row) for row in levels.tolist()]

    def sample(self, policies: Sequence[Policy], generator: torch.Generator,
               context: SamplingContext = SamplingContext()) -> AugmentParams:
        return ASNG_SPACE.sample(self.draw_policies(policies, generator), generator, context)

    def extent(self, policy: Policy | None, context: SamplingContext = SamplingContext()) -> Extent:
        if policy is None:
            return ASNG_SPACE.extent(None, context)
        # the widest policy theta can draw: lowest possible left bound, highest right bound and probability
        possible = [np.flatnonzero(row > 0) for row in self.theta(policy)]
        widest = [int(levels.min() if v.endswith("_lb") else levels.max())
                  for v, levels in zip(ASNG_SPACE.variables, possible)]
        return ASNG_SPACE.extent(ASNG_SPACE.policy_from_levels(widest), context)

    def random_policy(self, generator: torch.Generator) -> Policy:
        return self.policy_from_theta(flat_dirichlet((len(ASNG_SPACE.variables), LEVELS), generator).numpy())

    def readable(self, policy: Policy) -> dict[str, object]:
        theta = self.theta(policy)
        return {"most_likely_policy": ASNG_SPACE.readable(self.most_likely(policy)),
                "probability_of_most_likely_level": dict(zip(ASNG_SPACE.variables,
                                                             np.round(theta.max(axis=1), 3).tolist()))}

    def summary(self, policy: Policy) -> str:
        return (f"draws per sample around {ASNG_SPACE.summary(self.most_likely(policy))} (mean max theta "
                f"{self.theta(policy).max(axis=1).mean():.3f})")


ASNG_THETA_SPACE = ASNGThetaSpace()
