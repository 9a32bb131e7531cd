"""Regression of one global number per scan (a volume, a count) with Hydranet (Dubost et al., MICCAI 2018).

network.py (the base regressor), hydra.py (virtual sets: sampling, batch layout, summed loss), targets.py (global
labels from segmentations or a CSV), data.py (whole images, background), metrics.py (MSE, ICC), predict.py (CLI).
The trainers are in nnunet_autoaug/trainers/nnUNetTrainerHydra.py; user documentation in docs/HYDRANET.md.
"""
