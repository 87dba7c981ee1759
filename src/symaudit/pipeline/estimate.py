"""A measured cost model of a study preset: what `symaudit reproduce --preset NAME` will cost.

`measure` times, on the current device and at the preset's real model sizes and resolution,
the units every stage is made of: one Euler step of one trajectory, one optimiser step, one
chi-product column per metric-batch state, one per-sample gradient and one forward pass (and,
with ``flops=True``, counts their floating-point operations). `estimate` multiplies them by the
counts the preset implies -- pure arithmetic, tested against a measured micro run -- and
`Assumptions` holds what cannot be measured in a minute (iterations per solve, sketch rank),
taken from the convergence measured in docs/influence.md.

Counts (per family f, model m, seed s, group G, test batch b, damping d):
- generate: trajectories x Euler steps to t_final (steps ~ t_final / t_probe x steps to a
  short probe time t_probe: the CFL step follows the maximum wave speed, roughly constant).
- train: epochs x floor(train transitions / batch) optimiser steps; one step ~ batch x the
  measured per-sample step (linear in the batch on a CPU; a GPU does better: pessimistic).
- audit, per (m, s, family, b) -- one mini-batch of N trajectories of one family -- and per
  influence computation (each non-translation group alone; all translation groups together
  on the rule-chosen shift set, as `run_audit` does): forward errors over every element x N;
  N |G_inf| per-sample gradients; chi-products: sketch (rank) + spectrum + per damping solve
  columns x (iterations + 1 residual check), each product costing N x (one state's column)
  since the metric batch is the test mini-batch.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from symaudit.pipeline.presets import StudyPreset
from symaudit.training.trainer import streams_by_default

__all__ = ["Assumptions", "ModelCosts", "StageCost", "UnitCosts", "estimate", "measure"]

_F32 = 4  # bytes: datasets, checkpoints and the audit's vectors are float32
_BLOCK_COLUMNS = 128  # influence()'s default block of right-hand sides solved together


@dataclass(frozen=True)
class Assumptions:
    """What the estimate does not measure. Defaults from docs/influence.md (block CG +
    Nyström "auto" at rtol 5e-3 on unet-small, 64^2): 7 block iterations on the trained model,
    15 untrained; paper-style plain CG, one solve per (state, element): 57 iterations."""

    iterations: float = 7.0  # block-CG iterations per solve (each active column: 1 product)
    iterations_untrained: float = 15.0  # the pessimistic end of the range
    baseline_iterations: float = 57.0  # plain CG per right-hand side, no preconditioner
    spectrum_products: int = 18  # power iteration (~10) + Hutchinson (8)

    def sketch_rank(self, columns: int) -> int:
        """Rank "auto" as measured: 64 for 16 raw columns, 128 for 128 cosine columns (then
        capped as `influence` caps it: 2 GiB per P x rank matrix)."""
        return min(1024, max(64, 1 << math.ceil(math.log2(max(columns, 1)))))


@dataclass(frozen=True)
class ModelCosts:
    """Seconds (and FLOPs, 0 if not counted) per unit for one model at the preset's grid."""

    preset: str
    params: int
    train_sample: float  # one sample's share of an optimiser step (forward + backward + Adam)
    chi_column: float  # one chi-product column, per state of the metric batch
    gradient: float  # one per-sample gradient
    forward: float  # one state's share of a batched forward pass
    train_batch: int = 1  # the batch the training step was timed at
    metric_states: int = 1  # the metric batch the chi column, gradients, forward were timed at
    chi_column_flops: float = 0.0
    train_sample_flops: float = 0.0


@dataclass(frozen=True)
class UnitCosts:
    """Everything `measure` found, with the device it ran on."""

    device: str
    dtype: str
    threads: int
    euler_step: float  # seconds per trajectory per Euler step at the preset's resolution
    steps_to_t_final: float  # Euler steps of one trajectory to t_final (probe-extrapolated)
    models: dict[str, ModelCosts] = field(default_factory=dict)
    peak_rss_bytes: int = 0  # of this process after the measurements
    seconds: float = 0.0  # how long measuring took

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UnitCosts:
        """The inverse of `to_dict` (e.g. the "costs" of `symaudit estimate --out`)."""
        models = {k: ModelCosts(**v) for k, v in d["models"].items()}
        return cls(**{**d, "models": models})


