"""Numbers of the report: audit directories pooled per model, the paper's findings F1–F5
judged on them, and a one-paragraph reading of every figure.

Pooling: for each model preset, the per-state values of every seed and every test
mini-batch are concatenated (the paper reports quantile ranges over seeds and mini-batches).
Influence diagonals are M^g_ii, i.e. the influence of a test state on its own image g x_i;
"Frobenius" is the paper's M^g / ||M^g||_F per mini-batch, "cosine" the full
M^g_ii / (||grad C_x||_{chi^-1} ||grad C_gx||_{chi^-1}).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from symaudit.diagnostics.audit import AuditRecord, load_audit

__all__ = [
    "GroupData",
    "ModelData",
    "StudyData",
    "collect",
    "findings",
    "group_key",
    "readings",
    "unique_dirs",
]

ARCH_LABEL = {"unet": "UNet", "vit": "ViT", "gcnn": "G-CNN"}
_ARCH_ORDER = {"unet": 0, "vit": 1, "gcnn": 2}
#: groups the paper's figures and findings read; every other audited group is reported under
#: its own spec text (`group_key`)
GROUP_KINDS = ("d4", "shift-x", "shift-y")


def group_key(spec_text: str, group: dict) -> str:
    """Where an audited group goes in the report, from its kind (`Group.spec`, as stored in
    each result's ``group`` description), not from parsing the spec text: the full D4 is
    "d4", translations along one axis "shift-x"/"shift-y" (any stride), and every other group
    (subgroups such as c4, products, boosts, shift-xy, arbitrary shift sets) its spec text."""
    spec = group.get("spec", {})
    kind = spec.get("kind")
    if kind == "d4":
        return "d4"
    if kind == "translations" and spec.get("axis") in ("x", "y"):
        return f"shift-{spec['axis']}"
    return str(spec.get("text") or spec_text)


@dataclass
class GroupData:
    """One model's pooled values for one group kind.

    Errors: per element of the whole audited group (rows, ``elements`` / ``shifts``) and pooled
    state (columns). Influence: per element of the influence subset (``inf_elements`` /
    ``inf_shifts``; for translations a rule-chosen set of shifts, `symaudit.diagnostics.shifts`)
    and per damping (``dampings``, the audit's relative dampings in order, the first the main
    one): the diagonal M^g_ii / ||M^g||_F per state, and the off-diagonal entries
    M^g_ij / ||M^g||_F (i != j) of every mini-batch.
    """

    spec: str
    elements: list[str]
    shifts: list[int]  # translations: the shift of each element in cells; else []
    error: np.ndarray  # (|G|, N) E_g
    defect: np.ndarray  # (|G|, N) D_g
    families: list[str] = field(default_factory=list)  # (N,) family of each pooled state
    inf_elements: list[str] = field(default_factory=list)
    inf_shifts: list[int] = field(default_factory=list)
    dampings: list[str] = field(default_factory=list)
    frobenius_at: list[np.ndarray] = field(default_factory=list)  # per damping (|Gi|, N)
    offdiag_at: list[np.ndarray] = field(default_factory=list)  # per damping (|Gi|, M)
    off_families: list[str] = field(default_factory=list)  # (M,) family of each entry
    # per damping: the paper's average over mini-batches of M^g / ||M^g||_F, (|Gi|, n, n)
    # (None if the mini-batches differ in size)
    paper_mean_at: list[np.ndarray | None] = field(default_factory=list)
    kappa_at: list[float] = field(default_factory=list)  # per damping: max 1 + top eig / lambda
    cosine: np.ndarray | None = None  # (|Gi|, N) main damping; None without cosine
    solver: list[dict] = field(default_factory=list)

    @property
    def frobenius(self) -> np.ndarray:
        return self.frobenius_at[0]

    @property
    def offdiag(self) -> np.ndarray:
        return self.offdiag_at[0]

    def at(self, j: int) -> GroupData:
        """The same data with damping ``j`` as the main one (cosine only exists for 0)."""
        return replace(
            self,
            frobenius_at=[self.frobenius_at[j]],
            offdiag_at=[self.offdiag_at[j]],
            paper_mean_at=[self.paper_mean_at[j]],
            kappa_at=[self.kappa_at[j]],
            dampings=[self.dampings[j]],
            cosine=self.cosine if j == 0 else None,
        )


@dataclass
class ModelData:
    preset: str
    architecture: str
    seeds: list[int]
    audits: list[str]
    groups: dict[str, GroupData]
    test_errors: dict[int, dict]  # seed -> test_errors.json "all" entry
    family_errors: dict[int, dict] = field(default_factory=dict)  # seed -> {family: entry}
    period: int | None = None  # natural shift period (ViT patch, UNet down-sampling factor)
    timing: dict[int, dict] = field(default_factory=dict)  # seed -> audit wall times (s)

    @property
    def label(self) -> str:
        return f"{ARCH_LABEL.get(self.architecture, self.architecture)} ({self.preset})"


@dataclass
class StudyData:
    models: list[ModelData]
    resolution: list[int]
    # seed -> the study restricted to that seed's audits; empty when all audits share a seed
    per_seed: dict[int, StudyData] = field(default_factory=dict)

    def by_arch(self, arch: str) -> ModelData | None:
        return next((m for m in self.models if m.architecture == arch), None)

    @property
    def dampings(self) -> list[str]:
        """The relative dampings every audited group has (the first is the main one)."""
        lists = [g.dampings for m in self.models for g in m.groups.values()]
        return min(lists, key=len) if lists else []

    def at(self, j: int) -> StudyData:
        """The study with damping ``j`` as the main one."""
        models = [replace(m, groups={k: g.at(j) for k, g in m.groups.items()}) for m in self.models]
        return StudyData(models, self.resolution)


def _solver_rows(rec: AuditRecord, spec: str) -> list[dict]:
    """One row per mini-batch and damping: every CG column of that influence computation
    (test and cosine columns are solved together) and the solve's wall time."""
    rows = []
    for piece, results in zip(rec.meta["pieces"][spec], _per_damping(rec, spec), strict=True):
        for res in results:
            reps = [r for r in res.reports.values() if r["iterations"]]
            if not reps:
                continue
            its = [i for r in reps for i in r["iterations"]]
            rows.append(
                {
                    "seed": rec.seed,
                    "family": piece.get("family", "all"),
                    "batch": piece.get("batch", 0),
                    "columns": len(its),
                    "rtol": reps[0]["rtol"],
                    "max_residual": max(x for r in reps for x in r["residuals"]),
                    # eps (||chi|| ||u|| / ||b|| + 1): how accurate each residual is (krylov.py);
                    # None for audits written before it was recorded
                    "max_attainable": max(
                        (x for r in reps for x in r.get("attainable", [])), default=None
                    ),
                    "median_iterations": float(np.median(its)),
                    "max_iterations": int(max(its)),
                    "converged": int(sum(sum(r["converged"]) for r in reps)),
                    # wall time of this damping's CG solves (not the per-column report times,
                    # which each carry their whole block's time)
                    "seconds": float(res.timings.get("solve", 0.0)),
                    "damping": res.damping,
                    "num_params": res.settings.get("num_params"),
                }
            )
    return rows


def _per_damping(rec: AuditRecord, spec: str) -> list[list]:
    """Per mini-batch, its influence results in damping order (main, then the sweep)."""
    return [[inf, *sw] for inf, sw in zip(rec.influence[spec], rec.sweep[spec], strict=True)]


def _damping_labels(rec: AuditRecord) -> list[str]:
    st = rec.meta["settings"]
    return [str(d) for d in [st.get("damping", "auto"), *st.get("damping_sweep", [])]]


def _piece_family(rec: AuditRecord, spec: str, k: int) -> str:
    return str(rec.meta["pieces"][spec][k].get("family", "all"))


def _off_diagonal(m: np.ndarray) -> np.ndarray:
    """`(|G|, n, n)` → the `(|G|, n(n-1))` entries with i != j (row-major)."""
    n = m.shape[-1]
    return m[:, ~np.eye(n, dtype=bool)]


def _shift_of(eq) -> dict[str, int]:
    """Element name → its shift along the group's axis (translations only)."""
    spec = eq.group.get("spec", {})
    return dict(zip(eq.elements, spec.get("shifts", []), strict=False))


def _accumulate(acc: dict, rec: AuditRecord, spec: str) -> None:
    eqs = rec.equivariance[spec]
    for k, (eq, results) in enumerate(zip(eqs, _per_damping(rec, spec), strict=True)):
        fam = _piece_family(rec, spec, k)
        n = eq.error.shape[1]
        acc["fam"] += [fam] * n
        acc["e"].append(eq.error.numpy())
        acc["d"].append(eq.defect.numpy())
        frob = [r.frobenius.numpy() for r in results]
        acc["f"].append([np.diagonal(f, axis1=1, axis2=2) for f in frob])
        acc["o"].append([_off_diagonal(f) for f in frob])
        acc["m"].append(frob)
        acc["ofam"] += [fam] * (n * (n - 1))
        acc["k"].append([1 + r.spectrum.get("top_eigenvalue", np.nan) / r.damping for r in results])
        main = results[0]
        acc["c"].append(
            main.diagonal("cosine").numpy() if main.transformed_norms is not None else None
        )


def _finish(g: GroupData, acc: dict) -> None:
    g.error = np.concatenate(acc["e"], axis=1)
    g.defect = np.concatenate(acc["d"], axis=1)
    g.families = acc["fam"]
    nd = min(len(f) for f in acc["f"])
    g.dampings = g.dampings[:nd]
    g.frobenius_at = [np.concatenate([f[j] for f in acc["f"]], axis=1) for j in range(nd)]
    g.offdiag_at = [np.concatenate([o[j] for o in acc["o"]], axis=1) for j in range(nd)]
    g.off_families = acc["ofam"]
    sizes = {m[0].shape for m in acc["m"]}
    g.paper_mean_at = [
        np.mean([m[j] for m in acc["m"]], axis=0) if len(sizes) == 1 else None for j in range(nd)
    ]
    g.kappa_at = [float(np.nanmax([k[j] for k in acc["k"]])) for j in range(nd)]
    g.cosine = None if any(c is None for c in acc["c"]) else np.concatenate(acc["c"], axis=1)


def _timing(rec: AuditRecord) -> dict[str, float]:
    """Wall times of one audit (s): CG solves (all dampings) and whole influence sweeps."""
    solve = sweep = 0.0
    for spec in rec.influence:
        for results in _per_damping(rec, spec):
            solve += sum(float(r.timings.get("solve", 0.0)) for r in results)
            sweep += float(results[0].settings.get("audit", {}).get("sweep_seconds", 0.0))
    return {"solve_seconds": solve, "influence_seconds": sweep}


def unique_dirs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """``dirs`` in order, each directory once (``report A A`` must not count A twice)."""
    seen: dict[Path, Path] = {}
    for d in dirs:
        seen.setdefault(Path(d).resolve(), Path(d))
    return list(seen.values())


def _check_distinct_checkpoints(records: list) -> None:
    """Two audits of one checkpoint are one model seed, not two: pooling them would count
    its states twice under a duplicated seed."""
    first: dict[str, Path] = {}
    for rec in records:
        sha = rec.meta.get("run", {}).get("checkpoint_sha256")
        if sha is None:
            continue
        if sha in first:
            raise ValueError(
                f"{first[sha]} and {rec.path} audit the same checkpoint ({rec.model}, seed "
                f"{rec.seed}): report one of them (audit all groups in one audit to combine)"
            )
        first[sha] = rec.path


def collect(audit_dirs: Sequence[str | os.PathLike]) -> StudyData:
    """Load audits and pool them per model preset (models ordered UNet, ViT, G-CNN). With
    several seeds, ``per_seed`` also holds each seed's audits pooled alone, so a verdict can
    be checked seed by seed."""
    records = [load_audit(d) for d in unique_dirs(audit_dirs)]
    if not records:
        raise ValueError("no audit directories given")
    _check_distinct_checkpoints(records)
    study = _pool(records)
    seeds = sorted({rec.seed for rec in records})
    if len(seeds) > 1:
        study.per_seed = {s: _pool([r for r in records if r.seed == s]) for s in seeds}
    return study


def _pool(records: list[AuditRecord]) -> StudyData:
    from symaudit.diagnostics.shifts import natural_period

    models: dict[str, ModelData] = {}
    parts: dict[tuple[str, str], dict[str, list]] = {}
    resolution: list[int] = []
    for rec in records:
        m = models.setdefault(
            rec.model,
            ModelData(
                rec.model,
                rec.architecture,
                [],
                [],
                {},
                {},
                period=natural_period(rec.meta["model"]),
            ),
        )
        m.seeds.append(rec.seed)
        m.audits.append(str(rec.path))
        m.test_errors[rec.seed] = rec.test_errors["all"]
        m.family_errors[rec.seed] = {k: v for k, v in rec.test_errors.items() if k != "all"}
        m.timing[rec.seed] = _timing(rec)
        for spec in rec.equivariance:
            eqs, infs = rec.equivariance[spec], rec.influence[spec]
            kind = group_key(spec, eqs[0].group)
            if kind in m.groups and m.groups[kind].elements != list(eqs[0].elements):
                kind = spec  # e.g. shift-x and shift-x:8 in one audit: keep them apart
            resolution = eqs[0].settings.get("resolution", resolution)
            acc = parts.setdefault(
                (rec.model, kind),
                {
                    "e": [],
                    "d": [],
                    "f": [],
                    "o": [],
                    "m": [],
                    "k": [],
                    "c": [],
                    "fam": [],
                    "ofam": [],
                },
            )
            _accumulate(acc, rec, spec)
            g = m.groups.get(kind)
            if g is None:
                spec_info = eqs[0].group.get("spec", {})
                one_axis = spec_info.get("kind") == "translations" and spec_info.get("axis") != "xy"
                shift = _shift_of(eqs[0]) if one_axis else {}
                g = m.groups[kind] = GroupData(
                    spec,
                    list(eqs[0].elements),
                    [shift[e] for e in eqs[0].elements] if shift else [],
                    np.empty(0),
                    np.empty(0),
                    inf_elements=list(infs[0].elements),
                    inf_shifts=[shift[e] for e in infs[0].elements] if shift else [],
                    dampings=_damping_labels(rec),
                )
            g.solver.extend(_solver_rows(rec, spec))
    for (name, kind), acc in parts.items():
        _finish(models[name].groups[kind], acc)
    ordered = sorted(models.values(), key=lambda m: (_ARCH_ORDER.get(m.architecture, 9), m.preset))
    return StudyData(ordered, list(resolution))


def _med(x: np.ndarray) -> float:
    return float(np.median(x))


def _iqr(x: np.ndarray) -> float:
    q = np.quantile(x, [0.25, 0.75])
    return float(q[1] - q[0])


def _group_summary(kind: str, g: GroupData) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "spec": g.spec,
        "elements": g.elements,
        "shifts": g.shifts,
        "median_error": [_med(r) for r in g.error],
        "q10_error": [float(np.quantile(r, 0.1)) for r in g.error],
        "q90_error": [float(np.quantile(r, 0.9)) for r in g.error],
        "max_error": [float(r.max()) for r in g.error],
        "median_defect": [_med(r) for r in g.defect],
        "max_defect": [float(r.max()) for r in g.defect],
        "num_states": int(g.error.shape[1]),
        "influence_elements": g.inf_elements,
        "influence_shifts": g.inf_shifts,
        "dampings": g.dampings,
        "median_frobenius": [[_med(r) for r in f] for f in g.frobenius_at],
        # None for mini-batches of one state (no pair i != j)
        "median_offdiagonal": [[_med(r) if r.size else None for r in o] for o in g.offdiag_at],
        # the paper's statistic: mean over mini-batches of M^g / ||M^g||_F, then the mean of
        # its diagonal and of its off-diagonal entries per element
        "paper_mean_diagonal": [
            None if pm is None else np.diagonal(pm, axis1=1, axis2=2).mean(1).tolist()
            for pm in g.paper_mean_at
        ],
        "paper_mean_offdiagonal": [
            None if pm is None or pm.shape[-1] < 2 else _off_diagonal(pm).mean(1).tolist()
            for pm in g.paper_mean_at
        ],
        "median_cosine": None if g.cosine is None else [_med(r) for r in g.cosine],
    }
    if kind == "d4":
        fam = np.asarray(g.families)
        entry["median_untransformed_error"] = _med(g.error[0])
        entry["median_d4_averaged_error"] = _med(g.error.mean(0))
        entry["family_median_untransformed_error"] = {
            f: _med(g.error[0, fam == f]) for f in sorted(set(g.families))
        }
        entry["family_median_d4_averaged_error"] = {
            f: _med(g.error.mean(0)[fam == f]) for f in sorted(set(g.families))
        }
    return entry


