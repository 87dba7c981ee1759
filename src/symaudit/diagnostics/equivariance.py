"""Forward-pass equivariance diagnostics of a one-step emulator f.

For transitions (x_t, x_t+1) and every element g of a group:

    transformed test error   E_g(x) = SMSE(f(g x_t), g x_t+1)     (E_e: the plain test error)
    equivariance defect      D_g(x) = SMSE(f(g x_t), g f(x_t))     (label-free; 0 iff f
                                                                     commutes with g on x_t)

For a Galilean boost observed at the step dt, "g x_t" is the pure kick ``g.at_time(0)`` and the
outputs get the kick plus the shift c dt (see `GroupElement.transition`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from symaudit._io import atomic_torch_save, load_result_payload
from symaudit.diagnostics._params import check_model_output, model_checksum, real_dtype
from symaudit.diagnostics.metric import Transitions, check_transitions
from symaudit.fields import FieldLayout, LayoutError
from symaudit.groups import Group
from symaudit.training.loss import SMSE

__all__ = ["EquivarianceFileError", "EquivarianceResult", "equivariance_error"]

_FORMAT = "symaudit-equivariance-1"
_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class EquivarianceFileError(ValueError):
    """A saved equivariance result is missing, corrupt or of another format."""


def _stats(v: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(v, torch.tensor(_QUANTILES, dtype=v.dtype))
    out = {f"q{int(p * 100):02d}": float(x) for p, x in zip(_QUANTILES, q, strict=True)}
    out["median"] = out.pop("q50")
    out.update(mean=float(v.mean()), min=float(v.min()), max=float(v.max()))
    return out


def element_index(elements: list[str], name: str) -> int:
    """Position of the element ``name`` in a result's ``elements`` (`KeyError` naming them)."""
    try:
        return elements.index(name)
    except ValueError:
        raise KeyError(f"no group element {name!r}; have {elements}") from None


