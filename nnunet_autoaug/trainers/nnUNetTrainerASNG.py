"""ASNG augmentation-policy search during one nnU-Net training run (Xu, Li & Zhu, MICCAI 2020).

Per iteration (faithful mode): the same crops are augmented with ``num_weight_policies`` policies sampled from
theta and the weights take one step on the mean loss; then ``lam`` fresh policies are each scored by the loss of a
one-step look-ahead of the weights (functional, the optimizer is untouched) on a batch of the search split, and
theta takes one ASNG step on that ranking. ``nnUNetTrainerASNGFast`` ranks the weight-update policies by the
alignment of their gradient with the gradient of half a search batch instead (one extra half-size forward/backward),
every second iteration. Iterations without a theta update are nnU-Net's plain step on the policies' views.
``nnUNetTrainerASNGShared`` keeps the look-ahead ranking but ranks the weight step's own policies, whose gradients
it already has (policies are still drawn i.i.d. from theta; they now also move the weights).
Outputs next to progress.png: autoaug_policy.json (most likely policy, trainable with nnUNetTrainerPolicy),
autoaug_theta.json (the final theta, a distribution over policies that nnUNetTrainerPolicy can also train with),
autoaug_theta_history.json and autoaug_theta.png.
"""
from __future__ import annotations

import json

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_autoaug.augment import AugmentParams
from nnunet_autoaug.lookahead import (clip_gradients, evaluate_at, parameter_gradients, sgd_lookahead,
                                      trainable_parameters)
from nnunet_autoaug.plots import plot_theta_history
from nnunet_autoaug.policy import POLICY_FILE, Extent, Policy
from nnunet_autoaug.policy.asng_space import ASNG_SPACE, LEVELS
from nnunet_autoaug.policy.asng_theta_space import ASNG_THETA_SPACE, THETA_FILE
from nnunet_autoaug.search import CategoricalASNG
from nnunet_autoaug.trainers.nnUNetTrainerPolicyBase import nnUNetTrainerPolicyBase

HISTORY_FILE, PLOT_FILE = "autoaug_theta_history.json", "autoaug_theta.png"


def _concatenated(views: list[tuple]) -> dict:
    """One minibatch of several augmented (data, target) views; targets are per deep-supervision scale lists."""
    data = torch.cat([v[0] for v in views])
    if isinstance(views[0][1], list):
        return {"data": data, "target": [torch.cat(t) for t in zip(*[v[1] for v in views])]}
    return {"data": data, "target": torch.cat([v[1] for v in views])}


