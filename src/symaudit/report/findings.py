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
from dataclasses import dataclass, field
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
    """Per element (rows, in group order) and pooled state (columns) values of one model."""

    spec: str
    elements: list[str]
    shifts: list[int]  # translations: the shift of each element in cells; else []
    error: np.ndarray  # (|G|, N) E_g
    defect: np.ndarray  # (|G|, N) D_g
    frobenius: np.ndarray  # (|G|, N) diag of M^g / ||M^g||_F
    cosine: np.ndarray | None  # (|G|, N) diag of the cosine-normalised M^g
    solver: list[dict] = field(default_factory=list)
    families: list[str] = field(default_factory=list)  # (N,) initial-condition family per state


@dataclass
class ModelData:
    preset: str
    architecture: str
    seeds: list[int]
    audits: list[str]
    groups: dict[str, GroupData]
    test_errors: dict[int, dict]  # seed -> test_errors.json "all" entry
    family_errors: dict[int, dict] = field(default_factory=dict)  # seed -> {family: entry}

    @property
    def label(self) -> str:
        return f"{ARCH_LABEL.get(self.architecture, self.architecture)} ({self.preset})"


@dataclass
class StudyData:
    models: list[ModelData]
    resolution: list[int]

    def by_arch(self, arch: str) -> ModelData | None:
        return next((m for m in self.models if m.architecture == arch), None)


def _solver_rows(rec: AuditRecord, spec: str) -> list[dict]:
    rows = []
    for k, res in enumerate(rec.influence[spec]):
        for phase, rep in res.reports.items():
            if not rep["iterations"]:
                continue
            rows.append(
                {
                    "seed": rec.seed,
                    "batch": k,
                    "phase": phase,
                    "columns": len(rep["iterations"]),
                    "rtol": rep["rtol"],
                    "max_residual": max(rep["residuals"]),
                    # eps (||chi|| ||u|| / ||b|| + 1): how accurate each residual is (krylov.py);
                    # None for audits written before it was recorded
                    "max_attainable": max(rep["attainable"]) if rep.get("attainable") else None,
                    "median_iterations": float(np.median(rep["iterations"])),
                    "max_iterations": int(max(rep["iterations"])),
                    "converged": int(sum(rep["converged"])),
                    "seconds": float(rep["seconds"]),
                    "damping": res.damping,
                    "num_params": res.settings.get("num_params"),
                }
            )
    return rows


def _state_families(rec: AuditRecord, n: int) -> list[str]:
    """Family of each of the n states of one mini-batch: ``per_family`` consecutive states per
    family, in the audit's batch order (``families`` in audit.json; older audits did not
    record it and read their test files in sorted order; without any family information all
    states are "all")."""
    settings = rec.meta["settings"]
    fams = rec.meta.get("families") or sorted(settings.get("test_data") or {})
    if not fams:  # no family information recorded: one pooled group
        return ["all"] * n
    per = int(settings.get("per_family", 1))
    out = [f for f in fams for _ in range(per)]
    if len(out) != n:
        raise ValueError(
            f"{rec.path}: a mini-batch has {n} states but families {fams} x {per} per family "
            f"give {len(out)}"
        )
    return out


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
    """Load audits and pool them per model preset (models ordered UNet, ViT, G-CNN)."""
    records = [load_audit(d) for d in unique_dirs(audit_dirs)]
    if not records:
        raise ValueError("no audit directories given")
    _check_distinct_checkpoints(records)
    models: dict[str, ModelData] = {}
    parts: dict[tuple[str, str], dict[str, list]] = {}
    resolution: list[int] = []
    for rec in records:
        m = models.setdefault(rec.model, ModelData(rec.model, rec.architecture, [], [], {}, {}))
        m.seeds.append(rec.seed)
        m.audits.append(str(rec.path))
        m.test_errors[rec.seed] = rec.test_errors["all"]
        m.family_errors[rec.seed] = {k: v for k, v in rec.test_errors.items() if k != "all"}
        for spec in rec.equivariance:
            eqs, infs = rec.equivariance[spec], rec.influence[spec]
            kind = group_key(spec, eqs[0].group)
            if kind in m.groups and m.groups[kind].elements != list(eqs[0].elements):
                kind = spec  # e.g. shift-x and shift-x:8 in one audit: keep them apart
            acc = parts.setdefault(
                (rec.model, kind), {"e": [], "d": [], "f": [], "c": [], "fam": []}
            )
            for eq, inf in zip(eqs, infs, strict=True):
                acc["fam"] += _state_families(rec, eq.error.shape[1])
                resolution = eq.settings.get("resolution", resolution)
                acc["e"].append(eq.error.numpy())
                acc["d"].append(eq.defect.numpy())
                acc["f"].append(inf.diagonal("frobenius").numpy())
                acc["c"].append(
                    inf.diagonal("cosine").numpy() if inf.transformed_norms is not None else None
                )
            g = m.groups.get(kind)
            if g is None:
                spec_info = eqs[0].group.get("spec", {})
                one_axis = spec_info.get("kind") == "translations" and spec_info.get("axis") != "xy"
                shifts = list(spec_info.get("shifts", [])) if one_axis else []
                g = m.groups[kind] = GroupData(
                    spec, list(eqs[0].elements), shifts, *(np.empty(0),) * 3, None
                )
            g.solver.extend(_solver_rows(rec, spec))
    for (name, kind), acc in parts.items():
        g = models[name].groups[kind]
        g.error = np.concatenate(acc["e"], axis=1)
        g.defect = np.concatenate(acc["d"], axis=1)
        g.frobenius = np.concatenate(acc["f"], axis=1)
        g.cosine = None if any(c is None for c in acc["c"]) else np.concatenate(acc["c"], axis=1)
        g.families = acc["fam"]
    ordered = sorted(models.values(), key=lambda m: (_ARCH_ORDER.get(m.architecture, 9), m.preset))
    return StudyData(ordered, list(resolution))


