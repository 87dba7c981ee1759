"""The report's figures (matplotlib, Agg backend), each saved as PNG and SVG.

Colours are fixed per architecture (UNet blue, ViT orange, G-CNN green) in every figure.
Box plots are Tukey's (box: quartiles, whiskers: 1.5 IQR, points: outliers) over the pooled
test states of all seeds and mini-batches; shift plots show the median over states (marker)
with a 10 %–90 % quantile whisker. Test errors (Figs 1, 2, 4, 5) get one panel per
initial-condition family: the families' error scales differ by up to 10^4, so pooled boxes
and whiskers would span the scales instead of the states. Every figure records the values it
drew (read back from the matplotlib artists) in ``Figure.data`` for ``report.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from symaudit.report.findings import ARCH_LABEL, GroupData, ModelData, StudyData  # noqa: E402

__all__ = ["COLOURS", "Figure", "make_figures"]

COLOURS = {"unet": "#1f77b4", "vit": "#ff7f0e", "gcnn": "#2ca02c"}
_FLOOR = 1e-20
_FALLBACK = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


@dataclass
class Figure:
    id: str
    title: str
    png: str
    svg: str
    # drawn values: {family: {model preset: {name: per-element list or number}}}
    data: dict[str, Any] = field(default_factory=dict)


def _colour(study: StudyData, i: int) -> str:
    return COLOURS.get(study.models[i].architecture, _FALLBACK[i % len(_FALLBACK)])


def _median_whiskers(ax, study, i: int, shifts, values: np.ndarray) -> dict[str, list[float]]:
    """Median marker and 10–90 % whisker per shift (values `(|G|, N)`) for model i, offset
    sideways a little per model so the three models' whiskers do not overlap. Returns the
    drawn medians and whisker ends, read back from the artists."""
    s = np.asarray(shifts if shifts else range(values.shape[0]))
    med = np.median(values, axis=1)
    lo, hi = np.quantile(values, [0.1, 0.9], axis=1)
    step = s[1] - s[0] if len(s) > 1 else 1
    off = (i - (len(study.models) - 1) / 2) * 0.15 * step
    eb = ax.errorbar(
        s + off,
        med,
        yerr=[med - lo, hi - med],
        fmt="o-",
        ms=4,
        capsize=2,
        color=_colour(study, i),
        label=study.models[i].label,
        lw=1,
    )
    ends = np.asarray(eb.lines[2][0].get_segments())[:, :, 1]  # (|G|, 2): whisker y ends
    return {
        "median": [float(y) for y in eb.lines[0].get_ydata()],
        "q10": ends.min(1).tolist(),
        "q90": ends.max(1).tolist(),
    }


def _not_computed(ax) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, "cosine normalisation not computed\n(audit: cosine=False)", ha="center")


def _mark_periods(ax, study: StudyData) -> None:
    """Dotted vertical lines at the non-zero multiples of each model's natural period (ViT
    patch size, UNet down-sampling factor), in the model's colour, within the axis range."""
    lo, hi = ax.get_xlim()
    for i, m in enumerate(study.models):
        if not m.period:
            continue
        name = ARCH_LABEL.get(m.architecture, m.preset)
        xs = [x for x in range(m.period, int(hi) + 1, m.period) if x >= lo]
        for k, x in enumerate(xs):
            ax.axvline(
                x,
                color=_colour(study, i),
                ls=":",
                lw=1.2,
                alpha=0.8,
                label=f"{name} period {m.period}" if k == 0 else None,
            )
    ax.set_xlim(lo, hi)


def _save(fig, out: Path, name: str, title: str, data: dict | None = None) -> Figure:
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    fig.savefig(out / f"{name}.svg", bbox_inches="tight")
    plt.close(fig)
    return Figure(name, title, f"{name}.png", f"{name}.svg", data or {})


