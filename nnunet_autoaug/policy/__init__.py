"""Search spaces (small tables of ops), frozen JSON policies over them, and per-sample samplers."""
from nnunet_autoaug.policy.draw import make_generator
from nnunet_autoaug.policy.patch_size import required_input_size
from nnunet_autoaug.policy.policy import POLICY_FILE, Policy
from nnunet_autoaug.policy.registry import PRESETS, SPACES, resolve_policy
from nnunet_autoaug.policy.space import Extent, PolicyError, SamplingContext, SearchSpace

__all__ = ["Extent", "POLICY_FILE", "PRESETS", "Policy", "PolicyError", "SPACES", "SamplingContext",
           "SearchSpace", "make_generator", "required_input_size", "resolve_policy"]
