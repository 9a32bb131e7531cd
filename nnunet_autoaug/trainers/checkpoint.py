"""nnU-Net's checkpoint plus one extra key: nnU-Net builds its dict inline in save_checkpoint, so we rebuild the same
keys (tests check that the key sets match) and add ours. Unlike nnU-Net, the file is replaced atomically."""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule

from nnunet_autoaug.atomic import replace_atomically


def save_checkpoint_with(trainer: nnUNetTrainer, filename: str, key: str, state: dict) -> None:
    """What nnUNetTrainer.save_checkpoint writes, with ``state`` under ``key``."""
    if trainer.local_rank != 0:
        return
    if trainer.disable_checkpointing:
        trainer.print_to_log_file("No checkpoint written, checkpointing is disabled")
        return
    network = trainer.network.module if trainer.is_ddp else trainer.network
    network = network._orig_mod if isinstance(network, OptimizedModule) else network
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": trainer.grad_scaler.state_dict() if trainer.grad_scaler is not None else None,
        "logging": trainer.logger.get_checkpoint(),
        "_best_ema": trainer._best_ema,
        "current_epoch": trainer.current_epoch + 1,
        "init_args": trainer.my_init_kwargs,
        "trainer_name": trainer.__class__.__name__,
        "inference_allowed_mirroring_axes": trainer.inference_allowed_mirroring_axes,
        key: state,
    }
    # nnU-Net's torch.save(filename) truncates the old checkpoint first: a kill (or a state that fails to pickle)
    # during the write would leave a checkpoint_latest.pth that --c cannot load
    replace_atomically(filename, lambda tmp: torch.save(checkpoint, tmp))
