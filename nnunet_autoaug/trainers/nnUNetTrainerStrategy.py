"""Training strategies (augmentation probabilities + learning rate) of the RL strategy search (Yang et al. 2019).

``nnUNetTrainerStrategy`` trains with one fixed strategy read from a JSON file:

    nnUNet_autoaug_strategy=/path/best_strategy.json nnUNetv2_train D 3d_fullres 0 -tr nnUNetTrainerStrategy

Without the variable it uses the default strategy: nnU-Net's own augmentation (preset ``nnunet_default``) and
nnU-Net's initial learning rate 1e-2, so a plain ``nnUNetv2_train`` works. The strategy is copied to
``fold_X/autoaug_strategy.json`` and stored in the checkpoint; ``--c`` continues with it. The search driver
(``nnUNetv2_autoaug_search_rl``) builds this trainer in-process with ``search_fraction > 0``: it then holds out part
of the fold's training cases and writes their Dice (the reward) to ``autoaug_search_dice.json`` at the end.

``nnUNetTrainerRL`` is the online variant: one training run in which the PPO controller proposes a new strategy every
K epochs (``nnUNet_autoaug_rl_every``, default 5) and is rewarded with the change of the search-split Dice over those
K epochs. Controller state lives in the checkpoint, so ``--c`` resumes the search. Outputs next to progress.png:
autoaug_strategy.json (the controller's mean strategy, trainable with nnUNetTrainerStrategy), autoaug_rl_history.json
and autoaug_rl.png.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join

from nnunet_autoaug.augment import AugmentParams
from nnunet_autoaug.policy import Extent
from nnunet_autoaug.policy.rl_space import RL_SPACE
from nnunet_autoaug.rl.evaluate import search_split_dice
from nnunet_autoaug.rl.searchers import PPOController
from nnunet_autoaug.rl.strategy import (DEFAULT_STRATEGY, DIMENSIONS, RL_EVERY_VAR, STRATEGY_FILE, STRATEGY_VAR,
                                         Strategy, StrategyError)
from nnunet_autoaug.settings import int_from_env
from nnunet_autoaug.trainers.nnUNetTrainerPolicyBase import nnUNetTrainerPolicyBase

SEARCH_DICE_FILE = "autoaug_search_dice.json"
RL_HISTORY_FILE, RL_PLOT_FILE = "autoaug_rl_history.json", "autoaug_rl.png"


class nnUNetTrainerStrategy(nnUNetTrainerPolicyBase):
    reads_variable = STRATEGY_VAR

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.strategy_from_env = os.environ.get(STRATEGY_VAR) or None
        # fails before nnU-Net creates any folder
        self.strategy = Strategy.load(self.strategy_from_env) if self.strategy_from_env else DEFAULT_STRATEGY
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.strategy.learning_rate
        self.epoch_callback: Callable[[nnUNetTrainerStrategy], None] | None = None  # in-process users (Ray trials)
        self.search_dice_every = 0  # epochs between search-split Dice evaluations while training; 0: only at the end
        self.search_dice: float | None = None
        self.search_dice_history: list[tuple[int, float]] = []
        self.strategy_may_change = False  # PBT: a checkpoint of another trial continues with this trial's strategy
        self.print_to_log_file(f"nnunet_autoaug strategy ({self.strategy_from_env or 'default'}): "
                               f"{self.strategy.summary()}")

    # ------------------------------------------------------------------------------------------ augmentation
    def augmentation_extent(self) -> Extent:
        return RL_SPACE.extent(self.strategy.policy, self.sampling_context)

    def sample_augment_params(self, batch_size: int, generator: torch.Generator) -> AugmentParams:
        return RL_SPACE.sample([self.strategy.policy] * batch_size, generator, self.sampling_context)

    def apply_learning_rate(self, lr: float) -> None:
        """nnU-Net's poly schedule recomputes the lr from ``initial_lr`` at every epoch start."""
        self.initial_lr = lr
        if self.lr_scheduler is not None:
            self.lr_scheduler.initial_lr = lr

    # ---------------------------------------------------------------------------------------- training hooks
    def on_train_start(self) -> None:
        target = join(self.output_folder, STRATEGY_FILE)
        if isfile(target) and not self.strategy_may_change and Strategy.load(target) != self.strategy:
            raise StrategyError(f"{target} holds a different strategy than the one requested "
                                f"({self.strategy_from_env or 'default'}). Continue with the original strategy "
                                f"(unset {STRATEGY_VAR}) or train into a fresh results folder.")
        super().on_train_start()
        self.apply_learning_rate(self.strategy.learning_rate)
        if self.local_rank == 0:
            self.strategy.save(target)

    def evaluate_search_split(self) -> float:
        dice = search_split_dice(self, self.search_keys)
        self.search_dice_history.append((self.current_epoch, dice))
        self.print_to_log_file(f"nnunet_autoaug: search-split Dice {dice:.4f} ({len(self.search_keys)} cases)")
        return dice

    def on_epoch_end(self) -> None:
        every = self.search_dice_every
        if self.search_keys and every and (self.current_epoch + 1) % every == 0:
            self.search_dice = self.evaluate_search_split()
        super().on_epoch_end()
        if self.epoch_callback is not None:
            self.epoch_callback(self)

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.search_keys and self.local_rank == 0:
            evaluated = self.search_dice_history and self.search_dice_history[-1][0] == self.current_epoch - 1
            # the network has not changed since an evaluation after the last epoch: reuse it (saves a prediction)
            self.search_dice = self.search_dice_history[-1][1] if evaluated else self.evaluate_search_split()
            with open(join(self.output_folder, SEARCH_DICE_FILE), "w") as f:
                json.dump({"search_dice": self.search_dice, "search_cases": self.search_keys,
                           "epochs": self.current_epoch, "strategy": self.strategy.to_json_dict(),
                           "history": self.search_dice_history}, f, indent=2)

    # -------------------------------------------------------------------------------------------- checkpoint
    def search_state_dict(self) -> dict:
        return {**super().search_state_dict(), "strategy": self.strategy.to_json_dict(),
                "search_dice_history": list(self.search_dice_history)}

    def load_search_state_dict(self, state: dict) -> None:
        super().load_search_state_dict(state)
        self.search_dice_history = [tuple(x) for x in state.get("search_dice_history", [])]
        trained = Strategy.from_json_dict(state["strategy"], "checkpoint strategy")
        if self.strategy_may_change:
            return
        if self.strategy_from_env is not None and trained != self.strategy:
            raise StrategyError(f"this run was trained with a different strategy ({trained.summary()}) than "
                                f"{STRATEGY_VAR}={self.strategy_from_env}. Unset {STRATEGY_VAR} to continue with the "
                                f"original strategy, or train into a fresh results folder.")
        self.strategy = trained


