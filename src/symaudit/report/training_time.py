"""The training-time report: symmetry diagnostics of every kept checkpoint against the step.

`build_training_time_report(audit_dirs, out)` takes over-training audits
(`symaudit.diagnostics.over_training`, one per model) and writes ``OUT/index.html``, the
figure ``training_time.{png,svg}`` and ``training_time.json`` (every number the page prints
and every value the figure drew, read back from the matplotlib artists). One figure column
per model, rows sharing the step axis (symlog: step 0, the initialisation, is on it):
training loss (per epoch) with the test one-step SMSE of each checkpoint; median E_g;
median D_g; median Frobenius diagonal M^g_ii / ||M^g||_F; median cosine diagonal (when the
audits computed it) — one line per group element, medians over all pooled test states.
Dotted vertical lines mark the half-way steps of `milestones`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from symaudit._io import (  # noqa: E402
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    exclusive,
    staged_dir,
)
from symaudit.diagnostics.over_training import (  # noqa: E402
    load_over_training,
    milestones,
    training_curves,
)
from symaudit.report.html import render_page  # noqa: E402

__all__ = ["build_training_time_report"]

FIGURE = "training_time"
_ROWS = (
    ("loss", "SMSE"),
    ("error", "median E_g"),
    ("defect", "median D_g"),
    ("frobenius", "median M^g_ii / ||M^g||_F"),
    ("cosine", "median cosine M^g_ii"),
)


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "–" if x is None else format(x, spec)


def _element_colours(elements: list[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10")
    return {g: ("black" if g == "e" else cmap(i % 10)) for i, g in enumerate(elements)}


def _tick_labels(steps: np.ndarray) -> list[str]:
    """A label for every checkpoint tick but those crowding the next labelled one (closer
    than a factor 1.5 on the log axis: 256 next to 312); the last is always labelled."""
    labels, right = [""] * len(steps), None
    for k in range(len(steps) - 1, -1, -1):
        if right is None or steps[k] == 0 or right >= 1.5 * steps[k]:
            labels[k], right = str(int(steps[k])), steps[k]
    return labels


def _draw(curves: list[dict], out: Path) -> dict[str, Any]:
    """The figure; returns per model and row the drawn lines {label: [y per step]}."""
    rows = [
        r
        for r in _ROWS
        if r[0] != "cosine" or any(c["orbit"]["cosine"][0] is not None for c in curves)
    ]
    fig, axes = plt.subplots(
        len(rows),
        len(curves),
        figsize=(5.2 * len(curves), 2.6 * len(rows)),
        sharex="col",
        squeeze=False,
    )
    drawn: dict[str, Any] = {}
    for j, c in enumerate(curves):
        steps = np.asarray(c["steps"], dtype=float)
        colours = _element_colours(c["elements"])
        ms = milestones(c)
        got: dict[str, dict[str, list[float]]] = {}
        for i, (key, ylabel) in enumerate(rows):
            ax = axes[i, j]
            lines = []
            if key == "loss":
                hist = [h for h in c["history"] if h.get("train_loss") is not None]
                if hist:
                    (ln,) = ax.plot(
                        [h["step"] for h in hist],
                        [h["train_loss"] for h in hist],
                        "-",
                        color="grey",
                        label="training loss (epoch mean)",
                    )
                    lines.append(ln)
                (ln,) = ax.plot(
                    steps, c["test_one_step"], "o-", color="black", ms=4, label="test one-step SMSE"
                )
                lines.append(ln)
                ax.set_yscale("log")
                ax.set_title(f"{c['model']} ({c['group']})")
            else:
                names = c["influence_elements"] if key in ("frobenius", "cosine") else c["elements"]
                values = c["median"][key]
                if key == "cosine" and values[0] is None:
                    ax.set_axis_off()
                    ax.text(0.5, 0.5, "cosine not computed", ha="center", transform=ax.transAxes)
                    continue
                arr = np.asarray(values, dtype=float)  # (checkpoints, elements)
                for k, g in enumerate(names):
                    if key == "defect" and g == "e":
                        continue  # D_e = 0 identically
                    (ln,) = ax.plot(steps, arr[:, k], "o-", ms=3, lw=1, color=colours[g], label=g)
                    lines.append(ln)
                if key in ("error", "defect"):
                    ax.set_yscale("log")
            mark = {"error": "log_error", "defect": "log_defect"}.get(key, key)
            m = ms.get(mark) if key != "loss" else None
            if m and m["half_way_step"] is not None:
                ax.axvline(m["half_way_step"], color="grey", ls=":", lw=1.2)
            got[key] = {ln.get_label(): [float(y) for y in ln.get_ydata()] for ln in lines}
            got[key]["_x"] = [float(x) for x in lines[-1].get_xdata()] if lines else []
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xticks(steps, _tick_labels(steps), fontsize=7)  # the checkpoints
            ax.grid(alpha=0.3)
            if j == len(curves) - 1 and key != "loss":
                ax.legend(fontsize=6, ncol=2, loc="best")
            elif key == "loss":
                ax.legend(fontsize=6, loc="best")
        axes[-1, j].set_xlabel("optimiser step (symlog)")
        drawn[c["model"]] = got
    fig.tight_layout()
    fig.savefig(out / f"{FIGURE}.png", dpi=110, bbox_inches="tight")
    fig.savefig(out / f"{FIGURE}.svg", bbox_inches="tight")
    plt.close(fig)
    return drawn


def build_training_time_report(
    audit_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, group: str | None = None
) -> Path:
    """Write the report (module docstring) for the over-training audits ``audit_dirs`` on
    ``group`` (default: the first audited group) into ``out`` (replaced as a whole); returns
    ``out/index.html``."""
    final = check_output_dir(out)
    if final.is_dir() and any(final.iterdir()) and not (final / f"{FIGURE}.json").is_file():
        raise ValueError(f"{final} holds files but no training-time report: give a new directory")
    if not audit_dirs:
        raise ValueError("no over-training audits given")
    loaded = [load_over_training(d) for d in audit_dirs]
    group = group or loaded[0].index["settings"]["groups"][0]
    curves = [training_curves(ot, group) for ot in loaded]
    with exclusive(final), staged_dir(final) as build:
        drawn = _draw(curves, build)
        numbers = {
            "audits": [str(Path(d)) for d in audit_dirs],
            "group": group,
            "models": {c["model"]: {"curves": c, "milestones": milestones(c)} for c in curves},
            "figure": drawn,
        }
        atomic_write_json(build / f"{FIGURE}.json", numbers)
        atomic_write_text(build / "index.html", _page(numbers))
    return final / "index.html"


def _verdict(ms: dict) -> str:
    coh = ms["coherence_measure"]
    first = ms["coherence_first"]
    e = ms["log_error"]
    c = ms[coh]
    if not e or e["half_way_step"] is None:
        return "the transformed error did not fall from the first to the last checkpoint"
    if not c or c["half_way_step"] is None:
        moved = (
            f" (it went from {c['first']:.3f} to {c['last']:.3f}, highest {c['extreme']:.3f} "
            f"at step {c['extreme_step']})"
            if c
            else ""
        )
        return (
            f"orbit coherence ({coh}) did not rise{moved}; the transformed error was half-way "
            f"down at step {e['half_way_step']}"
        )
    order = {True: "before", False: "after", None: "at the same checkpoint as"}[first]
    return (
        f"orbit coherence ({coh}) was half-way up at step {c['half_way_step']}, {order} the "
        f"transformed error was half-way down (step {e['half_way_step']})"
    )


def _page(numbers: dict) -> str:
    """The page, rendered from ``templates/training_time.html.j2`` (which keeps its own
    stylesheet)."""
    return render_page(
        "training_time.html.j2",
        group=numbers["group"],
        figure=FIGURE,
        milestones=[
            {
                "model": model,
                "cells": [_milestone(v["milestones"][key], key) for key in _MILESTONES],
                "verdict": _verdict(v["milestones"]),
            }
            for model, v in numbers["models"].items()
        ],
        checkpoints=[
            {"model": model, "rows": _checkpoint_rows(v["curves"])}
            for model, v in numbers["models"].items()
        ],
        audits=numbers["audits"],
    )


_MILESTONES = ("log_error", "log_defect", "frobenius", "cosine")


def _milestone(m: dict | None, key: str) -> str | None:
    """first → last (half-way step); min or max at its step -- None when not measured."""
    if m is None:
        return None
    half = m["half_way_step"] if m["half_way_step"] is not None else "no"
    extreme = "min" if key.startswith("log") else "max"
    return (
        f"{_fmt(m['first'], '.3f')} → {_fmt(m['last'], '.3f')} ({half}); "
        f"{extreme} {_fmt(m['extreme'], '.3f')} at {m['extreme_step']}"
    )


def _checkpoint_rows(c: dict) -> list[list]:
    o = c["orbit"]
    return [
        [
            step,
            c["epochs"][k],
            _fmt(c["test_one_step"][k]),
            *(_fmt(o[q][k], ".3f") for q in _MILESTONES),
        ]
        for k, step in enumerate(c["steps"])
    ]
