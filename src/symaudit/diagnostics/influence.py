"""Influence along symmetry orbits in the regularised NTK metric.

For test transitions {x_i} (i < N) and every element g of a group G:

    M^g_ij = grad C_{x_i}^T chi^{-1} grad C_{g x_j},     chi = eta + lambda I   (metric.py)

with C_x the SMSE of one transition and g x = (g x_t, g x_t1). One batched solve
u_i = chi^{-1} grad C_{x_i} serves every g (chi is symmetric); the transformed-state gradients
are only dotted with the u_i. The cosine normalisation

    M^g_ij / (||grad C_{x_i}||_{chi^{-1}} ||grad C_{g x_j}||_{chi^{-1}})

needs one more solve per transformed state (batched; for the identity it is free). Accuracy:
CG from zero under-estimates each quadratic form q = b^T chi^{-1} b by r^T chi^{-1} r <=
||r||^2 / lambda (r the final residual), recorded per state as ``quadratic_form_error``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from symaudit._io import atomic_torch_save, load_result_payload, tensor_digest
from symaudit._progress import progress_bar
from symaudit.diagnostics._gradients import per_sample_gradients
from symaudit.diagnostics._operator import Damped, hutchinson_trace, top_eigenvalue
from symaudit.diagnostics._params import ColumnMap
from symaudit.diagnostics.equivariance import element_index
from symaudit.diagnostics.krylov import NystromPreconditioner, SolveReport, block_cg, cg
from symaudit.diagnostics.metric import (
    MetricOperator,
    Transitions,
    _eval_math_attention,
    check_transitions,
    model_checksum,
)
from symaudit.diagnostics.settings import DEFAULT_RELATIVE_DAMPING, Damping, InfluenceSettings
from symaudit.training.loss import SMSE

__all__ = [
    "DEFAULT_RELATIVE_DAMPING",
    "InfluenceFileError",
    "InfluenceResult",
    "InfluenceSettings",
    "influence",
    "influence_sweep",
]

_FORMAT = "symaudit-influence-v1"


class InfluenceFileError(ValueError):
    """A saved influence result is missing, corrupt or of an unknown format."""


@dataclass
class InfluenceResult:
    """Influence matrices for every group element.

    Attributes:
        elements: element names, in group order (length |G|).
        raw: `(|G|, N, N)` float64, M^g_ij = grad C_{x_i}^T chi^{-1} grad C_{g x_j}.
        norms: `(N,)` ||grad C_{x_i}||_{chi^{-1}}.
        transformed_norms: `(|G|, N)` ||grad C_{g x_j}||_{chi^{-1}}, or None without cosine.
        damping: the absolute lambda used.
        reports: solver reports by phase ("test", "cosine"), `SolveReport.to_dict()`: per
            column the true relative residual and, next to it, its attainable accuracy
            eps (||chi|| ||u|| / ||b|| + 1) in the working precision.
        timings: seconds by phase.
        settings: model checksum, rtol, metric batch description, group elements, ...
        spectrum: estimates of eta's top and mean eigenvalues.
        quadratic_form_error: `(N,)` and `(|G|, N)` bounds on the relative error of the norms^2.
    """

    elements: list[str]
    raw: torch.Tensor
    norms: torch.Tensor
    transformed_norms: torch.Tensor | None
    damping: float
    reports: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    spectrum: dict = field(default_factory=dict)
    quadratic_form_error: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def frobenius(self) -> torch.Tensor:
        """The paper's normalisation M^g / ||M^g||_F, `(|G|, N, N)`."""
        return self.raw / self.raw.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, 1, 1)

    @property
    def cosine(self) -> torch.Tensor:
        """M^g_ij / (||grad C_{x_i}|| ||grad C_{g x_j}||) in the chi^{-1} norm, `(|G|, N, N)`."""
        if self.transformed_norms is None:
            raise ValueError("computed with cosine=False: no transformed-state norms")
        return self.raw / (self.norms.view(1, -1, 1) * self.transformed_norms.unsqueeze(1))

    def diagonal(self, kind: str = "cosine") -> torch.Tensor:
        """Influence of x_i on its own image g x_i: `(|G|, N)` from "raw"/"frobenius"/"cosine"."""
        if kind not in ("raw", "frobenius", "cosine"):
            raise ValueError(f"kind must be raw, frobenius or cosine, got {kind!r}")
        return getattr(self, kind).diagonal(dim1=1, dim2=2)

    def index(self, name: str) -> int:
        return element_index(self.elements, name)

    @property
    def all_converged(self) -> bool:
        return all(all(r["converged"]) for r in self.reports.values())

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file in the same directory, then rename)."""
        path = Path(path)
        meta = {
            "format": _FORMAT,
            "elements": self.elements,
            "damping": self.damping,
            "reports": self.reports,
            "timings": self.timings,
            "settings": self.settings,
            "spectrum": self.spectrum,
        }
        payload = {
            "meta": json.dumps(meta),
            "raw": self.raw.cpu(),
            "norms": self.norms.cpu(),
            "qerr": {k: v.cpu() for k, v in self.quadratic_form_error.items()},
        }
        if self.transformed_norms is not None:
            payload["transformed_norms"] = self.transformed_norms.cpu()
        atomic_torch_save(payload, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> InfluenceResult:
        """Read a file written by `save` (tensors only: ``weights_only`` loading)."""
        payload, meta = load_result_payload(path, _FORMAT, InfluenceFileError, "influence result")
        try:
            res = cls(
                elements=list(meta["elements"]),
                raw=payload["raw"],
                norms=payload["norms"],
                transformed_norms=payload.get("transformed_norms"),
                damping=float(meta["damping"]),
                reports=meta["reports"],
                timings=meta["timings"],
                settings=meta["settings"],
                spectrum=meta["spectrum"],
                quadratic_form_error=dict(payload["qerr"]),
            )
        except Exception as exc:  # missing keys or wrong types mean a bad file
            raise InfluenceFileError(f"{path} is not a readable influence result: {exc}") from exc
        g, n = len(res.elements), res.norms.numel()
        if res.raw.shape != (g, n, n):
            raise InfluenceFileError(
                f"{path}: raw has shape {tuple(res.raw.shape)}, not {(g, n, n)}"
            )
        return res


def _elements(group: Iterable) -> list:
    elems = list(group)
    if not elems:
        raise ValueError("the group has no elements")
    for g in elems:
        if not callable(g) or not isinstance(getattr(g, "name", None), str):
            raise TypeError(f"group elements must be callable and have a .name, got {g!r}")
    names = [g.name for g in elems]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate group element names: {names}")
    return elems


def _transform(g, batch: Transitions) -> Transitions:
    # A Galilean boost acts differently on the input and the target of a transition (the
    # target is displaced by c*dt): `symaudit.groups` elements know this via `transition`.
    # Plain callables (D4, shifts, user maps) act on both alike.
    transition = getattr(g, "transition", None)
    x, y = transition(*batch) if transition is not None else (g(batch[0]), g(batch[1]))
    if x.shape != batch[0].shape or y.shape != batch[1].shape:
        raise ValueError(
            f"group element {g.name!r} changed the state shape {tuple(batch[0].shape)} "
            f"to {tuple(x.shape)} (a rotation needs a square grid)"
        )
    return x, y


def _solve_progress(enabled: bool):
    """The progress bar of the solves: iterations and the largest active relative residual."""
    return progress_bar(enabled, "max rel. residual {task.fields[res]}", eta=False)


def _solve_callback(bar, what: str, max_iter: int):
    if bar.disable:
        return None
    task = bar.add_task(what, total=max_iter, res="-")

    def cb(it: int, rel: torch.Tensor) -> None:
        bar.update(task, completed=it, res=f"{float(rel.max()):.2e} ({len(rel)} active)")

    return cb


#: the defaults of `influence`'s keywords: those of `InfluenceSettings`, stated there once
_DEFAULTS = InfluenceSettings()


def influence(
    model: nn.Module,
    loss: SMSE,
    test_batch: Transitions,
    group: Iterable,
    metric_batch: Transitions | None = None,
    *,
    damping: float | str = "auto",
    rtol: float = _DEFAULTS.rtol,
    max_iter: int = _DEFAULTS.max_iter,
    preconditioner: str | None = _DEFAULTS.preconditioner,
    rank: int | str = _DEFAULTS.rank,
    solver: str = _DEFAULTS.solver,
    cosine: bool = _DEFAULTS.cosine,
    params: Sequence[str] | None = _DEFAULTS.params,
    chunk_size: int | None = _DEFAULTS.chunk_size,
    grad_chunk_size: int | None = _DEFAULTS.grad_chunk_size,
    block_columns: int = _DEFAULTS.block_columns,
    seed: int = _DEFAULTS.seed,
    progress: bool = False,
    process_group: object | None = None,
) -> InfluenceResult:
    """Influence matrices M^g for every g in ``group`` (see the module docstring).

    Args:
        model: any module `(n, C, H, W) -> (n, C, H, W)`, evaluated in eval mode at its
            current parameters (real precision and device of its parameters are used
            throughout; complex parameters, buffers of any dtype and non-tensor extra state
            are fine).
        loss: `symaudit.SMSE`.
        test_batch: `(x_t, x_t1)`, each `(N, C, H, W)`.
        group: a `symaudit.groups.Group`, or any iterable of elements with ``.name``,
            callable on `(..., C, H, W)`.
        metric_batch: transitions defining eta (default: the test batch).
        damping: absolute lambda, or "auto" = DEFAULT_RELATIVE_DAMPING * top eigenvalue of
            eta, or "auto:<fraction>" for another fraction of the top eigenvalue.
        rtol, max_iter, preconditioner, rank, solver, cosine, params, chunk_size,
            grad_chunk_size, block_columns, seed: the fields of `InfluenceSettings` (all
            validated before anything is computed); ``rank="auto"`` grows the Nyström sketch
            while it pays (`_grow_sketch`).
        progress: show the solver iterations and residuals.
        process_group: torch.distributed group over which ``metric_batch`` is sharded: every
            rank passes the same test batch and its own metric shard.

    Returns: `InfluenceResult`. Non-converged solves raise `ConvergenceWarning` and are marked
    in ``result.reports``. Complex parameters count as real/imaginary pairs (P real
    coordinates; ``settings["complex_coordinates"]``). A model ``torch.func.vmap`` cannot batch
    is run column by column after one `VmapFallbackWarning`; ``settings["batching"]`` says
    which path ran.
    """
    settings = InfluenceSettings(
        dampings=(damping,),
        rtol=rtol,
        max_iter=max_iter,
        preconditioner=preconditioner,
        rank=rank,
        solver=solver,
        cosine=cosine,
        params=params,
        chunk_size=chunk_size,
        grad_chunk_size=grad_chunk_size,
        block_columns=block_columns,
        seed=seed,
    )
    return influence_sweep(
        model,
        loss,
        test_batch,
        group,
        metric_batch,
        settings,
        progress=progress,
        process_group=process_group,
    )[0]


@dataclass(frozen=True)
class _Problem:
    """What every damping of a sweep shares, built once and only read afterwards: the metric
    eta as an operator, the test and transformed states, the test gradients B0 `(P, N)`, the
    Nyström sketch of eta and its spectrum estimates."""

    op: MetricOperator
    elements: list
    transformed: list[Transitions]
    same: list[bool]  # element k leaves the test states unchanged (the identity)
    gradients: Callable[[Transitions], torch.Tensor]  # per-sample gradients, `(P, N)`
    B0: torch.Tensor
    sketch: NystromPreconditioner | None
    spectrum: dict
    settings: InfluenceSettings
    metric: dict  # description of the metric batch (size, shape, digest)
    batcher: ColumnMap  # the vmap-or-loop decision shared by all column products


def influence_sweep(
    model: nn.Module,
    loss: SMSE,
    test_batch: Transitions,
    group: Iterable,
    metric_batch: Transitions | None = None,
    settings: InfluenceSettings | None = None,
    *,
    progress: bool = False,
    process_group: object | None = None,
    **options,
) -> list[InfluenceResult]:
    """`influence` for several dampings (``settings.dampings``, or ``dampings=[...]`` among
    ``options``, the fields of `InfluenceSettings`): build the operator eta, sketch it, then
    for each damping solve with ``Damped(eta, lambda)`` and assemble. The per-sample gradients
    of the test states, the operator and the Nyström sketch (which does not depend on lambda)
    are shared; nothing is mutated from one damping to the next."""
    if settings is None:
        settings = InfluenceSettings(**options)
    elif options:
        raise TypeError(f"pass either settings or options, not both: got {sorted(options)}")
    if not isinstance(loss, SMSE):
        raise TypeError(f"loss must be symaudit.SMSE, got {type(loss).__name__}")
    check_transitions(test_batch, loss.num_channels, what="test batch")
    elems = _elements(group)
    times: dict[str, float] = {}
    problem = _build_problem(
        model, loss, test_batch, elems, metric_batch, settings, process_group, times
    )
    with _solve_progress(progress) as bar:
        results = [_solve_at(problem, d, bar, dict(times)) for d in settings.dampings]
    _record_settings(results, problem, model, test_batch)
    return results


def _timed(times: dict[str, float], key: str, fn: Callable, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    times[key] = times.get(key, 0.0) + time.perf_counter() - t0
    return out


def _build_problem(
    model: nn.Module,
    loss: SMSE,
    test_batch: Transitions,
    elems: list,
    metric_batch: Transitions | None,
    s: InfluenceSettings,
    process_group: object | None,
    times: dict[str, float],
) -> _Problem:
    """The operator, the transformed states, the test gradients, the sketch and the spectrum
    (each step timed into ``times``)."""
    t0 = time.perf_counter()
    metric_desc: dict = {"source": "test batch" if metric_batch is None else "given"}
    metric_batch = test_batch if metric_batch is None else metric_batch
    batcher = ColumnMap()  # one vmap-or-loop decision (and warning) per run
    op = MetricOperator(
        model,
        loss,
        metric_batch,
        params=s.params,
        chunk_size=s.chunk_size,
        process_group=process_group,
        columns=batcher,
    )
    test = tuple(t.to(device=op.device, dtype=op.dtype) for t in test_batch)
    transformed = [_transform(g, test) for g in elems]
    for g, (a, b) in zip(elems, transformed, strict=True):
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError(f"group element {g.name!r} produced NaN/inf")
    # elements that leave the test states unchanged (the identity) reuse the test gradients
    same = [torch.equal(a, test[0]) and torch.equal(b, test[1]) for a, b in transformed]
    metric_desc.update(
        size=op.global_count,
        local_size=int(metric_batch[0].shape[0]),
        shape=list(metric_batch[0].shape),
        digest=tensor_digest(*metric_batch),
    )
    times["setup"] = time.perf_counter() - t0

    def gradients(batch: Transitions) -> torch.Tensor:
        with _eval_math_attention(model):
            return per_sample_gradients(
                op.forward,
                op.theta,
                loss,
                batch[0],
                batch[1],
                chunk_size=s.grad_chunk_size,
                columns=batcher,
            ).T  # (P, N)

    B0 = _timed(times, "gradients_test", gradients, test)
    sketch = None
    if s.preconditioner == "nystrom":
        columns = test[0].shape[0] * (1 + len(elems) - sum(same) if s.cosine else 1)
        sketch = _timed(
            times, "preconditioner", _grow_sketch, op, s.rank, columns, s.dampings, s.seed
        )
    else:
        times["preconditioner"] = 0.0
    spectrum = _timed(times, "spectrum", _spectrum, op, sketch, s)
    return _Problem(
        op, elems, transformed, same, gradients, B0, sketch, spectrum, s, metric_desc, batcher
    )


def _spectrum(
    op: MetricOperator, sketch: NystromPreconditioner | None, s: InfluenceSettings
) -> dict:
    """Top eigenvalue of eta (power iteration, warm-started from the Nyström top vector; only
    when a damping is relative) and its mean eigenvalue (Hutchinson, 8 probes)."""
    spectrum: dict = {}
    if any(d.relative for d in s.dampings):
        start = None if sketch is None else sketch.U[:, 0]
        spectrum["top_eigenvalue"] = top_eigenvalue(op, iters=50, seed=s.seed, start=start)
    trace, trace_err = hutchinson_trace(op, 8, seed=s.seed)
    spectrum.update(
        mean_eigenvalue=trace / op.num_params,
        mean_eigenvalue_stderr=trace_err / op.num_params,
        method="power iteration (warm start: Nyström top eigenvector); Hutchinson, 8 probes",
    )
    if sketch is not None:
        spectrum["nystrom_top_eigenvalue"] = sketch.top_eigenvalue
        spectrum["nystrom_smallest_kept_eigenvalue"] = sketch.smallest_eigenvalue
        spectrum["nystrom_products"] = sketch.products
    return spectrum


def _record_settings(
    results: list[InfluenceResult],
    problem: _Problem,
    model: nn.Module,
    test_batch: Transitions,
) -> None:
    """Write what was computed, and how, into every result's ``settings``."""
    op, s, sketch = problem.op, problem.settings, problem.sketch
    model_hash = model_checksum(model)
    x = test_batch[0]
    for r in results:
        r.settings.update(
            model_checksum=model_hash,
            num_params=op.num_params,
            complex_coordinates=op.space.complex_coordinates,
            batching=problem.batcher.describe(),
            params=list(s.params) if s.params is not None else None,
            rtol=s.rtol,
            max_iter=s.max_iter,
            preconditioner=s.preconditioner,
            rank=sketch.rank if sketch is not None else None,
            rank_rule=s.rank if isinstance(s.rank, str) else "fixed",
            solver=s.solver,
            metric_batch=problem.metric,
            test_batch={
                "size": int(x.shape[0]),
                "shape": list(x.shape),
                "digest": tensor_digest(*test_batch),
            },
            group_elements=[g.name for g in problem.elements],
            dtype=str(op.dtype),
            device=str(op.device),
            seed=s.seed,
        )