class nnUNetTrainerRL(nnUNetTrainerStrategy):
    """Online strategy search in one run: a new strategy every ``epochs_per_strategy`` epochs, reward = change of
    the search-split Dice over those epochs."""

    # the paper's controller starts untrained: its first proposals centre on the middle of every range (learning
    # rate 1e-3, every op at p = 0.5); nnUNetTrainerRLWarmStart centres them on the start strategy instead
    controller_starts_at_strategy = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        every = int_from_env(RL_EVERY_VAR, minimum=1)  # read before any folder is created
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            raise NotImplementedError("nnUNetTrainerRL does not support multi-GPU (DDP) training yet")
        self.search_fraction = 0.2
        self.epochs_per_strategy = every or 5
        self.strategy_may_change = True
        self.controller = PPOController(len(DIMENSIONS), "beta", start=self.strategy.to_unit(),
                                        seed=self.augment_seed % 2 ** 31,
                                        start_mean=self.controller_starts_at_strategy)
        self.controller_generator = torch.Generator().manual_seed(self.augment_seed % 2 ** 62 + 1)
        self.pending: dict | None = None  # the proposal being trained with
        self.segment_start_dice: float | None = None
        self.rl_history: list[dict] = []

    def _propose(self, first_epoch: int) -> None:
        self.pending = self.controller.sample(1, self.controller_generator)[0]
        self.strategy = Strategy.from_unit(self.pending["unit"])
        self.apply_learning_rate(self.strategy.learning_rate)
        self.print_to_log_file(f"nnunet_autoaug RL: new strategy from epoch {first_epoch}: {self.strategy.summary()}")

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.segment_start_dice is None:  # fresh run; a resumed one restored all of this from the checkpoint
            self.segment_start_dice = self.evaluate_search_split()
        if self.pending is None:  # fresh, or resumed after the last proposal was rewarded (--c with more epochs)
            self._propose(self.current_epoch)
        else:
            self.apply_learning_rate(self.strategy.learning_rate)

    def on_epoch_end(self) -> None:
        # controller step before nnU-Net writes checkpoint_latest, so the checkpoint holds the updated controller
        if (self.current_epoch + 1) % self.epochs_per_strategy == 0:
            dice = self.evaluate_search_split()
            reward = dice - self.segment_start_dice
            self.controller.update([self.pending], [-reward])
            self.rl_history.append({"epoch": self.current_epoch + 1, "unit": self.pending["unit"],
                                    "learning_rate": self.strategy.learning_rate, "dice": dice, "reward": reward,
                                    "mean": self.controller.mean_strategy().tolist()})
            self.print_to_log_file(f"nnunet_autoaug RL: reward {reward:+.4f} (search Dice {dice:.4f}), "
                                   f"{self.controller.n_updates} controller updates")
            self.segment_start_dice, self.pending = dice, None
            if self.current_epoch + 1 < self.num_epochs:
                self._propose(self.current_epoch + 1)  # nnU-Net advances current_epoch after this hook
            if self.local_rank == 0:
                self.write_rl_outputs()
        super().on_epoch_end()

    def write_rl_outputs(self) -> None:
        from nnunet_autoaug.rl.plots import plot_search

        Strategy.from_unit(self.controller.mean_strategy()).save(join(self.output_folder, STRATEGY_FILE))
        with open(join(self.output_folder, RL_HISTORY_FILE), "w") as f:
            json.dump({"dimensions": list(DIMENSIONS), "epochs_per_strategy": self.epochs_per_strategy,
                       "segments": self.rl_history}, f, indent=2)
        plot_search([h["reward"] for h in self.rl_history], [h["mean"] for h in self.rl_history], list(DIMENSIONS),
                    join(self.output_folder, RL_PLOT_FILE), x_label="strategy segment",
                    title="nnUNetTrainerRL: reward (change of search-split Dice) and controller mean strategy")

    def on_train_end(self) -> None:
        # the mean strategy is the result; nnUNetTrainerStrategy.on_train_end evaluates the final network once more
        super().on_train_end()
        if self.local_rank == 0 and self.rl_history:
            self.write_rl_outputs()

    def search_state_dict(self) -> dict:
        return {**super().search_state_dict(),
                "rl": {"controller": self.controller.state_dict(),
                       "controller_generator": self.controller_generator.get_state(), "pending": self.pending,
                       "segment_start_dice": self.segment_start_dice, "history": list(self.rl_history),
                       "epochs_per_strategy": self.epochs_per_strategy}}

    def load_search_state_dict(self, state: dict) -> None:
        super().load_search_state_dict(state)
        rl = state["rl"]
        self.controller.load_state_dict(rl["controller"])
        self.controller_generator.set_state(rl["controller_generator"])
        self.pending, self.segment_start_dice = rl["pending"], rl["segment_start_dice"]
        self.rl_history = list(rl["history"])
        if self.pending is not None:
            self.strategy = Strategy.from_unit(self.pending["unit"])


class nnUNetTrainerRLWarmStart(nnUNetTrainerRL):
    """nnUNetTrainerRL whose controller first proposes strategies near the start strategy (nnU-Net's augmentation
    and learning rate 1e-2, or ``nnUNet_autoaug_strategy``): our option for short runs, which the paper's
    untrained controller spends at about a tenth of nnU-Net's learning rate."""

    controller_starts_at_strategy = True
