"""nnunet_autoaug: searched data augmentation (and architectures) for nnU-Net v2, as ordinary nnU-Net trainers.

Kept import-light on purpose: the start-up hook (``nnunet_autoaug._startup``) imports this package in every Python
process, so nothing here may import torch or nnunetv2.
"""
__version__ = "0.1.0"
