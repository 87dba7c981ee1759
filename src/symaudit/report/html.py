"""The HTML report: one self-contained page referencing the figure files beside it."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from symaudit._io import (
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    exclusive,
    staged_dir,
)
from symaudit.report.figures import COLOURS, make_figures
from symaudit.report.findings import (
    StudyData,
    findings,
    load_study,
    readings,
    summary,
    unique_dirs,
)

__all__ = ["build_report"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1250px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em;
       margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.reproduced { background: #e4f5e4; } .not-reproduced { background: #fbe3e3; }
.not-testable { background: #eee; } .partly { background: #fdf3d8; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.95em; margin-top: 0.4em; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px;
          vertical-align: middle; margin-right: 0.3em; }
.warn { color: #a00; font-weight: bold; }
"""

_FIGURE_TEXT = {
    "fig1_test_error": "test_error",
    "fig2_d4_error": "d4_error",
    "fig3_d4_influence": "d4_influence",
    "fig4_shift-x_error": "shift-x_error",
    "fig5_shift-y_error": "shift-y_error",
    "fig6_shift-x_influence": "shift-x_influence",
    "fig7_shift-y_influence": "shift-y_influence",
    "fig8_defect": "defect",
}


_STATUS_CLASS = {
    "reproduced": "reproduced",
    "not reproduced": "not-reproduced",
    "not testable": "not-testable",
}


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _group_tables(study, numbers: dict) -> list[str]:
    """One table per model and audited group (every group, whatever its kind): per element
    the median E_g, median and max D_g and the median cosine influence over pooled states."""
    p = [
        "<h2>Every audited group</h2><p>Per element: median transformed error E<sub>g</sub>, "
        "median and max defect D<sub>g</sub>, median cosine influence M<sup>g</sup><sub>ii"
        "</sub> over all pooled test states.</p>"
    ]
    for m in study.models:
        for g in numbers[m.preset].values():
            if not isinstance(g, dict) or "elements" not in g:
                continue
            # influence (and so the cosine) may cover a subset of the elements (shifts)
            by_el = dict(
                zip(g.get("influence_elements", []), g["median_cosine"] or [], strict=False)
            )
            cos = [by_el.get(el) for el in g["elements"]]
            rows = "".join(
                f"<tr><td>{_e(el)}</td><td class='num'>{_fmt(e)}</td>"
                f"<td class='num'>{_fmt(d)}</td><td class='num'>{_fmt(dm)}</td>"
                f"<td class='num'>{_fmt(c)}</td></tr>"
                for el, e, d, dm, c in zip(
                    g["elements"],
                    g["median_error"],
                    g["median_defect"],
                    g["max_defect"],
                    cos,
                    strict=True,
                )
            )
            p.append(
                f"<details><summary>{_e(m.label)}: <code>{_e(g['spec'])}</code> "
                f"({len(g['elements'])} elements, {g['num_states']} states)</summary>"
                "<table><tr><th>element</th><th>median E_g</th><th>median D_g</th>"
                f"<th>max D_g</th><th>median cosine</th></tr>{rows}</table></details>"
            )
    return p


def _per_seed(m, key: str) -> str:
    return _e(", ".join(f"{m.timing[s][key]:.1f}" for s in m.seeds))


