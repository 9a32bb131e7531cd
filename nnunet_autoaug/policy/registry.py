"""All search spaces and named preset policies, looked up by name (unknown names fail with the list of valid ones)."""
from __future__ import annotations

from pathlib import Path

from nnunet_autoaug.policy.asng_space import ASNG_SPACE
from nnunet_autoaug.policy.asng_theta_space import ASNG_THETA_SPACE
from nnunet_autoaug.policy.meta_space import META_SPACE
from nnunet_autoaug.policy.policy import Policy
from nnunet_autoaug.policy.rl_space import NNUNET_DEFAULT, OPS as RL_OPS, RL_SPACE
from nnunet_autoaug.policy.space import PolicyError, SearchSpace

SPACES: dict[str, SearchSpace] = {s.name: s for s in (ASNG_SPACE, ASNG_THETA_SPACE, META_SPACE, RL_SPACE)}

PRESETS: dict[str, Policy] = {
    "nnunet_default": Policy.create("rl", NNUNET_DEFAULT, "preset nnunet_default"),
    "none": Policy.create("rl", {op: 0.0 for op in RL_OPS}, "preset none"),
    "mirror_only": Policy.create("rl", {op: 0.5 if op == "mirror" else 0.0 for op in RL_OPS}, "preset mirror_only"),
}


def resolve_policy(spec: str) -> Policy:
    """A preset name, the path of a policy JSON file, or a results folder holding one."""
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.endswith(".json") or "/" in spec or Path(spec).is_dir():
        return Policy.load(spec)
    raise PolicyError(f"{spec!r} is neither a preset ({sorted(PRESETS)}) nor a policy JSON file or results folder "
                      f"path.")
