"""Resumable, deterministic generation of compressible-Euler datasets.

`generate(settings, out)` samples initial conditions (`symaudit.physics.initial_conditions`),
evolves them with `symaudit.physics.euler.evolve`, and writes a dataset file
(`symaudit.data.store`). The work happens in ``OUT.partial`` beside the output: trajectories
are evolved in batches aligned to global indices, each batch's fields and parameters are
flushed before its entries of the ``done`` mask are set, and the finished file is moved to
``OUT`` with `os.replace`. Killed at any moment and rerun with the same settings, generation
continues from the ``done`` mask and yields a file whose ``fields`` are bitwise identical to an
uninterrupted run (every trajectory has its own IC generator and, per the solver contract, its
own time step, so results do not depend on batching).

A partial file written with different settings is never mixed with new data: rerunning raises
`GenerationError` naming the differing settings (``overwrite=True`` discards it and restarts;
a partial file of the same settings is resumed either way).
An existing complete output is only replaced with ``overwrite=True``, and only once the new
file is complete. Before the rename the finished file is verified: every trajectory marked
done, readable, finite and with positive density, the bytes fsynced — a full disk or a lost
write is a `GenerationError`/`OSError`, never a file of zeros under the final name. One
generation at a time may write an output (`symaudit._io.exclusive`): a second one, even with
``overwrite=True``, is refused while the first runs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from symaudit._io import atomic_path, check_output_dir, exclusive
from symaudit.data.stats import RunningRMS
from symaudit.data.store import create_file
from symaudit.errors import SymauditError
from symaudit.fields import FieldLayout
from symaudit.physics import initial_conditions as ics

__all__ = [
    "GenerationError",
    "GenerationSettings",
    "generate",
    "merge_shards",
    "parse_shard",
    "partial_path",
    "shard_path",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Courant numbers below this only make runs endless (a typo such as 1e-9, not a setting)
MIN_CFL = 0.01
#: refuse runs whose first batch needs more solver steps than this per trajectory (a normal
#: 128^2 run at cfl 0.4 takes a few thousand)
MAX_STEPS = 200_000


class GenerationError(SymauditError, RuntimeError):
    """Generation cannot proceed (bad settings, conflicting files, or a solver failure)."""


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that determines a dataset's contents.

    ``dtype`` is the simulation precision (fields are always stored as float32); ``device``
    is where the solver runs. Batch size is not a setting: it does not change the data.
    """

    kind: str
    trajectories: int
    resolution: int
    snapshots: int = 21
    t_final: float = 1.0
    seed: int = 0
    supersample: int = 1
    dtype: str = "float64"
    device: str = "cpu"
    gamma: float = 1.4
    cfl: float = 0.4

    def validate(self) -> None:
        """Raise `ValueError` naming the first invalid setting."""
        if self.kind not in ics.KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {', '.join(ics.KINDS)}")
        for name in ("trajectories", "resolution", "snapshots", "supersample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.resolution < 4:
            raise ValueError(f"resolution must be at least 4, got {self.resolution}")
        if self.snapshots < 2:
            raise ValueError(
                f"snapshots must be at least 2 (t = 0 and t_final), got {self.snapshots}"
            )
        if not (math.isfinite(self.t_final) and self.t_final > 0):
            raise ValueError(f"t_final must be a positive number, got {self.t_final!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if not (math.isfinite(self.gamma) and self.gamma > 1):
            raise ValueError(f"gamma must be > 1, got {self.gamma!r}")
        if not (math.isfinite(self.cfl) and MIN_CFL <= self.cfl <= 1):
            raise ValueError(f"cfl must be in [{MIN_CFL}, 1], got {self.cfl!r}")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {self.device!r}: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch reports no CUDA device")

    def times(self) -> torch.Tensor:
        """Output times `(snapshots,)` float64, uniform on [0, t_final]."""
        return torch.linspace(0.0, self.t_final, self.snapshots, dtype=torch.float64)

    def fingerprint(self) -> dict:
        """The settings as stored in (and compared against) a partial or final file. The
        device is reduced to its type: different GPUs of one kind give the same bits."""
        d = asdict(self)
        d["device"] = torch.device(self.device).type
        return d


def partial_path(out: str | os.PathLike) -> Path:
    """Where `generate` works before the atomic rename: ``OUT.partial`` beside ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def parse_shard(text: str) -> tuple[int, int]:
    """ "I/N" (0 <= I < N) -> (I, N)."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard must be I/N with integers, e.g. 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= I < N")
    return i, n


def shard_path(out: str | os.PathLike, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` of ``out`` is written: ``OUT.shard-I-of-N``."""
    out = Path(out)
    return out.with_name(f"{out.name}.shard-{index}-of-{count}")


def _shard_rows(trajectories: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Global trajectory range [lo, hi) of a shard: N near-equal contiguous ranges."""
    if shard is None:
        return 0, trajectories
    i, n = shard  # more shards than trajectories leaves some empty (a valid, empty file)
    return i * trajectories // n, (i + 1) * trajectories // n


def _metadata(settings: GenerationSettings, shard: tuple[int, int] | None = None) -> dict:
    from symaudit import __version__

    extra = {}
    if shard is not None:
        lo, hi = _shard_rows(settings.trajectories, shard)
        extra["shard"] = {"index": shard[0], "count": shard[1], "first": lo, "stop": hi}
    return {
        **extra,
        "gamma": settings.gamma,
        "domain": "periodic unit square [0, 1]^2",
        "boundary": "periodic",
        "grid": "cell centres x_j = (j + 1/2)/W, y_i = (i + 1/2)/H; axis -1 is x, axis -2 is y",
        "ic_kind": settings.kind,
        "ic_distribution": ics.DISTRIBUTIONS[settings.kind],
        "seed": settings.seed,
        "t_final": settings.t_final,
        "solver": {
            "name": "symaudit.physics.euler.evolve",
            "cfl": settings.cfl,
            "supersample": settings.supersample,
            "dtype": settings.dtype,
            "device": torch.device(settings.device).type,
        },
        "generation": settings.fingerprint(),
        "package_version": __version__,
    }


def _param_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    probe = ics.sample(kind, 1, 4, seed=0)
    return {k: tuple(v.shape[1:]) for k, v in probe.params.items()}


def _partial_problem(
    path: Path, settings: GenerationSettings, shard: tuple[int, int] | None = None
) -> str | None:
    """None if ``path`` is a partial file of these settings (resumable), else why not."""
    lo, hi = _shard_rows(settings.trajectories, shard)
    try:
        with h5py.File(path, "r") as f:
            meta = json.loads(f.attrs["metadata"])
            stored = meta["generation"]
            if f["done"].shape != (hi - lo,) or meta.get("shard") != _metadata(settings, shard).get(
                "shard"
            ):
                raise KeyError("done")
    except OSError as exc:
        return f"{path} exists but cannot be opened ({exc}); delete it or pass --overwrite"
    except (KeyError, ValueError, TypeError):
        return f"{path} is not a symaudit partial dataset; delete it or pass --overwrite"
    ours = json.loads(json.dumps(settings.fingerprint()))
    if stored == ours:
        return None
    diff = ", ".join(
        f"{k}: file has {stored.get(k)!r}, requested {ours.get(k)!r}"
        for k in sorted(set(stored) | set(ours))
        if stored.get(k) != ours.get(k)
    )
    return (
        f"{path} holds an interrupted run with different settings ({diff}); rerun with the "
        "same settings to resume it, or pass --overwrite to discard it and restart"
    )


def _solver_failure(exc: Exception, first: int, rows: list[int]) -> GenerationError:
    traj = getattr(exc, "trajectory", None)
    time = getattr(exc, "time", None)
    if isinstance(traj, int) and 0 <= traj < len(rows):
        where = f"trajectory {first + rows[traj]} (global index)"
    else:
        where = f"one of trajectories {first + rows[0]}..{first + rows[-1]} (global indices)"
    if time is not None:
        where += f" at t = {float(time):.6g}"
    return GenerationError(f"solver failed for {where}: {exc}")


class _Progress:
    """rich progress bar: trajectories done, simulated time of the running batch, ETA."""

    def __init__(self, enabled: bool, total: int, done: int, t_final: float) -> None:
        self.enabled, self.t_final = enabled, t_final
        self._done, self._rows = done, 0
        if not enabled:
            return
        from symaudit._progress import progress_bar

        self._bar = progress_bar(
            True,
            "trajectories",
            "t = {task.fields[sim_t]:.3f}/{task.fields[t_final]:.3f}",
        )
        self._bar.start()
        self._task = self._bar.add_task(
            "generating", total=total, completed=done, sim_t=0.0, t_final=t_final
        )

    def batch_start(self, n: int) -> None:
        self._rows = n

    def sim_time(self, t: float) -> None:
        # Fractional progress inside a batch keeps the ETA moving on long batches.
        if self.enabled:
            frac = self._rows * t / self.t_final
            self._bar.update(self._task, completed=self._done + frac, sim_t=t)

    def batch_done(self, n: int) -> None:
        if self.enabled:
            self._done += n
            self._bar.update(self._task, completed=self._done)

    def close(self) -> None:
        if self.enabled:
            self._bar.stop()


def generate(
    settings: GenerationSettings,
    out: str | os.PathLike,
    *,
    batch_size: int = 8,
    overwrite: bool = False,
    progress: bool = False,
    shard: tuple[int, int] | None = None,
) -> Path:
    """Generate (or resume generating) the dataset described by ``settings`` into ``out``.

    Args:
        settings: what to generate (validated here; invalid values raise `ValueError`).
        out: final dataset path; work happens in `partial_path(out)`.
        batch_size: trajectories evolved together (memory/speed only; does not change data).
        overwrite: replace an existing complete ``out`` (once the new file is complete) and
            discard a partial file with other settings; without it both raise
            `GenerationError`. A partial file with the same settings is always resumed.
        progress: show a rich progress bar.
        shard: (I, N): generate only the I-th of N contiguous trajectory ranges, into
            `shard_path(out, I, N)` (N processes or array-job tasks split one dataset;
            `merge_shards` then writes ``out``, bitwise equal to a one-process run).

    Returns the output path (the shard's file with ``shard``). Solver failures raise
    `GenerationError` naming the trajectory's global index and the time reached.
    """
    settings.validate()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    out = Path(out)
    if out.is_dir():
        raise GenerationError(f"output {out} is a directory; give a file name such as data.h5")
    lo, hi = _shard_rows(settings.trajectories, shard)
    if shard is not None:
        out = shard_path(out, *shard)
    if out.exists() and not overwrite:
        raise GenerationError(f"{out} already exists; pass --overwrite to replace it")
    check_output_dir(out.parent)
    with exclusive(out):
        partial = _prepare_partial(settings, out, overwrite, shard)
        _check_step_count(settings, batch_size)
        with h5py.File(partial, "r+") as f:
            _fill(f, settings, batch_size, progress, lo, hi)
            _finish(f, partial, hi - lo)
        _sync(partial)
        os.replace(partial, out)
    return out


def _prepare_partial(
    settings: GenerationSettings,
    out: Path,
    overwrite: bool,
    shard: tuple[int, int] | None = None,
) -> Path:
    """The partial file to work in: resumed if it holds these settings, else created."""
    partial = partial_path(out)
    lo, hi = _shard_rows(settings.trajectories, shard)
    if partial.exists():
        problem = _partial_problem(partial, settings, shard)
        if problem is not None:
            if not overwrite:
                raise GenerationError(problem)
            partial.unlink()  # a partial run of these very settings is resumed, never discarded
    if not partial.exists():
        with atomic_path(partial) as tmp:
            create_file(
                tmp,
                num_trajectories=hi - lo,
                resolution=(settings.resolution, settings.resolution),
                times=settings.times(),
                layout=FieldLayout.euler(),
                metadata=_metadata(settings, shard),
                param_shapes=_param_shapes(settings.kind),
            )
            _reserve(tmp, partial)
    _reserve(partial, partial)  # a resumed file too (no-op when its blocks are already reserved)
    return partial


def _reserve(path: Path, shown: Path) -> None:
    """Reserve the disk blocks of the whole (pre-allocated, sparse) file now: a full disk is
    then one `OSError` before any work, instead of HDF5 write errors it only reports while
    closing the file, leaving zeros in trajectories marked done (measured on a full tmpfs)."""
    with open(path, "rb+") as fh:
        size = os.fstat(fh.fileno()).st_size
        try:
            os.posix_fallocate(fh.fileno(), 0, size)
        except OSError as exc:
            raise GenerationError(
                f"{shown}: cannot reserve {size / 1e6:.1f} MB for the dataset: {exc.strerror}"
            ) from None


def _check_step_count(settings: GenerationSettings, batch_size: int) -> None:
    """Refuse, up front, runs whose first batch would take more than `MAX_STEPS` solver steps
    (estimated from the initial CFL step: an absurd setting fails in seconds, not hours)."""
    from symaudit.physics import euler

    n = min(batch_size, settings.trajectories)
    res = settings.resolution * settings.supersample
    ic = ics.sample(settings.kind, n, res, seed=settings.seed, gamma=settings.gamma)
    dt = euler._cfl_dt(ic.state, 1.0 / res, 1.0 / res, settings.gamma, settings.cfl)
    steps = settings.t_final / float(dt.min())
    if not steps <= MAX_STEPS:
        raise GenerationError(
            f"about {steps:.3g} solver steps per trajectory (cfl {settings.cfl:g}, grid "
            f"{res}^2, t_final {settings.t_final:g}) exceed the limit of {MAX_STEPS}: raise "
            "--cfl (0.4 is the default) or lower --resolution/--t-final"
        )


def _write_batch(f: h5py.File, index: list[int], traj: np.ndarray, params: dict) -> None:
    """Store trajectories ``traj[j]`` at global indices ``index[j]`` with their IC params."""
    for j, i in enumerate(index):
        f["fields"][i] = traj[j]
        for name, value in params.items():
            f["params"][name][i] = value[j]


def _fill(
    f: h5py.File, settings: GenerationSettings, batch_size: int, progress: bool, lo: int, hi: int
) -> None:
    """Evolve and store every trajectory of global range [lo, hi) not yet marked done (row r
    of the file is trajectory lo + r: its initial condition depends on lo + r only)."""
    from symaudit.physics import euler

    times = settings.times()
    dtype, device = _DTYPES[settings.dtype], torch.device(settings.device)
    k, n = settings.supersample, hi - lo
    done = f["done"][...].astype(bool)
    bar = _Progress(progress, n, int(done.sum()), settings.t_final)
    try:
        for first in range(0, n, batch_size):
            last = min(first + batch_size, n)
            rows = [i for i in range(last - first) if not done[first + i]]
            if not rows:
                continue
            ic = ics.sample(
                settings.kind,
                last - first,
                settings.resolution * k,
                seed=settings.seed,
                start=lo + first,
                gamma=settings.gamma,
                dtype=dtype,
                device=device,
            )
            bar.batch_start(len(rows))
            try:
                traj = euler.evolve(
                    ic.state[rows],
                    times.to(device),
                    gamma=settings.gamma,
                    cfl=settings.cfl,
                    supersample=k,
                    progress=bar.sim_time,
                )
            except euler.SolverError as exc:
                raise _solver_failure(exc, lo + first, rows) from exc
            params = {name: value[rows].numpy() for name, value in ic.params.items()}
            _write_batch(
                f, [first + i for i in rows], traj.to("cpu", torch.float32).numpy(), params
            )
            f.flush()  # data on disk before it is marked done
            for i in rows:
                done[first + i] = True
            f["done"][first:last] = done[first:last].astype(np.uint8)
            f.flush()
            bar.batch_done(len(rows))
    finally:
        bar.close()


def _finish(f: h5py.File, path: Path, n: int) -> None:
    """Verify every trajectory as stored (a lost write reads back as zeros or garbage) and
    write the channel statistics, in trajectory order: identical whether or not the run was
    interrupted."""
    done = f["done"][...]
    if not done.all():
        raise GenerationError(
            f"{path}: trajectories {np.flatnonzero(done == 0)[:10].tolist()} missing"
        )
    acc = RunningRMS(FieldLayout.euler())
    for i in range(n):
        traj = torch.from_numpy(f["fields"][i])
        if not (torch.isfinite(traj).all() and (traj[:, 0] > 0).all()):
            raise GenerationError(
                f"{path}: trajectory {i} reads back non-finite or with density <= 0 (a failed "
                "write, e.g. a full disk?); the partial file is kept, delete it to start over"
            )
        acc.update(traj)
    if n:  # an empty shard (more shards than trajectories) has no statistics
        f["channel_rms"][...] = acc.compute().numpy()
    f.flush()


def _sync(path: Path) -> None:
    """fsync: a write the kernel could not complete (full disk) surfaces here as OSError."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def merge_shards(
    settings: GenerationSettings, out: str | os.PathLike, count: int, *, overwrite: bool = False
) -> Path:
    """Write ``out`` from its ``count`` finished shards (`generate(..., shard=(i, count))`).

    Every shard must exist, be complete, hold these settings and its own trajectory range;
    the merged file is then built exactly as a one-process run builds it (same metadata, rows
    copied in order, verified, channel statistics in trajectory order) and renamed into place:
    its bytes equal those of a one-process run. The shards are kept (delete them yourself).
    """
    from symaudit.data.store import DatasetError, open_dataset

    settings.validate()
    out = Path(out)
    if out.exists() and not overwrite:
        raise GenerationError(f"{out} already exists; pass --overwrite to replace it")
    ours = json.loads(json.dumps(settings.fingerprint()))
    shards = []
    for i in range(count):
        path = shard_path(out, i, count)
        if not path.exists():
            partial = partial_path(path)
            state = f" (only {partial.name}: unfinished)" if partial.exists() else ""
            raise GenerationError(f"shard {i}/{count} of {out} is missing: {path}{state}")
        want = _metadata(settings, (i, count))["shard"]
        try:  # an empty shard has no channel statistics, and needs none
            ds = open_dataset(path, allow_incomplete=want["first"] == want["stop"])
        except DatasetError as exc:
            raise GenerationError(f"shard {i}/{count}: {exc}") from None
        meta = ds.metadata
        if meta.get("generation") != ours:
            ds.close()
            raise GenerationError(f"{path} was generated with other settings than requested")
        if meta.get("shard") != want:
            ds.close()
            raise GenerationError(f"{path} holds rows {meta.get('shard')}, expected {want}")
        shards.append(ds)
    check_output_dir(out.parent)
    try:
        with exclusive(out):
            partial = _prepare_partial(settings, out, overwrite=True)
            with h5py.File(partial, "r+") as f:
                for i, ds in enumerate(shards):
                    lo, hi = _shard_rows(settings.trajectories, (i, count))
                    src = ds._f  # noqa: SLF001 - a verbatim copy of the stored rows
                    for r in range(hi - lo):
                        f["fields"][lo + r] = src["fields"][r]
                    for name in f["params"]:
                        f["params"][name][lo:hi] = src["params"][name][...]
                    f["done"][lo:hi] = 1
                f.flush()
                _finish(f, partial, settings.trajectories)
            _sync(partial)
            os.replace(partial, out)
    finally:
        for ds in shards:
            ds.close()
    return out