@dataclass(frozen=True)
class StageCost:
    """One stage of the study: total device-seconds, disk written and peak memory."""

    stage: str
    detail: str
    count: str
    seconds: float
    disk_bytes: int
    peak_ram_bytes: int
    seconds_high: float | None = None  # the pessimistic end, where an assumption varies
    baseline_seconds: float | None = None  # paper-style plain CG, same operator
    counts: dict[str, float] = field(default_factory=dict)  # the units the seconds multiply


def _timeit(fn: Callable[[], object], min_time: float = 0.5, max_reps: int = 20) -> float:
    """Seconds per call: the mean over repetitions (at least ``min_time`` in all, at most
    ``max_reps``) after one warm-up call."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time or reps >= max_reps:
            return elapsed / reps


def _flops(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


#: batch sizes the units are timed at: per-sample costs fall with the batch up to about here
#: on a CPU (a chi column over 16 states of unet-small cost 0.03 s per state, over one state
#: 0.2 s), and are taken as linear above it (pessimistic on a GPU)
MAX_PROBE_BATCH = 8


def _measure_euler(preset: StudyPreset, device: torch.device) -> tuple[float, float]:
    """Seconds per trajectory-step and steps to t_final, from a run of a batch of trajectories
    of each family to t_final / 20 at the preset's resolution (float64 on ``device``, batched
    as `generate` does)."""
    from symaudit.physics import evolve, initial_conditions

    torch.set_flush_denormal(True)  # as generate does (NOTES.md: denormals slow it >10x)
    per_step, steps = [], []
    t_probe = preset.t_final / 20
    b = min(MAX_PROBE_BATCH, preset.train_trajectories)
    for fam in preset.families:
        ic = initial_conditions.sample(fam, b, preset.resolution, seed=0)
        info: dict = {}
        t0 = time.perf_counter()
        evolve(ic.state.to(device), [t_probe], info=info)
        dt = time.perf_counter() - t0
        n = float(info["steps"].double().max())  # the batch runs until its slowest is done
        per_step.append(dt / (b * max(n, 1.0)))
        steps.append(float(info["steps"].double().mean()) * preset.t_final / t_probe)
    return sum(per_step) / len(per_step), sum(steps) / len(steps)


def _measure_model(
    plan, preset: StudyPreset, metric_states: int, device: torch.device, flops: bool
) -> ModelCosts:
    from symaudit import SMSE, models
    from symaudit.diagnostics._gradients import per_sample_gradients
    from symaudit.diagnostics.metric import MetricOperator, _eval_math_attention

    model = models.build(plan.preset, **plan.overrides).to(device=device, dtype=torch.float32)
    n, b = preset.resolution, min(plan.batch_size, MAX_PROBE_BATCH)
    m = min(metric_states, MAX_PROBE_BATCH)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(max(b, m), 4, n, n, generator=g).add_(0.5).to(device)
    y = x + 0.01 * torch.randn(x.shape, generator=g).to(device)
    loss = SMSE(torch.ones(4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(model(x[:b]), y[:b]).backward()
        opt.step()

    train_sample = _timeit(train_step) / b
    model.eval()
    with torch.no_grad():
        forward = _timeit(lambda: model(x[:m])) / m
    op = MetricOperator(model, loss, (x[:m], y[:m]), damping=1.0)
    v = torch.randn(op.num_params, 1, generator=g).to(device=device, dtype=op.dtype)
    chi_column = _timeit(lambda: op(v), min_time=1.0, max_reps=5) / m
    with _eval_math_attention(model):
        gradient = _timeit(
            lambda: per_sample_gradients(op.forward, op.theta, loss, x[:m], y[:m]),
            min_time=1.0,
            max_reps=5,
        )
    model.train()
    return ModelCosts(
        preset=plan.preset,
        params=op.num_params,
        train_sample=train_sample,
        chi_column=chi_column,
        gradient=gradient / m,
        forward=forward,
        train_batch=b,
        metric_states=m,
        chi_column_flops=_flops(lambda: op(v)) / m if flops else 0.0,
        train_sample_flops=_flops(train_step) / b if flops else 0.0,
    )


def measure(
    preset: StudyPreset,
    *,
    device: str | torch.device = "cpu",
    flops: bool = False,
    progress: Callable[[str], None] | None = None,
) -> UnitCosts:
    """Time the preset's unit costs on ``device`` (the paper preset took 300 s on one loaded
    CPU core, its three models at 128^2; the models get random weights: a trained model
    costs the same per product, it only converges in fewer iterations)."""
    device = torch.device(device)
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    say(f"Euler solver at {preset.resolution}²")
    euler_step, steps = _measure_euler(preset, device)
    costs = {}
    for mp in preset.models:
        if mp.preset in costs:
            continue
        say(f"{mp.preset}: training step, chi-product column, per-sample gradient")
        costs[mp.preset] = _measure_model(mp, preset, states_per_batch(preset), device, flops)
    return UnitCosts(
        device=str(device),
        dtype="float32",
        threads=torch.get_num_threads(),
        euler_step=euler_step,
        steps_to_t_final=steps,
        models=costs,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        seconds=time.perf_counter() - t0,
    )


def states_per_batch(preset: StudyPreset) -> int:
    """States N of one test mini-batch (= the metric batch): per_family of one family."""
    return preset.per_family


def _group(spec: str, resolution: int):
    from symaudit.fields import FieldLayout
    from symaudit.groups.spec import from_spec

    # boosts need a time step only to act; the element count does not depend on it
    return from_spec(spec, FieldLayout.euler(), resolution=resolution, dt=1.0)


def estimate(
    preset: StudyPreset, costs: UnitCosts, assumptions: Assumptions | None = None
) -> list[StageCost]:
    """Device-seconds, disk and peak memory per stage of ``preset`` from measured ``costs``."""
    a = assumptions or Assumptions()
    fams = len(preset.families)
    cells = preset.resolution**2
    snap_bytes = 4 * cells * _F32
    trajectories = (preset.train_trajectories + preset.test_trajectories) * fams
    stages = [
        StageCost(
            stage="generate",
            detail=f"{trajectories} trajectories of {preset.snapshots} snapshots",
            count=f"{trajectories} x {costs.steps_to_t_final:.0f} Euler steps",
            seconds=trajectories * costs.steps_to_t_final * costs.euler_step,
            disk_bytes=trajectories * preset.snapshots * snap_bytes,
            # a batch of 8 float64 trajectories with its RK stages: ~ 16 copies of each state
            peak_ram_bytes=16 * 2 * 8 * snap_bytes,
            counts={"trajectories": trajectories, "euler_steps": costs.steps_to_t_final},
        )
    ]
    per_file = preset.train_trajectories
    n_val = min(per_file - 1, math.ceil(preset.val_fraction * per_file))  # data.transitions
    train_traj = (per_file - (n_val if preset.val_fraction > 0 else 0)) * fams
    train_transitions = train_traj * (preset.snapshots - 1)
    in_memory = preset.train_trajectories * fams * preset.snapshots * snap_bytes
    n = states_per_batch(preset)  # one transition per test trajectory
    dampings = len(preset.dampings)
    # TrainConfig.data_loading "auto" streams above a quarter of this machine's RAM: then
    # two batches of (input, target) are held, not the data set
    streamed = streams_by_default(in_memory)
    for mp in preset.models:
        mc = costs.models[mp.preset]
        runs = len(preset.seeds)
        steps = mp.epochs * (train_transitions // mp.batch_size)  # the trainer drops the rest
        data_ram = 2 * 2 * mp.batch_size * snap_bytes if streamed else in_memory
        stages.append(
            StageCost(
                stage="train",
                detail=f"{mp.preset} x {runs} seeds ({mc.params:,} parameters)",
                count=f"{runs} x {steps:,} steps of batch {mp.batch_size}",
                seconds=runs * steps * mp.batch_size * mc.train_sample,
                disk_bytes=runs * 3 * mc.params * _F32,  # weights + Adam's two moments
                peak_ram_bytes=data_ram + 4 * mc.params * _F32,
                counts={
                    "runs": runs,
                    "optimizer_steps": steps,
                    "transitions": train_transitions,
                    "in_memory_bytes": in_memory,
                    "streamed": streamed,
                },
            )
        )
        audits = runs * fams * preset.test_batches  # one mini-batch of one family each
        for label, errors, influence in _audit_clusters(preset, mp.audit_groups(preset)):
            stages.append(
                _audit_stage(
                    mp.preset, mc, label, errors, influence, n, audits, dampings, preset, a
                )
            )
    return stages


def _audit_clusters(preset: StudyPreset, audited: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(label, forward-error elements, influence elements) per influence computation of one
    mini-batch, by `run_audit`'s own rules: its clusters (each non-translation group alone,
    the translation groups together), influence elements (the rule-chosen shifts) and their
    union by name; forward errors over every element."""
    from symaudit.diagnostics.audit import _influence_elements, _solve_clusters
    from symaudit.pipeline.run import _influence_shifts

    shifts = _influence_shifts(preset)
    out = []
    built = {spec: _group(spec, preset.resolution) for spec in audited}
    for cluster in _solve_clusters(built):
        groups = {spec: built[spec] for spec in cluster}
        union = {e.name for g in groups.values() for e in _influence_elements(g, shifts)}
        out.append(("+".join(cluster), sum(len(g) for g in groups.values()), len(union)))
    return out


