"""symaudit's HDF5 dataset format: one file per dataset of trajectories.

Layout of a file (h5py):

    fields        float32 (N, T, C, H, W), chunked per snapshot (1, 1, C, H, W)
    times         float64 (T,), strictly increasing simulated times
    done          uint8 (N,), 1 once trajectory i is written (all 1 in a complete file)
    channel_rms   float64 (C,), training-set RMS per channel, vectors sharing one value
                  (`symaudit.data.stats.RunningRMS`); NaN until the file is complete
    params/NAME   float64 (N, ...), per-trajectory initial-condition parameters
    attributes    format, format_version, layout (FieldLayout JSON), channel_names, and the
                  metadata dict as JSON (plus gamma, domain, boundary, ic_kind, seed,
                  package_version as plain attributes for h5dump readers)

Every dataset is allocated when the file is created, so filling it later only overwrites raw
bytes in place: a process killed mid-write leaves a readable file whose ``done`` mask says what
is valid (the resumable generator relies on this). Complete files are written under a temporary
name and moved into place with `os.replace`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from symaudit._finite import require_finite
from symaudit._io import atomic_path
from symaudit.data.stats import RunningRMS
from symaudit.errors import SymauditError
from symaudit.fields import FieldLayout, LayoutError

__all__ = ["FORMAT", "FORMAT_VERSION", "Dataset", "DatasetError", "open_dataset", "write_dataset"]

FORMAT = "symaudit-dataset"
FORMAT_VERSION = 1
_REQUIRED = ("fields", "times", "done", "channel_rms")
_PLAIN_ATTRS = ("gamma", "domain", "boundary", "ic_kind", "seed")


class DatasetError(SymauditError):
    """A dataset file is missing, corrupt, incomplete, or does not match its description."""


def _package_version() -> str:
    from symaudit import __version__

    return __version__


def _early_dcpl() -> h5py.h5p.PropDCID:
    # Allocate all chunks at creation and never write fill values: later writes then touch raw
    # data only (no metadata updates), which keeps a killed writer's file readable.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def create_file(
    path: str | os.PathLike,
    *,
    num_trajectories: int,
    resolution: tuple[int, int],
    times: torch.Tensor | Sequence[float],
    layout: FieldLayout,
    metadata: Mapping,
    param_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Create an empty (``done`` all 0) dataset file at ``path`` with every array allocated.

    ``param_shapes`` maps a parameter name to its per-trajectory shape (the file stores
    `(N, *shape)`). Used by `write_dataset` and the resumable generator; callers handle
    atomicity (write to a temporary name, then `os.replace`).
    """
    times_np = np.asarray(torch.as_tensor(times, dtype=torch.float64).cpu(), dtype=np.float64)
    _check_times(times_np, what="times")
    h, w = resolution
    n, t, c = num_trajectories, len(times_np), layout.num_channels
    try:
        meta_json = json.dumps(dict(metadata), sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["layout"] = layout.to_json()
        f.attrs["channel_names"] = list(layout.names)
        f.attrs["metadata"] = meta_json
        f.attrs["package_version"] = _package_version()
        for key in _PLAIN_ATTRS:
            value = metadata.get(key)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                f.attrs[key] = value
        f.create_dataset(
            "fields",
            shape=(n, t, c, h, w),
            dtype=np.float32,
            chunks=(1, 1, c, h, w) if n * t > 0 else None,
            dcpl=_early_dcpl(),
        )
        f.create_dataset("times", data=times_np)
        f.create_dataset("done", data=np.zeros(n, dtype=np.uint8))
        f.create_dataset("channel_rms", data=np.full(c, np.nan))
        group = f.create_group("params")
        for name, shape in (param_shapes or {}).items():
            group.create_dataset(name, shape=(n, *shape), dtype=np.float64, dcpl=_early_dcpl())


def write_dataset(
    path: str | os.PathLike,
    fields: torch.Tensor,
    times: torch.Tensor | Sequence[float],
    layout: FieldLayout,
    metadata: Mapping,
    channel_rms: torch.Tensor | None = None,
    *,
    params: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete dataset atomically (temporary file in the same directory, then
    `os.replace`); an existing file at ``path`` is replaced only once the new one is whole.

    Args:
        fields: `(N, T, C, H, W)`, stored as float32; must be finite.
        times: `(T,)` strictly increasing.
        layout: channel layout (C channels).
        metadata: JSON-serialisable dict (gamma, domain, boundary, ic_kind, seed, solver, ...).
        channel_rms: `(C,)`; computed from ``fields`` with `RunningRMS` when omitted.
        params: optional per-trajectory parameter tensors with leading dimension N.
    """
    path = Path(path)
    fields = torch.as_tensor(fields)
    if fields.ndim != 5:
        raise ValueError(f"fields must be shaped (N, T, C, H, W), got {tuple(fields.shape)}")
    layout.check(fields, what="fields")
    if not torch.isfinite(fields).all():
        raise ValueError("fields contain NaN or infinite values")
    times_t = torch.as_tensor(times, dtype=torch.float64)
    if times_t.shape != (fields.shape[1],):
        raise ValueError(
            f"times has shape {tuple(times_t.shape)} but fields has {fields.shape[1]} snapshots"
        )
    f32 = fields.detach().to("cpu", torch.float32)
    if channel_rms is None:
        channel_rms = RunningRMS(layout)
        channel_rms.update(f32)
        channel_rms = channel_rms.compute()
    rms = torch.as_tensor(channel_rms, dtype=torch.float64).cpu()
    if rms.shape != (layout.num_channels,) or not torch.isfinite(rms).all() or (rms <= 0).any():
        raise ValueError(f"channel_rms must be {layout.num_channels} positive finite values")
    params = {k: torch.as_tensor(v, dtype=torch.float64).cpu() for k, v in (params or {}).items()}
    for name, value in params.items():
        if value.ndim == 0 or value.shape[0] != fields.shape[0]:
            raise ValueError(f"param {name!r} must have leading dimension {fields.shape[0]}")
    with atomic_path(path) as tmp:
        create_file(
            tmp,
            num_trajectories=fields.shape[0],
            resolution=(fields.shape[-2], fields.shape[-1]),
            times=times_t,
            layout=layout,
            metadata=metadata,
            param_shapes={k: tuple(v.shape[1:]) for k, v in params.items()},
        )
        with h5py.File(tmp, "r+") as f:
            f["fields"][...] = f32.numpy()
            for name, value in params.items():
                f["params"][name][...] = value.numpy()
            f["channel_rms"][...] = rms.numpy()
            f["done"][...] = 1
    return path


def _check_times(times: np.ndarray, *, what: str) -> None:
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"{what} must be a non-empty 1D array, got shape {times.shape}")
    if not np.isfinite(times).all() or (np.diff(times) <= 0).any():
        raise ValueError(f"{what} must be finite and strictly increasing, got {times.tolist()}")


def _index(sel, size: int, what: str) -> np.ndarray:
    """Normalise an index (None, int, slice, sequence, tensor) to an int array within range."""
    if sel is None:
        return np.arange(size)
    if isinstance(sel, slice):
        return np.arange(size)[sel]
    idx = np.asarray(torch.as_tensor(sel).cpu()).reshape(-1)
    if idx.dtype.kind not in "iu":
        raise IndexError(f"{what} indices must be integers, got dtype {idx.dtype}")
    idx = np.where(idx < 0, idx + size, idx)
    if ((idx < 0) | (idx >= size)).any():
        raise IndexError(f"{what} index out of range for {size} {what}: {sel!r}")
    return idx


class Dataset:
    """Read-only view of a dataset file (use `open_dataset`); a context manager.

    Attributes: ``path``, ``layout`` (FieldLayout), ``times`` `(T,)` float64,
    ``num_trajectories``, ``num_snapshots``, ``resolution`` (H, W), ``metadata`` (dict),
    ``channel_rms`` `(C,)` float64, ``param_names``.
    """

    def __init__(self, path: Path, handle: h5py.File, *, complete: bool) -> None:
        self.path = path
        self._f = handle
        fields = handle["fields"]
        self.layout = FieldLayout.from_json(handle.attrs["layout"])
        self.times = torch.from_numpy(handle["times"][...].astype(np.float64))
        self.num_trajectories, self.num_snapshots = int(fields.shape[0]), int(fields.shape[1])
        self.resolution = (int(fields.shape[3]), int(fields.shape[4]))
        self.metadata = json.loads(handle.attrs["metadata"])
        self.metadata.setdefault("package_version", str(handle.attrs.get("package_version", "")))
        self.channel_rms = torch.from_numpy(handle["channel_rms"][...].astype(np.float64))
        self.done = torch.from_numpy(handle["done"][...].astype(bool))
        self.complete = complete
        self.param_names = tuple(handle["params"].keys())

    def read(self, trajectories=None, snapshots=None) -> torch.Tensor:
        """Fields `(n, t, C, H, W)` float32 for the selected trajectories and snapshots
        (None = all; an int, slice, or sequence of indices; order and repeats are kept)."""
        ti = _index(trajectories, self.num_trajectories, "trajectories")
        si = _index(snapshots, self.num_snapshots, "snapshots")
        if not self.done[ti].all():
            missing = sorted(set(ti[~self.done[ti].numpy()].tolist()))
            raise DatasetError(f"{self.path}: trajectories {missing[:10]} were never written")
        out = np.empty((len(ti), len(si), *self._f["fields"].shape[2:]), dtype=np.float32)
        # h5py wants increasing unique indices: read those, then scatter.
        ut, t_inv = np.unique(ti, return_inverse=True)
        us, s_inv = np.unique(si, return_inverse=True)
        try:
            for k, i in enumerate(ut):
                block = self._f["fields"][int(i), us]
                out[t_inv == k] = block[s_inv]
        except (OSError, RuntimeError) as exc:
            raise DatasetError(f"{self.path}: cannot read fields (corrupt file?): {exc}") from exc
        fields = torch.from_numpy(out)
        try:  # NaN/inf would spread silently through training and audits
            require_finite(
                fields,
                f"{self.path}: non-finite field value",
                lambda i: f"trajectory {ti[i[0]]}, snapshot {si[i[1]]}, channel {i[2]}",
            )
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        return fields

    def read_params(self, trajectories=None) -> dict[str, torch.Tensor]:
        """Per-trajectory initial-condition parameters, name -> `(n, ...)` float64."""
        ti = _index(trajectories, self.num_trajectories, "trajectories")
        return {
            name: torch.from_numpy(self._f["params"][name][...][ti]) for name in self.param_names
        }

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_trajectories

    def __repr__(self) -> str:
        return (
            f"Dataset({str(self.path)!r}, trajectories={self.num_trajectories}, "
            f"snapshots={self.num_snapshots}, resolution={self.resolution}, layout={self.layout})"
        )


def _validate(path: Path, f: h5py.File, *, allow_incomplete: bool) -> bool:
    """Raise `DatasetError` naming the first problem; return whether the file is complete."""
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        raise DatasetError(f"{path}: not a symaudit dataset ('format' attribute is {fmt!r})")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path}: format version {version} unsupported (need {FORMAT_VERSION})")
    for name in (*_REQUIRED, "params"):
        if name not in f:
            raise DatasetError(f"{path}: missing dataset {name!r}")
    for name in ("layout", "metadata", "channel_names"):
        if name not in f.attrs:
            raise DatasetError(f"{path}: missing attribute {name!r}")
    try:
        layout = FieldLayout.from_json(f.attrs["layout"])
    except LayoutError as exc:
        raise DatasetError(f"{path}: invalid field layout attribute: {exc}") from exc
    try:
        meta = json.loads(f.attrs["metadata"])
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: metadata attribute is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: metadata attribute must be a JSON object")
    names = [str(s) for s in f.attrs["channel_names"]]
    if names != list(layout.names):
        raise DatasetError(f"{path}: channel_names {names} disagree with layout {layout.names}")
    fields = f["fields"]
    if fields.ndim != 5 or fields.dtype != np.float32:
        raise DatasetError(
            f"{path}: 'fields' must be float32 (N, T, C, H, W), got {fields.dtype} {fields.shape}"
        )
    n, t, c = fields.shape[:3]
    if c != layout.num_channels:
        raise DatasetError(
            f"{path}: 'fields' has {c} channels but the layout {layout.names} has "
            f"{layout.num_channels}"
        )
    times = f["times"][...]
    if times.shape != (t,):
        raise DatasetError(f"{path}: 'times' has shape {times.shape}, fields have {t} snapshots")
    try:
        _check_times(times.astype(np.float64), what="'times'")
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
    done = f["done"][...]
    if done.shape != (n,):
        raise DatasetError(f"{path}: 'done' has shape {done.shape}, expected ({n},)")
    for name, d in f["params"].items():
        if d.ndim == 0 or d.shape[0] != n:
            raise DatasetError(f"{path}: params/{name} has shape {d.shape}, leading dim != {n}")
    rms = f["channel_rms"][...]
    if rms.shape != (c,):
        raise DatasetError(f"{path}: 'channel_rms' has shape {rms.shape}, expected ({c},)")
    complete = bool(done.all()) and bool(np.isfinite(rms).all() and (rms > 0).all())
    if not complete and not allow_incomplete:
        written = int(done.sum())
        raise DatasetError(
            f"{path}: incomplete dataset ({written} of {n} trajectories written"
            + ("" if written < n else ", channel statistics missing")
            + "); an interrupted generation? rerun `symaudit generate` to resume it"
        )
    return complete


def open_dataset(path: str | os.PathLike, *, allow_incomplete: bool = False) -> Dataset:
    """Open and validate a dataset file read-only; raises `DatasetError` naming the problem
    (missing/corrupt/truncated file, missing arrays, layout mismatch, incomplete file)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(
            f"{path}: not a readable HDF5 file (corrupt or truncated?): {exc}"
        ) from exc
    try:
        complete = _validate(path, handle, allow_incomplete=allow_incomplete)
        return Dataset(path, handle, complete=complete)
    except DatasetError:
        handle.close()
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        handle.close()
        raise DatasetError(f"{path}: unreadable dataset (corrupt file?): {exc}") from exc