def summary(study: StudyData) -> dict[str, Any]:
    """Every number the report shows, per model (medians and quantiles over pooled states)."""
    out: dict[str, Any] = {}
    for m in study.models:
        s: dict[str, Any] = {
            "architecture": m.architecture,
            "period": m.period,
            "seeds": m.seeds,
            "audit_seconds": {str(k): v for k, v in m.timing.items()},
            "test_one_step": {str(k): v["one_step"] for k, v in m.test_errors.items()},
            "persistence_one_step": {
                str(k): v["persistence_one_step"] for k, v in m.test_errors.items()
            },
            "family_one_step": {
                str(k): {f: e["one_step"] for f, e in v.items()} for k, v in m.family_errors.items()
            },
            "family_persistence_one_step": {
                str(k): {f: e["persistence_one_step"] for f, e in v.items()}
                for k, v in m.family_errors.items()
            },
        }
        for kind, g in m.groups.items():
            s[kind] = _group_summary(kind, g)
        out[m.preset] = s
    return out


def _fam_mask(g: GroupData, n: int, fam: str, off: bool = False) -> np.ndarray:
    labels = g.off_families if off else g.families
    return np.asarray(labels) == fam if labels else np.full(n, fam == "all")


def _by_family(g: GroupData, values: np.ndarray) -> dict[str, float]:
    """Median of per-state ``values`` `(N,)` over each family's states."""
    fam = np.asarray(g.families) if g.families else np.full(values.shape[-1], "all")
    return {f: _med(values[fam == f]) for f in sorted(set(fam.tolist()))}


