"""symaudit.training: SMSE loss, the training loop (checkpoints, exact resume, DDP) and
checkpoint loading (`load_checkpoint(path) -> (model, info)`)."""

from symaudit.training.checkpoint import CheckpointError, CheckpointInfo, load_checkpoint
from symaudit.training.loss import SMSE
from symaudit.training.trainer import (
    AUGMENTATIONS,
    TrainConfig,
    TrainingError,
    TrainResult,
    evaluate,
    family_weights,
    train,
)

__all__ = [
    "AUGMENTATIONS",
    "SMSE",
    "CheckpointError",
    "CheckpointInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "family_weights",
    "load_checkpoint",
    "train",
]
