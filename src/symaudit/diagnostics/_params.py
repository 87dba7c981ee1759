"""The parameters of any PyTorch model as one real vector theta in R^P, and the model's
checksum, output check and column batching -- the pieces that let the diagnostics take models
they did not build (complex weights, integer buffers, non-tensor extra state, in-place writes).

Complex parameters. A complex tensor z = a + i b of n entries contributes 2n real coordinates,
stored interleaved (a_0, b_0, a_1, b_1, ...) like ``torch.view_as_real``. The model is called
with z rebuilt as ``torch.complex(a, b)``, so every derivative taken with respect to theta --
jvp, vjp, per-sample gradients, eta = J^T W J -- is an ordinary real derivative: for a real loss
L, dL/dtheta = (dL/da, dL/db). PyTorch's own ``z.grad`` for a real L is the conjugate Wirtinger
derivative scaled by 2,

    z.grad = 2 dL/d(conj z) = dL/da + i dL/db,

i.e. ``view_as_real(z.grad)`` equals our gradient coordinate by coordinate (tested against a
copy of the model that stores a and b as two real parameters). A plain ``.to(float)`` of z
would instead drop b -- half the parameter space -- silently.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

from symaudit._io import tensor_bytes

__all__ = [
    "ColumnMap",
    "ModelOutputError",
    "ParameterSpace",
    "VmapFallbackWarning",
    "cast_model",
    "check_model_output",
    "model_checksum",
    "real_dtype",
]


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32 and complex64, float64 for float64 and complex128, ..."""
    return torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype


@dataclass(frozen=True)
class ParameterSpace:
    """Selected parameters of a model as one flat real vector of length P (and back).

    ``dtypes`` are the parameters' own dtypes; a complex one takes 2 numel real coordinates.
    All parameters must share one real precision (``real_dtype``), the dtype of theta.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...] | None = None

    @classmethod
    def of(cls, named: dict[str, torch.Tensor], names: Sequence[str]) -> ParameterSpace:
        """The space of ``named[n]`` for n in ``names``; raises `ValueError` on mixed
        precisions or non-floating parameters."""
        dtypes = tuple(named[n].dtype for n in names)
        bad = [
            n
            for n, d in zip(names, dtypes, strict=True)
            if not (d.is_floating_point or d.is_complex)
        ]
        if bad:
            raise ValueError(f"parameters {bad[:4]} are not floating point or complex")
        reals = {real_dtype(d) for d in dtypes}
        if len(reals) > 1:
            by = {
                str(d): [n for n, e in zip(names, dtypes, strict=True) if real_dtype(e) == d][:3]
                for d in reals
            }
            raise ValueError(
                f"the model mixes parameter precisions {by}; cast it to one precision first "
                "(symaudit.diagnostics.cast_model(model, torch.float64) keeps complex "
                "parameters complex)"
            )
        return cls(tuple(names), tuple(named[n].shape for n in names), dtypes)

    @property
    def real_dtype(self) -> torch.dtype:
        return real_dtype(self.dtypes[0]) if self.dtypes else torch.float32

    def _is_complex(self) -> tuple[bool, ...]:
        return (
            tuple(d.is_complex for d in self.dtypes) if self.dtypes else (False,) * len(self.names)
        )

    @property
    def numels(self) -> list[int]:
        """Real coordinates per parameter tensor (twice the entries for a complex one)."""
        return [
            s.numel() * (2 if c else 1)
            for s, c in zip(self.shapes, self._is_complex(), strict=True)
        ]

    @property
    def size(self) -> int:
        return sum(self.numels)

    @property
    def complex_coordinates(self) -> int:
        """How many of the P real coordinates are real/imaginary parts of complex tensors."""
        return sum(n for n, c in zip(self.numels, self._is_complex(), strict=True) if c)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """`(P,)` real -> {name: tensor}; complex tensors rebuilt with ``torch.complex`` (so
        real-mode autodiff through it gives the derivatives in (a, b))."""
        parts = torch.split(flat, self.numels)
        out = {}
        for n, p, s, c in zip(self.names, parts, self.shapes, self._is_complex(), strict=True):
            if c:
                pair = p.view(*s, 2)
                out[n] = torch.complex(pair[..., 0], pair[..., 1])
            else:
                out[n] = p.view(s)
        return out

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """{name: tensor} -> `(P,)` real (complex as interleaved real/imaginary pairs)."""
        parts = []
        for n in self.names:
            t = tensors[n]
            parts.append((torch.view_as_real(t) if t.is_complex() else t).reshape(-1))
        return torch.cat(parts)


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating parameters/buffers to ``dtype`` and complex ones to the complex type of
    the same precision, in place (``Module.to(torch.float64)`` would cast complex tensors to
    real and drop their imaginary parts). Integer and bool tensors are left alone."""
    cdtype = {torch.float32: torch.complex64, torch.float64: torch.complex128}.get(dtype)
    if cdtype is None:
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")

    def convert(t: torch.Tensor) -> torch.Tensor:
        if t.is_complex():
            return t.to(cdtype)
        return t.to(dtype) if t.is_floating_point() else t

    return model._apply(convert)


