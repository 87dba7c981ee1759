"""Influence engine vs the paper-style baseline and curvlinops (issue 5).

    .venv/bin/python benchmarks/bench_influence.py [--checkpoint CKPT] [--resolution 64] [--n 16]

Measures, on one model, test batch and damping, side by side:
  (a) paper-style baseline: one unpreconditioned CG solve per (state, group element), one
      right-hand side at a time (same matrix-free operator as symaudit, so the difference is
      the algorithm); a subset of the N|G| solves, spread over the group elements, is timed and
      extrapolated linearly;
  (b) curvlinops 3.0.1: GGNLinearOperator + lambda I, CGInverseLinearOperator with
      tolerance=rtol (GPyTorch: mean over columns of the recursive residual) on the N test
      gradients (a subset of columns is timed and extrapolated linearly); each column's true
      residual is then checked;
  (c) symaudit `influence(..., cosine=False)` (raw and Frobenius matrices), and the extra cost
      of the cosine normalisation;
  (d) the floor: the N (1 + |G|) per-sample gradients alone.
Costs are also counted in column products with chi (machine-independent).

The model: ``--checkpoint`` (default: ``demo/runs/unet-small-s0/checkpoint.pt`` from
``make demo`` when it exists), its test states read from the HDF5 files it was trained on
(``--data`` to override); without a checkpoint, an untrained model on states from the
project's Euler solver (say so when quoting the numbers: an untrained metric's spectrum, and
so its iteration counts, differ from a trained one's).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch

from symaudit import SMSE, FieldLayout, groups, models
from symaudit.data.stats import channel_rms
from symaudit.diagnostics._gradients import per_sample_gradients
from symaudit.diagnostics.influence import influence
from symaudit.diagnostics.krylov import cg
from symaudit.diagnostics.metric import MetricOperator, _eval_math_attention

DEFAULT_CHECKPOINT = "demo/runs/unet-small-s0/checkpoint.pt"


def transitions(n: int, res: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, x_t1) from the project's own Euler solver (Riemann-problem ICs)."""
    from symaudit.physics.euler import evolve
    from symaudit.physics.initial_conditions import sample

    ic = sample("ce-rp", n, res, seed=seed)
    traj = evolve(ic.state, [0.0, 0.05])
    return traj[:, 0].float().contiguous(), traj[:, 1].float().contiguous()


