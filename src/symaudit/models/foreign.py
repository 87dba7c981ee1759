"""Models trained elsewhere: build one from a user's factory, load its weights, and name the
channels of its data.

    model = load_factory("path/to/my_model.py:make")      # or "package.module:make"
    load_weights(model, "weights.pt")                     # a state dict or a full checkpoint
    layout = parse_layout("rho,m_x:m_y,E")                # "a:b" = x and y of one vector
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from symaudit.fields import Channel, FieldLayout, LayoutError

__all__ = ["ForeignModelError", "load_factory", "load_weights", "parse_layout"]

#: keys under which checkpoints commonly keep the model's state dict
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "ema")


class ForeignModelError(ValueError):
    """A user's model factory, weights file or layout cannot be used."""


def _import(target: str):
    """``path/to/file.py`` or ``package.module`` -> the module object."""
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise ForeignModelError(f"--model: no such file {path}")
        name = f"_symaudit_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ForeignModelError(f"--model: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # lets the file's classes be pickled and introspected
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise ForeignModelError(f"--model: cannot import module {target!r}: {exc}") from exc


def load_factory(spec: str) -> nn.Module:
    """Call the factory named by ``"path/to/file.py:factory"`` or ``"pkg.module:factory"``
    (no arguments) and return the `nn.Module` it builds."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ForeignModelError(
            f"--model {spec!r}: write FILE.py:FACTORY or package.module:FACTORY"
        )
    module = _import(target)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ForeignModelError(f"--model: {target} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ForeignModelError(
            f"--model: {spec} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _state_dict(obj: object, path: Path) -> Mapping[str, object]:
    """The state dict in a loaded file: the mapping itself, or one under a usual key."""
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _state_dict(obj[key], path)
    raise ForeignModelError(
        f"--weights {path}: neither a state dict (name -> tensor) nor a checkpoint with one "
        f"under {', '.join(CHECKPOINT_KEYS)}"
    )


def _extra_state_globals(model: nn.Module) -> list:
    """Functions and classes referenced by the model's own non-tensor state_dict entries
    (e.g. neuraloperator's ``_metadata`` holds ``gelu`` and the ``SpectralConv`` class): a
    weights file of this model legitimately references exactly these."""
    found: list = []

    def walk(v: object) -> None:
        if isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, list | tuple | set):
            for item in v:
                walk(item)
        elif isinstance(v, type) or (callable(v) and hasattr(v, "__qualname__")):
            found.append(v)

    for v in model.state_dict().values():
        if not isinstance(v, torch.Tensor):
            walk(v)
    return found


def load_weights(model: nn.Module, path: str | os.PathLike, *, trust: bool = False) -> dict:
    """Load a state dict or a checkpoint holding one into ``model`` (strictly: every key must
    match). A ``module.`` prefix (DistributedDataParallel) is removed. Loaded with
    ``weights_only=True``: tensors, plain containers and the functions/classes the model's
    own extra state references -- never other pickled code, unless ``trust`` (then the file
    is unpickled in full: only for files from a trusted source).

    Returns the checkpoint's other top-level entries that are plain numbers or strings."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_extra_state_globals(model)):
            obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except FileNotFoundError:
        raise ForeignModelError(f"--weights: no such file {path}") from None
    except Exception as exc:  # pickle errors of any kind: say what is supported
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ForeignModelError(
            f"--weights {path}: not loadable as tensors and plain containers ({first}); save "
            "model.state_dict(), or pass --trust-weights for a file from a trusted source"
        ) from exc
    sd = dict(_state_dict(obj, path))
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ForeignModelError(f"--weights {path} do not fit the model: {exc}") from exc
    extras = obj if isinstance(obj, Mapping) and obj is not sd else {}
    return {k: v for k, v in extras.items() if isinstance(v, int | float | str)}


def parse_layout(text: str) -> FieldLayout:
    """``"rho,m_x:m_y,E"`` -> FieldLayout: comma-separated channels in tensor order; ``a:b``
    names the x and y components of one vector (named after their common prefix, e.g.
    "m_x:m_y" -> vector "m"; the Euler names rho, m_x, m_y, E give `FieldLayout.euler()`)."""
    channels: list[Channel] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            raise ForeignModelError(f"--layout {text!r}: empty channel name")
        if ":" in item:
            parts = [p.strip() for p in item.split(":")]
            if len(parts) != 2 or not all(parts):
                raise ForeignModelError(f"--layout {text!r}: a vector is X:Y, got {item!r}")
            vec = _vector_name(*parts)
            channels += [Channel(parts[0], vec, "x"), Channel(parts[1], vec, "y")]
        else:
            channels.append(Channel(item))
    try:
        layout = FieldLayout(channels)
    except LayoutError as exc:
        raise ForeignModelError(f"--layout {text!r}: {exc}") from exc
    euler = FieldLayout.euler()
    return euler if layout.names == euler.names and _same_kinds(layout, euler) else layout


def _vector_name(x: str, y: str) -> str:
    prefix = os.path.commonprefix([x, y]).rstrip("_")
    return prefix or f"{x}:{y}"


def _same_kinds(a: FieldLayout, b: FieldLayout) -> bool:
    return [c.component for c in a] == [c.component for c in b]
