"""The settings of an influence computation and of an audit: frozen, validated on construction.

`InfluenceSettings` holds what `symaudit.diagnostics.influence` needs (dampings, CG tolerance,
Nyström rank, solver, chunk sizes, ...); `AuditSettings` what `run_audit` needs on top (group
specs, test mini-batches, metric batch, ...). Both are built once -- by the command line, the
pipeline or the Python API -- and rejected with a message naming the bad value before anything
is computed or written. Every default lives here, once. `AuditSettings.record` is the dict
stored in ``audit.json`` and hashed (`symaudit._io.json_digest`) for the resume digest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "DAMPING_SWEEP",
    "DEFAULT_RELATIVE_DAMPING",
    "AuditSettings",
    "Damping",
    "InfluenceSettings",
    "default_rtol",
]

#: "auto" damping: lambda = DEFAULT_RELATIVE_DAMPING * (top eigenvalue of eta), which bounds the
#: condition number of chi by 1 + 1/DEFAULT_RELATIVE_DAMPING (see docs/influence.md).
DEFAULT_RELATIVE_DAMPING = 1e-3
#: relative dampings (fractions of eta's top eigenvalue) of ``--damping-sweep``
DAMPING_SWEEP = ("auto:1e-4", "auto:1e-3", "auto:1e-2", "auto:1e-1")
#: CG relative residual of the Python API (the paper's for convolutional models)
DEFAULT_RTOL = 5e-3
DEFAULT_MAX_ITER = 500
_PAPER_RTOL = {"unet": 5e-3, "gcnn": 5e-3, "vit": 5e-2}


def default_rtol(architecture: str) -> float:
    """The paper's CG tolerance: 5e-3 for convolutional models, 5e-2 for the ViT."""
    return _PAPER_RTOL.get(architecture, DEFAULT_RTOL)


@dataclass(frozen=True)
class Damping:
    """A parsed damping: absolute lambda, or a fraction of eta's top eigenvalue.

    ``given`` is the form it was given in (a number, "auto" or "auto:<fraction>"), kept for
    the settings files and digests."""

    given: float | str
    absolute: float | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, value: Damping | float | str) -> Damping:
        """A number > 0, "auto" (`DEFAULT_RELATIVE_DAMPING`), "auto:<fraction>", or a number
        written as text; anything else is a ``ValueError`` naming the value."""
        if isinstance(value, Damping):
            return value
        if isinstance(value, str):
            text = value.strip()
            if text == "auto" or text.startswith("auto:"):
                frac = DEFAULT_RELATIVE_DAMPING if text == "auto" else _number(text[5:])
                if frac is None or not 0 < frac < math.inf:
                    raise ValueError(
                        f"bad damping {value!r}: the fraction in 'auto:<fraction>' must be a "
                        "finite number > 0"
                    )
                return cls(value, fraction=frac)
            num = _number(text)
            if num is None:
                raise ValueError(
                    f"damping must be a number, 'auto' or 'auto:<fraction>', got {value!r}"
                )
            value = num
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"damping must be a number or 'auto[:fraction]', got {value!r}")
        lam = float(value)
        if not 0 < lam < math.inf:
            raise ValueError(f"damping must be a finite number > 0, got {value!r}")
        return cls(value, absolute=lam)

    @property
    def relative(self) -> bool:
        return self.fraction is not None

    def resolve(self, top_eigenvalue: float | None) -> tuple[float, str]:
        """(absolute lambda, the rule that gave it) given eta's top eigenvalue."""
        if self.absolute is not None:
            return self.absolute, "absolute"
        lam = self.fraction * top_eigenvalue
        if not lam > 0:
            raise ValueError("eta has no positive eigenvalue: give an absolute damping > 0")
        return lam, f"{self.fraction:g} * top eigenvalue of eta"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _positive_int(name: str, value: Any, *, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_rtol(rtol: Any) -> float:
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    return float(rtol)


def _check_rank(rank: Any) -> None:
    if rank != "auto":
        _positive_int("rank", rank)


@dataclass(frozen=True)
class InfluenceSettings:
    """What an influence computation is asked for (`symaudit.diagnostics.influence`).

    dampings: `Damping`s (or their given forms), the first the main one; rtol: relative
    residual of every solve; max_iter: CG iterations per column; preconditioner: "nystrom" or
    None; rank: Nyström rank or "auto" (grown while it pays); solver: "block" (block CG) or
    "cg" (independent columns); cosine: also the transformed-state norms; params: module-name
    prefixes (default all); chunk_size: columns per vmap chunk of chi products (4: measured
    fastest per column on CPU); grad_chunk_size: samples per vmap chunk of per-sample
    gradients; block_columns: right-hand sides solved together; seed: of the sketch and probes.
    """

    dampings: tuple[Damping, ...] = ("auto",)
    rtol: float = DEFAULT_RTOL
    max_iter: int = DEFAULT_MAX_ITER
    preconditioner: str | None = "nystrom"
    rank: int | str = "auto"
    solver: str = "block"
    cosine: bool = True
    params: tuple[str, ...] | None = None
    chunk_size: int | None = 4
    grad_chunk_size: int | None = 8
    block_columns: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.dampings, (str, int, float, Damping)):
            raise ValueError(f"dampings must be a sequence, got {self.dampings!r}")
        dampings = tuple(Damping.parse(d) for d in self.dampings)
        if not dampings:
            raise ValueError("no damping given")
        object.__setattr__(self, "dampings", dampings)
        object.__setattr__(self, "rtol", _check_rtol(self.rtol))
        _positive_int("max_iter", self.max_iter)
        if self.preconditioner not in (None, "nystrom", "none"):
            raise ValueError(
                f"preconditioner must be 'nystrom' or None, got {self.preconditioner!r}"
            )
        if self.preconditioner == "none":
            object.__setattr__(self, "preconditioner", None)
        _check_rank(self.rank)
        if self.solver not in ("block", "cg"):
            raise ValueError(f"solver must be 'block' or 'cg', got {self.solver!r}")
        if self.params is not None:
            params = (self.params,) if isinstance(self.params, str) else tuple(self.params)
            object.__setattr__(self, "params", params)
        _positive_int("chunk_size", self.chunk_size, none=True)
        _positive_int("grad_chunk_size", self.grad_chunk_size, none=True)
        _positive_int("block_columns", self.block_columns)

    @property
    def damping(self) -> Damping:
        """The main damping (the first)."""
        return self.dampings[0]