#: "auto" rank: start here, then double while worthwhile (`_grow_sketch`).
_START_RANK = 32
#: Fitted on trained unet-small at 64^2 (block CG, ranks 32-128, docs/influence.md): block CG
#: iterations ~ 4.9 + 2.8 sqrt(rho), rho = (smallest kept Nyström eigenvalue) / lambda, and
#: doubling the rank divides rho by ~4-12, saving ~1.4 sqrt(rho) iterations per column.
_ITERATIONS_SAVED_PER_SQRT_RHO = 1.4


def _grow_sketch(
    op, rank: int | str, columns: int, dampings: Sequence[Damping | float | str], seed: int
) -> NystromPreconditioner:
    """The Nyström sketch of the operator ``op`` (eta). A fixed ``rank``, or "auto": start at
    32 test vectors and double while the extra products pay for themselves, i.e. while

        rank < columns * 1.4 * sqrt(lambda_l / lambda)

    (lambda_l: smallest kept Nyström eigenvalue; lambda: the smallest damping asked, "auto"
    ones taken relative to the sketch's top eigenvalue), capped at 1024, at P, and so that the
    P x rank sketch matrices stay under 2 GiB each."""
    num_params = op.shape[0]
    dampings = [Damping.parse(d) for d in dampings]
    itemsize = torch.finfo(op.dtype).bits // 8
    cap = max(1, min(1024, num_params, 2**31 // (num_params * itemsize)))
    auto = rank == "auto"
    if not auto and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise ValueError(f"rank must be a positive integer or 'auto', got {rank!r}")
    first = min(_START_RANK, cap) if auto else min(rank, num_params)
    sketch = NystromPreconditioner.from_operator(op, first, seed=seed)
    while auto and 2 * sketch.sketch_size <= cap:
        lam = min(d.resolve(sketch.top_eigenvalue)[0] for d in dampings)
        rho = sketch.smallest_eigenvalue / lam
        if sketch.sketch_size >= columns * _ITERATIONS_SAVED_PER_SQRT_RHO * math.sqrt(rho):
            break
        sketch.extend(sketch.sketch_size)
    sketch.release()
    return sketch


@dataclass
class _Columns:
    """The outputs of one damping, filled block by block (local to `_solve_at`)."""

    raw: torch.Tensor  # (|G|, N, N)
    tnorms: torch.Tensor | None  # (|G|, N), with cosine
    qerr_t: torch.Tensor  # (|G|, N)
    test_reports: list[SolveReport] = field(default_factory=list)
    cos_reports: list[SolveReport] = field(default_factory=list)
    U: torch.Tensor | None = None  # chi^{-1} B0, `(P, N)`
    q0: torch.Tensor | None = None  # quadratic forms of the test states, `(N,)`
    qe0: torch.Tensor | None = None  # their relative error bounds


def _column_blocks(problem: _Problem) -> list[list[int]]:
    """Elements whose transformed states are solved together with the test states (first
    block) or each other: at most ``block_columns`` right-hand sides per solve. Without the
    cosine normalisation, one block holding the test states alone."""
    s, n = problem.settings, problem.B0.shape[1]
    todo = [k for k, same in enumerate(problem.same) if not same]
    per_block = max(1, s.block_columns // n - 1)
    blocks = [todo[i : i + per_block] for i in range(0, len(todo), per_block)] if s.cosine else []
    return blocks or [[]]


def _solve_at(problem: _Problem, damping: Damping, bar, times: dict[str, float]) -> InfluenceResult:
    """One damping: solve ``Damped(eta, lambda) X = [grad C_{x_i} | grad C_{g x_j} ...]`` in
    column blocks (the test columns first: their solutions u_i serve every element), then
    M^g = U^T grad C_{g x} and the quadratic forms."""
    s, G, n = problem.settings, len(problem.elements), problem.B0.shape[1]
    lam, rule = damping.resolve(problem.spectrum.get("top_eigenvalue"))
    chi = Damped(problem.op, lam)
    pre = None if problem.sketch is None else problem.sketch.damped(lam)
    # the spectrum of chi lies in [lambda, lambda_max(eta) + lambda]: the solver warns up front
    # when rtol is below what the working precision attains for it (krylov.py)
    top = problem.spectrum.get("top_eigenvalue", problem.spectrum.get("nystrom_top_eigenvalue"))
    bounds = (lam, lam + top) if top is not None else None
    solver = block_cg if s.solver == "block" else cg
    out = _Columns(
        raw=torch.empty(G, n, n, dtype=torch.float64),
        tnorms=torch.empty(G, n, dtype=torch.float64) if s.cosine else None,
        qerr_t=torch.zeros(G, n, dtype=torch.float64),
    )
    times.update(gradients_transformed=0.0, solve=0.0)
    blocks = _column_blocks(problem)
    for bi, block in enumerate(blocks):
        mats = [
            _timed(times, "gradients_transformed", problem.gradients, problem.transformed[k])
            for k in block
        ]
        what = "test + cosine" if bi == 0 and mats else ("test" if bi == 0 else "cosine")
        label = f"{what} {bi + 1}/{len(blocks)} (λ={lam:.3g})"
        X, rep = _timed(
            times,
            "solve",
            lambda cols, label=label: solver(
                chi,
                torch.cat(cols, 1),
                rtol=s.rtol,
                max_iter=s.max_iter,
                preconditioner=pre,
                eigenvalue_bounds=bounds,
                callback=_solve_callback(bar, label, s.max_iter),
            ),
            ([problem.B0] if bi == 0 else []) + mats,
        )
        _take_block(out, problem, block, mats, X, rep, lam, first=bi == 0)
    _timed(times, "gradients_transformed", _fill_unsolved, out, problem)
    return _assemble(out, problem, lam, rule, times)


def _quadratic_forms(Bm: torch.Tensor, Xm: torch.Tensor, res: list[float], lam: float) -> tuple:
    """b^T chi^{-1} b ~ b^T x per column, and the bound on its relative error."""
    q = (Bm * Xm).sum(0).double()
    # CG from zero: 0 <= b^T chi^-1 b - b^T x = r^T chi^-1 r <= ||r||^2 / lambda
    r = torch.tensor(res, dtype=torch.float64, device=q.device) * Bm.double().norm(dim=0)
    return q, r.square() / lam / q.clamp_min(1e-300)


def _take_block(
    out: _Columns,
    problem: _Problem,
    block: list[int],
    mats: list[torch.Tensor],
    X: torch.Tensor,
    rep: SolveReport,
    lam: float,
    *,
    first: bool,
) -> None:
    """Store one block's solutions: the test solutions U (first block), then per element the
    transformed-state norms, their error bounds and M^g = U^T grad C_{g x}."""
    n, off = problem.B0.shape[1], 0
    if first:
        out.U = X[:, :n]
        out.test_reports.append(rep.select(list(range(n))))
        out.q0, out.qe0 = _quadratic_forms(problem.B0, out.U, out.test_reports[-1].residuals, lam)
        off = n
    for k, Bg in zip(block, mats, strict=True):
        out.cos_reports.append(rep.select(list(range(off, off + n))))
        qg, qe = _quadratic_forms(Bg, X[:, off : off + n], out.cos_reports[-1].residuals, lam)
        out.tnorms[k] = qg.clamp_min(0).sqrt().cpu()
        out.qerr_t[k] = qe.cpu()
        out.raw[k] = (out.U.T @ Bg).double().cpu()
        off += n


def _fill_unsolved(out: _Columns, problem: _Problem) -> None:
    """Elements not solved for: the identity-like ones reuse the test columns; without the
    cosine normalisation every other element needs its gradients only (no solve)."""
    cosine = problem.settings.cosine
    for k in range(len(problem.elements)):
        if problem.same[k]:
            out.raw[k] = (out.U.T @ problem.B0).double().cpu()
            if cosine:
                out.tnorms[k] = out.q0.clamp_min(0).sqrt().cpu()
                out.qerr_t[k] = out.qe0.cpu()
        elif not cosine:
            Bg = problem.gradients(problem.transformed[k])
            out.raw[k] = (out.U.T @ Bg).double().cpu()


def _assemble(
    out: _Columns, problem: _Problem, lam: float, rule: str, times: dict[str, float]
) -> InfluenceResult:
    cosine = problem.settings.cosine
    reports = {"test": SolveReport.merge(out.test_reports).to_dict()}
    qerr = {"test": out.qe0.cpu()}
    if cosine:
        reports["cosine"] = SolveReport.merge(out.cos_reports).to_dict()
        qerr["transformed"] = out.qerr_t
    return InfluenceResult(
        elements=[g.name for g in problem.elements],
        raw=out.raw,
        norms=out.q0.clamp_min(0).sqrt().cpu(),
        transformed_norms=out.tnorms,
        damping=lam,
        reports=reports,
        timings=times,
        settings={"damping_rule": rule, "block_columns": problem.settings.block_columns},
        spectrum=dict(problem.spectrum),
        quadratic_form_error=qerr,
    )
