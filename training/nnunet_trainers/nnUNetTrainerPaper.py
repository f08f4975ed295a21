"""The paper's training recipe as an nnU-Net v2 trainer.

SGD (Nesterov) with lr 0.01 and momentum 0.99 as in nnU-Net's default, batch size 2 (set in the plans),
200 epochs. This file is loaded by nnU-Net's trainer lookup through ``nnUNet_extTrainer``, so it imports
nothing from this project.
"""

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerPaper(nnUNetTrainer):
    """nnUNetTrainer with 200 epochs; epochs and iterations per epoch can be shortened by environment."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's own signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-2
        self.num_epochs = int(os.environ.get("DICOMNODE_TRAIN_EPOCHS", 200))
        self.num_iterations_per_epoch = int(os.environ.get("DICOMNODE_TRAIN_ITERATIONS", 250))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        self.save_every = 1  # a checkpoint every epoch: CPU training resumes where a session stopped

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's fold validation without test-time mirroring: 8x faster on a CPU; the node serves without it."""
        axes = self.inference_allowed_mirroring_axes
        self.inference_allowed_mirroring_axes = None
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes
