"""The report's figures (matplotlib, Agg backend), each saved as PNG and SVG.

Colours are fixed per architecture (UNet blue, ViT orange, G-CNN green) in every figure.
Box plots are Tukey's (box: quartiles, whiskers: 1.5 IQR, points: outliers) over the pooled
test states of all seeds and mini-batches; shift plots show the median over states (marker)
with a 10 %–90 % quantile whisker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from symaudit.report.findings import ARCH_LABEL, StudyData  # noqa: E402

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


def _colour(study: StudyData, i: int) -> str:
    return COLOURS.get(study.models[i].architecture, _FALLBACK[i % len(_FALLBACK)])


def _median_whiskers(ax, study, i: int, shifts, values: np.ndarray) -> None:
    """Median marker and 10–90 % whisker per shift (values `(|G|, N)`) for model i, offset
    sideways a little per model so the three models' whiskers do not overlap."""
    s = np.asarray(shifts if shifts else range(values.shape[0]))
    med = np.median(values, axis=1)
    lo, hi = np.quantile(values, [0.1, 0.9], axis=1)
    step = s[1] - s[0] if len(s) > 1 else 1
    off = (i - (len(study.models) - 1) / 2) * 0.15 * step
    ax.errorbar(
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


def _save(fig, out: Path, name: str, title: str) -> Figure:
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    fig.savefig(out / f"{name}.svg", bbox_inches="tight")
    plt.close(fig)
    return Figure(name, title, f"{name}.png", f"{name}.svg")


def _positive_log(ax, values: list[np.ndarray]) -> None:
    flat = np.concatenate([v.ravel() for v in values]) if values else np.empty(0)
    pos = flat[flat > 0]
    if pos.size and pos.max() / pos.min() > 50 and (flat > 0).all():
        ax.set_yscale("log")


def _grouped_boxes(ax, study, kind, field_fn, labels, ylabel, legend=True):
    """One cluster of boxes per label (group element), one box per model, side by side."""
    models = [m for m in study.models if kind in m.groups]
    n = len(models)
    width = 0.8 / max(n, 1)
    handles, all_vals = [], []
    for j, m in enumerate(models):
        i = study.models.index(m)
        data = field_fn(m.groups[kind])  # (|G|, N)
        all_vals.append(data)
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
        handles.append((bp["boxes"][0], m.label))
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
    return all_vals


def _d4_labels(study: StudyData) -> list[str]:
    for m in study.models:
        if "d4" in m.groups:
            return m.groups["d4"].elements
    return []


def make_figures(study: StudyData, out: Path) -> list[Figure]:
    """Write every figure into ``out``; returns them in report order."""
    out.mkdir(parents=True, exist_ok=True)
    figs: list[Figure] = []
    d4_models = [m for m in study.models if "d4" in m.groups]

    # 1: untransformed vs D4-averaged test error, one panel per initial-condition family
    # (the families' error scales differ by orders of magnitude: pooled boxes would mix them)
    fams = sorted({f for m in d4_models for f in m.groups["d4"].families}) or ["all"]
    fig, axes = plt.subplots(1, len(fams), figsize=(3.6 * len(fams) + 2.4, 4.2), squeeze=False)
    for ax, fam in zip(axes[0], fams, strict=True):
        data, pos, cols, ticks = [], [], [], []
        for j, m in enumerate(d4_models):
            g = m.groups["d4"]
            sel = np.asarray(g.families) == fam if g.families else np.ones(g.error.shape[1], bool)
            data += [g.error[0, sel], g.error.mean(0)[sel]]
            pos += [3 * j, 3 * j + 1]
            cols += [_colour(study, study.models.index(m))] * 2
            ticks += [(3 * j + 0.5, ARCH_LABEL.get(m.architecture, m.preset))]
        if any(d.size for d in data):
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
        ax.set_title(f"{fam.upper()} ({data[0].size if data else 0} states per box)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("one-step test error, SMSE (dimensionless)")
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=_colour(study, study.models.index(m)), label=m.label) for m in d4_models
    ]
    handles += [
        Patch(facecolor="grey", alpha=0.85, label="untransformed (E_e)"),
        Patch(facecolor="grey", alpha=0.35, hatch="//", label="D4-averaged (mean_g E_g)"),
    ]
    axes[0][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.suptitle("Test error on untransformed vs D4-averaged inputs (first step), per family")
    figs.append(_save(fig, out, "fig1_test_error", "Fig. 1: test error, untransformed vs D4"))

    labels = _d4_labels(study)
    # 2: E_g per D4 element
    fig, ax = plt.subplots(figsize=(10, 4.2))
    vals = _grouped_boxes(
        ax,
        study,
        "d4",
        lambda g: g.error,
        labels,
        "transformed test error E_g, SMSE (dimensionless)",
    )
    _positive_log(ax, vals)
    ax.set_xlabel("D4 element g (r: rotation by 90°, s: reflection)")
    ax.set_title("Transformed test error E_g = SMSE(f(g x_t), g x_t+1) per D4 element")
    figs.append(_save(fig, out, "fig2_d4_error", "Fig. 2: E_g per D4 element"))

    # 3: influence per D4 element (Frobenius and cosine)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    _grouped_boxes(
        axes[0],
        study,
        "d4",
        lambda g: g.frobenius,
        labels,
        "M^g_ii / ||M^g||_F (dimensionless)",
        legend=False,
    )
    axes[0].set_title("Influence of x_i on g x_i, Frobenius-normalised (paper)")
    have_cos = any(m.groups["d4"].cosine is not None for m in d4_models)
    if have_cos:
        _grouped_boxes(
            axes[1],
            study,
            "d4",
            lambda g: g.cosine if g.cosine is not None else np.full_like(g.frobenius, np.nan),
            labels,
            "cosine of grad C_x and grad C_gx in the chi^-1 metric",
        )
        axes[1].set_ylim(-1.05, 1.05)
    axes[1].set_title("Influence, cosine-normalised (1 = update fully shared)")
    for a in axes:
        a.set_xlabel("D4 element g")
    figs.append(_save(fig, out, "fig3_d4_influence", "Fig. 3: influence M^g_ii per D4 element"))

    # 4-7: shifts
    for kind, axis_name, num in (("shift-x", "horizontal", 4), ("shift-y", "vertical", 5)):
        fig, ax = plt.subplots(figsize=(8, 4))
        allv = []
        for i, m in enumerate(study.models):
            g = m.groups.get(kind)
            if g is None:
                continue
            _median_whiskers(ax, study, i, g.shifts, g.error)
            allv.append(g.error)
        _positive_log(ax, allv)
        ax.set_xlabel(f"{axis_name} shift (grid cells)")
        ax.set_ylabel("E_g, SMSE (dimensionless)")
        ax.set_title(
            f"Test error under {axis_name} translations "
            "(median, 10–90 % whiskers; last step in the training window)"
        )
        ax.grid(alpha=0.3)
        if allv:
            ax.legend(fontsize=8)
        figs.append(
            _save(fig, out, f"fig{num}_{kind}_error", f"Fig. {num}: E_g vs {axis_name} shift")
        )
    for kind, axis_name, num in (("shift-x", "horizontal", 6), ("shift-y", "vertical", 7)):
        fig, axes = plt.subplots(1, 2, figsize=(13, 4))
        for panel, (field_name, ylabel) in enumerate(
            (("frobenius", "M^g_ii / ||M^g||_F"), ("cosine", "cosine-normalised M^g_ii"))
        ):
            ax = axes[panel]
            for i, m in enumerate(study.models):
                g = m.groups.get(kind)
                if g is None or getattr(g, field_name) is None:
                    continue
                _median_whiskers(ax, study, i, g.shifts, getattr(g, field_name))
            ax.set_xlabel(f"{axis_name} shift (grid cells)")
            ax.set_ylabel(f"{ylabel} (dimensionless)")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        axes[0].set_title(f"Influence vs {axis_name} shift, Frobenius-normalised")
        axes[1].set_title(f"Influence vs {axis_name} shift, cosine-normalised")
        figs.append(
            _save(
                fig,
                out,
                f"fig{num}_{kind}_influence",
                f"Fig. {num}: influence vs {axis_name} shift",
            )
        )

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
    figs.append(_save(fig, out, "fig8_defect", "Fig. 8: label-free equivariance defect D_g"))

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
    figs.append(_save(fig, out, "fig9_solver", "Fig. 9: solver statistics"))
    return figs
