"""Register a genotype as a new plans configuration, so stock nnU-Net commands train and predict the found network.

The configuration (default ``<base>_scnas``) inherits everything from its base (``"inherits_from"``, so the
preprocessed data is reused) and replaces only ``architecture``: ``SCNASUNet`` with the genotype in its
``arch_kwargs``. nnU-Net's ``get_network_from_plans`` locates the class by its dotted path at predict time.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_autoaug.atomic import write_text_atomically
from nnunet_autoaug.nas.genotype import Genotype, GenotypeError
from nnunet_autoaug.nas.network import DEFAULT_MAX_NODE_CHANNELS, SCNASUNet
from nnunet_autoaug.pipeline import train_command

NETWORK_CLASS = f"{SCNASUNet.__module__}.{SCNASUNet.__name__}"
SUFFIX = "_scnas"


class PlansError(ValueError):
    """A plans file or configuration that cannot take (or does not hold) an SCNAS network."""


def scnas_configuration(base: str) -> str:
    return base + SUFFIX


def retrain_command(dataset: str, configuration: str, plans_identifier: str = "nnUNetPlans") -> str:
    """The nnUNetv2_train line that retrains a registered configuration."""
    return train_command(dataset, configuration, "FOLD", "nnUNetTrainerSCNAS", plans_identifier)


def architecture_entry(genotype: Genotype, strides: list, stem_channels: int,
                       max_node_channels: int = DEFAULT_MAX_NODE_CHANNELS) -> dict:
    return {"network_class_name": NETWORK_CLASS,
            "arch_kwargs": {"genotype": genotype.to_dict(), "strides": strides, "stem_channels": stem_channels,
                            "max_node_channels": max_node_channels},
            "_kw_requires_import": []}


def register_genotype(plans_file: str | Path, genotype: Genotype, base_configuration: str = "3d_fullres",
                      stem_channels: int = 68, name: str | None = None,
                      max_node_channels: int = DEFAULT_MAX_NODE_CHANNELS, source: str = "") -> str:
    """Add (or replace) the SCNAS configuration ``name`` in ``plans_file``; returns its name.

    Refuses a genotype whose dimension does not match the base configuration, and a name that is taken by a
    configuration that is not an SCNAS configuration. The file is replaced atomically.
    """
    plans_file = Path(plans_file)
    if not plans_file.is_file():
        raise PlansError(f"plans file {plans_file} does not exist. Run nnUNetv2_plan_and_preprocess for the dataset "
                         f"first.")
    plans = json.loads(plans_file.read_text())
    name = name or scnas_configuration(base_configuration)
    manager = PlansManager(plans)
    if base_configuration not in plans["configurations"]:
        raise PlansError(f"configuration {base_configuration!r} is not in {plans_file} (it has "
                         f"{list(plans['configurations'])}). Pick the configuration the genotype was searched on.")
    base = manager.get_configuration(base_configuration)
    dim = len(base.patch_size)
    if dim != genotype.dim:
        raise GenotypeError(f"a {genotype.dim}D genotype cannot be registered on the {dim}D configuration "
                            f"{base_configuration!r}. Use a genotype searched on a {dim}D configuration, or register "
                            f"on a {genotype.dim}D configuration (e.g. {'3d_fullres' if genotype.dim == 3 else '2d'}).")
    if base.network_arch_class_name == NETWORK_CLASS:
        raise PlansError(f"{base_configuration!r} is already an SCNAS configuration; register on the configuration "
                         f"it inherits from.")
    existing = plans["configurations"].get(name)
    if existing is not None and not is_scnas_configuration(existing):
        raise PlansError(f"configuration {name!r} already exists in {plans_file} and is not an SCNAS configuration. "
                         f"Choose another name.")
    strides = [list(s) for s in base.pool_op_kernel_sizes]
    SCNASUNet(1, 1, genotype, strides, 1, 1)  # fails here, not at training time, if the pair cannot build a network
    plans["configurations"][name] = {"inherits_from": base_configuration,
                                     "architecture": architecture_entry(genotype, strides, stem_channels,
                                                                        max_node_channels),
                                     "scnas_source": source}
    write_text_atomically(plans_file, json.dumps(plans, indent=4, sort_keys=False))  # readers never see half a file
    return name


def is_scnas_configuration(configuration: dict) -> bool:
    return configuration.get("architecture", {}).get("network_class_name") == NETWORK_CLASS


def registered_genotype(plans: dict, configuration: str) -> Genotype:
    """The genotype of a registered SCNAS configuration; PlansError naming the fix otherwise."""
    if configuration not in plans["configurations"]:
        raise PlansError(f"configuration {configuration!r} is not in the plans (available: "
                         f"{list(plans['configurations'])}). Run nnUNetTrainerSCNASSearch first, or register a "
                         f"genotype with nnUNetv2_autoaug_scnas_register.")
    resolved = PlansManager(plans).get_configuration(configuration).configuration
    if not is_scnas_configuration(resolved):
        raise PlansError(f"configuration {configuration!r} is not a registered SCNAS configuration (its network is "
                         f"{resolved.get('architecture', {}).get('network_class_name')}). Use the configuration the "
                         f"search registered, e.g. 3d_fullres{SUFFIX}.")
    return Genotype.from_dict(resolved["architecture"]["arch_kwargs"].get("genotype"),
                              f"plans configuration {configuration!r}")