@dataclass
class EquivarianceResult:
    """Per-element, per-state equivariance diagnostics.

    Attributes:
        elements: element names in group order (length |G|).
        error: `(|G|, N)` float64, E_g(x_i) = SMSE(f(g x_t), g x_t+1).
        defect: `(|G|, N)` float64, D_g(x_i) = SMSE(f(g x_t), g f(x_t)).
        group: the group's description (`Group.describe()`).
        settings: model checksum, device, dtype, chunk size, loss scales, ...
    """

    elements: list[str]
    error: torch.Tensor
    defect: torch.Tensor
    group: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def index(self, name: str) -> int:
        return element_index(self.elements, name)

    @property
    def augmented_error(self) -> torch.Tensor:
        """`(N,)` group-averaged error mean_g E_g (the paper's "symmetry augmented" error)."""
        return self.error.mean(dim=0)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """{element: {"error": stats, "defect": stats}} with stats the median, 10/25/75/90 %
        quantiles, mean, min and max over states."""
        return {
            name: {"error": _stats(self.error[i]), "defect": _stats(self.defect[i])}
            for i, name in enumerate(self.elements)
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file in the same directory, then `os.replace`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _FORMAT,
            "elements": self.elements,
            "group": self.group,
            "settings": self.settings,
        }
        payload = {
            "meta": json.dumps(meta),
            "error": self.error.detach().cpu(),
            "defect": self.defect.detach().cpu(),
        }
        return atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EquivarianceResult:
        """Read a file written by `save` (plain tensors and JSON: ``weights_only`` loading)."""
        payload, meta = load_result_payload(
            path, _FORMAT, EquivarianceFileError, "equivariance result"
        )
        try:
            res = cls(
                elements=[str(n) for n in meta["elements"]],
                error=payload["error"],
                defect=payload["defect"],
                group=dict(meta["group"]),
                settings=dict(meta["settings"]),
            )
        except Exception as exc:  # missing keys or wrong types mean a bad file
            raise EquivarianceFileError(
                f"{path} is not a readable equivariance result: {exc}"
            ) from exc
        shape = (len(res.elements), int(res.settings.get("num_states", -1)))
        for name in ("error", "defect"):
            t = getattr(res, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                raise EquivarianceFileError(f"{path}: {name} is not a tensor of shape {shape}")
        return res


def _model_placement(model: nn.Module, like: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point() or t.is_complex():
            return t.device, real_dtype(t.dtype)
    return like.device, like.dtype


def equivariance_error(
    model: nn.Module,
    batch: Transitions,
    group: Group,
    loss: SMSE,
    *,
    chunk_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    layout: FieldLayout | None = None,
    progress: bool = False,
) -> EquivarianceResult:
    """E_g and D_g for every element g of ``group`` and every transition of ``batch``.

    Args:
        model: maps `(B, C, H, W)` -> `(B, C, H, W)`; run in eval mode (restored after) under
            ``no_grad``.
        batch: (x_t, x_t+1), each `(N, C, H, W)`, finite.
        group: acts on the data's `FieldLayout` (checked against the channels).
        loss: the SMSE; its ``per_sample`` gives one value per state.
        chunk_size: states per forward pass, bounding memory: each pass holds s states and
            their |G| images, s = max(1, chunk_size // (|G| + 1)).
        device, dtype: where and in which precision to run; default: the model's first
            floating parameter/buffer (else the batch's). Inputs are moved there.
        layout: the data's layout, if known (e.g. ``dataset.layout``); must equal the group's.
        progress: show a rich progress bar over chunks.

    Returns:
        `EquivarianceResult` with ``error`` and ``defect`` `(|G|, N)` float64 on the CPU.
    """
    if not isinstance(group, Group):
        raise TypeError(f"group must be a symaudit.groups.Group, got {type(group).__name__}")
    if layout is not None and layout != group.layout:
        raise LayoutError(f"the data's layout {layout} differs from the group's {group.layout}")
    check_transitions(batch, what="equivariance batch")
    x_t, x_t1 = batch
    group.layout.check(x_t, what="equivariance batch")
    if x_t.shape[1] != loss.num_channels:
        raise LayoutError(f"the batch has {x_t.shape[1]} channels, the loss {loss.num_channels}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    dev, dt = _model_placement(model, x_t)
    dev = torch.device(device) if device is not None else dev
    dt = dtype if dtype is not None else dt
    if not dt.is_floating_point:
        raise ValueError(f"dtype must be a floating type, got {dt}")
    elements = list(group)
    n = x_t.shape[0]
    error = torch.empty(len(elements), n, dtype=torch.float64)
    defect = torch.empty_like(error)

    # one forward per chunk: x_t and its |G| images, at most chunk_size states
    per = max(1, chunk_size // (len(elements) + 1))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _progress(progress, n, f"equivariance {group.name}") as advance:
            for a in range(0, n, per):
                xt = x_t[a : a + per].to(device=dev, dtype=dt)
                xt1 = x_t1[a : a + per].to(device=dev, dtype=dt)
                pairs = [g.transition(xt, xt1) for g in elements]
                outs = _forward(model, torch.cat([xt] + [gx for gx, _ in pairs]))
                fx, outs = outs[: len(xt)], outs[len(xt) :].unflatten(0, (len(elements), -1))
                for i, (g, (_, gy)) in enumerate(zip(elements, pairs, strict=True)):
                    error[i, a : a + len(xt)] = loss.per_sample(outs[i], gy).double().cpu()
                    defect[i, a : a + len(xt)] = loss.per_sample(outs[i], g(fx)).double().cpu()
                advance(len(xt))
    finally:
        model.train(was_training)

    settings = {
        "num_states": n,
        "chunk_size": chunk_size,
        "device": str(dev),
        "dtype": str(dt).removeprefix("torch."),
        "model_checksum": model_checksum(model),
        "channel_rms": loss.channel_rms.tolist(),
        "resolution": list(x_t.shape[-2:]),
    }
    return EquivarianceResult(
        elements=[g.name for g in elements],
        error=error,
        defect=defect,
        group=group.describe(),
        settings=settings,
    )


@contextlib.contextmanager
def _progress(enabled: bool, total: int, what: str):
    """Yield ``advance(k)``: a rich progress bar over states when enabled, else a no-op."""
    if not enabled:
        yield lambda k: None
        return
    from symaudit._progress import progress_bar

    with progress_bar(True, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda k: bar.advance(task, k)


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return check_model_output(x, model(x))
