"""SCNAS (Kim et al., MICCAI 2019): a searched cell-based U-Net on nnU-Net's plans. See docs/SCNAS.md."""
from nnunet_autoaug.nas.genotype import CELL_TYPES, Genotype, GenotypeError, derive_genotype
from nnunet_autoaug.nas.network import SCNASUNet
from nnunet_autoaug.nas.ops import PRIMITIVES
from nnunet_autoaug.nas.supernet import SCNASSupernet

__all__ = ["CELL_TYPES", "PRIMITIVES", "Genotype", "GenotypeError", "SCNASSupernet", "SCNASUNet", "derive_genotype"]