def _family_rows(g: GroupData, values: np.ndarray, how=np.median) -> dict[str, np.ndarray]:
    """Per family, ``how`` (median) over its states of ``values`` `(|G|, N)`: `(|G|,)` each."""
    fam = np.asarray(g.families) if g.families else np.full(values.shape[-1], "all")
    return {f: how(values[:, fam == f], axis=1) for f in sorted(set(fam.tolist()))}


def _status(ok: bool | None) -> str:
    return "not testable" if ok is None else ("reproduced" if ok else "not reproduced")


def _family_status(per: dict[str, bool]) -> str:
    """reproduced in every family, partly (in some), or not (in none)."""
    k = sum(per.values())
    if per and k == len(per):
        return "reproduced"
    return f"partly reproduced ({k}/{len(per)} families)" if k else "not reproduced"


def _untestable(fid: str, claim: str, why: str) -> dict[str, str]:
    return dict(id=fid, claim=claim, criterion=why, numbers="-", status=_status(None), dampings="-")


def _verdicts(per: dict[str, bool]) -> str:
    return ", ".join(f"{f} {'yes' if ok else 'no'}" for f, ok in per.items())


def _pair(study: StudyData, kind: str) -> tuple[GroupData, GroupData] | None:
    u, v = study.by_arch("unet"), study.by_arch("vit")
    if u is None or v is None or kind not in u.groups or kind not in v.groups:
        return None
    return u.groups[kind], v.groups[kind]


