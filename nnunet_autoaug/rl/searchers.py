"""Strategy searchers on [0, 1]^m with the package's Searcher interface: the PPO controller, hill climbing, random.

All of them propose *candidates*: plain dicts with the unit vector under ``"unit"`` (plus, for the controller, what
PPO needs to score the proposal later). ``update`` takes the candidates back with their losses (loss = -reward, the
interface minimises), in any order and any grouping: the search is asynchronous, a candidate may come back long
after others were proposed.

PPO controller (Yang et al. 2019, docs/RL.md): an RNN with one hidden layer whose input is the previous strategy;
per dimension a 2-channel softmax. ``mode="beta"`` (default) samples a_j ~ Beta(k mu_j, k (1 - mu_j)) with mu_j the
softmax's first channel, so PPO's ratio is a real likelihood ratio; ``mode="literal"`` is the paper as written:
a_j = mu_j, log pi = sum_j log mu_j, no sampling. Reward = Dice - running (EMA) baseline; clipped PPO objective;
RMSprop, lr 0.01 by default: the paper's 0.1 (``controller_lr=0.1``) made this ~1k-parameter controller diverge on
the synthetic benchmark (docs/RL.md). log pi_old and the hidden state are stored at proposal time (recurrent PPO
with stored states), so the ratio stays correct when results arrive out of order.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from nnunet_autoaug.search.base import Searcher

SEARCHERS = ("ppo", "ppo-literal", "hill-discrete", "hill-continuous", "random")
_EPS = 1e-4


def _uniform(generator: torch.Generator, *shape: int) -> np.ndarray:
    return torch.rand(*shape, generator=generator, dtype=torch.float64).numpy()


class RNNController(nn.Module):
    """h' = tanh(W [x, h]); logits = V h' as (dims, 2): one 2-channel softmax per strategy dimension."""

    def __init__(self, dims: int, hidden: int = 16):
        super().__init__()
        self.dims, self.hidden = dims, hidden
        self.cell = nn.RNNCell(dims, hidden)
        self.head = nn.Linear(hidden, 2 * dims)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cell(x, h)
        return self.head(h).view(*x.shape[:-1], self.dims, 2), h


class PPOController(Searcher):
    def __init__(self, dims: int, mode: str = "beta", hidden: int = 16, lr: float = 0.01, concentration: float = 20.0,
                 clip: float = 0.2, entropy_coef: float = 1e-3, baseline_decay: float = 0.95, ppo_epochs: int = 4,
                 buffer_size: int = 16, start: Sequence[float] | None = None, seed: int = 0,
                 start_mean: bool = False):
        """``start`` is the RNN's first input, as in the paper, whose controller starts untrained (its first
        proposals centre on about 0.5 per dimension). ``start_mean`` (our option) also centres them on ``start``
        and skips updates while every observed advantage is 0 (see ``update``)."""
        if mode not in ("beta", "literal"):
            raise ValueError(f"PPO controller mode must be 'beta' or 'literal', got {mode!r}")
        self.dims, self.mode, self.concentration, self.clip = dims, mode, concentration, clip
        self.start_mean = start_mean
        self.entropy_coef, self.baseline_decay, self.ppo_epochs, self.buffer_size = (entropy_coef, baseline_decay,
                                                                                     ppo_epochs, buffer_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = RNNController(dims, hidden).double()
        if start_mean and start is not None:
            self._centre_on(start)
        self.optimizer = torch.optim.RMSprop(self.net.parameters(), lr=lr)
        self.h = torch.zeros(1, hidden, dtype=torch.float64)
        self.x = torch.tensor([list(start) if start is not None else [0.5] * dims], dtype=torch.float64)
        self.baseline: float | None = None
        self.buffer: list[dict] = []  # the last buffer_size observed proposals with their advantages
        self.n_proposed = self.n_observed = self.n_updates = 0
        self.best_seen: tuple[float, list[float]] | None = None

    def _centre_on(self, start: Sequence[float]) -> None:
        """Head biases whose softmax mean is ``start`` (kept inside [0.05, 0.95], where the Beta still explores),
        head weights scaled down so that the random hidden state barely moves that mean at first."""
        target = torch.tensor(list(start), dtype=torch.float64).clamp(0.05, 0.95)
        logit = torch.log(target / (1 - target))
        with torch.no_grad():
            self.net.head.weight.mul_(0.1)
            bias = self.net.head.bias.view(self.dims, 2)
            bias[:, 0], bias[:, 1] = logit / 2, -logit / 2

    # --------------------------------------------------------------------------------------------- policy
    def _mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, -1)[..., 0].clamp(_EPS, 1 - _EPS)

    def _log_prob(self, logits: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi(a), entropy) summed over dimensions."""
        mu = self._mean(logits)
        if self.mode == "literal":
            return torch.log(mu).sum(-1), torch.zeros(mu.shape[:-1], dtype=mu.dtype)
        dist = torch.distributions.Beta(self.concentration * mu, self.concentration * (1 - mu))
        return dist.log_prob(a.clamp(_EPS, 1 - _EPS)).sum(-1), dist.entropy().sum(-1)

    def mean_strategy(self) -> np.ndarray:
        """What the controller would propose next on average (the mean of its policy at the current state)."""
        with torch.no_grad():
            logits, _ = self.net(self.x, self.h)
        return self._mean(logits)[0].numpy().copy()

    # --------------------------------------------------------------------------------------- Searcher API
    def sample(self, n: int, generator: torch.Generator) -> list[dict]:
        out = []
        for _ in range(n):
            with torch.no_grad():
                logits, h_next = self.net(self.x, self.h)
                mu = self._mean(logits)
                if self.mode == "literal":
                    a = mu.clone()
                else:  # torch's Beta sampler takes no generator: numpy's, seeded from ours (global RNGs untouched)
                    rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
                    a = torch.from_numpy(rng.beta(self.concentration * mu.numpy(),
                                                  self.concentration * (1 - mu.numpy()))).clamp(_EPS, 1 - _EPS)
                log_prob, _ = self._log_prob(logits, a)
            out.append({"unit": a[0].tolist(), "x": self.x[0].tolist(), "h": self.h[0].tolist(),
                        "log_prob": float(log_prob[0]), "mean": mu[0].tolist(), "index": self.n_proposed})
            self.x, self.h = a, h_next  # the proposal is the next input; the hidden state advances per proposal
            self.n_proposed += 1
        return out

    def update(self, samples: Sequence[dict], losses: Sequence[float]) -> bool:
        rewards = [-float(v) for v in losses]
        if not samples or not np.all(np.isfinite(rewards)):
            return False
        for sample, reward in zip(samples, rewards):
            if self.best_seen is None or reward > self.best_seen[0]:
                self.best_seen = (reward, list(sample["unit"]))
            if self.baseline is None:
                self.baseline = reward
            advantage = reward - self.baseline
            self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
            self.buffer.append({**sample, "advantage": advantage})
            self.n_observed += 1
        self.buffer = self.buffer[-self.buffer_size:]
        x = torch.tensor([s["x"] for s in self.buffer], dtype=torch.float64)
        h = torch.tensor([s["h"] for s in self.buffer], dtype=torch.float64)
        a = torch.tensor([s["unit"] for s in self.buffer], dtype=torch.float64)
        old = torch.tensor([s["log_prob"] for s in self.buffer], dtype=torch.float64)
        adv = torch.tensor([s["advantage"] for s in self.buffer], dtype=torch.float64)
        if self.start_mean and not adv.any():
            # the first reward only sets the baseline (advantage 0): a step now would follow the entropy bonus alone,
            # which RMSprop scales to full-size steps towards 0.5 in every dimension, undoing the warm start
            return False
        for _ in range(self.ppo_epochs):
            logits, _ = self.net(x, h)
            log_prob, entropy = self._log_prob(logits, a)
            ratio = torch.exp(log_prob - old)
            surrogate = torch.min(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
            loss = -surrogate.mean() - self.entropy_coef * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.n_updates += 1
        return True

    def best(self) -> np.ndarray:
        return self.mean_strategy()

    def state_dict(self) -> dict:
        return {"kind": "ppo", "mode": self.mode, "net": copy.deepcopy(self.net.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "h": self.h.clone(), "x": self.x.clone(),
                "baseline": self.baseline, "buffer": copy.deepcopy(self.buffer), "n_proposed": self.n_proposed,
                "n_observed": self.n_observed, "n_updates": self.n_updates, "best_seen": self.best_seen}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "ppo" or state["mode"] != self.mode:
            raise ValueError(f"state of a {state.get('kind')}/{state.get('mode')} searcher cannot be loaded into a "
                             f"PPO controller in {self.mode} mode")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.h, self.x = state["h"].clone(), state["x"].clone()
        self.baseline, self.buffer = state["baseline"], copy.deepcopy(state["buffer"])
        self.n_proposed, self.n_observed, self.n_updates = state["n_proposed"], state["n_observed"], state["n_updates"]
        self.best_seen = state["best_seen"]


class HillClimbing(Searcher):
    """Accept a candidate when it beats the incumbent; propose neighbours of the incumbent.

    ``discrete``: the unit cube as a grid of ``levels`` values per dimension; a neighbour moves one random dimension
    one level up or down. ``continuous``: a neighbour adds N(0, step^2) to every dimension, clipped to [0, 1].
    The first proposal is the start point itself (nnU-Net's defaults when the driver passes them).
    """

    def __init__(self, dims: int, discrete: bool = True, levels: int = 11, step: float = 0.1,
                 start: Sequence[float] | None = None):
        self.dims, self.discrete, self.levels, self.step = dims, discrete, levels, step
        start = np.full(dims, 0.5) if start is None else np.asarray(start, dtype=float)
        self.incumbent = self._snap(start)
        self.incumbent_reward: float | None = None
        self.n_proposed = self.n_observed = self.n_accepted = 0

    def _snap(self, u: np.ndarray) -> np.ndarray:
        u = np.clip(u, 0.0, 1.0)
        return np.round(u * (self.levels - 1)) / (self.levels - 1) if self.discrete else u

    def sample(self, n: int, generator: torch.Generator) -> list[dict]:
        out = []
        for _ in range(n):
            if self.n_proposed == 0:
                u = self.incumbent.copy()
            elif self.discrete:
                u = self.incumbent.copy()
                j = int(torch.randint(0, self.dims, (1,), generator=generator))
                up = bool(torch.randint(0, 2, (1,), generator=generator))
                delta = 1.0 / (self.levels - 1)
                u[j] += delta if (up and u[j] < 1) or u[j] <= 0 else -delta
                u = self._snap(u)
            else:
                noise = torch.randn(self.dims, generator=generator, dtype=torch.float64).numpy()
                u = self._snap(self.incumbent + self.step * noise)
            out.append({"unit": u.tolist(), "index": self.n_proposed})
            self.n_proposed += 1
        return out

    def update(self, samples: Sequence[dict], losses: Sequence[float]) -> bool:
        accepted = False
        for sample, loss in zip(samples, losses):
            if not np.isfinite(loss):
                continue
            self.n_observed += 1
            if self.incumbent_reward is None or -loss > self.incumbent_reward:
                self.incumbent, self.incumbent_reward = np.asarray(sample["unit"], dtype=float), -float(loss)
                self.n_accepted += 1
                accepted = True
        return accepted

    def best(self) -> np.ndarray:
        return self.incumbent.copy()

    def state_dict(self) -> dict:
        return {"kind": "hill", "discrete": self.discrete, "incumbent": self.incumbent.copy(),
                "incumbent_reward": self.incumbent_reward, "n_proposed": self.n_proposed,
                "n_observed": self.n_observed, "n_accepted": self.n_accepted}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "hill" or state["discrete"] != self.discrete:
            raise ValueError("state of another searcher cannot be loaded into this hill climber")
        self.incumbent, self.incumbent_reward = np.asarray(state["incumbent"]), state["incumbent_reward"]
        self.n_proposed, self.n_observed = state["n_proposed"], state["n_observed"]
        self.n_accepted = state["n_accepted"]


class RandomSearch(Searcher):
    """Uniform over [0, 1]^m; ``best`` is the best candidate seen."""

    def __init__(self, dims: int):
        self.dims = dims
        self.best_seen: tuple[float, list[float]] | None = None
        self.n_proposed = self.n_observed = 0

    def sample(self, n: int, generator: torch.Generator) -> list[dict]:
        out = [{"unit": _uniform(generator, self.dims).tolist(), "index": self.n_proposed + i} for i in range(n)]
        self.n_proposed += n
        return out

    def update(self, samples: Sequence[dict], losses: Sequence[float]) -> bool:
        for sample, loss in zip(samples, losses):
            if np.isfinite(loss):
                self.n_observed += 1
                if self.best_seen is None or -loss > self.best_seen[0]:
                    self.best_seen = (-float(loss), list(sample["unit"]))
        return True

    def best(self) -> np.ndarray:
        return np.asarray(self.best_seen[1] if self.best_seen else [0.5] * self.dims)

    def state_dict(self) -> dict:
        return {"kind": "random", "best_seen": self.best_seen, "n_proposed": self.n_proposed,
                "n_observed": self.n_observed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "random":
            raise ValueError("state of another searcher cannot be loaded into random search")
        self.best_seen, self.n_proposed, self.n_observed = state["best_seen"], state["n_proposed"], state["n_observed"]


def make_searcher(name: str, dims: int, start: Sequence[float] | None = None, seed: int = 0,
                  controller_lr: float = 0.01, **ppo_kwargs) -> Searcher:
    if name == "ppo":
        return PPOController(dims, "beta", lr=controller_lr, start=start, seed=seed, **ppo_kwargs)
    if name == "ppo-literal":
        return PPOController(dims, "literal", lr=controller_lr, start=start, seed=seed, **ppo_kwargs)
    if name in ("hill-discrete", "hill-continuous"):
        return HillClimbing(dims, discrete=name == "hill-discrete", start=start)
    if name == "random":
        return RandomSearch(dims)
    raise ValueError(f"unknown searcher {name!r}; choose one of {SEARCHERS}")


def run_synthetic(searcher: Searcher, reward_fn, budget: int, concurrent: int, generator: torch.Generator,
                  noise: float = 0.0) -> list[tuple[list[float], float]]:
    """Asynchronous loop without nnU-Net: ``concurrent`` candidates in flight, the oldest finishes first, then one
    update and one new proposal (the Ray Tune pattern). Returns (unit, noise-free reward) per evaluation."""
    in_flight = searcher.sample(min(concurrent, budget), generator)
    issued, history = len(in_flight), []
    while in_flight:
        cand = in_flight.pop(0)
        true = float(reward_fn(np.asarray(cand["unit"])))
        observed = true + noise * float(torch.randn(1, generator=generator, dtype=torch.float64))
        searcher.update([cand], [-observed])
        history.append((cand["unit"], true))
        if issued < budget:
            in_flight += searcher.sample(1, generator)
            issued += 1
    return history
