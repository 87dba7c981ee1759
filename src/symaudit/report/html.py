"""The HTML report: one self-contained page referencing the figure files beside it."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
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

__all__ = ["SECTIONS", "build_report", "render_page"]

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


#: builders of extra report sections: each takes the loaded `StudyData` and returns
#: (title, HTML body) -- the body is inserted as it is, so escape what it quotes -- or None
#: to add nothing. A module with its own section appends its builder here.
SECTIONS: list[Callable[[StudyData], tuple[str, str] | None]] = []


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


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
    """The figures, report.json, and index.html rendered from ``templates/report.html.j2``."""
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
    families = sorted({f for m in study.models for v in m.family_errors.values() for f in v})
    page = render_page(
        "report.html.j2",
        audits=len(audit_dirs),
        grid="×".join(map(str, study.resolution)),
        models=[_model_row(m, solver[m.preset]) for m in study.models],
        families=families,
        family_rows=[_family_row(m, families) for m in study.models],
        main_damping=study.dampings[0] if study.dampings else "–",
        findings=[{**f, "cls": _STATUS_CLASS.get(f["status"], "partly")} for f in found],
        group_tables=_group_tables(study, numbers),
        figures=[_figure(fig, read) for fig in figs],
        solver_rows=[_solver_row(m, solver[m.preset]) for m in study.models if solver[m.preset]],
        sections=_sections(study),
        sources=[(m.label, a) for m in study.models for a in m.audits],
    )
    return atomic_write_text(out / "index.html", page)


def render_page(template: str, **context: object) -> str:
    """``templates/<template>`` rendered with ``context`` (autoescaped; a missing value is an
    error). Every page extends ``page.html.j2``, which gets the shared stylesheet as ``css``."""
    return _environment().get_template(template).render(css=_CSS, **context)


@functools.cache
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("symaudit.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a missing value is an error, not an empty cell
        keep_trailing_newline=True,
    )


def _sections(study: StudyData) -> list[tuple[str, object]]:
    from markupsafe import Markup

    out = []
    for build in SECTIONS:
        section = build(study)
        if section is not None:
            out.append((section[0], Markup(section[1])))
    return out


def _model_row(m, solver_rows: list[dict]) -> dict:
    te = [m.test_errors[s]["one_step"] for s in m.seeds]
    pe = [m.test_errors[s]["persistence_one_step"] for s in m.seeds]
    # every seed on every family (the pooled number hides the small-scale families)
    per_fam = [
        (e["one_step"], e["persistence_one_step"])
        for v in m.family_errors.values()
        for e in v.values()
    ] or list(zip(te, pe, strict=True))
    return {
        "colour": COLOURS.get(m.architecture, "#888"),
        "label": m.label,
        "params": solver_rows[0]["num_params"] if solver_rows else "–",
        "seeds": ", ".join(map(str, m.seeds)),
        "test": ", ".join(_fmt(x) for x in te),
        "persistence": ", ".join(_fmt(x) for x in pe),
        "beats": all(a < b for a, b in per_fam),
    }


def _family_row(m, families: list[str]) -> dict:
    cells = []
    for f in families:
        te = [v[f]["one_step"] for v in m.family_errors.values() if f in v]
        pe = [v[f]["persistence_one_step"] for v in m.family_errors.values() if f in v]
        if not te:
            cells.append(None)
            continue
        a, b = float(np.mean(te)), float(np.mean(pe))
        cells.append({"text": f"{a:.3g} / {b:.3g} = {a / b:.2f}", "worse": not a < b})
    return {"label": m.label, "cells": cells}


def _group_tables(study, numbers: dict) -> list[dict]:
    """One table per model and audited group (every group, whatever its kind): per element
    the median E_g, median and max D_g and the median cosine influence over pooled states."""
    tables = []
    for m in study.models:
        for g in numbers[m.preset].values():
            if not isinstance(g, dict) or "elements" not in g:
                continue
            # influence (and so the cosine) may cover a subset of the elements (shifts)
            by_el = dict(
                zip(g.get("influence_elements", []), g["median_cosine"] or [], strict=False)
            )
            rows = [
                (el, _fmt(e), _fmt(d), _fmt(dm), _fmt(by_el.get(el)))
                for el, e, d, dm in zip(
                    g["elements"],
                    g["median_error"],
                    g["median_defect"],
                    g["max_defect"],
                    strict=True,
                )
            ]
            tables.append(
                {"label": m.label, "spec": g["spec"], "rows": rows, "states": g["num_states"]}
            )
    return tables


def _figure(fig, read: dict) -> dict:
    key = _FIGURE_TEXT.get(fig.id)
    return {
        "id": fig.id,
        "svg": fig.svg,
        "png": fig.png,
        "title": fig.title,
        "text": read.get(key, "") if key else "",
    }


def _solver_row(m, rows: list[dict]) -> dict:
    known = [r["max_attainable"] for r in rows if r["max_attainable"] is not None]
    return {
        "label": m.label,
        "solves": len(rows),
        "columns": sum(r["columns"] for r in rows),
        "converged": sum(r["converged"] for r in rows),
        "rtol": ", ".join(sorted({format(r["rtol"], "g") for r in rows})),
        "max_residual": f"{max(r['max_residual'] for r in rows):.3g}",
        "attainable": f"{max(known):.2g}" if known else "—",
        "median_iterations": f"{np.median([r['median_iterations'] for r in rows]):.0f}",
        "max_iterations": max(r["max_iterations"] for r in rows),
        "damping": f"{np.median([r['damping'] for r in rows]):.3g}",
        "solve_seconds": _per_seed(m, "solve_seconds"),
        "influence_seconds": _per_seed(m, "influence_seconds"),
    }


def _per_seed(m, key: str) -> str:
    return ", ".join(f"{m.timing[s][key]:.1f}" for s in m.seeds)