_CLAIMS = {
    "F1": "The ViT beats the UNet on untransformed test data.",
    "F2": "The ViT's advantage vanishes on D4-transformed inputs (it degenerates to the "
    "UNet's level).",
    "F3": "ViT D4 influence is near zero; the UNet's is larger and more variable.",
    "F4": "Along translations the ViT's typical error stays below the UNet's, but exceptional "
    "inputs produce isolated spikes.",
    "F5": "The exactly equivariant control has zero defect and constant influence.",
    "F6": "Translation influence: the UNet's is larger than the ViT's and periodic with its "
    "down-sampling factor; the ViT's decays away from zero shift, its periodic part suppressed.",
    "F7": "Horizontal-vertical anisotropy: vertical shifts overlap more than horizontal ones.",
    "F8": "Some error peaks along translations coincide with influence resonances, others do not.",
}
#: F2: "vanished" = the ViT's transformed-input error is at least this fraction of the UNet's
VANISH = 0.9
#: F4: the ViT's spike index must exceed the UNet's by this factor
SPIKE = 1.1
#: F8: level of the paired sign test that makes a local maximum of a profile a peak
PEAK_LEVEL = 0.05


def _f1_f2(study: StudyData) -> list[dict[str, str]]:
    pair = _pair(study, "d4")
    if pair is None:
        return [
            _untestable(f, _CLAIMS[f], "needs a UNet and a ViT audited on d4") for f in ("F1", "F2")
        ]
    du, dv = pair
    ue, ve = _by_family(du, du.error[0]), _by_family(dv, dv.error[0])
    ut, vt = _by_family(du, du.error[1:].mean(0)), _by_family(dv, dv.error[1:].mean(0))
    fams = [f for f in ue if f in ve]
    f1 = {f: ve[f] < ue[f] for f in fams}
    f2 = {f: f1[f] and vt[f] >= VANISH * ut[f] for f in fams}
    r_e = "; ".join(f"{f}: ViT {ve[f]:.4g} / UNet {ue[f]:.4g} = {ve[f] / ue[f]:.3f}" for f in fams)
    r_t = "; ".join(f"{f}: ViT {vt[f]:.4g} / UNet {ut[f]:.4g} = {vt[f] / ut[f]:.3f}" for f in fams)
    return [
        dict(
            id="F1",
            claim=_CLAIMS["F1"],
            criterion="per family: median E_e(ViT) < median E_e(UNet) (first step)",
            numbers=f"median E_e {r_e}. Holds: {_verdicts(f1)}",
            status=_family_status(f1),
            dampings="independent of λ",
        ),
        dict(
            id="F2",
            claim=_CLAIMS["F2"],
            criterion=f"per family: F1 holds and median over states of mean_(g≠e) E_g(ViT) "
            f">= {VANISH} x the UNet's (the advantage is gone, to within {1 - VANISH:.0%})",
            numbers=f"median mean_(g≠e) E_g {r_t}. Holds: {_verdicts(f2)}",
            status=_family_status(f2),
            dampings="independent of λ",
        ),
    ]