def _spec_list(groups: Any) -> tuple[str, ...]:
    from symaudit.groups.spec import parse_spec

    if isinstance(groups, str):
        groups = [groups]
    groups = tuple(str(g) for g in groups)
    if not groups:
        raise ValueError("no groups to audit: pass e.g. --group d4")
    for g in groups:
        parse_spec(g)  # GroupError (a ValueError) naming a malformed spec
    return groups


def _check_metric_batch(spec: str) -> None:
    if spec == "test":
        return
    kind, _, num = spec.partition(":")
    if kind != "train" or not num.isdigit() or int(num) < 1:
        raise ValueError(f"metric batch must be 'test' or 'train:N', got {spec!r}")


@dataclass(frozen=True)
class AuditSettings:
    """What `symaudit.diagnostics.audit.run_audit` is asked for (see its docstring).

    groups: group specs (`symaudit.groups.from_spec`); damping / damping_sweep: the main and
    the extra dampings; rtol: None for the model architecture's default (`default_rtol`);
    test_batches, per_family: K mini-batches of N trajectories per family; influence_shifts:
    the shifts whose influence is computed for translation groups (None: all); test_data:
    dataset files/directories (None: the run's held-out trajectories); metric_batch: "test"
    or "train:N"; max_iter, rank, cosine: as in `InfluenceSettings`.
    """

    groups: tuple[str, ...]
    damping: Damping = "auto"
    damping_sweep: tuple[Damping, ...] = ()
    rtol: float | None = None
    test_batches: int = 1
    per_family: int = 8
    influence_shifts: tuple[int, ...] | None = None
    test_data: tuple[str, ...] | None = None
    metric_batch: str = "test"
    max_iter: int = DEFAULT_MAX_ITER
    rank: int | str = "auto"
    cosine: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "groups", _spec_list(self.groups))
        set_(self, "damping", Damping.parse("auto" if self.damping is None else self.damping))
        set_(self, "damping_sweep", tuple(Damping.parse(d) for d in self.damping_sweep or ()))
        if self.rtol is not None:
            set_(self, "rtol", _check_rtol(self.rtol))
        _positive_int("test_batches", self.test_batches)
        _positive_int("per_family", self.per_family)
        if self.influence_shifts is not None:
            set_(self, "influence_shifts", tuple(sorted(int(s) for s in self.influence_shifts)))
        if self.test_data is not None:
            set_(self, "test_data", tuple(str(p) for p in self.test_data) or None)
        _check_metric_batch(self.metric_batch)
        _positive_int("max_iter", self.max_iter)
        _check_rank(self.rank)

    @property
    def dampings(self) -> tuple[Damping, ...]:
        return (self.damping, *self.damping_sweep)

    def with_rtol(self, architecture: str) -> AuditSettings:
        """These settings with rtol filled in from ``architecture`` when it was left None."""
        if self.rtol is not None:
            return self
        from dataclasses import replace

        return replace(self, rtol=default_rtol(architecture))

    def influence(self, **extra: Any) -> InfluenceSettings:
        """The `InfluenceSettings` of this audit's influence computations (rtol filled in)."""
        if self.rtol is None:
            raise ValueError("rtol is not resolved yet: call with_rtol(architecture) first")
        return InfluenceSettings(
            dampings=self.dampings,
            rtol=self.rtol,
            max_iter=self.max_iter,
            rank=self.rank,
            cosine=self.cosine,
            **extra,
        )

    def record(self, test_sources: dict | None = None) -> dict[str, Any]:
        """The settings as stored in ``audit.json`` (and hashed for resuming): the given
        damping forms, and the test data as the files and trajectories actually read."""
        return {
            "groups": list(self.groups),
            "damping": self.damping.given,
            "damping_sweep": [d.given for d in self.damping_sweep],
            "rtol": self.rtol,
            "test_batches": self.test_batches,
            "per_family": self.per_family,
            "influence_shifts": (
                None if self.influence_shifts is None else list(self.influence_shifts)
            ),
            "test_data": test_sources,
            "metric_batch": self.metric_batch,
            "max_iter": self.max_iter,
            "rank": self.rank,
            "cosine": self.cosine,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AuditSettings:
        """The settings stored by `record` (e.g. ``audit.json``'s "settings"); extra keys
        (a foreign model's layout, ...) are ignored, the test data become their files."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in record.items() if k in names}
        sources = given.pop("test_data", None) or {}
        files = [f for src in sources.values() for f in src.get("files", [])]
        return cls(**given, test_data=files or None)

    def options(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """The settings as keyword arguments of `run_audit` (dampings in their given forms,
        lists for tuples), without the fields in ``exclude``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in exclude:
                continue
            value = getattr(self, f.name)
            if isinstance(value, Damping):
                value = value.given
            elif isinstance(value, tuple):
                value = [v.given if isinstance(v, Damping) else v for v in value]
            out[f.name] = value
        return out
