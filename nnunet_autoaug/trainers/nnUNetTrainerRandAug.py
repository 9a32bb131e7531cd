"""Random augmentation: every sample gets its own policy drawn uniformly from the ASNG space.

Random augmentation is a strong baseline for learned policies (RandAugment, TrivialAugment): the ASNG search must
beat this to be worth its cost. The marginal distribution equals ASNG's at its uniform start.
"""
from __future__ import annotations

import torch

from nnunet_autoaug.augment import AugmentParams
from nnunet_autoaug.policy import Extent
from nnunet_autoaug.policy.asng_space import ASNG_SPACE
from nnunet_autoaug.trainers.nnUNetTrainerPolicyBase import nnUNetTrainerPolicyBase


class nnUNetTrainerRandAug(nnUNetTrainerPolicyBase):
    space = ASNG_SPACE

    def augmentation_extent(self) -> Extent:
        return self.space.extent(None, self.sampling_context)

    def sample_augment_params(self, batch_size: int, generator: torch.Generator) -> AugmentParams:
        policies = [self.space.random_policy(generator) for _ in range(batch_size)]
        return self.space.sample(policies, generator, self.sampling_context)


class nnUNetTrainerRandAug_5epochs(nnUNetTrainerRandAug):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5