def build_report(audit_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Figures (PNG + SVG), ``report.json`` (every number shown) and ``index.html`` in ``out``
    from the given audit directories (a directory named twice counts once). Returns the HTML
    path. The report is built beside ``out`` and replaces an old one as a whole, so an
    interrupted rewrite leaves the old report, never a mix of old and new figures."""
    final = check_output_dir(out)
    if final.is_dir() and any(final.iterdir()) and not (final / "report.json").is_file():
        raise ValueError(f"{final} holds files but no symaudit report: give a new directory")
    audit_dirs = unique_dirs(audit_dirs)
    study = load_study(audit_dirs)  # before staging: a bad audit leaves no trace
    with exclusive(final), staged_dir(final) as build:
        _write_report(study, audit_dirs, build)
    return final / "index.html"


def _write_report(study: StudyData, audit_dirs: Sequence[str | os.PathLike], out: Path) -> Path:
    figs = make_figures(study, out)
    numbers = summary(study)
    found = findings(study)
    read = readings(study)
    solver = {m.preset: [r for g in m.groups.values() for r in g.solver] for m in study.models}
    atomic_write_json(
        out / "report.json",
        {
            "audits": [str(Path(d)) for d in audit_dirs],
            "models": numbers,
            "findings": found,
            "readings": read,
            "solver": solver,
            # the values each figure drew, per family and model (read back from the plot)
            "figures": {f.id: f.data for f in figs if f.data},
        },
    )

    p: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>symaudit report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>symaudit report: learned symmetry of neural Euler emulators</h1>",
        f"<p>{len(audit_dirs)} audits; grid {'×'.join(map(str, study.resolution))}. "
        "Errors are one-step SMSE (squared error scaled by the training-set RMS of each "
        "channel; dimensionless). D4 is audited at the first step of the rollout, "
        "translations at the last step inside the training window. Box plots pool all seeds "
        "and test mini-batches (Tukey: box = quartiles, whiskers = 1.5 IQR).</p>",
        "<h2>Models</h2><table><tr><th>model</th><th>parameters</th><th>seeds</th>"
        "<th>test one-step SMSE (per seed)</th><th>persistence x<sub>t+1</sub> = x<sub>t"
        "</sub></th><th>beats persistence on every family and seed?</th></tr>",
    ]
    for m in study.models:
        colour = COLOURS.get(m.architecture, "#888")
        te = [m.test_errors[s]["one_step"] for s in m.seeds]
        pe = [m.test_errors[s]["persistence_one_step"] for s in m.seeds]
        # every seed on every family (the pooled number hides the small-scale families)
        per_fam = [
            (e["one_step"], e["persistence_one_step"])
            for v in m.family_errors.values()
            for e in v.values()
        ] or list(zip(te, pe, strict=True))
        beats = all(a < b for a, b in per_fam)
        params = solver[m.preset][0]["num_params"] if solver[m.preset] else "–"
        p.append(
            f"<tr><td><span class='swatch' style='background:{colour}'></span>{_e(m.label)}"
            f"</td><td class='num'>{_e(params)}</td><td>{_e(', '.join(map(str, m.seeds)))}"
            f"</td><td class='num'>{_e(', '.join(_fmt(x) for x in te))}</td>"
            f"<td class='num'>{_e(', '.join(_fmt(x) for x in pe))}</td>"
            f"<td>{'yes' if beats else '<span class=warn>no</span>'}</td></tr>"
        )
    p.append("</table>")
    fams = sorted({f for m in study.models for v in m.family_errors.values() for f in v})
    if fams:
        p.append(
            "<p>Per initial-condition family (one-step SMSE on all test transitions, mean "
            "over seeds; the scale is the training-set RMS of all families together, so "
            "families with strong dynamics dominate the pooled number):</p><table><tr>"
            "<th>model</th>"
            + "".join(f"<th>{_e(f)}: model / persistence</th>" for f in fams)
            + "</tr>"
        )
        for m in study.models:
            cells = []
            for f in fams:
                te = [v[f]["one_step"] for v in m.family_errors.values() if f in v]
                pe = [v[f]["persistence_one_step"] for v in m.family_errors.values() if f in v]
                if not te:
                    cells.append("<td>–</td>")
                    continue
                a, b = float(np.mean(te)), float(np.mean(pe))
                mark = "" if a < b else " <span class=warn>(worse)</span>"
                cells.append(f"<td class='num'>{a:.3g} / {b:.3g} = {a / b:.2f}{mark}</td>")
            p.append(f"<tr><td>{_e(m.label)}</td>{''.join(cells)}</tr>")
        p.append("</table>")
    p.append(
        "<h2>The paper's findings at this scale</h2><p>Status at the main damping "
        f"(λ = {_e(study.dampings[0] if study.dampings else '–')}); the last column says "
        "whether an influence finding is reproduced at every damping audited, at some or at "
        "none (the paper does not state its λ).</p><table><tr><th></th><th>claim</th>"
        "<th>criterion</th><th>numbers</th><th>status</th><th>λ robustness</th></tr>"
    )
    for f in found:
        cls = _STATUS_CLASS.get(f["status"], "partly")
        p.append(
            f"<tr class='{cls}'><td>{_e(f['id'])}</td><td>{_e(f['claim'])}</td>"
            f"<td>{_e(f['criterion'])}</td><td>{_e(f['numbers'])}</td>"
            f"<td><b>{_e(f['status'])}</b></td><td>{_e(f['dampings'])}</td></tr>"
        )
    p.append("</table>")
    p += _group_tables(study, numbers)
    p.append("<h2>Figures</h2>")
    for fig in figs:
        key = _FIGURE_TEXT.get(fig.id)
        text = read.get(key, "") if key else ""
        p.append(
            f"<figure id='{_e(fig.id)}'><img src='{_e(fig.svg)}' alt='{_e(fig.title)}'>"
            f"<figcaption><b>{_e(fig.title)}.</b> {_e(text)} "
            f"(<a href='{_e(fig.png)}'>PNG</a>, <a href='{_e(fig.svg)}'>SVG</a>)"
            "</figcaption></figure>"
        )
    p.append(
        "<h2>Solver statistics</h2><p>Conjugate gradients on chi = eta + lambda I, stopping "
        "per column at ||chi u - b|| &le; rtol ||b|| (true residual recomputed). A residual "
        "evaluated in the working precision (machine epsilon eps) is accurate to about its "
        "'attainable accuracy' eps (||chi|| ||u|| / ||b|| + 1), which is also the smallest "
        "residual the solver can reach. "
        "'test' solves give u<sub>i</sub> = chi<sup>-1</sup> grad C<sub>x_i</sub>; 'cosine' "
        "solves give the transformed states' norms. One solve per mini-batch and damping; "
        "CG time is the wall time of those solves summed over the audit's mini-batches and "
        "dampings, influence time the wall time of the whole influence computations "
        "(gradients, sketch, spectrum and solves), per seed.</p><table><tr><th>model</th>"
        "<th>solves</th><th>columns</th><th>rtol</th><th>max residual</th><th>attainable "
        "accuracy (max)</th><th>median iterations</th><th>max iterations</th>"
        "<th>converged</th><th>lambda (median)</th>"
        "<th>CG time per audit (s)</th><th>influence time per audit (s)</th></tr>"
    )
    for m in study.models:
        rows = solver[m.preset]
        if not rows:
            continue
        cols = sum(r["columns"] for r in rows)
        conv = sum(r["converged"] for r in rows)
        warn = "" if conv == cols else " <span class=warn>NOT ALL CONVERGED</span>"
        p.append(
            f"<tr><td>{_e(m.label)}</td><td class='num'>{len(rows)}</td>"
            f"<td class='num'>{cols}</td><td class='num'>"
            f"{_e(', '.join(sorted({format(r['rtol'], 'g') for r in rows})))}</td>"
            f"<td class='num'>{max(r['max_residual'] for r in rows):.3g}</td>"
            f"<td class='num'>{_max_or_dash(r['max_attainable'] for r in rows)}</td>"
            f"<td class='num'>{np.median([r['median_iterations'] for r in rows]):.0f}</td>"
            f"<td class='num'>{max(r['max_iterations'] for r in rows)}</td>"
            f"<td class='num'>{conv}/{cols}{warn}</td>"
            f"<td class='num'>{np.median([r['damping'] for r in rows]):.3g}</td>"
            f"<td class='num'>{_per_seed(m, 'solve_seconds')}</td>"
            f"<td class='num'>{_per_seed(m, 'influence_seconds')}</td></tr>"
        )
    p.append("</table>")
    p.append("<h2>Sources</h2><ul>")
    for m in study.models:
        for a in m.audits:
            p.append(f"<li>{_e(m.label)}: <code>{_e(a)}</code></li>")
    p.append(
        "</ul><p>All numbers in this page are in <a href='report.json'>report.json</a>.</p>"
        "</body></html>"
    )
    return atomic_write_text(out / "index.html", "\n".join(p))


def _max_or_dash(values) -> str:
    known = [v for v in values if v is not None]
    return f"{max(known):.2g}" if known else "&mdash;"