def _med(x: np.ndarray) -> float:
    return float(np.median(x))


def _iqr(x: np.ndarray) -> float:
    q = np.quantile(x, [0.25, 0.75])
    return float(q[1] - q[0])


def summary(study: StudyData) -> dict[str, Any]:
    """Every number the report shows, per model (medians and quantiles over pooled states)."""
    out: dict[str, Any] = {}
    for m in study.models:
        s: dict[str, Any] = {
            "architecture": m.architecture,
            "seeds": m.seeds,
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
            entry = {
                "spec": g.spec,
                "elements": g.elements,
                "shifts": g.shifts,
                "median_error": [_med(r) for r in g.error],
                "q10_error": [float(np.quantile(r, 0.1)) for r in g.error],
                "q90_error": [float(np.quantile(r, 0.9)) for r in g.error],
                "median_defect": [_med(r) for r in g.defect],
                "max_defect": [float(r.max()) for r in g.defect],
                "median_frobenius": [_med(r) for r in g.frobenius],
                "median_cosine": None if g.cosine is None else [_med(r) for r in g.cosine],
                "num_states": int(g.error.shape[1]),
            }
            if kind == "d4":
                entry["median_untransformed_error"] = _med(g.error[0])
                entry["median_d4_averaged_error"] = _med(g.error.mean(0))
                fam = np.asarray(g.families)
                entry["family_median_untransformed_error"] = {
                    f: _med(g.error[0, fam == f]) for f in sorted(set(g.families))
                }
                entry["family_median_d4_averaged_error"] = {
                    f: _med(g.error.mean(0)[fam == f]) for f in sorted(set(g.families))
                }
            s[kind] = entry
        out[m.preset] = s
    return out


def _by_family(g: GroupData, values: np.ndarray) -> dict[str, float]:
    """Median of per-state ``values`` `(N,)` over each family's states."""
    fam = np.asarray(g.families) if g.families else np.full(values.shape[-1], "all")
    return {f: _med(values[fam == f]) for f in sorted(set(fam.tolist()))}


def _family_rows(g: GroupData, values: np.ndarray) -> dict[str, np.ndarray]:
    """Per family, the median over its states of ``values`` `(|G|, N)`: `(|G|,)` each."""
    fam = np.asarray(g.families) if g.families else np.full(values.shape[-1], "all")
    return {f: np.median(values[:, fam == f], axis=1) for f in sorted(set(fam.tolist()))}


def _geo_ratio(a: dict[str, float], b: dict[str, float], fams: list[str]) -> float:
    """exp(mean_f log(a_f / b_f)): a scale-free average of per-family ratios."""
    logs = [np.log(max(a[f], 1e-300) / max(b[f], 1e-300)) for f in fams]
    return float(np.exp(np.mean(logs))) if logs else float("nan")


def _status(ok: bool | None) -> str:
    return "not testable" if ok is None else ("reproduced" if ok else "not reproduced")


def _untestable(fid: str, why: str) -> dict[str, str]:
    return dict(id=fid, claim=why, criterion="-", numbers="-", status=_status(None))


def findings(study: StudyData) -> list[dict[str, str]]:
    """The paper's findings F1–F5 judged on this study, each with its criterion and numbers."""
    unet, vit, gcnn = (study.by_arch(a) for a in ("unet", "vit", "gcnn"))
    rows = []

    def d4(m):
        return None if m is None else m.groups.get("d4")

    du, dv = d4(unet), d4(vit)
    # F1, F2: per family, medians over its test states of E_e and of E_g over g != e; the
    # families' error scales differ by orders of magnitude, so their ViT/UNet ratios are
    # combined by a geometric mean rather than pooling the states
    if du is not None and dv is not None:
        ue, ve = _by_family(du, du.error[0]), _by_family(dv, dv.error[0])
        ut, vt = _by_family(du, du.error[1:].mean(0)), _by_family(dv, dv.error[1:].mean(0))
        fams = [f for f in ue if f in ve]
        gap_e, gap_t = 1 - _geo_ratio(ve, ue, fams), 1 - _geo_ratio(vt, ut, fams)
        per_e = "; ".join(f"{f}: ViT {ve[f]:.4g}, UNet {ue[f]:.4g}" for f in fams)
        per_t = "; ".join(f"{f}: ViT {vt[f]:.4g}, UNet {ut[f]:.4g}" for f in fams)
        rows.append(
            dict(
                id="F1",
                claim="The ViT beats the UNet on untransformed test data.",
                criterion="geometric mean over families of median E_e(ViT) / median E_e(UNet) < 1",
                numbers=f"median E_e {per_e} (ViT lower by {gap_e:.1%})",
                status=_status(gap_e > 0),
            )
        )
        rows.append(
            dict(
                id="F2",
                claim="The ViT's advantage vanishes on D4-transformed inputs.",
                criterion="F1 holds and the relative gap on transformed inputs (mean of E_g "
                "over g != e) is at most half the untransformed gap",
                numbers=f"median mean_(g!=e) E_g {per_t}; gap "
                f"{gap_e:.1%} untransformed vs {gap_t:.1%} transformed",
                status=_status(gap_e > 0 and gap_t <= gap_e / 2),
            )
        )
    else:
        rows += [_untestable(fid, "needs a UNet and a ViT audited on d4") for fid in ("F1", "F2")]
    # F3: Frobenius-normalised D4 influence off the identity
    if du is not None and dv is not None:
        fu, fv = du.frobenius[1:].ravel(), dv.frobenius[1:].ravel()
        mu, mv, iu, iv = _med(np.abs(fu)), _med(np.abs(fv)), _iqr(fu), _iqr(fv)
        cos = ""
        if du.cosine is not None and dv.cosine is not None:
            cos = (
                f"; cosine: ViT {_med(dv.cosine[1:].ravel()):.3g}, "
                f"UNet {_med(du.cosine[1:].ravel()):.3g}"
            )
        rows.append(
            dict(
                id="F3",
                claim="ViT D4 influence is near zero; the UNet's is larger and more variable.",
                criterion="over g != e: median |M^g_ii/||M^g||_F| and its IQR both smaller "
                "for the ViT than for the UNet",
                numbers=f"median |Frobenius-normalised M^g_ii|: ViT {mv:.3g} (IQR {iv:.3g}), "
                f"UNet {mu:.3g} (IQR {iu:.3g}){cos}",
                status=_status(mv < mu and iv < iu),
            )
        )
    else:
        rows.append(_untestable("F3", "needs a UNet and a ViT audited on d4"))
    # F4: spikes of E_g along translations
    spikes = {}
    for m in (unet, vit):
        if m is None:
            continue
        vals = []
        for kind in ("shift-x", "shift-y"):
            g = m.groups.get(kind)
            if g is not None and g.error.size:
                # within each family (scales differ by orders of magnitude between families)
                vals += [float(r.max() / r.min()) for r in _family_rows(g, g.error).values()]
        if vals:
            spikes[m.architecture] = max(vals)
    if len(spikes) == 2:
        rows.append(
            dict(
                id="F4",
                claim="The ViT's error spikes at some translations; the UNet's is flatter.",
                criterion="max over shift axes and IC families of (max / min over shifts of "
                "the family's median E_g) "
                "at least 10 % larger for the ViT than for the UNet",
                numbers="largest max/min of a family's per-shift median E_g: "
                f"ViT {spikes['vit']:.4g}, "
                f"UNet {spikes['unet']:.4g}",
                status=_status(spikes["vit"] > 1.1 * spikes["unet"]),
            )
        )
    else:
        rows.append(_untestable("F4", "needs a UNet and a ViT audited on shifts"))
    # F5: the exactly equivariant control
    if gcnn is not None and gcnn.groups:
        dmax = max(float(g.defect.max()) for g in gcnn.groups.values())
        emed = max(_med(g.error[0]) for g in gcnn.groups.values())
        spread = []
        rtols = [r["rtol"] for g in gcnn.groups.values() for r in g.solver] or [5e-3]
        for g in gcnn.groups.values():
            if g.cosine is not None:
                spread.append(float(np.abs(g.cosine - g.cosine[:1]).max()))
        s = max(spread) if spread else float("nan")
        tol = 10 * max(rtols)
        ok = dmax <= 1e-6 * max(emed, 1e-12) + 1e-9 and (not spread or s <= tol)
        rows.append(
            dict(
                id="F5",
                claim="The equivariant control has zero defect and constant influence.",
                criterion=f"max D_g <= 1e-6 x median E_e (round-off) and cosine M^g_ii equal "
                f"to M^e_ii within 10 x rtol = {tol:.2g} for every g",
                numbers=f"max D_g {dmax:.3g} (median E_e {emed:.3g}); max |cos_g - cos_e| {s:.3g}",
                status=_status(ok),
            )
        )
    else:
        rows.append(_untestable("F5", "needs the G-CNN control"))
    return rows


def readings(study: StudyData) -> dict[str, str]:
    """A short data-driven reading of each figure, keyed by figure id."""
    r: dict[str, str] = {}
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
    r["test_error"] = (
        "Median one-step error, untransformed → D4-averaged: " + "; ".join(parts) + "."
        if parts
        else "No D4 audit."
    )
    parts = []
    for m in study.models:
        g = m.groups.get("d4")
        if g is None:
            continue
        cells = []
        for fam, med in _family_rows(g, g.error).items():
            k = int(np.argmax(med))
            cells.append(f"{fam.upper()} {g.elements[k]} ({med[k]:.3g} vs identity {med[0]:.3g})")
        parts.append(f"{m.label}: worst element per family " + ", ".join(cells))
    r["d4_error"] = "; ".join(parts) + "." if parts else "No D4 audit."
    parts = []
    for m in study.models:
        g = m.groups.get("d4")
        if g is None:
            continue
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
    r["d4_influence"] = (
        "; ".join(parts)
        + ". A cosine near 1 means an update on x moves the loss on g x as much as on x "
        "(the update propagates across the orbit); near 0, not at all." + note
        if parts
        else "No D4 audit."
    )
    for kind, axis in (("shift-x", "horizontal"), ("shift-y", "vertical")):
        parts, iparts = [], []
        for m in study.models:
            g = m.groups.get(kind)
            if g is None:
                continue
            cells = [
                f"{fam.upper()} {med.min():.3g}–{med.max():.3g} "
                f"(max/min {med.max() / med.min():.2f})"
                for fam, med in _family_rows(g, g.error).items()
            ]
            parts.append(f"{m.label}: median E_g per family " + ", ".join(cells))
            src = g.cosine if g.cosine is not None else g.frobenius
            im = np.median(src, axis=1)
            iparts.append(f"{m.label}: median influence from {im.min():.3g} to {im.max():.3g}")
        r[f"{kind}_error"] = (
            (f"{axis.capitalize()} shifts. " + "; ".join(parts) + ".")
            if parts
            else f"No {kind} audit."
        )
        r[f"{kind}_influence"] = (
            (f"{axis.capitalize()} shifts. " + "; ".join(iparts) + ".")
            if iparts
            else f"No {kind} audit."
        )
    parts = []
    for m in study.models:
        vals = [float(np.median(g.defect[1:])) for g in m.groups.values() if g.defect.shape[0] > 1]
        if vals:
            parts.append(
                f"{m.label}: median defect over non-identity elements up to {max(vals):.3g}"
            )
    r["defect"] = "; ".join(parts) + "." if parts else "No audit."
    return r


def load_study(audit_dirs: Sequence[str | os.PathLike]) -> StudyData:
    """`collect` with paths checked first (clear error for a missing directory)."""
    missing = [str(d) for d in audit_dirs if not Path(d).is_dir()]
    if missing:
        raise ValueError(f"not audit directories: {', '.join(missing)}")
    return collect(audit_dirs)
