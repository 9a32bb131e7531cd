"""On-device batched augmentation: per-sample parameters (params) applied by one engine call (engine)."""
from nnunet_autoaug.augment.engine import ELASTIC_MIN_SIGMA, augment_batch
from nnunet_autoaug.augment.params import AugmentParams

__all__ = ["ELASTIC_MIN_SIGMA", "AugmentParams", "augment_batch"]
