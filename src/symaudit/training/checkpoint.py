"""Training checkpoints: everything needed to rebuild the model and to resume bit-for-bit.

A checkpoint is one `torch.save` file holding plain data only (loaded with
``weights_only=True``): format tag, model config (preset, architecture, constructor
arguments), model and optimiser state, completed epochs and steps, RNG states (torch, CUDA,
numpy, python), the training config, the field layout (JSON), the channel RMS, and the
per-epoch metrics history. Written atomically: temporary file in the same directory, fsync,
`os.replace` — a kill at any moment leaves the previous checkpoint intact. The file also
holds a SHA-256 of its payload (`payload_digest`), checked on every load: flipped bytes in the
weights are a `CheckpointError`, not a silent NaN run (files written before the digest
existed load without the check).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from symaudit._io import atomic_torch_save, payload_digest
from symaudit.errors import SymauditError
from symaudit.fields import FieldLayout
from symaudit.models import build_from_config

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CheckpointError",
    "CheckpointInfo",
    "capture_rng",
    "load_checkpoint",
    "read_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "symaudit-checkpoint"
#: the checkpoint's file name in a training run directory
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1
_REQUIRED = (
    "format",
    "version",
    "model_config",
    "model_state",
    "optimizer_state",
    "epoch",
    "step",
    "rng",
    "config",
    "layout",
    "channel_rms",
    "history",
)


class CheckpointError(SymauditError, RuntimeError):
    """A checkpoint file is missing, corrupt, of another format, or does not fit its use."""


@dataclass
class CheckpointInfo:
    """What a checkpoint says besides the weights (see module docstring)."""

    path: Path
    epoch: int
    step: int
    config: dict[str, Any]
    model_config: dict[str, Any]
    layout: FieldLayout
    channel_rms: torch.Tensor
    history: list[dict[str, Any]]
    split: dict[str, Any]  # dataset file -> (train trajectory ids, validation ids)


def capture_rng() -> dict[str, Any]:
    """Current RNG states of torch (CPU and CUDA), numpy and python, as plain data."""
    np_state = np.random.get_state()  # noqa: NPY002 (the global state is what we save)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _to_lists(obj: Any) -> Any:
    return [_to_lists(o) for o in obj] if isinstance(obj, tuple | list) else obj


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (must hold the keys of a checkpoint) to ``path``."""
    missing = [k for k in _REQUIRED if k not in payload and k not in ("format", "version")]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    data["digest"] = payload_digest(data)
    return atomic_torch_save(data, path)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and validate the raw checkpoint dict; `CheckpointError` names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled zip archives
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt or truncated file?): {exc}"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a symaudit checkpoint (no {CHECKPOINT_FORMAT!r} tag)")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {data.get('version')} is not supported "
            f"(this symaudit reads version {CHECKPOINT_VERSION})"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is incomplete, missing {missing}")
    stored = data.pop("digest", None)
    if stored is not None and stored != payload_digest(data):
        raise CheckpointError(
            f"{path}: checkpoint is corrupt (its contents do not match the checksum stored "
            "when it was written); restore it from a copy or delete it and train again"
        )
    return data


def load_checkpoint(
    path: str | os.PathLike, *, map_location: Any = "cpu"
) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the trained model from a checkpoint alone → ``(model in eval mode, info)``.

    The model is float32 (or the training dtype) on ``map_location``; ``info`` carries the
    training config, field layout, channel RMS (for `SMSE`), epochs done and metrics history.
    """
    data = read_checkpoint(path, map_location)
    try:
        model = build_from_config(data["model_config"])
        dtype = getattr(torch, data["config"].get("dtype", "float32"))
        model.to(dtype=dtype)
        model.load_state_dict(data["model_state"])
        layout = FieldLayout.from_json(data["layout"])
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: checkpoint does not match its own model description: {exc}"
        ) from exc
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    info = CheckpointInfo(
        path=Path(path),
        epoch=int(data["epoch"]),
        step=int(data["step"]),
        config=dict(data["config"]),
        model_config=dict(data["model_config"]),
        layout=layout,
        channel_rms=torch.as_tensor(data["channel_rms"], dtype=torch.float64),
        history=list(data["history"]),
        split=dict(data.get("split", {})),
    )
    return model.eval(), info