# -- checksum -----------------------------------------------------------------------------------
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _canonical(value: object) -> object:
    """A JSON-able, run-independent description of a non-tensor state_dict entry."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_canonical(v) for v in items]
    if isinstance(value, torch.Tensor):
        return {"tensor": _tensor_sha(value)}
    if isinstance(value, type) or callable(value):
        name = getattr(value, "__qualname__", type(value).__qualname__)
        return f"{getattr(value, '__module__', '?')}.{name}"
    # other objects: their repr without memory addresses, which change from run to run
    return f"{type(value).__qualname__}:{_ADDRESS.sub('', repr(value))}"


def _tensor_sha(t: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def model_checksum(model: nn.Module) -> str:
    """SHA-256 over every ``state_dict`` entry in order: tensors of any dtype and shape by
    name, shape, dtype and bytes; non-tensor entries (e.g. neuraloperator's ``_metadata``) by
    a canonical JSON serialisation (sorted keys, functions and classes by qualified name,
    memory addresses removed)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if isinstance(t, torch.Tensor):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(tensor_bytes(t))
        else:
            text = json.dumps(_canonical(t), sort_keys=True)
            h.update(f"{name}:extra:{text};".encode())
    return h.hexdigest()


# -- output check -------------------------------------------------------------------------------
class ModelOutputError(ValueError):
    """The model does not map an `(n, C, H, W)` tensor to one of the same shape and dtype."""


def check_model_output(x: torch.Tensor, y: object) -> torch.Tensor:
    """Return ``y`` if it is a tensor shaped and typed like the input ``x``; else raise
    `ModelOutputError` naming the problem (tuple/dict outputs, shape, dtype)."""
    if not isinstance(y, torch.Tensor):
        kind = type(y).__name__
        hint = (
            " (return only the next state, e.g. wrap the model)"
            if isinstance(y, tuple | list | dict)
            else ""
        )
        raise ModelOutputError(f"the model returned a {kind}, not a tensor{hint}")
    if y.shape != x.shape:
        raise ModelOutputError(
            f"the model maps {tuple(x.shape)} to {tuple(y.shape)}; an emulator must map "
            "(n, C, H, W) states to next states of the same shape"
        )
    if y.dtype != x.dtype:
        raise ModelOutputError(
            f"the model returned {y.dtype} for {x.dtype} input; its parameters and the data "
            "must share one real dtype (complex intermediate values are fine, outputs must be "
            "real)"
        )
    return y


# -- column batching ----------------------------------------------------------------------------
class VmapFallbackWarning(UserWarning):
    """``torch.func.vmap`` refused the model; a slower per-column loop is used instead."""


class ColumnMap:
    """Apply a function to each column of a batch: ``vmap`` (the fast default) or, once vmap
    has refused the model (e.g. an in-place write into a fresh tensor, as neuraloperator's
    SpectralConv does), a plain loop -- correct, slower, warned about once.

    ``mode`` is "vmap" or "loop"; ``reason`` the first line of vmap's error.
    """

    def __init__(self, mode: str = "vmap") -> None:
        if mode not in ("vmap", "loop"):
            raise ValueError(f"mode must be 'vmap' or 'loop', got {mode!r}")
        self.mode = mode
        self.reason: str | None = None

    def describe(self) -> dict:
        return {"mode": self.mode, "vmap_error": self.reason}

    def __call__(
        self,
        fn: Callable[..., torch.Tensor],
        *args: torch.Tensor,
        in_dims: int | tuple[int, ...] = 0,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Stack of ``fn`` over slices of ``args`` along ``in_dims``, outputs along dim 0."""
        if self.mode == "vmap":
            try:
                return vmap(fn, in_dims=in_dims, chunk_size=chunk_size)(*args)
            except (RuntimeError, NotImplementedError) as exc:
                # anything vmap raises: the loop below either works (then vmap was the
                # problem) or raises the model's own error
                out = self._loop(fn, args, in_dims)
                self.mode = "loop"
                self.reason = (
                    str(exc).strip().splitlines()[0][:300] if str(exc) else type(exc).__name__
                )
                warnings.warn(
                    f"torch.func.vmap cannot batch this model ({self.reason}); using a "
                    "per-column loop (correct, slower). Recorded in the result's settings.",
                    VmapFallbackWarning,
                    stacklevel=2,
                )
                return out
        return self._loop(fn, args, in_dims)

    @staticmethod
    def _loop(fn, args: tuple[torch.Tensor, ...], in_dims) -> torch.Tensor:
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
        n = args[0].shape[dims[0]]
        cols = [fn(*(a.select(d, i) for a, d in zip(args, dims, strict=True))) for i in range(n)]
        return torch.stack(cols)