def _f3(study: StudyData) -> tuple[dict[str, bool], str] | None:
    pair = _pair(study, "d4")
    if pair is None:
        return None
    du, dv = pair
    per, txt = {}, []
    for f in sorted(set(du.families) & set(dv.families)):
        fu = du.frobenius[1:, _fam_mask(du, du.error.shape[1], f)].ravel()
        fv = dv.frobenius[1:, _fam_mask(dv, dv.error.shape[1], f)].ravel()
        mu, mv = _med(np.abs(fu)), _med(np.abs(fv))
        iu, iv = _iqr(fu), _iqr(fv)
        per[f] = mv < mu and iv < iu
        txt.append(f"{f}: ViT {mv:.3g} (IQR {iv:.3g}), UNet {mu:.3g} (IQR {iu:.3g})")
    return per, "median |M^g_ii / ||M^g||_F| over g ≠ e " + "; ".join(txt)


def _shift_pairs(study: StudyData):
    """(kind, UNet group, ViT group) for each translation axis audited for both models."""
    for kind in ("shift-x", "shift-y"):
        pair = _pair(study, kind)
        if pair is not None:
            yield kind, *pair


def _f4(study: StudyData) -> dict[str, str]:
    per, txt = {}, []
    for kind, gu, gv in _shift_pairs(study):
        # per family: typical error = median over shifts of the per-shift median over states;
        # spike index = max over shifts of the per-shift maximum over states / typical
        mu, mv = _family_rows(gu, gu.error), _family_rows(gv, gv.error)
        xu, xv = _family_rows(gu, gu.error, np.max), _family_rows(gv, gv.error, np.max)
        for f in sorted(set(mu) & set(mv)):
            tu, tv = float(np.median(mu[f])), float(np.median(mv[f]))
            su, sv = float(xu[f].max() / tu), float(xv[f].max() / tv)
            ok = tv < tu and sv > SPIKE * su
            per[f] = per.get(f, False) or ok
            s_at = gv.shifts[int(np.argmax(xv[f]))]
            txt.append(
                f"{kind} {f}: typical ViT {tv:.3g} vs UNet {tu:.3g}; spike index ViT {sv:.3g} "
                f"(at shift {s_at}) vs UNet {su:.3g}"
            )
    if not per:
        return _untestable("F4", _CLAIMS["F4"], "needs a UNet and a ViT audited on shifts")
    return dict(
        id="F4",
        claim=_CLAIMS["F4"],
        criterion="per family, on either shift axis (errors at every shift): the ViT's typical "
        "error (median over shifts of the per-shift median over states) is below the UNet's, "
        f"and its spike index (max over shifts of the per-shift maximum over states / typical) "
        f"exceeds the UNet's by > {SPIKE - 1:.0%}",
        numbers="; ".join(txt) + f". Holds: {_verdicts(per)}",
        status=_family_status(per),
        dampings="independent of λ",
    )


def _f5(study: StudyData) -> tuple[bool, str] | None:
    gcnn = study.by_arch("gcnn")
    if gcnn is None or not gcnn.groups:
        return None
    dmax = max(float(g.defect.max()) for g in gcnn.groups.values())
    emed = max(_med(g.error[0]) for g in gcnn.groups.values())
    # influence constancy: grad C_gx = grad C_x exactly for an exactly equivariant model, so
    # M^g_ii - M^e_ii is float32 rounding of the gradients (~1e-6 relative) amplified by at
    # most the condition number kappa = 1 + lambda_max / lambda of chi
    spread, tol = 0.0, 0.0
    for g in gcnn.groups.values():
        vals = g.cosine if g.cosine is not None else g.frobenius
        ref = np.abs(vals[:1]).clip(1e-300)
        spread = max(spread, float((np.abs(vals - vals[:1]) / ref).max()))
        tol = max(tol, 1e-6 * g.kappa_at[0])
    ok = dmax <= 1e-6 * max(emed, 1e-12) + 1e-9 and spread <= tol
    return ok, (
        f"max D_g {dmax:.3g} (median E_e {emed:.3g}); max relative |M^g_ii - M^e_ii| "
        f"{spread:.3g} (tolerance 1e-6 κ = {tol:.3g})"
    )


