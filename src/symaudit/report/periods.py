"""The patch-size ablation's page: ``OUT/{index.html, periods.json, periods.png,
periods.svg}`` — per model the measured period of its translation error and influence
profiles next to its natural period (`symaudit.diagnostics.periods`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from symaudit._io import atomic_write_json, atomic_write_text, staged_dir

__all__ = ["period_table", "write_periods_report"]


def period_table(audit_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """One entry per audit: model, natural period p, and per translation group the profiles,
    the F scan and measured period of the error profile (pooled and per family), and of
    the influence profile, and the aligned/non-aligned contrasts at p."""
    import json

    from symaudit.diagnostics.periods import aligned_contrast, period_scan, translation_profiles
    from symaudit.diagnostics.shifts import natural_period

    rows = []
    for d in audit_dirs:
        meta = json.loads((Path(d) / "audit.json").read_text())
        p = natural_period(meta["model"])
        groups = {}
        for spec, prof in translation_profiles(d).items():
            size = prof["size"]
            err = period_scan(prof["shifts"], prof["error_profile"], size)
            inf = period_scan(prof["influence_shifts"], prof["influence_profile"], size)
            groups[spec] = {
                **prof,
                "error_F": err["F"],
                "error_period": err["period"],
                "error_period_by_family": {
                    f: period_scan(prof["shifts"], v, size)["period"]
                    for f, v in prof["error_profile_by_family"].items()
                },
                "influence_F": inf["F"],
                "influence_period": inf["period"],
                "error_contrast": None
                if p is None
                else aligned_contrast(prof["shifts"], prof["error_profile"], p),
                "influence_contrast": None
                if p is None
                else aligned_contrast(prof["influence_shifts"], prof["influence_profile"], p),
            }
        rows.append(
            {
                "audit": str(d),
                "name": Path(d).name,
                "architecture": meta["model"]["architecture"],
                "natural_period": p,
                "groups": groups,
            }
        )
    return rows


def write_periods_report(audit_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Compute `period_table` and write the page (replaced as a whole); returns its path."""
    rows = period_table(audit_dirs)
    final = Path(out)
    with staged_dir(final) as build:
        atomic_write_json(build / "periods.json", {"models": rows})
        _figure(rows, build)
        atomic_write_text(build / "index.html", _html(rows))
    return final / "index.html"


def _figure(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(rows), figsize=(4.6 * len(rows), 6.5), squeeze=False)
    colours = {"shift-x": "#1f77b4", "shift-y": "#d62728"}
    for j, row in enumerate(rows):
        p = row["natural_period"]
        for spec, g in row["groups"].items():
            c = colours.get(spec, "k")
            axes[0, j].plot(g["shifts"], g["error_profile"], ".-", color=c, lw=1, label=spec)
            axes[1, j].plot(
                g["influence_shifts"], g["influence_profile"], "o-", color=c, lw=1, label=spec
            )
            size = g["size"]
        for ax in axes[:, j]:
            if p:
                for k in range(0, size + 1, p):
                    ax.axvline(k, color="k", ls=":", lw=0.7, alpha=0.6)
            ax.set_xlabel("shift (cells)")
        measured = ", ".join(f"{s[-1]}: {g['error_period']}" for s, g in row["groups"].items())
        axes[0, j].set_title(f"{row['name']} (p = {p}); measured {measured}", fontsize=9)
        axes[0, j].set_ylabel("mean log(E_s / E_0)")
        axes[1, j].set_ylabel("cross-influence median M^s_ii / M^e_ii")
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "periods.png", dpi=110, bbox_inches="tight")
    fig.savefig(out / "periods.svg", bbox_inches="tight")
    plt.close(fig)


def _f(x, spec: str = ".3g") -> str:
    return "–" if x is None else format(x, spec)


def _html(rows: list[dict]) -> str:
    """The page, rendered from ``templates/periods.html.j2``: one table row per (model, group)."""
    from symaudit.report.html import render_page

    table = []
    for r in rows:
        nat = r["natural_period"]
        for spec, g in r["groups"].items():
            best = g["error_F"].get(g["error_period"]) if g["error_period"] else None
            at_nat = g["error_F"].get(nat) if nat else None
            ec, ic = g["error_contrast"] or {}, g["influence_contrast"] or {}
            table.append(
                {
                    "name": r["name"],
                    "natural": _f(nat),
                    "group": spec,
                    "error_period": _f(g["error_period"]),
                    "by_family": ", ".join(
                        f"{f} {v}" for f, v in g["error_period_by_family"].items()
                    ),
                    "at_natural": _f(at_nat),
                    "best": _f(best),
                    "error_contrast": _f(ec.get("difference")),
                    "influence_period": _f(g["influence_period"]),
                    "aligned": _f(ic.get("aligned")),
                    "non_aligned": _f(ic.get("non_aligned")),
                }
            )
    return render_page("periods.html.j2", rows=table)
