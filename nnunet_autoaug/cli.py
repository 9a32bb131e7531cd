"""Small helper commands; training and prediction stay nnU-Net's own ``nnUNetv2_train`` / ``nnUNetv2_predict``."""
from __future__ import annotations

import argparse
import os
import sys

from nnunet_autoaug.discovery import ENV_VAR, ext_trainer_dir

TRAINERS = ("nnUNetTrainerRandAug", "nnUNetTrainerPolicy", "nnUNetTrainerASNG", "nnUNetTrainerASNGFast",
            "nnUNetTrainerASNGShared", "nnUNetTrainerMetaAug", "nnUNetTrainerMetaAugFirstOrder",
            "nnUNetTrainerScheduled", "nnUNetTrainerHydra", "nnUNetTrainerRegression", "nnUNetTrainerStrategy",
            "nnUNetTrainerRL", "nnUNetTrainerSCNASSearch", "nnUNetTrainerSCNAS")


def print_ext_dir() -> None:
    """``export nnUNet_extTrainer=$(nnUNetv2_autoaug_ext_dir)``: the explicit alternative to the start-up hook."""
    print(ext_trainer_dir())


def check(argv: list[str] | None = None) -> None:
    """Diagnose the installation: nnU-Net version, start-up hook, and that nnU-Net finds each of our trainers."""
    argparse.ArgumentParser(description=check.__doc__).parse_args(argv)
    from nnunet_autoaug.compat import check_nnunet_version

    ok = True
    try:
        print(f"nnunetv2 {check_nnunet_version()}: supported")
    except ImportError as e:
        print(f"ERROR: {e}")
        sys.exit(1)
    folder = str(ext_trainer_dir())
    registered = folder in os.environ.get(ENV_VAR, "").split(os.pathsep)
    print(f"{ENV_VAR} contains {folder}: {registered}" + ("" if registered else
          " (start-up hook inactive, e.g. python -S; export nnUNet_extTrainer=$(nnUNetv2_autoaug_ext_dir))"))
    if not registered:
        os.environ[ENV_VAR] = os.pathsep.join(p for p in (os.environ.get(ENV_VAR), folder) if p)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    for name in TRAINERS:
        try:
            cls = recursive_find_trainer_class_by_name(name)
            print(f"trainer {name}: found ({cls.__module__})")
        except RuntimeError as e:
            ok = False
            print(f"trainer {name}: NOT FOUND ({e})")
    sys.exit(0 if ok else 1)


def make_synthetic(argv: list[str] | None = None) -> None:
    """Write the synthetic test dataset into $nnUNet_raw (or --raw)."""
    from nnunet_autoaug.synthetic import DEFAULT_ID, make_synthetic_dataset

    parser = argparse.ArgumentParser(description=make_synthetic.__doc__)
    parser.add_argument("--raw", default=os.environ.get("nnUNet_raw"), help="nnUNet_raw folder")
    parser.add_argument("-d", type=int, default=DEFAULT_ID, help="dataset id")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)
    if not args.raw:
        parser.error("set nnUNet_raw or pass --raw")
    print(make_synthetic_dataset(args.raw, args.d, args.cases, shape=(args.size,) * 3))


def show_policy(argv: list[str] | None = None) -> None:
    """Validate and print a policy (preset, JSON file or results folder): its space, values and a summary."""
    from nnunet_autoaug.policy import PRESETS, PolicyError, resolve_policy

    parser = argparse.ArgumentParser(description=show_policy.__doc__)
    parser.add_argument("policy", help=f"preset ({', '.join(PRESETS)}), path to a policy JSON file, or a results "
                                       f"folder (fold_X) holding autoaug_policy.json")
    args = parser.parse_args(argv)
    try:
        policy = resolve_policy(args.policy)
    except PolicyError as e:
        print(f"invalid policy: {e}", file=sys.stderr)
        sys.exit(2)
    print(policy.dumps())
    print(f"summary: {policy.search_space.summary(policy)}")
