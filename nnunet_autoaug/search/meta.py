"""A learnable sampling distribution over augmentation choices, trained by meta-gradients (Li et al.; JCSAugment).

P is a softmax over logits, one row per policy group (one row, or background- and foreground-centred patches).
Each sample picks its choice by Gumbel-max; its loss weight is the straight-through Gumbel-softmax weight
``w_b = 1 + (y_b[k] - sg(y_b[k]))``: exactly 1 in the forward pass, with the gradient of ``y_b[k]`` behind it, so a
derivative of the outer (search-split) loss with respect to ``w_b`` reaches the logits.

``step`` turns the per-sample derivatives ``dL_outer/dw_b`` into a logit gradient the way the published code
does: subtract the mean over the samples of the same group (baseline), divide by how many samples of that group
drew the same choice (count normalisation), chain through ``w_b`` by autograd, then one Adam step. One addition:
a group with a single sample in the batch (common with nnU-Net's 3D batch of 2 and class-specific groups) would
be centred to exactly zero, so it is centred with a running mean of that group's earlier batch means instead.
Nothing here imports nnU-Net, so it is tested on toy models (tests/test_meta_search.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import torch

from nnunet_autoaug.search.base import Searcher


@dataclass(frozen=True)
class GumbelDraw:
    """One Gumbel-max draw per sample. The noise is kept, so the straight-through weights can be rebuilt later
    from the same logits (no autograd graph is held between drawing and updating)."""

    choices: torch.Tensor  # (n,) long: argmax_k (logits[group] + noise)
    groups: torch.Tensor  # (n,) long: the policy group (row of the logits) each sample used
    noise: torch.Tensor  # (n, K) float64 Gumbel(0, 1)


class MetaDistribution(Searcher):
    def __init__(self, initial_probabilities: torch.Tensor, groups: int = 1, lr: float = 5e-4,
                 betas: tuple[float, float] = (0.9, 0.999), temperature: float = 1.0,
                 baseline_momentum: float = 0.9) -> None:
        initial = torch.as_tensor(initial_probabilities, dtype=torch.float64)
        if initial.ndim != 1 or (initial <= 0).any():
            raise ValueError("initial_probabilities must be a 1-D tensor of positive probabilities")
        self.temperature = float(temperature)
        self.baseline_momentum = float(baseline_momentum)
        # running mean of each group's batch-mean signal; NaN until the group has been seen
        self.running_baseline = torch.full((groups,), math.nan, dtype=torch.float64)
        self.logits = torch.nn.Parameter(torch.log(initial / initial.sum()).repeat(groups, 1))
        # weight decay 0 and default eps, as the published code's architecture optimiser
        self.optimizer = torch.optim.Adam([self.logits], lr=lr, betas=betas, weight_decay=0.0)

    # --------------------------------------------------------------------------------------------- distribution
    @property
    def num_groups(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_choices(self) -> int:
        return int(self.logits.shape[1])

    def probabilities(self) -> torch.Tensor:
        """(groups, K) float64, detached."""
        return torch.softmax(self.logits.detach(), dim=1)

    def draw(self, groups: torch.Tensor, generator: torch.Generator) -> GumbelDraw:
        """Gumbel-max choice per sample from the row ``groups[b]``: an exact sample of P[groups[b]]."""
        groups = torch.as_tensor(groups, dtype=torch.long)
        if groups.numel() and (groups.min() < 0 or groups.max() >= self.num_groups):
            raise ValueError(f"groups must be in [0, {self.num_groups}), got {groups.tolist()}")
        u = torch.rand(len(groups), self.num_choices, generator=generator, dtype=torch.float64)
        noise = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12)))
        choices = (self.logits.detach()[groups] + noise).argmax(dim=1)
        return GumbelDraw(choices, groups, noise)

    def straight_through_weights(self, draw: GumbelDraw) -> torch.Tensor:
        """(n,) loss weights: forward value exactly 1, gradient d y_b[k_b] / d logits (y = Gumbel-softmax)."""
        y = torch.softmax((self.logits[draw.groups] + draw.noise) / self.temperature, dim=1)
        picked = y.gather(1, draw.choices[:, None])[:, 0]
        return 1.0 + (picked - picked.detach())  # x - x is exactly 0 in floating point, so the value is exactly 1

    # ----------------------------------------------------------------------------------------- Searcher verbs
    def sample(self, n: int, generator: torch.Generator) -> list[int]:
        """n choice indices from the first group's distribution."""
        return self.draw(torch.zeros(n, dtype=torch.long), generator).choices.tolist()

    def update(self, samples: Sequence[GumbelDraw], losses: Sequence[float]) -> bool:
        """Searcher form of ``step``: one draw, ``losses`` = the per-sample derivatives dL_outer/dw_b."""
        if len(samples) != 1:
            raise ValueError("MetaDistribution.update takes exactly one GumbelDraw (the batch's draw)")
        return self.step(samples[0], torch.as_tensor(losses, dtype=torch.float64))

    def best(self) -> torch.Tensor:
        """Most likely choice per group."""
        return self.probabilities().argmax(dim=1)

    # -------------------------------------------------------------------------------------------------- update
    def normalise(self, draw: GumbelDraw, sample_grads: torch.Tensor, baseline: bool = True,
                  count_normalise: bool = True, fallback: torch.Tensor | None = None) -> torch.Tensor:
        """Per-group baseline, then division by the number of same-group samples that drew the same choice.

        The baseline is the group's mean in this batch; for a group with one sample, ``fallback[group]`` if it is
        finite (the running baseline), else the sample itself (no signal).
        """
        g = torch.as_tensor(sample_grads, dtype=torch.float64).clone()
        for group in draw.groups.unique():
            rows = draw.groups == group
            if baseline:
                single = int(rows.sum()) == 1 and fallback is not None and bool(torch.isfinite(fallback[group]))
                g[rows] -= fallback[group] if single else g[rows].mean()
            if count_normalise:
                same = draw.choices[rows][:, None] == draw.choices[rows][None, :]
                g[rows] /= same.sum(dim=1).to(g.dtype)
        return g

    def logit_gradient(self, draw: GumbelDraw, sample_grads: torch.Tensor, baseline: bool = True,
                       count_normalise: bool = True, fallback: torch.Tensor | None = None) -> torch.Tensor:
        """d(sum_b c_b w_b)/d logits with c the normalised dL_outer/dw_b: the chain rule through the ST weights."""
        c = self.normalise(draw, sample_grads, baseline, count_normalise, fallback)
        (grad,) = torch.autograd.grad((c * self.straight_through_weights(draw)).sum(), [self.logits])
        return grad

    def step(self, draw: GumbelDraw, sample_grads: torch.Tensor, lr: float | None = None, baseline: bool = True,
             count_normalise: bool = True) -> bool:
        """One Adam step on the logits; False (nothing changed) when the gradient is not finite."""
        sample_grads = torch.as_tensor(sample_grads, dtype=torch.float64)
        grad = self.logit_gradient(draw, sample_grads, baseline, count_normalise, self.running_baseline)
        if not torch.isfinite(grad).all():
            return False
        for group in draw.groups.unique():
            mean = sample_grads[draw.groups == group].mean()
            old = self.running_baseline[group]
            m = self.baseline_momentum
            self.running_baseline[group] = mean if torch.isnan(old) else m * old + (1 - m) * mean
        if lr is not None:
            self.optimizer.param_groups[0]["lr"] = float(lr)
        self.logits.grad = grad
        self.optimizer.step()
        self.logits.grad = None
        return True

    # ---------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"logits": self.logits.detach().clone(), "adam": self.optimizer.state_dict(),
                "temperature": self.temperature, "running_baseline": self.running_baseline.clone(),
                "baseline_momentum": self.baseline_momentum}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["logits"].shape) != tuple(self.logits.shape):
            raise ValueError(f"saved logits have shape {tuple(state['logits'].shape)}, this search has "
                             f"{tuple(self.logits.shape)} (different space or class-specific setting)")
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["adam"])
        self.temperature = float(state["temperature"])
        self.running_baseline = state["running_baseline"].clone()
        self.baseline_momentum = float(state["baseline_momentum"])


def directional_sample_derivatives(per_sample_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                                   weights: dict[str, torch.Tensor], direction: Sequence[torch.Tensor],
                                   r: float = 1e-2) -> torch.Tensor:
    """Central finite difference of per-sample losses along ``direction`` v: (l_b(w + eps v) - l_b(w - eps v))
    / (2 eps), with eps = r / ||v|| (DARTS; the published code's Hessian-vector product). Approximates grad l_b . v.

    ``per_sample_loss`` maps a name -> tensor dict (same keys as ``weights``) to the (n,) losses; it is called twice,
    with detached tensors.
    """
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d.float()) for d in direction])))
    if not math.isfinite(norm) or norm == 0:
        raise ValueError(f"the direction must have a finite, non-zero norm, got {norm}")
    eps = r / norm
    plus = {k: w.detach() + eps * d for (k, w), d in zip(weights.items(), direction)}
    minus = {k: w.detach() - eps * d for (k, w), d in zip(weights.items(), direction)}
    with torch.no_grad():
        return (per_sample_loss(plus).double() - per_sample_loss(minus).double()) / (2 * eps)
