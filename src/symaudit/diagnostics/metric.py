"""The regularised NTK metric chi = eta + lambda I, applied matrix-free.

    eta = J^T W J,   W = grad^2_out C_B = 2 / (n C H W) * diag(1 / rms_c^2)

is the Gauss-Newton matrix of the mean-reduced SMSE loss C_B over a *metric batch* B of n
transitions (J: Jacobian of the model's outputs on B with respect to the flat parameter vector
theta of length P). eta is never formed: ``J V`` comes from ``torch.func.jvp`` (vmapped over the
columns of V, one primal forward per chunk), ``J^T U`` from a vjp closure built once per
metric batch. lambda is absolute.

``torch.func.linearize`` is deliberately not used: on torch 2.13 / CPU it returned values of
order 1e281 on a conv+GELU net where ``jvp`` was right (see NOTES.md).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from symaudit.training.loss import SMSE

__all__ = [
    "MetricOperator",
    "ParameterSpace",
    "Transitions",
    "check_transitions",
    "dense_eta",
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


def model_checksum(model: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and values of all parameters and buffers."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class ParameterSpace:
    """The selected parameters of a model as one flat vector of length P (and back)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numels(self) -> list[int]:
        return [s.numel() for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.numels)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """`(P,)` -> {name: tensor view}."""
        parts = torch.split(flat, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1) for n in self.names])


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
        damping: absolute lambda >= 0 (may be set later via ``.damping``).
        params: module-name prefixes restricting the parameters (default: all trainable).
        chunk_size: columns per vmap chunk (bounds memory: activations x chunk_size).
        global_count: total number of metric transitions over all ranks when the metric batch
            is sharded (W uses the global count); default: this batch, or the sum over
            ``process_group`` when one is given.
        process_group: a torch.distributed group (e.g. ``dist.group.WORLD``) over which the
            metric batch is sharded: each rank passes its own part, eta V is all-reduced.

    ``op(V)`` applies chi to `(P,)` or `(P, k)`; ``op.eta(V)`` applies eta alone.
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
    ) -> None:
        if not isinstance(loss, SMSE):
            raise TypeError(f"loss must be symaudit.SMSE, got {type(loss).__name__}")
        check_transitions(metric_batch, loss.num_channels, what="metric batch")
        names = _select(model, params)
        if not names:
            raise ValueError("the model has no trainable parameters")
        named = dict(model.named_parameters())
        first = named[names[0]]
        self.model = model
        self.loss = loss
        self.dtype: torch.dtype = first.dtype
        self.device: torch.device = first.device
        self.space = ParameterSpace(tuple(names), tuple(named[n].shape for n in names))
        self.theta = self.space.flatten({n: named[n].detach() for n in names}).to(self.dtype)
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
        self.damping = float(damping)
        self.products = 0  # number of chi/eta column products applied so far
        self._x = x
        with _eval_math_attention(model):
            out, self._vjp = vjp(lambda th: self.forward(th, x), self.theta)
        if out.shape != x.shape:
            raise ValueError(f"model maps {tuple(x.shape)} to {tuple(out.shape)}; expected equal")

    @property
    def num_params(self) -> int:
        return self.space.size

    @property
    def damping(self) -> float:
        return self._damping

    @damping.setter
    def damping(self, value: float) -> None:
        value = float(value)
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"damping must be a finite number >= 0, got {value}")
        self._damping = value

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f_theta(x) with the selected parameters taken from the flat ``theta``."""
        y = functional_call(self.model, (self.space.unflatten(theta), self._frozen), (x,))
        if not isinstance(y, torch.Tensor):  # else torch.func fails with an internal error
            raise ValueError(
                f"the model's forward must return one tensor shaped like its input, got "
                f"{type(y).__name__}"
            )
        return y

    def jacobian_vector(self, V: torch.Tensor) -> torch.Tensor:
        """J V: `(P, k)` -> `(k, n, C, H, W)`."""
        x = self._x

        def jv(v: torch.Tensor) -> torch.Tensor:
            return jvp(lambda th: self.forward(th, x), (self.theta,), (v,))[1]

        with _eval_math_attention(self.model):
            return vmap(jv, in_dims=1, chunk_size=self.chunk_size)(V)

    def transpose_vector(self, U: torch.Tensor) -> torch.Tensor:
        """J^T U: `(k, n, C, H, W)` -> `(P, k)` (reuses the stored vjp closure)."""
        with _eval_math_attention(self.model):
            out = vmap(lambda u: self._vjp(u)[0], chunk_size=self.chunk_size)(U)
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

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        """chi V = eta V + lambda V."""
        return self.eta(V) + self.damping * V.to(device=self.device, dtype=self.dtype)

    def quadratic_weighted_norms(self, V: torch.Tensor) -> torch.Tensor:
        """v^T eta v for each column, from J v alone (no vjp): `(P, k)` -> `(k,)`."""
        JV = self.jacobian_vector(V.to(device=self.device, dtype=self.dtype))
        q = (JV.square() * self.weights).flatten(1).sum(1)
        if self.process_group is not None:
            import torch.distributed as dist

            dist.all_reduce(q, group=self.process_group)
        return q

    def trace_estimate(self, probes: int = 16, *, seed: int = 0) -> tuple[float, float]:
        """Hutchinson estimate of tr(eta) with Rademacher probes: (estimate, standard error)."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        Z = torch.randint(0, 2, (self.num_params, probes), generator=g).to(self.dtype) * 2 - 1
        q = self.quadratic_weighted_norms(Z.to(self.device)).double()
        err = float(q.std() / probes**0.5) if probes > 1 else float("nan")
        return float(q.mean()), err

    def top_eigenvalue(self, iters: int = 30, *, seed: int = 0, rtol: float = 1e-3) -> float:
        """Power iteration on eta (stops when the Rayleigh quotient changes by < rtol)."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(self.num_params, generator=g, dtype=self.dtype).to(self.device)
        v = v / v.norm()
        lam = 0.0
        for _ in range(iters):
            w = self.eta(v)
            new = float(v @ w)
            v = w / w.norm()
            if abs(new - lam) <= rtol * abs(new):
                return new
            lam = new
        return lam


def dense_eta(op: MetricOperator, chunk_size: int = 64) -> torch.Tensor:
    """eta formed explicitly `(P, P)` via ``torch.func.jacrev`` -- for tests on tiny models."""
    from torch.func import jacrev

    with _eval_math_attention(op.model):
        J = jacrev(lambda th: op.forward(th, op._x), chunk_size=chunk_size)(op.theta)
    J = J.reshape(-1, op.num_params)
    w = op.weights.expand_as(op._x).reshape(-1, 1)
    return J.T @ (w * J)
