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

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from symaudit.diagnostics._gradients import per_sample_gradients
from symaudit.diagnostics.krylov import NystromPreconditioner, SolveReport, cg
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
        reports: solver reports by phase ("test", "cosine/<element>").
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
        path.parent.mkdir(parents=True, exist_ok=True)
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
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> InfluenceResult:
        """Read a file written by `save` (tensors only: ``weights_only`` loading)."""
        path = Path(path)
        if not path.is_file():
            raise InfluenceFileError(f"no influence result at {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(payload["meta"])
            if meta.get("format") != _FORMAT:
                raise InfluenceFileError(f"{path}: unknown format {meta.get('format')!r}")
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
        except InfluenceFileError:
            raise
        except Exception as exc:  # pickle/zip/json/key errors all mean a bad file
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
    x, y = g(batch[0]), g(batch[1])
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
        max_iter (500), preconditioner ("nystrom" or None), rank (Nyström rank, 128),
        cosine (True), params (module-name prefixes; default all), chunk_size (columns per
        vmap chunk of chi products, 32), grad_chunk_size (samples per vmap chunk of per-sample
        gradients, 8), seed (0), progress (False): see ``influence_sweep``.

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
    rank: int = 128,
    cosine: bool = True,
    params: Sequence[str] | None = None,
    chunk_size: int | None = 32,
    grad_chunk_size: int | None = 8,
    seed: int = 0,
    progress: bool = False,
) -> list[InfluenceResult]:
    """`influence` for several dampings, sharing the per-sample gradients of the test states,
    the metric operator and the Nyström sketch of eta (which does not depend on lambda)."""
    if not isinstance(loss, SMSE):
        raise TypeError(f"loss must be symaudit.SMSE, got {type(loss).__name__}")
    if preconditioner not in (None, "nystrom", "none"):
        raise ValueError(f"preconditioner must be 'nystrom' or None, got {preconditioner!r}")
    preconditioner = None if preconditioner == "none" else preconditioner
    check_transitions(test_batch, loss.num_channels, what="test batch")
    elems = _elements(group)
    names = [g.name for g in elems]
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    metric_desc: dict = {"source": "test batch" if metric_batch is None else "given"}
    metric_batch = test_batch if metric_batch is None else metric_batch
    op = MetricOperator(
        model, loss, metric_batch, params=params, chunk_size=chunk_size, process_group=None
    )
    dev, dt = op.device, op.dtype
    xt, xt1 = (t.to(device=dev, dtype=dt) for t in test_batch)
    transformed = [_transform(g, (xt, xt1)) for g in elems]
    for g, (a, b) in zip(elems, transformed, strict=True):
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError(f"group element {g.name!r} produced NaN/inf")
    metric_desc.update(
        size=int(metric_batch[0].shape[0]),
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
        sketch = NystromPreconditioner(
            op.eta, op.num_params, min(rank, op.num_params), 0.0, dtype=dt, device=dev, seed=seed
        )
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
        spectrum["nystrom_smallest_kept_eigenvalue"] = float(sketch.eigenvalues[-1])
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
                    names,
                    (xt, xt1),
                    transformed,
                    B0,
                    grads,
                    lam,
                    rule,
                    rtol,
                    max_iter,
                    cosine,
                    prog,
                    dict(times),
                    spectrum,
                    metric_desc,
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
            rank=rank if preconditioner else None,
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
    op,
    sketch,
    elems,
    names,
    test,
    transformed,
    B0,
    grads,
    lam,
    rule,
    rtol,
    max_iter,
    cosine,
    prog,
    times,
    spectrum,
    metric_desc,
) -> InfluenceResult:
    op.damping = lam
    pc = None
    if sketch is not None:
        sketch.mu = lam
        pc = sketch
    reports: dict[str, SolveReport] = {}

    def solve(B: torch.Tensor, what: str) -> torch.Tensor:
        X, rep = cg(
            op,
            B,
            rtol=rtol,
            max_iter=max_iter,
            preconditioner=pc,
            callback=prog.solve_callback(f"{what} (λ={lam:.3g})", max_iter),
        )
        reports[what] = rep
        return X

    t0 = time.perf_counter()
    U = solve(B0, "test")
    times["solve_test"] = time.perf_counter() - t0
    q0 = (B0 * U).sum(0).double()
    r0 = torch.tensor(reports["test"].residuals, dtype=torch.float64)
    bn0 = B0.double().norm(dim=0)
    qerr = {"test": (r0 * bn0).square() / lam / q0.clamp_min(1e-300)}

    raw = torch.empty(len(elems), B0.shape[1], B0.shape[1], dtype=torch.float64)
    tnorms = torch.empty(len(elems), B0.shape[1], dtype=torch.float64) if cosine else None
    qerr_t = torch.zeros(len(elems), B0.shape[1], dtype=torch.float64)
    times["gradients_transformed"] = 0.0
    times["solve_cosine"] = 0.0
    for k, (g, batch) in enumerate(zip(elems, transformed, strict=True)):
        t0 = time.perf_counter()
        # an element that leaves the test states unchanged (the identity) reuses their gradients
        same = torch.equal(batch[0], test[0]) and torch.equal(batch[1], test[1])
        Bg = B0 if same else grads(batch)
        times["gradients_transformed"] += time.perf_counter() - t0
        raw[k] = (U.T @ Bg).double().cpu()
        if cosine:
            t0 = time.perf_counter()
            if same:  # identity element: the test solve already gives the norms
                qg, qe = q0, qerr["test"]
            else:
                V = solve(Bg, f"cosine/{g.name}")
                qg = (Bg * V).sum(0).double()
                rg = torch.tensor(reports[f"cosine/{g.name}"].residuals, dtype=torch.float64)
                qe = (rg * Bg.double().norm(dim=0)).square() / lam / qg.clamp_min(1e-300)
            tnorms[k] = qg.clamp_min(0).sqrt().cpu()
            qerr_t[k] = qe.cpu()
            times["solve_cosine"] += time.perf_counter() - t0
    if cosine:
        qerr["transformed"] = qerr_t
    return InfluenceResult(
        elements=list(names),
        raw=raw,
        norms=q0.clamp_min(0).sqrt().cpu(),
        transformed_norms=tnorms,
        damping=lam,
        reports={k: v.to_dict() for k, v in reports.items()},
        timings=times,
        settings={"damping_rule": rule},
        spectrum=dict(spectrum),
        quadratic_form_error={k: v.cpu() for k, v in qerr.items()},
    )