def _aligned(shifts: list[int], p: int | None) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(shifts)
    nz = s != 0
    if not p:
        return nz & False, nz
    return nz & (s % p == 0), nz & (s % p != 0)


def _contrast(vals: np.ndarray, shifts: list[int], p: int | None) -> float:
    """mean over non-zero shifts aligned with p / mean over non-aligned ones."""
    al, na = _aligned(shifts, p)
    if not al.any() or not na.any():
        return float("nan")
    return float(vals[al].mean() / max(vals[na].mean(), 1e-300))


def _f6(study: StudyData) -> tuple[dict[str, bool], str] | None:
    per, txt = {}, []
    pu = study.by_arch("unet").period if study.by_arch("unet") else None
    pv = study.by_arch("vit").period if study.by_arch("vit") else None
    for kind, gu, gv in _shift_pairs(study):
        mu, mv = _family_rows(gu, gu.frobenius), _family_rows(gv, gv.frobenius)
        s = gu.inf_shifts
        nz = np.asarray(s) != 0
        for f in sorted(set(mu) & set(mv)):
            lu, lv = float(np.median(mu[f][nz])), float(np.median(mv[f][nz]))
            cu, cv = _contrast(mu[f], s, pu), _contrast(mv[f], gv.inf_shifts, pv)
            decay = float(mv[f][~nz].mean()) > float(np.median(mv[f][nz]))
            ok = lu > lv and cu > 1 and decay and cv < cu
            per[f] = per.get(f, True) and ok
            txt.append(
                f"{kind} {f}: median over s≠0 UNet {lu:.3g} vs ViT {lv:.3g}; aligned/non-aligned "
                f"UNet {cu:.3g} (p={pu}), ViT {cv:.3g} (p={pv}); ViT s=0 "
                f"{float(mv[f][~nz].mean()):.3g} vs s≠0 {lv:.3g}"
            )
    if not per:
        return None
    return per, "; ".join(txt)


def _f7(study: StudyData) -> tuple[dict[str, bool], str] | None:
    per, txt = {}, []
    for m in (study.by_arch("unet"), study.by_arch("vit")):
        if m is None or "shift-x" not in m.groups or "shift-y" not in m.groups:
            return None
        gx, gy = m.groups["shift-x"], m.groups["shift-y"]
        rx, ry = _family_rows(gx, gx.frobenius), _family_rows(gy, gy.frobenius)
        nzx, nzy = np.asarray(gx.inf_shifts) != 0, np.asarray(gy.inf_shifts) != 0
        for f in sorted(set(rx) & set(ry)):
            hx, vy = float(np.median(rx[f][nzx])), float(np.median(ry[f][nzy]))
            per[f] = per.get(f, True) and vy > hx
            txt.append(
                f"{ARCH_LABEL[m.architecture]} {f}: vertical {vy:.3g} vs horizontal {hx:.3g}"
            )
    return per, "median over s≠0 of the per-shift median M^g_ii/||M^g||_F: " + "; ".join(txt)


