"""The paper's training recipe as nnU-Net v2 trainers, one named subclass per schedule.

SGD (Nesterov) with lr 0.01 and momentum 0.99 as in nnU-Net's default, batch size 2 (set in the plans), 200 epochs
of 250 iterations. As in nnU-Net (``nnUNetTrainer_250epochs`` and the like), a shorter schedule is a subclass whose
name says it, so a results folder and a checkpoint name what made them. nnU-Net finds these classes by name through
``nnUNet_extTrainer`` (the node needs the class of a model's checkpoint to rebuild its network), so this file imports
nothing from this project.
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerPaper(nnUNetTrainer):
    """The paper's schedule: 200 epochs of 250 iterations; a checkpoint every epoch."""

    EPOCHS = 200
    ITERATIONS = 250

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")):  # noqa: B008 (nnU-Net's own signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-2
        self.num_epochs = self.EPOCHS
        self.num_iterations_per_epoch = self.ITERATIONS
        self.num_val_iterations_per_epoch = max(1, self.ITERATIONS // 5)
        self.save_every = 1  # a checkpoint every epoch: CPU training resumes where a session stopped

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's fold validation without test-time mirroring, much faster on a CPU; the node serves without it."""
        axes = self.inference_allowed_mirroring_axes  # type: ignore[has-type]  # set by nnU-Net during training
        self.inference_allowed_mirroring_axes = None
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes


class nnUNetTrainerPaper_160epochs_150it(nnUNetTrainerPaper):
    """The schedule of models/renal-synth-cpu with the 3d_cpu plan, sized for a 2-core CPU."""

    EPOCHS = 160
    ITERATIONS = 150


class nnUNetTrainerPaper_50epochs_100it(nnUNetTrainerPaper):
    """The schedule of the kidney localizer (models/renal-localizer-cpu, 3d_loc plan) on 2 CPU cores."""

    EPOCHS = 50
    ITERATIONS = 100


class nnUNetTrainerPaper_40epochs_100it(nnUNetTrainerPaper):
    """Fine-tuning a trained model (``dicomnode-train train --pretrained``) on new cases: 40 epochs of 100 iterations."""

    EPOCHS = 40
    ITERATIONS = 100


class nnUNetTrainerPaper_20epochs_100it(nnUNetTrainerPaper):
    """A short fine-tune of a trained model on new cases: 20 epochs of 100 iterations (models/renal-localizer2-cpu)."""

    EPOCHS = 20
    ITERATIONS = 100


class nnUNetTrainerPaper_12epochs_100it(nnUNetTrainerPaper):
    """A second short fine-tune on new cases: 12 epochs of 100 iterations (models/renal-localizer3-cpu)."""

    EPOCHS = 12
    ITERATIONS = 100


class nnUNetTrainerPaper_45epochs(nnUNetTrainerPaper):
    """The schedule of models/renal-phantom-cpu: 45 epochs of 250 iterations."""

    EPOCHS = 45


class nnUNetTrainerPaper_1epoch_3it(nnUNetTrainerPaper):
    """A smoke test of the training path: one epoch of three iterations; the model it makes is not usable."""

    EPOCHS = 1
    ITERATIONS = 3


class nnUNetTrainerPaper_NoMirroring(nnUNetTrainerPaper):
    """No mirroring in augmentation or inference, as TotalSegmentator trains its models (``nnUNetTrainerNoMirroring``):
    a model with separate right and left labels must not see mirrored patients."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self) -> tuple:  # nnU-Net's own (misspelt) name
        rotation, dummy_2d, patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, patch_size, None


class nnUNetTrainerPaper_NoMirroring_40epochs_100it(nnUNetTrainerPaper_NoMirroring):
    """The schedule of the TotalSegmentator stand-in the tests use (``tests/data/totalseg_standin``)."""

    EPOCHS = 40
    ITERATIONS = 100


class nnUNetTrainerPaper_NoMirroring_1epoch_3it(nnUNetTrainerPaper_NoMirroring):
    """A smoke test of the TotalSegmentator convention's training path; the model it makes is not usable."""

    EPOCHS = 1
    ITERATIONS = 3


class nnUNetTrainerPaper_2epochs_20it(nnUNetTrainerPaper):
    """A fine-tune in a test (``dicomnode-train finetune`` on a few small site cases): two epochs of 20 iterations."""

    EPOCHS = 2
    ITERATIONS = 20


#: Every schedule ``dicomnode-train train --trainer`` offers, by name.
TRAINERS = {
    cls.__name__: cls
    for cls in (
        nnUNetTrainerPaper,
        nnUNetTrainerPaper_160epochs_150it,
        nnUNetTrainerPaper_50epochs_100it,
        nnUNetTrainerPaper_40epochs_100it,
        nnUNetTrainerPaper_20epochs_100it,
        nnUNetTrainerPaper_12epochs_100it,
        nnUNetTrainerPaper_45epochs,
        nnUNetTrainerPaper_1epoch_3it,
        nnUNetTrainerPaper_NoMirroring,
        nnUNetTrainerPaper_NoMirroring_40epochs_100it,
        nnUNetTrainerPaper_NoMirroring_1epoch_3it,
        nnUNetTrainerPaper_2epochs_20it,
    )
}