def file_transitions(files: list[str], n: int, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n transitions (snapshot step -> step + 1), trajectories taken round-robin over files."""
    from symaudit.data.store import open_dataset

    per = [n // len(files) + (i < n % len(files)) for i in range(len(files))]
    xs, ys = [], []
    for path, k in zip(files, per, strict=True):
        with open_dataset(path) as ds:
            if ds.num_trajectories < k:
                raise SystemExit(f"{path} has {ds.num_trajectories} trajectories, need {k}")
            tr = ds.read(list(range(k)), [step, step + 1])
        xs.append(tr[:, 0])
        ys.append(tr[:, 1])
    return torch.cat(xs).contiguous(), torch.cat(ys).contiguous()


def load_model(args):
    """(model, channel_rms or None, data files, description) from --checkpoint / --model."""
    import glob

    from symaudit.training import load_checkpoint

    ckpt = None if args.untrained else args.checkpoint
    if ckpt is None and not args.untrained and os.path.exists(DEFAULT_CHECKPOINT):
        ckpt = DEFAULT_CHECKPOINT
    if ckpt is None:
        print("no checkpoint: an UNTRAINED model (run `make demo` first for a trained one)")
        torch.manual_seed(0)
        model = models.build(args.model, **({"width": args.width} if args.width else {}))
        return model, None, [], f"{args.model} (untrained)"
    model, info = load_checkpoint(ckpt)
    files = (
        sorted(glob.glob(args.data)) if args.data else [p for p in info.split if os.path.exists(p)]
    )
    return model, info.channel_rms, files, f"{ckpt} (epoch {info.epoch})"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def grads_fn(op: MetricOperator, loss: SMSE, model):
    def f(x, y):
        with _eval_math_attention(model):
            return per_sample_gradients(op.forward, op.theta, loss, x, y, chunk_size=8).T

    return f


def run_baseline(op, loss, model, test, elems, lam, rtol, max_iter, pairs):
    """(a) one plain CG solve per (state, element) pair, one RHS at a time."""
    op.damping = lam
    grads = grads_fn(op, loss, model)
    t_total, products, iters, conv = 0.0, 0, [], []
    for j, k in pairs:
        g = elems[k]
        x, y = g(test[0][j : j + 1]), g(test[1][j : j + 1])
        t0 = time.perf_counter()
        b = grads(x, y)[:, 0]
        _, rep = cg(op, b, rtol=rtol, max_iter=max_iter, warn=False)
        t_total += time.perf_counter() - t0
        products += rep.products
        iters.append(rep.iterations[0])
        conv.append(rep.converged[0])
    return {"seconds": t_total, "products": products, "iterations": iters, "converged": conv}


def run_curvlinops(model, loss, test, metric, lam, rtol, max_iter, B, op):
    """(b) curvlinops GGN + lambda I, GPyTorch CG via CGInverseLinearOperator."""
    from curvlinops import CGInverseLinearOperator, GGNLinearOperator
    from curvlinops._torch_base import PyTorchLinearOperator

    params = [p for p in model.parameters() if p.requires_grad]

    class Eye(PyTorchLinearOperator):
        SELF_ADJOINT = True

        def __init__(self) -> None:
            shapes = [tuple(p.shape) for p in params]
            super().__init__(shapes, shapes)

        @property
        def device(self):
            return params[0].device

        @property
        def dtype(self):
            return params[0].dtype

        def _matmat(self, X):
            return X

        def _adjoint(self):
            return self

    counter = {"n": 0}

    class Counted(GGNLinearOperator):
        def _matmat(self, X):
            counter["n"] += X[0].shape[-1]
            return super()._matmat(X)

    with _eval_math_attention(model):
        ggn = Counted(model, loss, params, [metric], check_deterministic=False)
        chi = ggn + Eye() * lam
        inv = CGInverseLinearOperator(chi, tolerance=rtol, max_iter=max_iter)
        X, sec = timed(lambda: inv @ B)
    op.damping = lam
    true = ((op(X) - B).norm(dim=0) / B.norm(dim=0)).tolist()
    return {"seconds": sec, "products": counter["n"], "true_residuals": true}


def parse_rank(v: str) -> int | str:
    return v if v == "auto" else int(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None, help=f"default {DEFAULT_CHECKPOINT} if present")
    ap.add_argument("--untrained", action="store_true", help="ignore any checkpoint")
    ap.add_argument("--data", default=None, help="glob of .h5 files with the test states")
    ap.add_argument("--model", default="unet-small", help="preset when untrained")
    ap.add_argument("--width", type=int, default=None, help="override the UNet width (untrained)")
    ap.add_argument("--resolution", type=int, default=64, help="grid when untrained")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--rtol", type=float, default=5e-3)
    ap.add_argument("--rank", type=parse_rank, default="auto")
    ap.add_argument("--solver", default="block", choices=["block", "cg"])
    ap.add_argument("--baseline-pairs", type=int, default=3)
    ap.add_argument("--curvlinops-columns", type=int, default=2)
    ap.add_argument("--cosine-elements", type=int, default=None, help="default: all")
    ap.add_argument("--ranks", default="", help="e.g. 0,32,64,128: preconditioner study")
    ap.add_argument("--rank-columns", type=int, default=16, help="test columns in the study")
    ap.add_argument("--skip", default="", help="comma list of a,b,cos,d to skip")
    ap.add_argument("--group", default="d4", help="d4, or shifts (32 x-shifts over the grid)")
    ap.add_argument("--out", default="benchmarks/results/influence.json")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    layout = FieldLayout.euler()
    model, rms, files, desc = load_model(args)
    P = sum(p.numel() for p in model.parameters())
    test = file_transitions(files, args.n) if files else transitions(args.n, args.resolution)
    loss = SMSE(rms if rms is not None else channel_rms(test[0], layout))
    res_hw = test[0].shape[-1]
    if args.group == "d4":
        group = groups.Dihedral4(layout)
    else:
        group = groups.Translations(layout, axis="x", shifts=range(0, res_hw, max(1, res_hw // 32)))
    elems = list(group)
    out: dict = {
        "model": desc,
        "trained": "untrained" not in desc,
        "params": P,
        "states": files or "Euler solver, ce-rp, t = 0 -> 0.05",
        "resolution": res_hw,
        "N": args.n,
        "group": args.group,
        "group_size": len(elems),
        "rtol": args.rtol,
        "rank": args.rank,
        "solver": args.solver,
        "threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
    }
    print(f"{desc}: P={P}, {res_hw}^2, N={args.n}, |G|={len(elems)}, threads={out['threads']}")

    # warm-up: the first torch.func calls pay one-off dispatch costs; keep them out of (a)-(d)
    warm = MetricOperator(model, loss, (test[0][:1], test[1][:1]), damping=1.0)
    warm(torch.zeros(warm.num_params, 2))
    grads_fn(warm, loss, model)(test[0][:2], test[1][:2])

    # (c) symaudit, raw + Frobenius only
    kw = dict(rtol=args.rtol, rank=args.rank, solver=args.solver)
    res, t_c = timed(lambda: influence(model, loss, test, group, cosine=False, **kw))
    lam = res.damping
    rep = res.reports["test"]
    sketch_products = res.spectrum.get("nystrom_products", 0)
    out["c"] = {
        "seconds": t_c,
        "timings": res.timings,
        "damping": lam,
        "spectrum": res.spectrum,
        "rank": res.settings["rank"],
        "iterations": rep["iterations"],
        "converged": all(rep["converged"]),
        "max_residual": max(rep["residuals"]),
        "solve_products": rep["products"],
        "sketch_products": sketch_products,
    }
    print("(c)", json.dumps(out["c"], default=str), flush=True)
    op = MetricOperator(model, loss, test, damping=lam)
    B0 = grads_fn(op, loss, model)(*test)

    # (d) floor: N (1 + |G|) per-sample gradients
    def floor():
        grads = grads_fn(op, loss, model)
        grads(*test)
        for g in elems:
            grads(g(test[0]), g(test[1]))

    _, t_d = timed(floor)
    out["d"] = {"seconds": t_d}
    print("(d)", t_d, flush=True)

    # cosine: a full run with the transformed-state solves (or a subset of elements,
    # extrapolated linearly -- an over-estimate with block CG, whose columns share a space)
    if "cos" not in skip:
        k = len(elems) - 1 if args.cosine_elements is None else args.cosine_elements
        sub = elems if k == len(elems) - 1 else elems[: 1 + k]
        rc, t_cos = timed(lambda: influence(model, loss, test, sub, damping=lam, **kw))
        c_rep = rc.reports["cosine"]
        scale = (len(elems) - 1) / k
        out["cosine"] = {
            "elements_timed": k,
            "seconds_total": t_cos,
            "extra_seconds": (t_cos - t_c) * scale if k < len(elems) - 1 else t_cos - t_c,
            "rank": rc.settings["rank"],
            "sketch_products": rc.spectrum.get("nystrom_products", 0),
            "solve_products": rc.reports["test"]["products"] + c_rep["products"],
            "iterations": c_rep["iterations"],
            "converged": rc.all_converged,
            "max_quadratic_form_error": float(rc.quadratic_form_error["transformed"].max()),
        }
        print("(cos)", json.dumps(out["cosine"]), flush=True)

    # (a) baseline on a subset of (state, element) pairs spread over the group, extrapolated
    if "a" not in skip:
        pairs = [(j, j % len(elems)) for j in range(args.baseline_pairs)]
        a = run_baseline(op, loss, model, test, elems, lam, args.rtol, 5000, pairs)
        total_pairs = args.n * len(elems)
        a["pairs_timed"] = pairs
        a["extrapolated_seconds"] = a["seconds"] / len(pairs) * total_pairs
        a["products_per_column"] = a["products"] / len(pairs)
        out["a"] = a
        print("(a)", json.dumps(a), flush=True)

    # (b) curvlinops on a subset of the N test columns, extrapolated linearly
    if "b" not in skip:
        k = args.curvlinops_columns
        b = run_curvlinops(model, loss, test, test, lam, args.rtol, 5000, B0[:, :k], op)
        b["columns_timed"] = k
        b["extrapolated_seconds"] = b["seconds"] / k * args.n
        b["columns_reaching_rtol"] = sum(r <= args.rtol for r in b["true_residuals"])
        out["b"] = b
        print("(b)", json.dumps(b), flush=True)

    # Nyström rank study on the same test columns and damping: products and seconds
    if args.ranks:
        from symaudit.diagnostics.krylov import NystromPreconditioner, block_cg

        solve = block_cg if args.solver == "block" else cg
        op.damping = lam
        study = []
        for r in [int(v) for v in args.ranks.split(",")]:
            t0 = time.perf_counter()
            pc = None
            if r > 0:
                pc = NystromPreconditioner(op.eta, op.num_params, r, lam, dtype=op.dtype)
            _, rr = solve(
                op,
                B0[:, : args.rank_columns],
                rtol=args.rtol,
                max_iter=5000,
                preconditioner=pc,
                warn=False,
            )
            row = {
                "rank": r,
                "smallest_eigenvalue_over_lambda": pc.smallest_eigenvalue / lam if pc else None,
                "solve_products": rr.products,
                "sketch_products": r,
                "max_iterations": max(rr.iterations),
                "converged": rr.all_converged,
                "seconds": time.perf_counter() - t0,
            }
            study.append(row)
            print("(rank)", json.dumps(row), flush=True)
        out["rank_study"] = study

    c_per_col = (rep["products"] + sketch_products) / args.n
    out["summary"] = {
        "c_over_d": t_c / t_d,
        "a_over_c": out["a"]["extrapolated_seconds"] / t_c if "a" in out else None,
        "b_over_c": out["b"]["extrapolated_seconds"] / t_c if "b" in out else None,
        "products_per_column_c_solve_only": rep["products"] / args.n,
        "products_per_column_c_with_sketch": c_per_col,
        "products_per_column_plain_cg": out["a"]["products_per_column"] if "a" in out else None,
    }
    if "a" in out:
        plain = out["a"]["products_per_column"]
        out["summary"]["preconditioned_over_plain"] = (rep["products"] / args.n) / plain
        out["summary"]["with_sketch_over_plain"] = c_per_col / plain
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out["summary"], indent=1))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    warnings.simplefilter("default")
    main()
