"""Environment variables our trainers read. nnU-Net trainers take no extra constructor arguments, so run-time
settings come from the environment, named with the ``nnUNet_autoaug_`` prefix. None is required."""
from __future__ import annotations

import os

SCHEDULE_VARS = {  # env var -> trainer attribute
    "nnUNet_autoaug_epochs": "num_epochs",
    "nnUNet_autoaug_iters": "num_iterations_per_epoch",
    "nnUNet_autoaug_val_iters": "num_val_iterations_per_epoch",
}
POLICY_VAR = "nnUNet_autoaug_policy"  # preset, policy JSON path or results folder, for nnUNetTrainerPolicy
STRATEGY_VAR = "nnUNet_autoaug_strategy"  # strategy file or folder, nnUNetTrainerStrategy (default: DEFAULT_STRATEGY)
SEED_VAR = "nnUNet_autoaug_seed"  # seeds the augmentation sampler (default: OS entropy; saved in checkpoints)
INIT_SEED_VAR = "nnUNet_autoaug_init_seed"  # seeds the network's initial weights (default: OS entropy)
SAVE_EVERY_VAR = "nnUNet_autoaug_save_every"  # epochs between checkpoint_latest writes (default 1)


class SettingsError(ValueError):
    """A malformed ``nnUNet_autoaug_*`` environment variable."""


def int_from_env(name: str, minimum: int = 0) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name}={raw!r} is not an integer. Set it to a whole number "
                            f"(>= {minimum}) or unset it.") from None
    if value < minimum:
        raise SettingsError(f"environment variable {name}={value} must be >= {minimum}.")
    return value


def schedule_overrides() -> dict[str, int]:
    """Trainer attribute -> value for every schedule variable that is set (validated)."""
    overrides = {}
    for var, attribute in SCHEDULE_VARS.items():
        value = int_from_env(var, minimum=1)
        if value is not None:
            overrides[attribute] = value
    return overrides
