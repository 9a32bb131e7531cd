"""Searchers: sample / update / state_dict, with no nnU-Net import, so they are testable on toy objectives."""
from nnunet_autoaug.search.asng import CategoricalASNG
from nnunet_autoaug.search.base import Searcher
from nnunet_autoaug.search.meta import GumbelDraw, MetaDistribution, directional_sample_derivatives

__all__ = ["CategoricalASNG", "GumbelDraw", "MetaDistribution", "Searcher", "directional_sample_derivatives"]
