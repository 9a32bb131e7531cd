"""Adaptive stochastic natural gradient on a product of categorical distributions (Akimoto et al., ICML 2019).

Exactly the published update: ranking utility (best +1/mu, worst -1/mu, ties share their utility), natural gradient
G = mean_i (u_i - mean u)(M_i - theta), a trust-region step of Fisher length delta = delta_init / Delta, theta
clipped to [1/(D(K-1)), 1 - 1/D] per variable, and the SNR-driven accumulators s, gamma, Delta (alpha = 1.5),
updated after the step from the pre-step Fisher vector. One deliberate difference from the reference code: ties
are detected with an absolute tolerance, because nnU-Net's Dice+CE loss is negative and the reference's relative
test ``diff < eps * f`` never fires for negative f (docs/ALGORITHMS.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from nnunet_autoaug.search.base import Searcher


class CategoricalASNG(Searcher):
    def __init__(self, categories: Sequence[int], alpha: float = 1.5, delta_init: float = 1.0,
                 tie_tolerance: float = 1e-12) -> None:
        self.categories = np.asarray(categories, dtype=int)
        self.d, self.k_max = len(self.categories), int(self.categories.max())
        self.n = int((self.categories - 1).sum())  # D_theta: free parameters
        self.valid_d = int((self.categories > 1).sum())
        self.alpha, self.delta_init, self.tie_tolerance = alpha, delta_init, tie_tolerance
        self.theta = np.zeros((self.d, self.k_max))
        for i, k in enumerate(self.categories):
            self.theta[i, :k] = 1.0 / k
        self.s, self.gamma, self.Delta = np.zeros(self.n), 0.0, 1.0

    # --------------------------------------------------------------------------------------------- distribution
    @property
    def delta(self) -> float:
        return self.delta_init / self.Delta

    @property
    def theta_min(self) -> np.ndarray:
        return np.where(self.categories > 1, 1.0 / (self.valid_d * np.maximum(self.categories - 1, 1)), 0.0)

    def sample(self, n: int, generator: torch.Generator) -> list[np.ndarray]:
        """n one-hot matrices (d, k_max), by inverse CDF per variable."""
        out = []
        cumulative = self.theta.cumsum(axis=1)
        for _ in range(n):
            u = torch.rand(self.d, generator=generator, dtype=torch.float64).numpy()
            levels = np.minimum((cumulative <= u[:, None]).sum(axis=1), self.categories - 1)
            out.append(self.one_hot(levels))
        return out

    def one_hot(self, levels: Sequence[int]) -> np.ndarray:
        m = np.zeros((self.d, self.k_max))
        m[np.arange(self.d), np.asarray(levels, dtype=int)] = 1.0
        return m

    def best(self) -> np.ndarray:
        return self.theta.argmax(axis=1)

    def convergence(self) -> float:
        """Mean over variables of max theta; its attainable maximum is 1 - 1/D because of the clipping."""
        return float(self.theta.max(axis=1).mean())

    # -------------------------------------------------------------------------------------------------- update
    def utility(self, losses: Sequence[float], rho: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
        """Ranking utility in sorted order (best first) and the sorting index."""
        f = np.asarray(losses, dtype=float)
        idx = np.argsort(f, kind="stable")
        lam = len(f)
        mu = int(math.ceil(lam * rho))
        ranked = np.zeros(lam)
        ranked[:mu], ranked[lam - mu:] = 1.0 / mu, -1.0 / mu
        u, start = np.zeros(lam), 0
        for i in range(lam - 1):
            if abs(f[idx[i + 1]] - f[idx[i]]) < self.tie_tolerance:
                continue  # tied with the next one: the group shares its mean utility
            u[start:i + 1] = ranked[start:i + 1].mean()
            start = i + 1
        u[start:] = ranked[start:].mean()
        return u, idx

    def fisher_vector(self, g: np.ndarray) -> np.ndarray:
        """F(theta)^(1/2) G over the first K-1 coordinates of each variable; its norm is the Fisher norm of G."""
        parts = []
        for i, k in enumerate(self.categories):
            th, th_k = self.theta[i, :k - 1], self.theta[i, k - 1]
            parts.append(g[i, :k - 1] / np.sqrt(th) + np.sqrt(th) * g[i, :k - 1].sum() / (th_k + np.sqrt(th_k)))
        return np.concatenate(parts)

    def update(self, samples: Sequence[np.ndarray], losses: Sequence[float]) -> bool:
        delta = self.delta
        beta = delta / math.sqrt(self.n)
        u, idx = self.utility(losses)
        if u.var() == 0:  # all tied: no ranking information
            return False
        ms = np.stack(samples)[idx]
        g = np.mean((u - u.mean())[:, None, None] * (ms - self.theta), axis=0)
        if (np.abs(g) < 1e-18).all():
            return False
        fisher = self.fisher_vector(g)
        norm = float(np.sqrt((fisher ** 2).sum()))
        self.theta += delta * g / norm
        self._restrict_range()
        self.s = (1 - beta) * self.s + math.sqrt(beta * (2 - beta)) * fisher / norm
        self.gamma = (1 - beta) ** 2 * self.gamma + beta * (2 - beta)
        self.Delta *= math.exp(beta * (self.gamma - float(self.s @ self.s) / self.alpha))
        return True

    def _restrict_range(self) -> None:
        for i, k in enumerate(self.categories):
            t_min = self.theta_min[i]
            row = np.maximum(self.theta[i, :k], t_min)
            total = row.sum()
            row -= (total - 1.0) * (row - t_min) / (total - t_min * k)
            self.theta[i, :k] = row / row.sum()

    # --------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"theta": self.theta.copy(), "s": self.s.copy(), "gamma": self.gamma, "Delta": self.Delta,
                "categories": self.categories.copy(), "alpha": self.alpha, "delta_init": self.delta_init}

    def load_state_dict(self, state: dict) -> None:
        if not np.array_equal(state["categories"], self.categories):
            raise ValueError(f"ASNG state has categories {state['categories'].tolist()}, this searcher "
                             f"{self.categories.tolist()}")
        self.theta, self.s = state["theta"].copy(), state["s"].copy()
        self.gamma, self.Delta = float(state["gamma"]), float(state["Delta"])
        self.alpha, self.delta_init = float(state["alpha"]), float(state["delta_init"])
