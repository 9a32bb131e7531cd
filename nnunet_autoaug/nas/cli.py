"""``nnUNetv2_autoaug_scnas_register``: register a genotype JSON on a dataset's plans (transfer, as in the paper)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnunet_autoaug.nas.genotype import Genotype, GenotypeError
from nnunet_autoaug.nas.network import DEFAULT_MAX_NODE_CHANNELS
from nnunet_autoaug.nas.plans import PlansError, register_genotype, retrain_command
from nnunet_autoaug.nas.settings import retrain_width


def register_on_dataset(dataset: str, genotype_file: str, configuration: str | None = None,
                        plans_identifier: str = "nnUNetPlans", name: str | None = None, width: int | None = None,
                        max_node_channels: int = DEFAULT_MAX_NODE_CHANNELS) -> tuple[str, Path]:
    """Register ``genotype_file`` on ``dataset``'s preprocessed plans; returns (configuration name, plans file)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    genotype = Genotype.load(genotype_file)
    configuration = configuration or ("3d_fullres" if genotype.dim == 3 else "2d")
    plans_file = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(dataset) / f"{plans_identifier}.json"
    registered = register_genotype(plans_file, genotype, configuration, width or retrain_width(), name,
                                   max_node_channels, source=str(Path(genotype_file).resolve()))
    return registered, plans_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Register an SCNAS genotype (scnas_genotype.json of a search run) as "
                                                 "a plans configuration of a dataset, for nnUNetTrainerSCNAS.")
    parser.add_argument("-d", required=True, help="dataset name or id (must be planned and preprocessed)")
    parser.add_argument("-g", required=True, help="genotype JSON (<search fold folder>/scnas_genotype.json) or the "
                                                   "search's fold folder")
    parser.add_argument("-c", default=None, help="base configuration (default: 3d_fullres for 3D genotypes, else 2d)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("--name", default=None, help="name of the new configuration (default: <base>_scnas)")
    parser.add_argument("--width", type=int, default=None, help="stem channels for retraining (default: "
                        "$nnUNet_autoaug_scnas_width or 68, the paper's value)")
    args = parser.parse_args(argv)
    try:
        name, plans_file = register_on_dataset(args.d, args.g, args.c, args.p, args.name, args.width)
    except (GenotypeError, PlansError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"registered configuration {name!r} in {plans_file}\n"
          f"retrain: {retrain_command(args.d, name, args.p)}")
    return 0
