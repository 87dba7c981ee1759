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

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from symaudit._io import atomic_torch_save, load_result_payload
from symaudit.diagnostics._gradients import per_sample_gradients
from symaudit.diagnostics.krylov import NystromPreconditioner, SolveReport, block_cg, cg
from symaudit.diagnostics.metric import (
    MetricOperator,
    Transitions,
    _eval_math_attention,
    check_transitions,
    model_checksum,
)
from symaudit.training.loss import SMSE

__all__ = [
    "DEFAULT_RELATIVE_DAMPING",
    "InfluenceFileError",
    "InfluenceResult",
    "influence",
    "influence_sweep",
]

#: "auto" damping: lambda = DEFAULT_RELATIVE_DAMPING * (top eigenvalue of eta), which bounds the
#: condition number of chi by 1 + 1/DEFAULT_RELATIVE_DAMPING (see docs/influence.md).
DEFAULT_RELATIVE_DAMPING = 1e-3
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
        try:
            return self.elements.index(name)
        except ValueError:
            raise KeyError(f"no group element {name!r}; have {self.elements}") from None

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


def _tensor_digest(*ts: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in ts:
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


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


class _Progress:
    """Optional rich progress display of solver iterations and residuals."""

    def __init__(self, enabled: bool) -> None:
        self._p = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("it {task.completed:.0f}  max rel. residual {task.fields[res]}"),
                TimeElapsedColumn(),
            )

    def __enter__(self) -> _Progress:
        if self._p is not None:
            self._p.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def solve_callback(self, what: str, max_iter: int):
        if self._p is None:
            return None
        task = self._p.add_task(what, total=max_iter, res="-")

        def cb(it: int, rel: torch.Tensor) -> None:
            self._p.update(task, completed=it, res=f"{float(rel.max()):.2e} ({len(rel)} active)")

        return cb


def influence(
    model: nn.Module,
    loss: SMSE,
    test_batch: Transitions,
    group: Iterable,
    metric_batch: Transitions | None = None,
    *,
    damping: float | str = "auto",
    rtol: float = 5e-3,
    **kwargs,
) -> InfluenceResult:
    """Influence matrices M^g for every g in ``group`` (see the module docstring).

    Args:
        model: any module `(n, C, H, W) -> (n, C, H, W)`, evaluated in eval mode at its
            current parameters (dtype and device of its parameters are used throughout).
        loss: `symaudit.SMSE`.
        test_batch: `(x_t, x_t1)`, each `(N, C, H, W)`.
        group: iterable of elements with ``.name``, callable on `(..., C, H, W)`.
        metric_batch: transitions defining eta (default: the test batch).
        damping: absolute lambda, or "auto" = DEFAULT_RELATIVE_DAMPING * top eigenvalue of
            eta, or "auto:<fraction>" for another fraction of the top eigenvalue.
        rtol: relative residual of every solve, ||chi u - b|| <= rtol ||b||.
        max_iter (500), preconditioner ("nystrom" or None), rank (Nyström rank, or "auto":
        grown adaptively, see `_grow_sketch`), solver ("block": block CG, all right-hand
        sides of a block share one Krylov space; "cg": independent columns),
        cosine (True), params (module-name prefixes; default all), chunk_size (columns per
        vmap chunk of chi products, 4: measured fastest per column on CPU), grad_chunk_size
        (samples per vmap chunk of per-sample gradients, 8), block_columns (right-hand sides
        solved together, 128: test and transformed states share CG calls), seed (0),
        progress (False), process_group (torch.distributed group over which ``metric_batch``
        is sharded: every rank passes the same test batch and its own metric shard).

    Returns: `InfluenceResult`. Non-converged solves raise `ConvergenceWarning` and are marked
    in ``result.reports``.
    """
    return influence_sweep(
        model, loss, test_batch, group, metric_batch, dampings=[damping], rtol=rtol, **kwargs
    )[0]


