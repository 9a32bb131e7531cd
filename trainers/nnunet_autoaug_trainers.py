# Re-exports only. nnU-Net imports this folder's modules as top-level modules and purges them after its trainer
# lookup, so classes *defined* here could not be pickled or found again. The real classes live in nnunet_autoaug.
from nnunet_autoaug.trainers import *  # noqa: F401,F403
