"""The regularised NTK metric chi = eta + lambda I, applied matrix-free.

    eta = J^T W J,   W = grad^2_out C_B = 2 / (n C H W) * diag(1 / rms_c^2)

is the Gauss-Newton matrix of the mean-reduced SMSE loss C_B over a *metric batch* B of n
transitions (J: Jacobian of the model's outputs on B with respect to the flat parameter vector
theta in R^P; complex parameters count as real/imaginary pairs, see `_params`). eta is never
formed: ``J V`` comes from ``torch.func.jvp`` (vmapped over the columns of V, one primal forward
per chunk; a loop for models vmap refuses), ``J^T U`` from a vjp closure built once per metric
batch. lambda is absolute.

``torch.func.linearize`` is deliberately not used: on torch 2.13 / CPU it returned values of
order 1e281 on a conv+GELU net where ``jvp`` was right (see NOTES.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from symaudit.diagnostics._operator import Damped, hutchinson_trace, top_eigenvalue
from symaudit.diagnostics._params import (
    ColumnMap,
    ParameterSpace,
    check_model_output,
    model_checksum,
)
from symaudit.training.loss import SMSE

__all__ = [
    "MetricOperator",
    "ParameterSpace",
    "Transitions",
    "check_transitions",
    "dense_eta",
    "dense_jacobian",
    "model_checksum",
]

Transitions = tuple[torch.Tensor, torch.Tensor]


def check_transitions(batch: Transitions, channels: int | None = None, *, what: str) -> None:
    """Raise ``ValueError`` unless ``batch`` is a pair of finite, equally shaped `(N, C, H, W)`
    tensors (with C == ``channels`` when given)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            f"{what} must be a pair (x_t, x_t1) of tensors, got {type(batch).__name__}"
        )
    x, y = batch
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise ValueError(f"{what} must hold tensors, got {type(x).__name__}, {type(y).__name__}")
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(
            f"{what}: x_t and x_t1 must both be (N, C, H, W) of the same shape, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{what} has {x.shape[1]} channels, the loss expects {channels}")
    for name, t in (("x_t", x), ("x_t1", y)):
        if not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"{what}: {name} has NaN/inf values in samples {bad[:10]}")


def _select(model: nn.Module, prefixes: Sequence[str] | None) -> list[str]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if prefixes is None:
        return names
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    chosen = [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]
    unused = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n in names)]
    if unused:
        raise ValueError(f"no parameters under module prefix(es) {unused}; names start {names[:8]}")
    return chosen