class nnUNetTrainerASNG(nnUNetTrainerPolicyBase):
    space = ASNG_SPACE
    distribution_file = THETA_FILE

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            raise NotImplementedError("nnUNetTrainerASNG does not support multi-GPU (DDP) training yet")
        self.search_fraction = 0.2
        self.lam = 2  # policies per theta update (ASNG's lambda)
        self.num_weight_policies = 2  # policies whose mean loss updates the weights
        self.theta_update_every = 1  # k: theta update every k iterations
        self.ranking = "lookahead"  # or "gradient_alignment" (first order, nnUNetTrainerASNGFast)
        self.lookahead_policies = "fresh"  # or "weight_step": rank the weight step's policies (nnUNetTrainerASNGShared)
        self.searcher = CategoricalASNG([LEVELS] * len(self.space.variables))
        self.iteration = 0
        self.theta_history: list[np.ndarray] = []
        self.update_counts = {"updated": 0, "skipped": 0}
        self.fast_loss_scale = 2.0 ** 16  # fast mode on CUDA only (see _grad_scale)

    # ------------------------------------------------------------------------------------------------ policies
    def augmentation_extent(self) -> Extent:
        return self.space.extent(None, self.sampling_context)

    def policy_of(self, one_hot: np.ndarray) -> Policy:
        return self.space.policy_from_levels(one_hot.argmax(axis=1).tolist())

    def params_for(self, one_hot: np.ndarray, batch_size: int, generator: torch.Generator) -> AugmentParams:
        """One policy for the whole minibatch, as in the paper; per-sample randomness stays inside the policy."""
        return self.space.sample([self.policy_of(one_hot)] * batch_size, generator, self.sampling_context)

    def sample_augment_params(self, batch_size: int, generator: torch.Generator) -> AugmentParams:
        return self.params_for(self.searcher.sample(1, generator)[0], batch_size, generator)

    def most_likely_policy(self) -> Policy:
        return self.space.policy_from_levels(self.searcher.best().tolist())

    # ---------------------------------------------------------------------------------------------- train step
    def train_step(self, batch: dict) -> dict:
        # every policy augments the same crops: move them to the device once, not once per policy
        batch = {**batch, "data": batch["data"].to(self.device, non_blocking=True),
                 "target": batch["target"].to(self.device, non_blocking=True)}
        shared = self.lookahead_policies == "weight_step"  # the ranked policies are the weight step's: lam of them
        fast = self.ranking == "gradient_alignment"
        samples = self.searcher.sample(self.lam if shared else self.num_weight_policies, self.augment_generator)
        update_theta = self.iteration % self.theta_update_every == 0
        self.iteration += 1
        if update_theta and fast:
            return self._aligned_step(batch, samples)
        if update_theta and shared:
            return self._shared_step(batch, samples)
        # without a ranking to make, per-policy gradients are not needed: nnU-Net's own step on all the views
        samples, views = self._policy_views(batch, samples, split=fast)
        result = nnUNetTrainer.train_step(self, {**_concatenated(views), "keys": batch["keys"]})
        if update_theta:
            self._lookahead_update(batch)
        return result

    def _lookahead_update(self, batch: dict) -> None:
        search_data, search_target = self._search_batch()
        network, n = self._plain_network(), batch["data"].shape[0]
        params = trainable_parameters(network)
        samples, losses = self.searcher.sample(self.lam, self.augment_generator), []
        for m in samples:
            data, target = self.augment(batch, self.params_for(m, n, self.augment_generator))
            with self._autocast():
                loss = self.loss(network(data), target)
            grads = clip_gradients(parameter_gradients(params, loss, self._grad_scale()))
            with self._autocast():
                losses.append(evaluate_at(network, sgd_lookahead(params, grads, self.optimizer), search_data,
                                          self.loss, search_target))
        self._update_searcher(samples, losses)

    def _aligned_step(self, batch: dict, samples: list[np.ndarray]) -> dict:
        """Each policy augments its share of the batch; the weights step on the mean gradient (same cost as one
        nnU-Net step); the policies are ranked by -<g_policy, g_search> (first-order look-ahead)."""
        params, samples, grads, losses = self._policy_gradients(batch, samples, split=True)
        search_data, search_target = self._search_batch()
        with self._autocast():
            search_grad = parameter_gradients(params, self.loss(self._plain_network()(search_data), search_target),
                                              self._grad_scale())
        self._update_searcher(samples, [-sum(float((g * s).sum()) for g, s in zip(gp, search_grad)) for gp in grads])
        return self._step_on_mean(params, grads, losses)

    def _shared_step(self, batch: dict, samples: list[np.ndarray]) -> dict:
        """The look-ahead of the faithful mode, but over the weight step's own policies: their gradients (each
        policy on the whole batch) are computed once and serve both the look-ahead and the weight step, which
        saves the look-ahead's forward+backward passes (2 + 2/3 units per iteration instead of 2 + 8/3)."""
        params, samples, grads, losses = self._policy_gradients(batch, samples, split=False)
        search_data, search_target = self._search_batch()
        with self._autocast():
            ranked = [evaluate_at(self._plain_network(), sgd_lookahead(params, clip_gradients(g), self.optimizer),
                                  search_data, self.loss, search_target) for g in grads]
        self._update_searcher(samples, ranked)
        return self._step_on_mean(params, grads, losses)

    def _policy_views(self, batch: dict, samples: list[np.ndarray], split: bool) -> tuple[list, list]:
        """Each policy's augmented (data, target): of its share of the batch (``split``) or of all of it."""
        n = batch["data"].shape[0]
        if split:
            samples = samples[:n]  # a share per policy needs at least one sample each
        shares = [torch.arange(i, n, len(samples)) if split else torch.arange(n) for i in range(len(samples))]
        views = [self.augment({"data": batch["data"][idx], "target": batch["target"][idx]},
                              self.params_for(m, len(idx), self.augment_generator)) for m, idx in zip(samples, shares)]
        return samples, views

    def _policy_gradients(self, batch: dict, samples: list[np.ndarray], split: bool) -> tuple:
        """Each policy's gradient of nnU-Net's loss, on its share of the batch (``split``) or on all of it."""
        params = trainable_parameters(self._plain_network())
        samples, views = self._policy_views(batch, samples, split)
        grads, losses = [], []
        for data, target in views:
            with self._autocast():
                loss = self.loss(self._plain_network()(data), target)
            grads.append(parameter_gradients(params, loss, self._grad_scale()))
            losses.append(float(loss.detach()))
        return params, samples, grads, losses

    def _step_on_mean(self, params: dict, grads: list[list[torch.Tensor]], losses: list[float]) -> dict:
        """nnU-Net's SGD step (clip 12) on the mean of the policies' gradients."""
        mean = [torch.stack(gs).mean(0) for gs in zip(*grads)]
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params.values(), clip_gradients(mean)):
            p.grad = g
        if all(torch.isfinite(g).all() for g in mean):
            self.optimizer.step()
        else:  # fp16 overflow: skip the step and halve the loss scale, as GradScaler does
            self.fast_loss_scale /= 2
        return {"loss": np.array(np.mean(losses))}

    def _update_searcher(self, samples: list[np.ndarray], losses: list[float]) -> None:
        updated = bool(np.all(np.isfinite(losses))) and self.searcher.update(samples, losses)
        self.update_counts["updated" if updated else "skipped"] += 1

    # ------------------------------------------------------------------------------------------------- helpers
    def _grad_scale(self) -> float:
        # fp16 autocast gradients underflow without scaling. The faithful mode reuses the GradScaler that nnU-Net's
        # train_step keeps up to date; the modes that step on per-policy gradients call that step only between
        # rankings (k > 1), so their own steps keep their own scale.
        if self.grad_scaler is None:
            return 1.0
        own_step = self.ranking == "gradient_alignment" or self.lookahead_policies == "weight_step"
        return self.fast_loss_scale if own_step else float(self.grad_scaler.get_scale())

    # ------------------------------------------------------------------------------------- epochs, state, files
    def on_epoch_end(self) -> None:
        self.theta_history.append(self.searcher.theta.copy())
        bound = 1 - 1 / self.searcher.valid_d
        self.print_to_log_file(
            f"ASNG policy: {self.space.summary(self.most_likely_policy())} | mean max theta "
            f"{self.searcher.convergence():.3f}/{bound:.3f} | delta {self.searcher.delta:.3f} | theta updates "
            f"{self.update_counts['updated']} (skipped {self.update_counts['skipped']})")
        if self.local_rank == 0:
            self.write_search_outputs()
        super().on_epoch_end()

    def write_search_outputs(self) -> None:
        self.most_likely_policy().save(join(self.output_folder, POLICY_FILE))
        ASNG_THETA_SPACE.policy_from_theta(self.searcher.theta).save(join(self.output_folder, THETA_FILE))
        history = {"variables": list(self.space.variables), "levels": LEVELS,
                   "theta": [t.tolist() for t in self.theta_history],
                   "convergence_bound": 1 - 1 / self.searcher.valid_d,
                   "final_delta": self.searcher.delta, "theta_updates": self.update_counts}
        with open(join(self.output_folder, HISTORY_FILE), "w") as f:
            json.dump(history, f)
        plot_theta_history(np.stack(self.theta_history), list(self.space.variables),
                           join(self.output_folder, PLOT_FILE), bound=history["convergence_bound"])

    def search_state_dict(self) -> dict:
        return {**super().search_state_dict(), "asng": self.searcher.state_dict(), "iteration": self.iteration,
                "theta_history": np.stack(self.theta_history) if self.theta_history else None,
                "update_counts": dict(self.update_counts)}

    def load_search_state_dict(self, state: dict) -> None:
        super().load_search_state_dict(state)
        self.searcher.load_state_dict(state["asng"])
        self.iteration = state["iteration"]
        self.theta_history = list(state["theta_history"]) if state["theta_history"] is not None else []
        self.update_counts = dict(state["update_counts"])


class nnUNetTrainerASNGFast(nnUNetTrainerASNG):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ranking = "gradient_alignment"
        # the search gradient only has to rank two policies: half a batch keeps the extra cost near half a step
        self.search_batch_share = 0.5
        # the per-policy backward passes cost about one extra step on small batches (a CPU, batch 2); ranking every
        # other iteration halves that, and the iterations in between are plain nnU-Net steps
        self.theta_update_every = 2


class nnUNetTrainerASNGShared(nnUNetTrainerASNG):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.lookahead_policies = "weight_step"  # the weight step then uses lam policies (num_weight_policies unused)


class nnUNetTrainerASNG_5epochs(nnUNetTrainerASNG):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