def _sign_p(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided paired sign-test p-value of a > b over states `(N,)`; ties count against."""
    from scipy.stats import binomtest

    return float(binomtest(int((a > b).sum()), a.size, 0.5, alternative="greater").pvalue)


def _peaks(rows: np.ndarray, keep: np.ndarray) -> tuple[set[int], set[int]]:
    """Peaks of the per-shift median of ``rows`` `(S, N)` (N states), indices among ``keep``:
    (significant, candidates). A candidate is a strict local maximum of the medians above
    their median; it is significant if each neighbour is below it in most states (paired
    sign test at level PEAK_LEVEL). A maximum of the median that the states do not share is
    the median's sampling noise, not a feature of the model's profile."""
    idx = np.flatnonzero(keep)
    v = rows[idx]
    med = np.median(v, axis=1)
    level = np.median(med)
    cand, sig = set(), set()
    for j in range(len(idx)):
        nb = [k for k in (j - 1, j + 1) if 0 <= k < len(idx)]
        if med[j] > level and all(med[j] > med[k] for k in nb):
            cand.add(int(idx[j]))
            if all(_sign_p(v[j], v[k]) <= PEAK_LEVEL for k in nb):
                sig.add(int(idx[j]))
    return sig, cand


def _f8(study: StudyData) -> tuple[dict[str, bool], str] | None:
    per: dict[str, list[int]] = {}
    txt = []
    for m in (study.by_arch("unet"), study.by_arch("vit")):
        for kind in ("shift-x", "shift-y"):
            if m is None or kind not in m.groups:
                continue
            g = m.groups[kind]
            pos = [g.shifts.index(s) for s in g.inf_shifts]  # error rows at influence shifts
            nz = np.asarray(g.inf_shifts) != 0
            n = g.error.shape[1]
            for f in sorted(set(g.families) or {"all"}):
                cols = _fam_mask(g, n, f)
                (ep, ec), (ip, ic) = (
                    _peaks(g.error[pos][:, cols], nz),
                    _peaks(g.frobenius[:, cols], nz),
                )
                hit = sorted(ep & ip)
                c = per.setdefault(f, [0, 0])
                c[0] += len(hit)
                c[1] += len(ep) - len(hit)
                at = g.inf_shifts
                txt.append(
                    f"{ARCH_LABEL[m.architecture]} {kind} {f}: error peaks at "
                    f"{[at[i] for i in sorted(ep)]} (not significant: "
                    f"{[at[i] for i in sorted(ec - ep)]}), resonances at "
                    f"{[at[i] for i in sorted(ip)]} (not significant: "
                    f"{[at[i] for i in sorted(ic - ip)]})"
                )
    if not per:
        return None
    ok = {f: c[0] > 0 and c[1] > 0 for f, c in per.items()}
    counts = ", ".join(f"{f} {c[0]} coincide / {c[1]} do not" for f, c in per.items())
    return ok, "; ".join(txt) + f". Peaks: {counts}"


_INFLUENCE = {
    "F3": (
        _f3,
        "per family, over g ≠ e: median and IQR of |M^g_ii / ||M^g||_F| both smaller for "
        "the ViT than for the UNet",
    ),
    "F6": (
        _f6,
        "per family, on both shift axes (influence at the rule-chosen shifts): median over "
        "s ≠ 0 of the per-shift median M^g_ii/||M^g||_F larger for the UNet; UNet "
        "aligned/non-aligned ratio (shifts multiple of its down-sampling factor vs not) > 1; "
        "the ViT's s = 0 value above its median over s ≠ 0 (decay) and its own "
        "aligned/non-aligned ratio (patch size) below the UNet's",
    ),
    "F7": (
        _f7,
        "per family, for the UNet and the ViT: median over s ≠ 0 of the per-shift median "
        "M^g_ii/||M^g||_F larger for vertical (shift-y) than horizontal (shift-x) shifts",
    ),
    "F8": (
        _f8,
        "per family, pooled over UNet/ViT and both axes, on the influence shifts s ≠ 0: a "
        "peak is a strict local maximum of the per-shift medians above their median that "
        "each neighbour is below in most states (one-sided paired sign test over the "
        f"family's states, p ≤ {PEAK_LEVEL}); at least one error peak at an influence "
        "resonance and at least one elsewhere",
    ),
}


def _influence_row(study: StudyData, fid: str) -> dict[str, str]:
    fn, criterion = _INFLUENCE[fid]
    labels = study.dampings
    per_lambda = [fn(study.at(j)) for j in range(len(labels))]
    if not per_lambda or per_lambda[0] is None:
        return _untestable(fid, _CLAIMS[fid], "needs a UNet and a ViT audited on these groups")
    per, nums = per_lambda[0]
    return dict(
        id=fid,
        claim=_CLAIMS[fid],
        criterion=criterion,
        numbers=f"at λ = {labels[0]}: {nums}. Holds: {_verdicts(per)}",
        status=_family_status(per),
        dampings=_robustness(labels, [_family_status(r[0]) for r in per_lambda]),
    )


def _robustness(labels: list[str], statuses: list[str]) -> str:
    """Whether the verdict "reproduced" holds at every damping, some, or none."""
    ok = [s == "reproduced" for s in statuses]
    word = "every λ" if all(ok) else ("some λ" if any(ok) else "no λ")
    return f"reproduced at {word}: " + "; ".join(
        f"{lab}: {st}" for lab, st in zip(labels, statuses, strict=True)
    )


def findings(study: StudyData) -> list[dict[str, str]]:
    """The paper's findings F1–F8 judged on this study, each with its criterion, its numbers
    per family, its verdict at the main damping, whether it holds at every damping and
    (``seeds``) in every seed's audits judged alone."""
    rows = _judge(study)
    if not study.per_seed:
        seeds = sorted({s for m in study.models for s in m.seeds})
        for row in rows:
            row["seeds"] = f"one seed ({', '.join(map(str, seeds))})"
        return rows
    per = {s: {f["id"]: f["status"] for f in _judge(sub)} for s, sub in study.per_seed.items()}
    for row in rows:
        row["seeds"] = _seed_robustness({s: p[row["id"]] for s, p in per.items()})
    return rows


def _seed_robustness(statuses: dict[int, str]) -> str:
    """Whether the verdict "reproduced" holds in every seed (where testable), some, or none."""
    ok = [st == "reproduced" for st in statuses.values() if st != "not testable"]
    word = "every seed" if ok and all(ok) else ("some seeds" if any(ok) else "no seed")
    return f"reproduced in {word}: " + "; ".join(f"seed {s}: {st}" for s, st in statuses.items())


def _judge(study: StudyData) -> list[dict[str, str]]:
    rows = _f1_f2(study)
    rows.append(_influence_row(study, "F3"))
    rows.append(_f4(study))
    labels = study.dampings
    f5 = [_f5(study.at(j)) for j in range(len(labels))] if labels else [None]
    if f5[0] is None:
        rows.append(_untestable("F5", _CLAIMS["F5"], "needs the G-CNN control"))
    else:
        rows.append(
            dict(
                id="F5",
                claim=_CLAIMS["F5"],
                criterion="max D_g <= 1e-6 x median E_e (round-off) and M^g_ii (cosine if "
                "computed, else Frobenius) equal to M^e_ii within 1e-6 x the condition "
                "number bound κ = 1 + λ_max/λ, for every g",
                numbers=f"at λ = {labels[0]}: {f5[0][1]}",
                status=_status(f5[0][0]),
                dampings=_robustness(labels, [_status(r[0]) for r in f5]),
            )
        )
    rows += [_influence_row(study, f) for f in ("F6", "F7", "F8")]
    return rows


def readings(study: StudyData) -> dict[str, str]:
    """A short data-driven reading of each figure, keyed by figure id."""
    r = {
        "test_error": _read_test_error(study),
        "d4_error": _read_d4_error(study),
        "d4_influence": _read_d4_influence(study),
    }
    for kind, axis in (("shift-x", "horizontal"), ("shift-y", "vertical")):
        r[f"{kind}_error"], r[f"{kind}_influence"] = _read_shifts(study, kind, axis)
    r["defect"] = _read_defect(study)
    return r


def _audited(study: StudyData, kind: str) -> list[tuple[ModelData, GroupData]]:
    """(model, its pooled data) for every model that audited the group ``kind``."""
    return [(m, m.groups[kind]) for m in study.models if kind in m.groups]


def _read_test_error(study: StudyData) -> str:
    d4 = [m for m in study.models if "d4" in m.groups]
    fams = sorted({f for m in d4 for f in m.groups["d4"].families})
    parts = []
    for fam in fams:
        cells, best = [], None
        for m in d4:
            g = m.groups["d4"]
            sel = np.asarray(g.families) == fam
            if not sel.any():
                continue
            e, a = _med(g.error[0, sel]), _med(g.error.mean(0)[sel])
            name = ARCH_LABEL.get(m.architecture, m.preset)
            cells.append(f"{name} {e:.3g} → {a:.3g}")
            best = (e, name) if best is None or e < best[0] else best
        if cells:
            parts.append(f"{fam.upper()}: " + ", ".join(cells) + f" (lowest E_e: {best[1]})")
    return (
        "Median one-step error, untransformed → D4-averaged: " + "; ".join(parts) + "."
        if parts
        else "No D4 audit."
    )


def _read_d4_error(study: StudyData) -> str:
    parts = []
    for m, g in _audited(study, "d4"):
        cells = []
        for fam, med in _family_rows(g, g.error).items():
            k = int(np.argmax(med))
            cells.append(f"{fam.upper()} {g.elements[k]} ({med[k]:.3g} vs identity {med[0]:.3g})")
        parts.append(f"{m.label}: worst element per family " + ", ".join(cells))
    return "; ".join(parts) + "." if parts else "No D4 audit."


def _read_d4_influence(study: StudyData) -> str:
    parts = []
    for m, g in _audited(study, "d4"):
        txt = (
            f"{m.label}: median cross-orbit Frobenius influence {_med(g.frobenius[1:]):.3g} "
            f"(identity {_med(g.frobenius[0]):.3g})"
        )
        if g.cosine is not None:
            txt += f", cosine {_med(g.cosine[1:]):.3g}"
        parts.append(txt)
    # One state can own ||M^g||_F (families with much larger gradients in one batch): then the
    # Frobenius-normalised diagonal is ~1 for that state and ~0 for the rest, and says little.
    dominated = [
        m.label
        for m in study.models
        if "d4" in m.groups
        and (np.abs(m.groups["d4"].frobenius[0]) > 0.9).any()
        and _med(np.abs(m.groups["d4"].frobenius[0])) < 0.01
    ]
    note = (
        f" For {', '.join(dominated)} one state per batch owns ||M^g||_F (its normalised "
        "diagonal is near 1, the median below 0.01): the Frobenius panel mostly shows which "
        "state has the largest gradients; read the cosine panel."
        if dominated
        else ""
    )
    return (
        "; ".join(parts)
        + ". A cosine near 1 means an update on x moves the loss on g x as much as on x "
        "(the update propagates across the orbit); near 0, not at all." + note
        if parts
        else "No D4 audit."
    )


def _read_shifts(study: StudyData, kind: str, axis: str) -> tuple[str, str]:
    """The readings of the error and the influence figures of one translation axis."""
    parts, iparts = [], []
    for m, g in _audited(study, kind):
        cells = [
            f"{fam.upper()} {med.min():.3g}–{med.max():.3g} (max/min {med.max() / med.min():.2f})"
            for fam, med in _family_rows(g, g.error).items()
        ]
        parts.append(f"{m.label}: median E_g per family " + ", ".join(cells))
        src = g.cosine if g.cosine is not None else g.frobenius
        im = np.median(src, axis=1)
        iparts.append(f"{m.label}: median influence from {im.min():.3g} to {im.max():.3g}")
    error = (
        (f"{axis.capitalize()} shifts. " + "; ".join(parts) + ".") if parts else f"No {kind} audit."
    )
    influence = (
        (f"{axis.capitalize()} shifts. " + "; ".join(iparts) + ".")
        if iparts
        else f"No {kind} audit."
    )
    return error, influence


def _read_defect(study: StudyData) -> str:
    parts = []
    for m in study.models:
        vals = [float(np.median(g.defect[1:])) for g in m.groups.values() if g.defect.shape[0] > 1]
        if vals:
            parts.append(
                f"{m.label}: median defect over non-identity elements up to {max(vals):.3g}"
            )
    return "; ".join(parts) + "." if parts else "No audit."


def load_study(audit_dirs: Sequence[str | os.PathLike]) -> StudyData:
    """`collect` with paths checked first (clear error for a missing directory)."""
    missing = [str(d) for d in audit_dirs if not Path(d).is_dir()]
    if missing:
        raise ValueError(f"not audit directories: {', '.join(missing)}")
    return collect(audit_dirs)