@contextlib.contextmanager
def _eval_math_attention(model: nn.Module):
    """Evaluate in eval mode (no dropout, frozen norm statistics) with the math attention
    backend, the only scaled-dot-product kernel forward-mode AD supports."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was_training = model.training
    model.eval()
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        model.train(was_training)


class MetricOperator:
    """chi = eta + lambda I on the (selected) parameters of ``model``, at its current values.

    Args:
        model: any module mapping `(n, C, H, W)` to `(n, C, H, W)`; evaluated in eval mode.
        loss: the `SMSE` loss whose Gauss-Newton matrix is eta.
        metric_batch: `(x_t, x_t1)`, each `(n, C, H, W)`. Only x_t enters eta (the GN matrix
            of a squared loss does not depend on the targets); x_t1 is validated for shape.
        damping: absolute lambda >= 0 of ``op(V)`` (solves at other dampings use
            ``Damped(op, lambda)``).
        params: module-name prefixes restricting the parameters (default: all trainable).
        chunk_size: columns per vmap chunk (bounds memory: activations x chunk_size).
        columns: the `ColumnMap` batching products over columns (vmap, or a loop for models
            vmap refuses); shared with the per-sample gradients of an influence run.
        global_count: total number of metric transitions over all ranks when the metric batch
            is sharded (W uses the global count); default: this batch, or the sum over
            ``process_group`` when one is given.
        process_group: a torch.distributed group (e.g. ``dist.group.WORLD``) over which the
            metric batch is sharded: each rank passes its own part, eta V is all-reduced.

    ``op(V)`` applies chi to `(P,)` or `(P, k)`; ``op.eta(V)`` = ``op.matmat(V)`` applies eta
    alone: as an operator (`symaudit.diagnostics._operator`) this is eta, undamped.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: SMSE,
        metric_batch: Transitions,
        damping: float = 0.0,
        *,
        params: Sequence[str] | None = None,
        chunk_size: int | None = 4,
        global_count: int | None = None,
        process_group: object | None = None,
        columns: ColumnMap | None = None,
    ) -> None:
        if not isinstance(loss, SMSE):
            raise TypeError(f"loss must be symaudit.SMSE, got {type(loss).__name__}")
        check_transitions(metric_batch, loss.num_channels, what="metric batch")
        names = _select(model, params)
        if not names:
            raise ValueError("the model has no trainable parameters")
        named = dict(model.named_parameters())
        self.model = model
        self.loss = loss
        self.space = ParameterSpace.of(named, names)
        self.dtype: torch.dtype = self.space.real_dtype
        self.device: torch.device = named[names[0]].device
        self.theta = self.space.flatten({n: named[n].detach() for n in names})
        self.columns = columns if columns is not None else ColumnMap()
        self._frozen = {n: p.detach() for n, p in named.items() if n not in set(names)}
        self._frozen.update({n: b.detach() for n, b in model.named_buffers()})
        self.chunk_size = chunk_size
        self.process_group = process_group
        x = metric_batch[0].to(device=self.device, dtype=self.dtype)
        self.batch_size = x.shape[0]
        if global_count is None and process_group is not None:
            import torch.distributed as dist

            n = torch.tensor([x.shape[0]], dtype=torch.long, device=self.device)
            dist.all_reduce(n, group=process_group)
            global_count = int(n)
        self.global_count = global_count if global_count is not None else x.shape[0]
        count = self.global_count * x[0].numel()
        # W = grad^2_out of mean_{entries} w_c (f - y)^2 = 2 w_c / (#entries)
        self.weights = loss.channel_weights(self.dtype, self.device) * (2.0 / count)
        self._chi = Damped(self, damping)  # validates the damping
        self.products = 0  # number of chi/eta column products applied so far
        self._x = x
        with _eval_math_attention(model):
            _, self._vjp = vjp(lambda th: self.forward(th, x), self.theta)

    @property
    def num_params(self) -> int:
        return self.space.size

    @property
    def shape(self) -> tuple[int, int]:
        """`(P, P)`: the operator protocol of `symaudit.diagnostics._operator`."""
        return (self.space.size, self.space.size)

    @property
    def damping(self) -> float:
        """The lambda of ``op(V)`` (fixed at construction: other dampings are
        ``Damped(op, lambda)`` objects, so nothing is mutated between solves)."""
        return self._chi.damping

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f_theta(x) with the selected parameters taken from the flat real ``theta``
        (complex parameters rebuilt from their real/imaginary pairs); raises
        `ModelOutputError` unless the output is shaped and typed like ``x``."""
        out = functional_call(self.model, (self.space.unflatten(theta), self._frozen), (x,))
        return check_model_output(x, out)

    def jacobian_vector(self, V: torch.Tensor) -> torch.Tensor:
        """J V: `(P, k)` -> `(k, n, C, H, W)`."""
        x = self._x

        def jv(v: torch.Tensor) -> torch.Tensor:
            return jvp(lambda th: self.forward(th, x), (self.theta,), (v,))[1]

        with _eval_math_attention(self.model):
            return self.columns(jv, V, in_dims=1, chunk_size=self.chunk_size)

    def transpose_vector(self, U: torch.Tensor) -> torch.Tensor:
        """J^T U: `(k, n, C, H, W)` -> `(P, k)` (reuses the stored vjp closure)."""
        with _eval_math_attention(self.model):
            out = self.columns(lambda u: self._vjp(u)[0], U, chunk_size=self.chunk_size)
        return out.T

    def eta(self, V: torch.Tensor) -> torch.Tensor:
        """eta V for `(P,)` or `(P, k)` V (summed over ranks when sharded)."""
        vec = V.ndim == 1
        V = V.reshape(V.shape[0], -1)
        if V.shape[0] != self.num_params:
            raise ValueError(f"expected {self.num_params} rows, got {tuple(V.shape)}")
        V = V.to(device=self.device, dtype=self.dtype)
        out = self.transpose_vector(self.jacobian_vector(V) * self.weights)
        if self.process_group is not None:
            import torch.distributed as dist

            dist.all_reduce(out, group=self.process_group)
        self.products += V.shape[1]
        return out[:, 0] if vec else out

    matmat = eta  # the operator protocol: this operator is eta (undamped)

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        """chi V = eta V + lambda V."""
        return self._chi.matmat(V)

    def quadratic_form(self, V: torch.Tensor) -> torch.Tensor:
        """v^T eta v for each column, from J v alone (no vjp): `(P, k)` -> `(k,)`."""
        JV = self.jacobian_vector(V.to(device=self.device, dtype=self.dtype))
        q = (JV.square() * self.weights).flatten(1).sum(1)
        if self.process_group is not None:
            import torch.distributed as dist

            dist.all_reduce(q, group=self.process_group)
        return q

    quadratic_weighted_norms = quadratic_form  # the earlier name

    def trace_estimate(self, probes: int = 16, *, seed: int = 0) -> tuple[float, float]:
        """Hutchinson estimate of tr(eta) with Rademacher probes: (estimate, standard error)."""
        return hutchinson_trace(self, probes, seed=seed)

    def top_eigenvalue(self, iters: int = 30, *, seed: int = 0, rtol: float = 1e-3) -> float:
        """Power iteration on eta (stops when the Rayleigh quotient changes by < rtol)."""
        return top_eigenvalue(self, iters=iters, rtol=rtol, seed=seed)


def dense_jacobian(op: MetricOperator, x: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    """J of the model's outputs on ``x`` `(n, C, H, W)` w.r.t. theta, `(n C H W, P)`, by reverse
    mode: ``jacrev`` (vmapped), or one plain-autograd row at a time when vmap refuses the model.
    For tests and small models only."""
    from torch.func import jacrev

    def f(th: torch.Tensor) -> torch.Tensor:
        return op.forward(th, x)

    with _eval_math_attention(op.model):
        if op.columns.mode == "vmap":
            try:
                return jacrev(f, chunk_size=chunk_size)(op.theta).reshape(-1, op.num_params)
            except RuntimeError:
                pass  # e.g. in-place writes vmap refuses: the loop below is exact too
        J = torch.autograd.functional.jacobian(f, op.theta, vectorize=False)
    return J.reshape(-1, op.num_params)


def dense_eta(op: MetricOperator, chunk_size: int = 64) -> torch.Tensor:
    """eta formed explicitly `(P, P)` from `dense_jacobian` -- for tests on tiny models."""
    J = dense_jacobian(op, op._x, chunk_size)
    w = op.weights.expand_as(op._x).reshape(-1, 1)
    return J.T @ (w * J)
