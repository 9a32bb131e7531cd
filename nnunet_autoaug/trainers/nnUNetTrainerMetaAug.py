"""Meta-gradient augmentation: learn the sampling distribution P of augmentations during one nnU-Net training run
(Li et al., "Learning the sampling distribution for data augmentation"; published as JCSAugment, TMI 2023).

Per iteration, faithful mode (the published code's estimator):

1. each sample draws one choice of the meta space (identity or op x magnitude) from P by Gumbel-max; with
   ``class_specific``, background- and foreground-centred patches draw from their own P;
2. forward/backward of nnU-Net's loss on the augmented batch. Each sample's loss weight is the straight-through
   Gumbel weight (value exactly 1), so this gradient g is nnU-Net's own and is reused for the weight update (6);
3. look-ahead w' = one step of nnU-Net's SGD rule with g, computed functionally (the optimizer is untouched);
4. v = gradient of the search-split loss at w';
5. h_b = (l_b(w + eps v) - l_b(w - eps v)) / (2 eps B), eps = r / ||v||: the finite-difference Hessian-vector
   product, i.e. the derivative of g . v with respect to sample b's loss weight. P's gradient is -lr * h chained
   through the weights after the per-group baseline and count normalisation; Adam on the logits;
6. nnU-Net's weight update (clip 12, SGD step) with g.

First-order mode (``nnUNetTrainerMetaAugFirstOrder``): v at w (no look-ahead) and h_b = grad l_b . v / B exactly,
from one backward pass per sample (no finite differences). Outputs next to progress.png, every epoch:
autoaug_meta_distribution.json (P), autoaug_meta_history.json, autoaug_meta_history.png (stacked P per op) and,
for the plain space, autoaug_policy.json (P as a 'meta' policy, trainable with nnUNetTrainerPolicy).
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_autoaug.augment import AugmentParams, augment_batch
from nnunet_autoaug.lookahead import (GRAD_CLIP, functional_forward, parameter_gradients, sgd_lookahead,
                                      trainable_parameters)
from nnunet_autoaug.plots import plot_stacked_probabilities
from nnunet_autoaug.policy import POLICY_FILE, Extent, PolicyError
from nnunet_autoaug.policy.meta_space import META_SPACE, MetaSpace
from nnunet_autoaug.search import GumbelDraw, MetaDistribution, directional_sample_derivatives
from nnunet_autoaug.trainers.nnUNetTrainerPolicyBase import nnUNetTrainerPolicyBase

DISTRIBUTION_FILE, HISTORY_FILE, PLOT_FILE = ("autoaug_meta_distribution.json", "autoaug_meta_history.json",
                                              "autoaug_meta_history.png")
ESTIMATORS = ("finite_difference", "first_order")
CLASS_GROUPS = ("background-centred", "foreground-centred")


def _rows(x: list | tuple | torch.Tensor, b: int) -> list | torch.Tensor:
    """Sample b of a batch, or of every deep-supervision level."""
    return [t[b:b + 1] for t in x] if isinstance(x, (list, tuple)) else x[b:b + 1]


class nnUNetTrainerMetaAug(nnUNetTrainerPolicyBase):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            raise NotImplementedError("nnUNetTrainerMetaAug does not support multi-GPU (DDP) training yet")
        self.search_fraction = 0.2
        self.estimator = "finite_difference"  # or "first_order" (nnUNetTrainerMetaAugFirstOrder)
        self.class_specific = False  # one P per patch kind (background / foreground centre), as the code's --cs
        self.policy_lr = 5e-4  # Adam on P's logits; the published U-Net recipe's --arch_learning_rate
        self.policy_betas = (0.9, 0.999)
        self.update_every = 1  # k: P update every k iterations (the code's --augupdate: raise policy_lr with it)
        self.fd_r = 1e-2  # finite-difference step eps = fd_r / ||v|| (the code's r)
        self.temperature = 1.0  # Gumbel-softmax temperature of the straight-through weights
        # proof of concept only (tests/test_meta_aug_e2e.py): deliberately harmful choices the search must drop
        self.harmful_ops: tuple[str, ...] = ()
        self.harmful_share = 0.2  # their initial total probability
        # built in initialize(), so that subclasses can set class_specific / harmful_ops after super().__init__
        self.space: MetaSpace | None = None
        self.searcher: MetaDistribution | None = None
        self.iteration = 0
        self.history: list[np.ndarray] = []  # P (groups, choices) at the end of every epoch
        self.update_counts = {"updated": 0, "skipped": 0}
        self.group_counts = [0, 0]  # samples seen per class group: weights of the exported mixture policy
        self.last_search_loss = math.nan
        self._params: dict[str, torch.nn.Parameter] | None = None

    @property
    def theta_update_every(self) -> int:  # the name scripts/bench_overhead.py --theta-every sets on searchers
        return self.update_every

    @theta_update_every.setter
    def theta_update_every(self, value: int) -> None:
        self.update_every = value

    def initialize(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.searcher is None:
            self.space = MetaSpace(self.harmful_ops)
            initial = self.space.nnunet_like_probabilities(self.harmful_share if self.harmful_ops else 0.0)
            self.searcher = MetaDistribution(initial, groups=2 if self.class_specific else 1, lr=self.policy_lr,
                                             betas=self.policy_betas, temperature=self.temperature)
        super().initialize()

    # ------------------------------------------------------------------------------------------------ policies
    def augmentation_extent(self) -> Extent:
        return META_SPACE.extent(None, self.sampling_context)  # harmful ops are not spatial

    def sample_augment_params(self, batch_size: int, generator: torch.Generator) -> AugmentParams:
        draw = self.searcher.draw(torch.zeros(batch_size, dtype=torch.long), generator)
        return self.space.params_for_choices(draw.choices, generator, self.sampling_context)

    def patch_groups(self, seg: torch.Tensor) -> torch.Tensor:
        """Policy group per sample: 1 where the crop's centre voxel is foreground (nnU-Net centres its
        foreground-oversampled crops on a foreground voxel), else 0; all 0 without ``class_specific``."""
        if not self.class_specific:
            return torch.zeros(seg.shape[0], dtype=torch.long)
        centre = seg[(slice(None), 0, *[s // 2 for s in seg.shape[2:]])]
        return (centre > 0).long().cpu()

    def augment_choices(self, batch: dict, draw: GumbelDraw) -> tuple[torch.Tensor, list | torch.Tensor]:
        params = self.space.params_for_choices(draw.choices, self.augment_generator, self.sampling_context)
        if not self.space.harmful:
            return self.augment(batch, params)
        # the engine cannot express the harmful ops: apply them between the engine and nnU-Net's targets
        data = batch["data"].to(self.device, non_blocking=True)
        seg = batch["target"].to(self.device, non_blocking=True)
        self.last_augment_params = params
        data, seg = augment_batch(data, seg, params, self.configuration_manager.patch_size,
                                  dummy_2d=self.sampling_context.dummy_2d, label_interpolation=self.label_interpolation)
        data, seg = self.space.apply_harmful(draw.choices, data, seg, len(self.label_manager.all_labels),
                                             self.augment_generator)
        return self.inputs_and_targets(data, seg, params)

    # ---------------------------------------------------------------------------------------------- train step
    def train_step(self, batch: dict) -> dict:
        batch = {**batch, "data": batch["data"].to(self.device, non_blocking=True),
                 "target": batch["target"].to(self.device, non_blocking=True)}
        draw = self.searcher.draw(self.patch_groups(batch["target"]), self.augment_generator)
        for g in draw.groups.tolist():
            self.group_counts[g] += 1
        data, target = self.augment_choices(batch, draw)
        update = self.iteration % self.update_every == 0
        self.iteration += 1
        if not update:  # nothing to learn for P: exactly nnU-Net's step
            return nnUNetTrainer.train_step(self, {"data": data, "target": target, "keys": batch["keys"]})
        if self.estimator == "first_order":
            return self._first_order_step(data, target, draw)
        return self._finite_difference_step(data, target, draw)

    def _finite_difference_step(self, data: torch.Tensor, target: list | torch.Tensor, draw: GumbelDraw) -> dict:
        params = self._parameters()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.loss(self.network(data), target)
        norm = self._backward_and_clip(loss)
        h = None
        if torch.isfinite(norm):
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params.values()]
            v = self._search_gradient(sgd_lookahead(params, grads, self.optimizer))
            if v is not None:
                h = directional_sample_derivatives(lambda w: self._per_sample_losses(w, data, target), params, v,
                                                   self.fd_r) / data.shape[0]
        self._policy_step(draw, h)
        self._optimizer_step()  # the pending gradient is g: nnU-Net's update, from the forward pass above
        return {"loss": loss.detach().cpu().numpy()}

    def _first_order_step(self, data: torch.Tensor, target: list | torch.Tensor, draw: GumbelDraw) -> dict:
        params = self._parameters()
        v = self._search_gradient({k: p.detach() for k, p in params.items()})  # at w: no look-ahead
        self.optimizer.zero_grad(set_to_none=True)
        n, scale = data.shape[0], self._loss_scale()
        losses, dots = [], []
        # one backward per sample gives grad l_b exactly; their mean is nnU-Net's batch gradient (per-sample loss)
        for b in range(n):
            with self._autocast():
                loss = self.loss(self.network(data[b:b + 1]), _rows(target, b))
            grads = torch.autograd.grad(loss * (scale / n), list(params.values()), allow_unused=True)
            for p, g in zip(params.values(), grads):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
            if v is not None:  # one device sync per sample, not one per parameter
                dots.append(float(sum((g.float() * d).sum() for g, d in zip(grads, v) if g is not None)) / scale)
            losses.append(float(loss.detach()))
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), GRAD_CLIP)
        finite = v is not None and torch.isfinite(norm)
        self._policy_step(draw, torch.tensor(dots, dtype=torch.float64) if finite else None)
        self._optimizer_step()
        return {"loss": np.array(np.mean(losses))}

    def _policy_step(self, draw: GumbelDraw, h: torch.Tensor | None) -> None:
        """Adam step on the logits with P.grad = -lr_net * chain(normalised h), lr decayed like nnU-Net's (poly)."""
        if h is None or not torch.isfinite(h).all():
            self.update_counts["skipped"] += 1
            return
        alpha = self.optimizer.param_groups[0]["lr"]
        lr = self.policy_lr * (1 - self.current_epoch / self.num_epochs) ** 0.9
        updated = self.searcher.step(draw, -alpha * h, lr)
        self.update_counts["updated" if updated else "skipped"] += 1

    # ------------------------------------------------------------------------------------------------- helpers
    def _parameters(self) -> dict[str, torch.nn.Parameter]:
        if self._params is None:  # one dict for the whole run: gradient lists follow its (fixed) order
            self._params = trainable_parameters(self._plain_network())
        return self._params

    def _functional(self, weights: dict[str, torch.Tensor], data: torch.Tensor) -> list | torch.Tensor:
        return functional_forward(self._plain_network(), weights, data)

    def _per_sample_losses(self, weights: dict[str, torch.Tensor], data: torch.Tensor,
                           target: list | torch.Tensor) -> torch.Tensor:
        # fp32 even under AMP: the perturbation eps * v is far below fp16 resolution of the weights
        output = self._functional(weights, data)
        return torch.stack([self.loss(_rows(output, b), _rows(target, b)) for b in range(data.shape[0])])

    def _search_gradient(self, weights: dict[str, torch.Tensor]) -> list[torch.Tensor] | None:
        """v = gradient of the search-split loss at ``weights``; None when it is not finite or zero."""
        data, target = self._search_batch()
        leaves = {k: w.detach().requires_grad_(True) for k, w in weights.items()}
        with self._autocast():
            loss = self.loss(self._functional(leaves, data), target)
        v = parameter_gradients(leaves, loss, self._loss_scale())
        self.last_search_loss = float(loss.detach())
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in v]))
        return v if torch.isfinite(norm) and norm > 0 else None

    def _backward_and_clip(self, loss: torch.Tensor) -> torch.Tensor:
        """nnU-Net's train_step up to the optimizer step: the gradients stay in .grad, unscaled and clipped."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        return torch.nn.utils.clip_grad_norm_(self.network.parameters(), GRAD_CLIP)

    def _optimizer_step(self) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)  # skips the step if unscale_ found inf/nan, as nnU-Net's
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def _loss_scale(self) -> float:
        return float(self.grad_scaler.get_scale()) if self.grad_scaler is not None else 1.0

    # ------------------------------------------------------------------------------------- epochs, state, files
    def group_names(self) -> list[str]:
        return list(CLASS_GROUPS) if self.class_specific else ["all patches"]

    def op_probabilities(self, probs: torch.Tensor | np.ndarray) -> dict[str, float]:
        """Probability per op (summed over its magnitudes) for one group's P."""
        return self.space.op_probabilities(np.asarray(probs).tolist())

    def exported_probabilities(self) -> torch.Tensor:
        """The distribution the samples were drawn from overall: the groups' P weighted by how often each occurred."""
        probs = self.searcher.probabilities()
        counts = torch.tensor(self.group_counts[:probs.shape[0]], dtype=torch.float64)
        weights = counts / counts.sum() if counts.sum() > 0 else torch.full((probs.shape[0],), 1 / probs.shape[0])
        return (weights[:, None] * probs).sum(0)

    def on_epoch_end(self) -> None:
        probs = self.searcher.probabilities()
        self.history.append(probs.numpy().copy())
        for name, row in zip(self.group_names(), probs):
            top = sorted(self.op_probabilities(row).items(), key=lambda kv: -kv[1])[:6]
            self.print_to_log_file(f"MetaAug P ({name}): " + " ".join(f"{k}:{v:.3f}" for k, v in top))
        self.print_to_log_file(f"MetaAug: P updates {self.update_counts['updated']} (skipped "
                               f"{self.update_counts['skipped']}), search-split loss {self.last_search_loss:.4f}")
        if self.local_rank == 0:
            self.write_search_outputs()
        super().on_epoch_end()

    def write_search_outputs(self) -> None:
        probs, groups = self.searcher.probabilities(), self.group_names()
        initial = self.space.nnunet_like_probabilities(self.harmful_share if self.space.harmful else 0.0)
        distribution = {
            "space": self.space.name, "estimator": self.estimator, "class_specific": self.class_specific,
            "harmful_ops": list(self.space.harmful), "policy_lr": self.policy_lr, "update_every": self.update_every,
            "iterations": self.iteration, "updates": dict(self.update_counts),
            "group_counts": dict(zip(groups, self.group_counts)),
            "per_op": {g: self.op_probabilities(row) for g, row in zip(groups, probs)},
            "probabilities": {g: dict(zip(self.space.variables, row.tolist())) for g, row in zip(groups, probs)},
            "initial_probabilities": dict(zip(self.space.variables, initial.tolist()))}
        with open(join(self.output_folder, DISTRIBUTION_FILE), "w") as f:
            json.dump(distribution, f, indent=2)
        history = np.stack(self.history)  # (epochs, groups, choices)
        ops = list(self.space.ops())
        per_op = np.array([[list(self.op_probabilities(row).values()) for row in epoch] for epoch in history])
        with open(join(self.output_folder, HISTORY_FILE), "w") as f:
            json.dump({"choices": list(self.space.variables), "ops": ops, "groups": groups,
                       "probabilities": history.tolist(), "per_op": per_op.tolist()}, f)
        start = np.array(list(self.op_probabilities(initial).values()))
        plot_stacked_probabilities(np.concatenate([np.broadcast_to(start, per_op[:1].shape), per_op]), ops,
                                   join(self.output_folder, PLOT_FILE), groups,
                                   f"{type(self).__name__}: P per op (magnitudes summed), {self.estimator}",
                                   first_epoch=0)
        if not self.space.harmful:  # the proof-of-concept space is not a registered policy space
            self.space.policy_from_probabilities(self.exported_probabilities()).save(
                join(self.output_folder, POLICY_FILE))

    def search_state_dict(self) -> dict:
        return {**super().search_state_dict(), "meta": self.searcher.state_dict(), "iteration": self.iteration,
                "choices": list(self.space.variables), "estimator": self.estimator,
                "history": np.stack(self.history) if self.history else None,
                "update_counts": dict(self.update_counts), "group_counts": list(self.group_counts)}

    def load_search_state_dict(self, state: dict) -> None:
        if state["choices"] != list(self.space.variables) or state["meta"]["logits"].shape[0] != \
                self.searcher.num_groups:
            raise PolicyError(f"this checkpoint searched {len(state['choices'])} choices in "
                              f"{state['meta']['logits'].shape[0]} group(s); this trainer searches "
                              f"{len(self.space.variables)} in {self.searcher.num_groups}. Continue with the trainer "
                              f"that wrote it or train into a fresh results folder.")
        super().load_search_state_dict(state)
        self.searcher.load_state_dict(state["meta"])
        self.iteration = state["iteration"]
        self.history = list(state["history"]) if state["history"] is not None else []
        self.update_counts = dict(state["update_counts"])
        self.group_counts = list(state["group_counts"])


