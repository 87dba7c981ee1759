"""Per-sample loss gradients grad_theta C_x for a batch of transitions, by vmap(grad) in chunks
(or a loop over samples for models vmap refuses)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad

from symaudit.diagnostics._params import ColumnMap
from symaudit.training.loss import SMSE

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample_gradients(
    forward: Forward,
    theta: torch.Tensor,
    loss: SMSE,
    x_t: torch.Tensor,
    x_t1: torch.Tensor,
    *,
    chunk_size: int | None = 8,
    columns: ColumnMap | None = None,
) -> torch.Tensor:
    """grad_theta C_{x_j}(theta) for each transition j, C_x = SMSE(f_theta(x_t), x_t1) (mean
    over channels and pixels of one transition).

    Args:
        forward: ``forward(theta, x)`` evaluates the model on an `(n, C, H, W)` batch.
        theta: flat parameters `(P,)`.  x_t, x_t1: `(N, C, H, W)`.
        chunk_size: samples per vmap chunk (memory: activations of that many samples).
        columns: how to batch over samples (default: vmap, falling back to a loop).

    Returns: `(N, P)`, in theta's dtype.
    """

    def one(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def c(th: torch.Tensor) -> torch.Tensor:
            return loss(forward(th, x.unsqueeze(0)), y.unsqueeze(0))

        return grad(c)(theta)

    x_t = x_t.to(device=theta.device, dtype=theta.dtype)
    x_t1 = x_t1.to(device=theta.device, dtype=theta.dtype)
    columns = columns if columns is not None else ColumnMap()
    return columns(one, x_t, x_t1, chunk_size=chunk_size)
