"""Train with one fixed policy: a preset or a policy JSON file (e.g. the result of a search).

    nnUNet_autoaug_policy=/path/autoaug_policy.json nnUNetv2_train D 3d_fullres 0 -tr nnUNetTrainerPolicy

Without the variable the ``nnunet_default`` preset is used: nnU-Net's own default augmentation expressed as a policy.
The policy is copied to ``fold_X/autoaug_policy.json`` and stored in the checkpoint; ``--c`` continues with it.
"""
from __future__ import annotations

import os

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join

from nnunet_autoaug.augment import AugmentParams
from nnunet_autoaug.policy import POLICY_FILE, Extent, Policy, PolicyError, resolve_policy
from nnunet_autoaug.settings import POLICY_VAR
from nnunet_autoaug.trainers.nnUNetTrainerPolicyBase import nnUNetTrainerPolicyBase

DEFAULT_POLICY = "nnunet_default"


class nnUNetTrainerPolicy(nnUNetTrainerPolicyBase):
    reads_variable = POLICY_VAR

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.policy_from_env = os.environ.get(POLICY_VAR) or None
        self.policy = resolve_policy(self.policy_from_env or DEFAULT_POLICY)  # fails before any folder is written
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.print_to_log_file(f"nnunet_autoaug policy ({self.policy_from_env or DEFAULT_POLICY}, space "
                               f"'{self.policy.space}'): {self.policy.search_space.summary(self.policy)}")

    def augmentation_extent(self) -> Extent:
        return self.policy.search_space.extent(self.policy, self.sampling_context)

    def sample_augment_params(self, batch_size: int, generator: torch.Generator) -> AugmentParams:
        return self.policy.search_space.sample([self.policy] * batch_size, generator, self.sampling_context)

    def on_train_start(self) -> None:
        target = join(self.output_folder, POLICY_FILE)
        if isfile(target) and Policy.load(target) != self.policy:
            raise PolicyError(f"{target} holds a different policy than the one requested "
                              f"({self.policy_from_env or DEFAULT_POLICY}). Continue with the original policy "
                              f"(unset {POLICY_VAR}) or train into a fresh results folder.")
        super().on_train_start()
        self.policy.save(target)

    def search_state_dict(self) -> dict:
        return {**super().search_state_dict(), "policy": self.policy.to_json_dict()}

    def load_search_state_dict(self, state: dict) -> None:
        super().load_search_state_dict(state)
        trained = Policy.from_json_dict(state["policy"], "checkpoint policy")
        if self.policy_from_env is not None and trained != self.policy:
            raise PolicyError(f"this run was trained with a different policy ({trained.search_space.summary(trained)})"
                              f" than {POLICY_VAR}={self.policy_from_env}. Unset {POLICY_VAR} to continue with the "
                              f"original policy, or train into a fresh results folder.")
        self.policy = trained


class nnUNetTrainerPolicy_5epochs(nnUNetTrainerPolicy):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