class nnUNetTrainerMetaAugFirstOrder(nnUNetTrainerMetaAug):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.estimator = "first_order"
        # the cheap mode: v from half a search batch keeps its extra cost near half a step (as nnUNetTrainerASNGFast),
        # and P moves every second iteration (--augupdate 2) with twice the step size, as the published code advises
        self.search_batch_share = 0.5
        self.update_every = 2
        self.policy_lr = 2 * self.policy_lr


class nnUNetTrainerMetaAugScaledLR(nnUNetTrainerMetaAug):
    """Our option for short schedules: the paper's policy_lr suits the published code's 200,000 P updates (2000
    epochs x 100 iterations); in 1,000 updates it leaves P where it started (docs/BENCHMARKS.md section 4.19). Here
    policy_lr grows with the shortfall, reference_updates / planned updates, clipped to [1, max_lr_scale]: the paper's
    5e-4 at nnU-Net's own 1000 x 250 schedule, 20x (1e-2) at the CPU protocol's 20 x 50."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.reference_updates = 200_000
        self.max_lr_scale = 20.0

    def initialize(self) -> None:
        if self.searcher is None:  # once, from the final schedule, so that a resumed run (--c) gets the same rate
            self.apply_schedule_overrides()
            updates = self.num_epochs * self.num_iterations_per_epoch / self.update_every
            scale = min(self.max_lr_scale, max(1.0, self.reference_updates / updates))
            self.policy_lr = self.policy_lr * scale
            self.print_to_log_file(f"MetaAug: policy_lr {self.policy_lr:g} ({scale:g}x the paper's) for {updates:g} "
                                   f"planned P updates (reference {self.reference_updates})")
        super().initialize()


class nnUNetTrainerMetaAugClassSpecific(nnUNetTrainerMetaAug):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.class_specific = True


class nnUNetTrainerMetaAug_5epochs(nnUNetTrainerMetaAug):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
