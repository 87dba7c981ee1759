"""The check-data page: the data generator's own symmetry, as the floor of model E_g.

`build_check_page(out, result)` writes ``check.json``, a figure of the paired solver defect per
element (``check_paired.png``/``.svg``) and ``index.html``; `check_rows` gives the table's
numbers (tests compare them with ``check.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from symaudit._io import atomic_write_json, atomic_write_text  # noqa: E402
from symaudit.report.boosts import _fmt, _save_fig  # noqa: E402
from symaudit.report.html import render_page  # noqa: E402

__all__ = ["build_check_page", "check_rows", "floor_rows"]


def check_rows(result: dict) -> tuple[list[dict], list[dict]]:
    """(paired rows, statistical rows): one paired row per (file, element); one statistical
    row per (file, group spec, element) with its largest |z| over snapshots and features."""
    paired, stat = [], []
    for f in result["files"]:
        name = Path(f["file"]).name
        for spec, rows in (f.get("paired") or {}).get("groups", {}).items():
            for el, r in rows.items():
                paired.append({"file": name, "group": spec, "element": el, **r})
        for spec, s in f["statistical"].items():
            by_el: dict[str, dict] = {}
            for r in s["rows"]:
                cur = by_el.get(r["element"])
                if cur is None or abs(r["z"]) > abs(cur["z"]):
                    by_el[r["element"]] = r
            for el, r in by_el.items():
                stat.append(
                    {
                        "file": name,
                        "group": spec,
                        "element": el,
                        "time": r["time"],
                        "feature": r["feature"],
                        "z": r["z"],
                        "threshold": s["threshold"],
                        "relative": r["relative"],
                        "noise": r["noise"],
                        "flag": s["flagged"][el],
                    }
                )
    return paired, stat


def floor_rows(result: dict, audits: list) -> list[dict]:
    """Model E_g and D_g (medians over the audit's test states of that family) next to the
    generator's D_g floor re-expressed in the model's SMSE units (its ``channel_rms``), for
    every audited element the paired check also measured. ``audits``:
    `symaudit.diagnostics.audit.AuditRecord` objects."""
    floor: dict[tuple[str, str], torch.Tensor] = {}
    for f in result["files"]:
        for rows in (f.get("paired") or {}).get("groups", {}).values():
            for el, r in rows.items():
                floor[(f["family"], el)] = torch.tensor(r["defect_msd"], dtype=torch.float64)
    out = []
    for rec in audits:
        for spec, eqs in rec.equivariance.items():
            for k, eq in enumerate(eqs):
                fam = rec.meta["pieces"][spec][k]["family"]
                w = 1.0 / torch.tensor(eq.settings["channel_rms"], dtype=torch.float64).square()
                e0 = float(eq.error[eq.index("e")].median()) if "e" in eq.elements else None
                for i, el in enumerate(eq.elements):
                    if (fam, el) not in floor:
                        continue
                    out.append(
                        {
                            "model": rec.model,
                            "family": fam,
                            "group": spec,
                            "element": el,
                            "model E_g": float(eq.error[i].median()),
                            "model E_e": e0,
                            "model D_g": float(eq.defect[i].median()),
                            "generator D_g (floor)": float(
                                (floor[(fam, el)] * w).mean(-1).median()
                            ),
                        }
                    )
    return out


def _figure(paired: list[dict], out: Path) -> bool:
    if not paired:
        return False
    files = sorted({r["file"] for r in paired})
    width = max(4.0, 0.2 * len(paired) / len(files))
    fig, axes = plt.subplots(1, len(files), figsize=(width * len(files), 3.6), squeeze=False)
    for ax, name in zip(axes[0], files, strict=True):
        rows = [r for r in paired if r["file"] == name]
        vals = [max(r["defect"], 1e-30) for r in rows]
        ax.bar(range(len(rows)), vals, color=["#c33" if r["broken"] else "#4a4" for r in rows])
        ax.set_yscale("log")
        ax.set_ylim(1e-31, max(vals) * 10)
        ax.set_xticks(range(len(rows)), [r["element"] for r in rows], rotation=90, fontsize=6)
        ax.set_title(f"{name}: solver D_g (0 drawn at 1e-30)", fontsize=9)
    _save_fig(fig, out, "check_paired")
    return True


def build_check_page(out: str | os.PathLike, result: dict, audits: list | None = None) -> Path:
    """Write ``check.json``, the figure and ``index.html`` into ``out``; return the page. With
    ``audits`` (`AuditRecord` list), a table puts each model's E_g over the generator floor."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    floors = floor_rows(result, audits or [])
    atomic_write_json(out / "check.json", {**result, "model_vs_floor": floors})
    paired, stat = check_rows(result)
    has_fig = _figure(paired, out)
    s = result["settings"]
    pcols = ["file", "group", "element", "defect", "defect_max", "error", "broken"]
    scols = [
        "file",
        "group",
        "element",
        "time",
        "feature",
        "z",
        "threshold",
        "relative",
        "noise",
        "flag",
    ]
    page = render_page(
        "data_check.html.j2",
        trajectories=s["trajectories"],
        step=s["step"],
        tolerance=format(s["tolerance"], "g"),
        alpha=format(s["alpha"], "g"),
        figure=has_fig,
        paired=_table(paired, pcols),
        floors=_table(floors, list(floors[0]) if floors else []),
        statistical=_table(stat, scols),
    )
    return atomic_write_text(out / "index.html", page)


def _table(rows: list[dict], cols: list[str]) -> dict:
    """Formatted cells; a row is marked when its element is broken or flagged."""
    return {
        "cols": cols,
        "rows": [
            {
                "bad": bool(r.get("broken") or r.get("flag")),
                "cells": [_fmt(r[c]) for c in cols],
            }
            for r in rows
        ],
    }
