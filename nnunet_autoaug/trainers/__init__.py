"""Our nnU-Net trainers. nnU-Net finds them by class name through the re-export folder (see discovery.py)."""
from nnunet_autoaug.compat import check_nnunet_version

check_nnunet_version()

from nnunet_autoaug.trainers.nnUNetTrainerASNG import (  # noqa: E402
    nnUNetTrainerASNG, nnUNetTrainerASNG_5epochs, nnUNetTrainerASNGFast, nnUNetTrainerASNGShared)
from nnunet_autoaug.trainers.nnUNetTrainerHydra import (  # noqa: E402
    nnUNetTrainerHydra, nnUNetTrainerHydra_small, nnUNetTrainerRegression, nnUNetTrainerRegression_small)
from nnunet_autoaug.trainers.nnUNetTrainerMetaAug import (  # noqa: E402
    nnUNetTrainerMetaAug, nnUNetTrainerMetaAug_5epochs, nnUNetTrainerMetaAugClassSpecific,
    nnUNetTrainerMetaAugFirstOrder, nnUNetTrainerMetaAugScaledLR)
from nnunet_autoaug.trainers.nnUNetTrainerPolicy import nnUNetTrainerPolicy, nnUNetTrainerPolicy_5epochs  # noqa: E402
from nnunet_autoaug.trainers.nnUNetTrainerPolicyBase import nnUNetTrainerPolicyBase  # noqa: E402
from nnunet_autoaug.trainers.nnUNetTrainerRandAug import nnUNetTrainerRandAug, nnUNetTrainerRandAug_5epochs  # noqa: E402
from nnunet_autoaug.trainers.nnUNetTrainerSCNAS import nnUNetTrainerSCNAS, nnUNetTrainerSCNASSearch  # noqa: E402
from nnunet_autoaug.trainers.nnUNetTrainerStrategy import (  # noqa: E402
    nnUNetTrainerRL, nnUNetTrainerRLWarmStart, nnUNetTrainerStrategy)
from nnunet_autoaug.trainers.nnUNetTrainerScheduled import (  # noqa: E402
    nnUNetTrainerDA5Scheduled, nnUNetTrainerNoDAScheduled, nnUNetTrainerScheduled)

__all__ = ["nnUNetTrainerASNG", "nnUNetTrainerASNGFast", "nnUNetTrainerASNGShared", "nnUNetTrainerASNG_5epochs",
           "nnUNetTrainerDA5Scheduled", "nnUNetTrainerHydra", "nnUNetTrainerHydra_small", "nnUNetTrainerMetaAug",
           "nnUNetTrainerMetaAugClassSpecific", "nnUNetTrainerMetaAugFirstOrder", "nnUNetTrainerMetaAugScaledLR",
           "nnUNetTrainerMetaAug_5epochs",
           "nnUNetTrainerNoDAScheduled", "nnUNetTrainerPolicy", "nnUNetTrainerPolicyBase",
           "nnUNetTrainerPolicy_5epochs", "nnUNetTrainerRL", "nnUNetTrainerRLWarmStart", "nnUNetTrainerRandAug",
           "nnUNetTrainerRandAug_5epochs", "nnUNetTrainerRegression", "nnUNetTrainerRegression_small",
           "nnUNetTrainerSCNAS", "nnUNetTrainerSCNASSearch", "nnUNetTrainerScheduled", "nnUNetTrainerStrategy"]