def _families(models: list[ModelData], kind: str) -> list[str]:
    """Initial-condition families of the models' ``kind`` audits, one figure panel each
    (``["all"]`` for audits that recorded none)."""
    return sorted({f for m in models if kind in m.groups for f in m.groups[kind].families}) or [
        "all"
    ]


def _in_family(g: GroupData, fam: str) -> np.ndarray:
    """Boolean mask `(N,)` of g's pooled states that belong to family ``fam``."""
    if not g.families:
        return np.full(g.error.shape[1], fam == "all")
    return np.asarray(g.families) == fam


def _family_panels(n: int, *, rows: bool, size: tuple[float, float]):
    """A figure with one panel per family, stacked (``rows``) or side by side; ``size`` is
    one panel's size in inches."""
    shape = (n, 1) if rows else (1, n)
    fig, axes = plt.subplots(
        *shape,
        figsize=(size[0] * shape[1], size[1] * shape[0]),
        squeeze=False,
        layout="constrained",
    )
    return fig, list(axes.ravel())


def _shared_legend(fig, ax, handles=None, labels=None) -> None:
    """One legend for all panels, outside the top-right panel."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)


def _positive_log(ax, values: list[np.ndarray]) -> None:
    flat = np.concatenate([v.ravel() for v in values]) if values else np.empty(0)
    pos = flat[flat > 0]
    if pos.size and pos.max() / pos.min() > 50 and (flat > 0).all():
        ax.set_yscale("log")


def _grouped_boxes(ax, study, kind, field_fn, labels, ylabel, legend=True, fam=None):
    """One cluster of boxes per label (group element), one box per model, side by side; with
    ``fam``, only that family's states (models without any are left out). Returns
    {model preset: (values `(|G|, n)`, drawn medians)}."""
    models = [m for m in study.models if kind in m.groups]
    if fam is not None:
        models = [m for m in models if _in_family(m.groups[kind], fam).any()]
    n = len(models)
    width = 0.8 / max(n, 1)
    handles, drawn = [], {}
    for j, m in enumerate(models):
        i = study.models.index(m)
        data = field_fn(m.groups[kind])  # (|G|, N)
        if fam is not None:
            data = data[:, _in_family(m.groups[kind], fam)]
        pos = np.arange(data.shape[0]) + (j - (n - 1) / 2) * width
        bp = ax.boxplot(
            list(data),
            positions=pos,
            widths=width * 0.85,
            patch_artist=True,
            showfliers=True,
            flierprops={"markersize": 3, "markeredgecolor": _colour(study, i)},
            medianprops={"color": "black"},
        )
        for b in bp["boxes"]:
            b.set_facecolor(_colour(study, i))
            b.set_alpha(0.75)
        bp["boxes"][0].set_label(m.label)  # for a figure-wide legend
        handles.append((bp["boxes"][0], m.label))
        drawn[m.preset] = (data, [float(line.get_ydata()[0]) for line in bp["medians"]])
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if handles and legend:
        ax.legend(
            [h for h, _ in handles],
            [lab for _, lab in handles],
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=8,
        )
    return drawn


def _d4_labels(study: StudyData) -> list[str]:
    for m in study.models:
        if "d4" in m.groups:
            return m.groups["d4"].elements
    return []


def make_figures(study: StudyData, out: Path) -> list[Figure]:
    """Write every figure into ``out``; returns them in report order."""
    out.mkdir(parents=True, exist_ok=True)
    d4_models = [m for m in study.models if "d4" in m.groups]
    fams = _families(d4_models, "d4")
    labels = _d4_labels(study)
    figs = [
        _fig_test_error(study, out, d4_models, fams),
        _fig_d4_error(study, out, fams, labels),
        _fig_d4_influence(study, out, d4_models, labels),
    ]
    for kind, axis_name, num in (("shift-x", "horizontal", 4), ("shift-y", "vertical", 5)):
        figs.append(_fig_shift_error(study, out, kind, axis_name, num))
    for kind, axis_name, num in (("shift-x", "horizontal", 6), ("shift-y", "vertical", 7)):
        figs.append(_fig_shift_influence(study, out, kind, axis_name, num))
    figs.append(_fig_defect(study, out, labels))
    figs.append(_fig_solver(study, out))
    return figs


def _fig_test_error(study: StudyData, out: Path, d4_models: list, fams: list[str]) -> Figure:
    """Fig. 1: untransformed vs D4-averaged test error, one panel per family."""
    # 1: untransformed vs D4-averaged test error, one panel per initial-condition family
    # (the families' error scales differ by orders of magnitude: pooled boxes would mix them)
    fig, axes = _family_panels(len(fams), rows=False, size=(3.6, 4.2))
    drawn: dict[str, Any] = {}
    for ax, fam in zip(axes, fams, strict=True):
        data, pos, cols, ticks, who = [], [], [], [], []
        for j, m in enumerate(d4_models):
            g = m.groups["d4"]
            sel = _in_family(g, fam)
            if not sel.any():
                continue
            data += [g.error[0, sel], g.error.mean(0)[sel]]
            pos += [3 * j, 3 * j + 1]
            cols += [_colour(study, study.models.index(m))] * 2
            ticks += [(3 * j + 0.5, ARCH_LABEL.get(m.architecture, m.preset))]
            who.append(m.preset)
        if data:
            bp = ax.boxplot(
                data, positions=pos, widths=0.8, patch_artist=True, medianprops={"color": "black"}
            )
            for k, (b, c) in enumerate(zip(bp["boxes"], cols, strict=True)):
                b.set_facecolor(c)
                b.set_alpha(0.85 if k % 2 == 0 else 0.35)
                b.set_hatch("" if k % 2 == 0 else "//")
            for d, x in zip(data, pos, strict=True):  # every state, too: boxes of few states
                ax.plot(np.full(d.size, x), d, "k.", ms=3, alpha=0.6)
            ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks])
            _positive_log(ax, data)
            meds = [float(line.get_ydata()[0]) for line in bp["medians"]]
            drawn[fam] = {
                p: {"untransformed": meds[2 * k], "d4_averaged": meds[2 * k + 1]}
                for k, p in enumerate(who)
            }
        ax.set_title(f"{fam.upper()} ({data[0].size if data else 0} states per box)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("one-step test error, SMSE (dimensionless)")
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=_colour(study, study.models.index(m)), label=m.label) for m in d4_models
    ]
    handles += [
        Patch(facecolor="grey", alpha=0.85, label="untransformed (E_e)"),
        Patch(facecolor="grey", alpha=0.35, hatch="//", label="D4-averaged (mean_g E_g)"),
    ]
    _shared_legend(fig, axes[-1], handles, [h.get_label() for h in handles])
    fig.suptitle("Test error on untransformed vs D4-averaged inputs (first step), per family")
    return _save(fig, out, "fig1_test_error", "Fig. 1: test error, untransformed vs D4", drawn)


def _fig_d4_error(study: StudyData, out: Path, fams: list[str], labels: list[str]) -> Figure:
    """Fig. 2: E_g per D4 element, one row per family."""
    # 2: E_g per D4 element, one row per family (shared element axis, own error scale)
    fig, axes = _family_panels(len(fams), rows=True, size=(10, 2.9))
    drawn = {}
    for ax, fam in zip(axes, fams, strict=True):
        boxes = _grouped_boxes(
            ax,
            study,
            "d4",
            lambda g: g.error,
            labels,
            "E_g, SMSE (dimensionless)",
            legend=False,
            fam=fam,
        )
        _positive_log(ax, [v for v, _ in boxes.values()])
        n = max((v.shape[1] for v, _ in boxes.values()), default=0)
        ax.set_title(f"{fam.upper()} ({n} states per box)", fontsize=10)
        drawn[fam] = {p: {"median": meds} for p, (_, meds) in boxes.items()}
    axes[-1].set_xlabel("D4 element g (r: rotation by 90°, s: reflection)")
    _shared_legend(fig, axes[0])
    fig.suptitle("Transformed test error E_g = SMSE(f(g x_t), g x_t+1) per D4 element, per family")
    return _save(fig, out, "fig2_d4_error", "Fig. 2: E_g per D4 element", drawn)


def _fig_d4_influence(study: StudyData, out: Path, d4_models: list, labels: list[str]) -> Figure:
    """Fig. 3: influence per D4 element (Frobenius diagonal, off-diagonal, cosine)."""
    # 3: influence per D4 element: Frobenius diagonal, off-diagonal, cosine (if computed)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.2))
    _grouped_boxes(
        axes[0], study, "d4", lambda g: g.frobenius, labels, "M^g_ii / ||M^g||_F", legend=False
    )
    axes[0].set_title("x_i on g x_i (diagonal), Frobenius-normalised (paper)")
    _grouped_boxes(
        axes[1], study, "d4", lambda g: g.offdiag, labels, "M^g_ij / ||M^g||_F, i ≠ j", legend=False
    )
    axes[1].set_title("x_i on g x_j, i ≠ j (off-diagonal), Frobenius-normalised")
    if any(m.groups["d4"].cosine is not None for m in d4_models):
        _grouped_boxes(
            axes[2],
            study,
            "d4",
            lambda g: g.cosine if g.cosine is not None else np.full_like(g.frobenius, np.nan),
            labels,
            "cosine of grad C_x and grad C_gx in the chi^-1 metric",
        )
        axes[2].set_ylim(-1.05, 1.05)
        axes[2].set_title("Diagonal, cosine-normalised (1 = update fully shared)")
    else:
        _not_computed(axes[2])
        _shared_legend(fig, axes[0])
    for a in axes[:2]:
        a.set_xlabel("D4 element g")
    return _save(fig, out, "fig3_d4_influence", "Fig. 3: influence M^g per D4 element")


def _fig_shift_error(study: StudyData, out: Path, kind: str, axis_name: str, num: int) -> Figure:
    """Figs. 4-5: E_g vs shift along one axis, one panel per family (own error scale each)."""
    sfams = _families(study.models, kind)
    fig, axes = _family_panels(len(sfams), rows=False, size=(4.6, 4))
    drawn = {}
    for ax, fam in zip(axes, sfams, strict=True):
        allv, drawn[fam], n = [], {}, 0
        for i, m in enumerate(study.models):
            g = m.groups.get(kind)
            if g is None or not _in_family(g, fam).any():
                continue
            v = g.error[:, _in_family(g, fam)]
            drawn[fam][m.preset] = _median_whiskers(ax, study, i, g.shifts, v)
            allv.append(v)
            n = max(n, v.shape[1])
        _positive_log(ax, allv)
        _mark_periods(ax, study)
        ax.set_xlabel(f"{axis_name} shift (grid cells)")
        ax.set_title(f"{fam.upper()} ({n} states per marker)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("E_g, SMSE (dimensionless)")
    _shared_legend(fig, axes[0])
    fig.suptitle(
        f"Test error under {axis_name} translations, per family "
        "(median, 10–90 % whiskers; last step in the training window)"
    )
    return _save(fig, out, f"fig{num}_{kind}_error", f"Fig. {num}: E_g vs {axis_name} shift", drawn)


def _fig_shift_influence(
    study: StudyData, out: Path, kind: str, axis_name: str, num: int
) -> Figure:
    """Figs. 6-7: influence vs shift along one axis at the rule-chosen shifts."""
    fig, axes = plt.subplots(1, 3, figsize=(18, 4))
    panels = (
        ("frobenius", "M^g_ii / ||M^g||_F", "diagonal, Frobenius-normalised"),
        ("offdiag", "M^g_ij / ||M^g||_F, i ≠ j", "off-diagonal, Frobenius-normalised"),
        ("cosine", "cosine-normalised M^g_ii", "diagonal, cosine-normalised"),
    )
    drawn = {}
    for ax, (field_name, ylabel, title) in zip(axes, panels, strict=True):
        for i, m in enumerate(study.models):
            g = m.groups.get(kind)
            vals = None if g is None else getattr(g, field_name)
            if vals is None or vals.size == 0:
                continue
            d = _median_whiskers(ax, study, i, g.inf_shifts, vals)
            drawn.setdefault(field_name, {})[m.preset] = d
        if not ax.lines:
            _not_computed(ax)
            continue
        _mark_periods(ax, study)
        ax.set_xlabel(f"{axis_name} shift (grid cells)")
        ax.set_ylabel(f"{ylabel} (dimensionless)")
        ax.set_title(f"Influence vs {axis_name} shift, {title}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(
        fig,
        out,
        f"fig{num}_{kind}_influence",
        f"Fig. {num}: influence vs {axis_name} shift (rule-chosen shifts)",
        drawn,
    )


def _fig_defect(study: StudyData, out: Path, labels: list[str]) -> Figure:
    """Fig. 8: label-free defect (log scale; exact zeros drawn at _FLOOR)."""
    # 8: label-free defect (log scale; exact zeros drawn at _FLOOR)
    kinds = [k for k in ("d4", "shift-x", "shift-y") if any(k in m.groups for m in study.models)]
    fig, axes = plt.subplots(
        1,
        max(len(kinds), 1),
        figsize=(5.5 * max(len(kinds), 1), 4),
        squeeze=False,
        layout="constrained",  # keeps the panels' titles and y labels apart
    )
    ylabel = "D_g = SMSE(f(g x), g f(x)) (dimensionless)"
    for ax, kind in zip(axes[0], kinds, strict=False):
        if kind == "d4":
            _grouped_boxes(
                ax, study, "d4", lambda g: np.maximum(g.defect, _FLOOR), labels, ylabel, False
            )
            ax.set_xlabel("D4 element g")
        else:
            for i, m in enumerate(study.models):
                g = m.groups.get(kind)
                if g is None:
                    continue
                s = np.asarray(g.shifts if g.shifts else range(g.defect.shape[0]))
                med = np.maximum(np.median(g.defect, axis=1), _FLOOR)
                ax.plot(s, med, "o-", ms=4, color=_colour(study, i), label=m.label)
            ax.set_xlabel(f"{'horizontal' if kind == 'shift-x' else 'vertical'} shift (grid cells)")
            ax.set_ylabel("median " + ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"Equivariance defect, {kind} (exact 0 drawn at {_FLOOR:g})", fontsize=10)
    return _save(fig, out, "fig8_defect", "Fig. 8: label-free equivariance defect D_g")


def _fig_solver(study: StudyData, out: Path) -> Figure:
    """Fig. 9: solver statistics."""
    # 9: solver statistics
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    names, its, res = [], [], []
    for i, m in enumerate(study.models):
        rows = [r for g in m.groups.values() for r in g.solver]
        if not rows:
            continue
        names.append((i, m.label))
        its.append([r["max_iterations"] for r in rows])
        res.append([r["max_residual"] / r["rtol"] for r in rows])
    for ax, data, ylabel in (
        (axes[0], its, "CG iterations (max per solve block)"),
        (axes[1], res, "max relative residual / rtol"),
    ):
        if data:
            bp = ax.boxplot(data, patch_artist=True, medianprops={"color": "black"})
            for b, (i, _) in zip(bp["boxes"], names, strict=True):
                b.set_facecolor(_colour(study, i))
                b.set_alpha(0.75)
            ax.set_xticks(range(1, len(names) + 1), [lab for _, lab in names], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[1].axhline(1.0, color="red", ls="--", lw=1, label="tolerance")
    axes[1].legend(fontsize=8)
    axes[0].set_title("Krylov iterations")
    axes[1].set_title("Residual reached (<= 1: converged)")
    return _save(fig, out, "fig9_solver", "Fig. 9: solver statistics")