def _audit_stage(
    model: str,
    mc: ModelCosts,
    label: str,
    errors: int,
    size: int,
    n: int,
    audits: int,
    dampings: int,
    preset: StudyPreset,
    a: Assumptions,
) -> StageCost:
    """One influence computation's audits of one model: ``audits`` mini-batches of N = n
    states, forward errors over ``errors`` elements, influence over ``size``."""
    columns = n + (n * (size - 1) if preset.cosine else 0)
    rank = preset.rank if isinstance(preset.rank, int) else a.sketch_rank(columns)
    # influence's own caps: a P x rank sketch of at most 2 GiB, blocks of <= 128 columns
    rank = max(1, min(rank, 2**31 // (mc.params * _F32)))
    block = min(columns, _BLOCK_COLUMNS)
    product = n * mc.chi_column  # metric batch = the N test states
    fixed = (rank + a.spectrum_products) * product + n * size * mc.gradient
    fixed += n * errors * mc.forward  # forward errors over every element
    solve = dampings * columns * product

    def total(iterations: float) -> float:
        return audits * (fixed + solve * (iterations + 1))

    # paper-style: one plain CG per (state, element) pair, no sketch, same operator
    baseline = audits * dampings * n * size * a.baseline_iterations * product
    vectors = mc.params * _F32 * (rank + 4 * block)  # sketch + block CG's X, R, D, AD
    return StageCost(
        stage="audit",
        detail=f"{model} {label} (|G| = {errors}, influence on {size})",
        count=(f"{audits} x N={n}: {columns} columns x {dampings} dampings, sketch rank {rank}"),
        seconds=total(a.iterations),
        seconds_high=total(a.iterations_untrained),
        baseline_seconds=baseline,
        disk_bytes=audits * (errors * n * 8 * 2 + dampings * size * n * n * 8 * 2 + 4096),
        peak_ram_bytes=vectors,
        counts={
            "audits": audits,
            "states": n,
            "elements": size,
            "error_elements": errors,
            "columns": columns,
            "gradients": n * size,
            "sketch_rank": rank,
        },
    )