def influence_sweep(
    model: nn.Module,
    loss: SMSE,
    test_batch: Transitions,
    group: Iterable,
    metric_batch: Transitions | None = None,
    *,
    dampings: Sequence[float | str] = ("auto",),
    rtol: float = 5e-3,
    max_iter: int = 500,
    preconditioner: str | None = "nystrom",
    rank: int | str = "auto",
    solver: str = "block",
    cosine: bool = True,
    params: Sequence[str] | None = None,
    chunk_size: int | None = 4,
    grad_chunk_size: int | None = 8,
    block_columns: int = 128,
    seed: int = 0,
    progress: bool = False,
    process_group: object | None = None,
) -> list[InfluenceResult]:
    """`influence` for several dampings, sharing the per-sample gradients of the test states,
    the metric operator and the Nyström sketch of eta (which does not depend on lambda)."""
    if not isinstance(loss, SMSE):
        raise TypeError(f"loss must be symaudit.SMSE, got {type(loss).__name__}")
    if preconditioner not in (None, "nystrom", "none"):
        raise ValueError(f"preconditioner must be 'nystrom' or None, got {preconditioner!r}")
    preconditioner = None if preconditioner == "none" else preconditioner
    if solver not in ("block", "cg"):
        raise ValueError(f"solver must be 'block' or 'cg', got {solver!r}")
    check_transitions(test_batch, loss.num_channels, what="test batch")
    elems = _elements(group)
    names = [g.name for g in elems]
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    metric_desc: dict = {"source": "test batch" if metric_batch is None else "given"}
    metric_batch = test_batch if metric_batch is None else metric_batch
    op = MetricOperator(
        model, loss, metric_batch, params=params, chunk_size=chunk_size, process_group=process_group
    )
    dev, dt = op.device, op.dtype
    xt, xt1 = (t.to(device=dev, dtype=dt) for t in test_batch)
    transformed = [_transform(g, (xt, xt1)) for g in elems]
    for g, (a, b) in zip(elems, transformed, strict=True):
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError(f"group element {g.name!r} produced NaN/inf")
    # elements that leave the test states unchanged (the identity) reuse the test gradients
    same = [torch.equal(a, xt) and torch.equal(b, xt1) for a, b in transformed]
    metric_desc.update(
        size=op.global_count,
        local_size=int(metric_batch[0].shape[0]),
        shape=list(metric_batch[0].shape),
        digest=_tensor_digest(*metric_batch),
    )
    times["setup"] = time.perf_counter() - t0

    def grads(batch: Transitions) -> torch.Tensor:
        with _eval_math_attention(model):
            return per_sample_gradients(
                op.forward, op.theta, loss, batch[0], batch[1], chunk_size=grad_chunk_size
            ).T  # (P, N)

    t0 = time.perf_counter()
    B0 = grads((xt, xt1))
    times["gradients_test"] = time.perf_counter() - t0

    # spectrum: top eigenvalue (for "auto" damping) and Hutchinson mean eigenvalue
    t0 = time.perf_counter()
    sketch = None
    if preconditioner == "nystrom":
        columns = xt.shape[0] * (1 + len(elems) - sum(same) if cosine else 1)
        sketch = _grow_sketch(op, rank, columns, dampings, seed)
    times["preconditioner"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    need_top = any(isinstance(d, str) for d in dampings)
    spectrum: dict = {}
    if need_top:
        spectrum["top_eigenvalue"] = _top_eigenvalue(op, sketch, seed)
    trace, trace_err = op.trace_estimate(8, seed=seed)
    spectrum.update(
        mean_eigenvalue=trace / op.num_params,
        mean_eigenvalue_stderr=trace_err / op.num_params,
        method="power iteration (warm start: Nyström top eigenvector); Hutchinson, 8 probes",
    )
    if sketch is not None:
        spectrum["nystrom_top_eigenvalue"] = sketch.top_eigenvalue
        spectrum["nystrom_smallest_kept_eigenvalue"] = sketch.smallest_eigenvalue
        spectrum["nystrom_products"] = sketch.products
    times["spectrum"] = time.perf_counter() - t0

    results = []
    with _Progress(progress) as prog:
        for d in dampings:
            lam, rule = _resolve_damping(d, spectrum)
            results.append(
                _one_damping(
                    op,
                    sketch,
                    elems,
                    same,
                    transformed,
                    B0,
                    grads,
                    lam,
                    rule,
                    rtol,
                    max_iter,
                    block_cg if solver == "block" else cg,
                    cosine,
                    block_columns,
                    prog,
                    dict(times),
                    spectrum,
                )
            )
    model_hash = model_checksum(model)
    for r in results:
        r.settings.update(
            model_checksum=model_hash,
            num_params=op.num_params,
            params=list(params) if params is not None else None,
            rtol=rtol,
            max_iter=max_iter,
            preconditioner=preconditioner,
            rank=sketch.rank if sketch is not None else None,
            rank_rule=rank if isinstance(rank, str) else "fixed",
            solver=solver,
            metric_batch=metric_desc,
            test_batch={
                "size": int(xt.shape[0]),
                "shape": list(xt.shape),
                "digest": _tensor_digest(*test_batch),
            },
            group_elements=names,
            dtype=str(dt),
            device=str(dev),
            seed=seed,
        )
    return results


#: "auto" rank: start here, then double while worthwhile (`_grow_sketch`).
_START_RANK = 32
#: Fitted on trained unet-small at 64^2 (block CG, ranks 32-128, docs/influence.md): block CG
#: iterations ~ 4.9 + 2.8 sqrt(rho), rho = (smallest kept Nyström eigenvalue) / lambda, and
#: doubling the rank divides rho by ~4-12, saving ~1.4 sqrt(rho) iterations per column.
_ITERATIONS_SAVED_PER_SQRT_RHO = 1.4


def _grow_sketch(
    op: MetricOperator, rank: int | str, columns: int, dampings: Sequence, seed: int
) -> NystromPreconditioner:
    """The Nyström sketch of eta. A fixed ``rank``, or "auto": start at 32 test vectors and
    double while the extra products pay for themselves, i.e. while

        rank < columns * 1.4 * sqrt(lambda_l / lambda)

    (lambda_l: smallest kept Nyström eigenvalue; lambda: the smallest damping asked, "auto"
    ones taken relative to the sketch's top eigenvalue), capped at 1024, at P, and so that the
    P x rank sketch matrices stay under 2 GiB each."""
    itemsize = torch.finfo(op.dtype).bits // 8
    cap = max(1, min(1024, op.num_params, 2**31 // (op.num_params * itemsize)))
    auto = rank == "auto"
    if not auto and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise ValueError(f"rank must be a positive integer or 'auto', got {rank!r}")
    first = min(_START_RANK, cap) if auto else min(rank, op.num_params)
    sketch = NystromPreconditioner(
        op.eta, op.num_params, first, 0.0, dtype=op.dtype, device=op.device, seed=seed
    )
    while auto and 2 * sketch.sketch_size <= cap:
        lam = min(
            _resolve_damping(d, {"top_eigenvalue": sketch.top_eigenvalue})[0] for d in dampings
        )
        rho = sketch.smallest_eigenvalue / lam
        if sketch.sketch_size >= columns * _ITERATIONS_SAVED_PER_SQRT_RHO * math.sqrt(rho):
            break
        sketch.extend(sketch.sketch_size)
    sketch.release()
    return sketch


def _top_eigenvalue(op: MetricOperator, sketch: NystromPreconditioner | None, seed: int) -> float:
    """Power iteration to relative change 1e-3, warm-started from the Nyström top vector."""
    if sketch is None:
        return op.top_eigenvalue(50, seed=seed)
    v = sketch.U[:, 0].clone()
    lam = 0.0
    for _ in range(50):
        w = op.eta(v)
        new = float(v @ w)
        v = w / w.norm()
        if abs(new - lam) <= 1e-3 * abs(new):
            return new
        lam = new
    return lam


def _resolve_damping(d: float | str, spectrum: dict) -> tuple[float, str]:
    if isinstance(d, str):
        if d == "auto":
            frac = DEFAULT_RELATIVE_DAMPING
        elif d.startswith("auto:"):
            try:
                frac = float(d[5:])
            except ValueError:
                raise ValueError(f"bad damping {d!r}; use 'auto:<fraction>'") from None
        else:
            raise ValueError(f"damping must be a number, 'auto' or 'auto:<fraction>', got {d!r}")
        if not frac > 0:
            raise ValueError(f"relative damping must be > 0, got {frac}")
        lam = frac * spectrum["top_eigenvalue"]
        if not lam > 0:
            raise ValueError("eta has no positive eigenvalue: give an absolute damping > 0")
        return lam, f"{frac:g} * top eigenvalue of eta"
    lam = float(d)
    if not lam > 0 or lam == float("inf"):
        raise ValueError(f"damping must be a finite number > 0, got {d!r}")
    return lam, "absolute"


def _one_damping(
    op: MetricOperator,
    sketch: NystromPreconditioner | None,
    elems: list,
    same: list[bool],
    transformed: list[Transitions],
    B0: torch.Tensor,
    grads,
    lam: float,
    rule: str,
    rtol: float,
    max_iter: int,
    solve,
    cosine: bool,
    block_columns: int,
    prog: _Progress,
    times: dict[str, float],
    spectrum: dict,
) -> InfluenceResult:
    """One damping: solve chi X = [grad C_{x_i} | grad C_{g x_j} ...] in column blocks of at
    most ``block_columns`` (the test columns first: their solutions u_i are needed by every
    element), then M^g = U^T grad C_{g x} and the quadratic forms."""
    op.damping = lam
    if sketch is not None:
        sketch.mu = lam
    n = B0.shape[1]
    G = len(elems)
    todo = [k for k in range(G) if not same[k]]
    per_block = max(1, block_columns // n - 1)
    blocks = [todo[i : i + per_block] for i in range(0, len(todo), per_block)] if cosine else []
    if not blocks:
        blocks = [[]]
    raw = torch.empty(G, n, n, dtype=torch.float64)
    tnorms = torch.empty(G, n, dtype=torch.float64) if cosine else None
    qerr_t = torch.zeros(G, n, dtype=torch.float64)
    test_reports: list[SolveReport] = []
    cos_reports: list[SolveReport] = []
    times.update(gradients_transformed=0.0, solve=0.0)
    U = q0 = qe0 = None
    # the spectrum of chi lies in [lambda, lambda_max(eta) + lambda]: the solver warns up front
    # when rtol is below what the working precision attains for it (krylov.py)
    top = spectrum.get("top_eigenvalue", spectrum.get("nystrom_top_eigenvalue"))
    bounds = (lam, lam + top) if top is not None else None

    def quad(Bm: torch.Tensor, Xm: torch.Tensor, res: list[float]) -> tuple:
        q = (Bm * Xm).sum(0).double()
        # CG from zero: 0 <= b^T chi^-1 b - b^T x = r^T chi^-1 r <= ||r||^2 / lambda
        r = torch.tensor(res, dtype=torch.float64, device=q.device) * Bm.double().norm(dim=0)
        return q, r.square() / lam / q.clamp_min(1e-300)

    for bi, block in enumerate(blocks):
        t0 = time.perf_counter()
        mats = [grads(transformed[k]) for k in block]
        times["gradients_transformed"] += time.perf_counter() - t0
        cols = ([B0] if bi == 0 else []) + mats
        t0 = time.perf_counter()
        what = "test + cosine" if bi == 0 and mats else ("test" if bi == 0 else "cosine")
        X, rep = solve(
            op,
            torch.cat(cols, 1),
            rtol=rtol,
            max_iter=max_iter,
            preconditioner=sketch,
            eigenvalue_bounds=bounds,
            callback=prog.solve_callback(f"{what} {bi + 1}/{len(blocks)} (λ={lam:.3g})", max_iter),
        )
        times["solve"] += time.perf_counter() - t0
        off = 0
        if bi == 0:
            U = X[:, :n]
            test_reports.append(rep.select(list(range(n))))
            q0, qe0 = quad(B0, U, test_reports[-1].residuals)
            off = n
        for k, Bg in zip(block, mats, strict=True):
            sel = list(range(off, off + n))
            cos_reports.append(rep.select(sel))
            qg, qe = quad(Bg, X[:, off : off + n], cos_reports[-1].residuals)
            tnorms[k] = qg.clamp_min(0).sqrt().cpu()
            qerr_t[k] = qe.cpu()
            raw[k] = (U.T @ Bg).double().cpu()
            off += n
    t0 = time.perf_counter()
    for k in range(G):
        if same[k]:
            raw[k] = (U.T @ B0).double().cpu()
            if cosine:
                tnorms[k] = q0.clamp_min(0).sqrt().cpu()
                qerr_t[k] = qe0.cpu()
        elif not cosine:
            Bg = grads(transformed[k])
            raw[k] = (U.T @ Bg).double().cpu()
    times["gradients_transformed"] += time.perf_counter() - t0
    reports = {"test": SolveReport.merge(test_reports).to_dict()}
    if cosine:
        reports["cosine"] = SolveReport.merge(cos_reports).to_dict()
    qerr = {"test": qe0.cpu()}
    if cosine:
        qerr["transformed"] = qerr_t
    return InfluenceResult(
        elements=[g.name for g in elems],
        raw=raw,
        norms=q0.clamp_min(0).sqrt().cpu(),
        transformed_norms=tnorms,
        damping=lam,
        reports=reports,
        timings=times,
        settings={"damping_rule": rule, "block_columns": block_columns},
        spectrum=dict(spectrum),
        quadratic_form_error=qerr,
    )
