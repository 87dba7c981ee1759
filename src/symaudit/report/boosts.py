"""The boost page: E, D and the influence change against boost speed, per family, with the
solver's own defect drawn as the floor, and a table of the fitted small-speed exponents.

`build_boost_page(study_dir)` reads ``boosts.json`` (`run_boost_study`) and writes
``boosts.png``/``boosts.svg`` and ``index.html`` beside it (atomically). Every number in the
table comes from ``boosts.json`` (`boost_rows` returns them for tests).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from symaudit._io import atomic_path, atomic_write_text  # noqa: E402
from symaudit.report.figures import COLOURS  # noqa: E402
from symaudit.report.html import render_page  # noqa: E402

__all__ = ["boost_rows", "build_boost_page"]

_PANELS = (
    ("error", "E(c): transformed error"),
    ("defect", "D(c): equivariance defect"),
    ("kick_defect", "D_kick(c): defect at equal grid position"),
    ("influence_change", "|1 − I(c)|: self-influence change"),
)


def _fmt(x) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if isinstance(x, float) else str(x)  # the page template escapes


def _save_fig(fig, out: Path, name: str) -> None:
    for ext in ("png", "svg"):
        with atomic_path(out / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _figure(study: dict, out: Path) -> None:
    fams = list(study["models"][0]["families"]) if study["models"] else []
    fig, axes = plt.subplots(
        len(_PANELS), max(1, len(fams)), figsize=(4.2 * max(1, len(fams)), 12.5), squeeze=False
    )
    for j, fam in enumerate(fams):
        for i, (key, title) in enumerate(_PANELS):
            ax = axes[i, j]
            for mdl in study["models"]:
                cur = mdl["families"][fam]["curves"]
                if key not in cur:
                    continue
                pts = [(c, v) for c, v in zip(cur["speeds"], cur[key], strict=True) if c > 0]
                colour = COLOURS.get(mdl["architecture"], "#555")
                ax.loglog(
                    [p[0] for p in pts],
                    [max(p[1], 1e-30) for p in pts],
                    "o-",
                    color=colour,
                    label=mdl["preset"],
                )
                if key == "error":  # E(0), the unboosted error, as the reference level
                    ax.axhline(cur["error"][0], color=colour, ls=":", lw=1)
            flo = study.get("floor", {}).get(fam)
            if flo and key in ("error", "defect", "kick_defect"):
                cur = flo["curves"]
                pts = [(c, v) for c, v in zip(cur["speeds"], cur["defect"], strict=True) if c > 0]
                ax.loglog(
                    [p[0] for p in pts],
                    [max(p[1], 1e-30) for p in pts],
                    "k--",
                    label="solver floor D_data(c)",
                )
            ax.set_title(f"{fam}: {title}", fontsize=9)
            ax.set_xlabel("boost speed |c|")
            ax.grid(True, which="both", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, out, "boosts")


def boost_rows(study: dict) -> list[dict]:
    """One row per (model or floor, family): exponents and ranges from ``boosts.json``."""
    rows = []
    entries = [(m["preset"], m["families"]) for m in study["models"]]
    entries.append(("solver (floor)", study.get("floor", {})))
    for name, fams in entries:
        for fam, d in fams.items():
            cur, reg = d["curves"], d["regimes"]
            row = {"model": name, "family": fam, "c_min": cur["speeds"][1]}
            row["E(0)"] = cur["error"][0]
            row["E(c_min)"] = cur["error"][1]
            row["D(c_min)"] = cur["defect"][1]
            row["D_kick(c_min)"] = cur.get("kick_defect", [None, None])[1]
            for q in ("defect", "kick_defect", "influence_change", "cosine_deficit"):
                r = reg.get(q)
                row[f"{q} exponent"] = None if r is None else r["exponent"]
                row[f"{q} holds to"] = None if r is None else r["max_speed"]
            rows.append(row)
    return rows


def build_boost_page(study_dir: str | os.PathLike) -> Path:
    """Write ``index.html`` and the figure for the study in ``study_dir``; return the page."""
    out = Path(study_dir)
    study = json.loads((out / "boosts.json").read_text())
    _figure(study, out)
    rows = boost_rows(study)
    cols = list(rows[0]) if rows else []
    s = study["settings"]
    page = render_page(
        "boosts.html.j2",
        direction=_fmt(s.get("direction")),
        steps=s.get("steps"),
        dt=_fmt(s.get("dt")),
        resolution=s.get("resolution"),
        multiples=s.get("multiples"),
        per_family=s.get("per_family"),
        quantities=json.dumps(study.get("quantities", {})),
        cols=cols,
        rows=[[_fmt(r[c]) for c in cols] for r in rows],
    )
    return atomic_write_text(out / "index.html", page)
