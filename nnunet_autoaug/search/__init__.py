"""Searchers: sample / update / state_dict, with no nnU-Net import, so they are testable on toy objectives."""
from nnunet_autoaug.search.asng import CategoricalASNG
from nnunet_autoaug.search.base import Searcher

__all__ = ["CategoricalASNG", "Searcher"]
