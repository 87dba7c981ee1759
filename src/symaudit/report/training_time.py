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

import html
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

__all__ = ["build_training_time_report"]

FIGURE = "training_time"
_ROWS = (
    ("loss", "SMSE"),
    ("error", "median E_g"),
    ("defect", "median D_g"),
    ("frobenius", "median M^g_ii / ||M^g||_F"),
    ("cosine", "median cosine M^g_ii"),
)
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1250px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure img { max-width: 100%; border: 1px solid #eee; }
"""


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "–" if x is None else format(x, spec)


def _e(x: Any) -> str:
    return html.escape(str(x))


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
    p = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>symaudit: symmetry over training time</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Symmetry learning over training time</h1>",
        f"<p>Group <code>{_e(numbers['group'])}</code>. Every kept checkpoint of each run is "
        "audited with the same test mini-batches, damping rule and solver settings. "
        "Medians over all pooled test states. 'Half-way step': the first audited step at "
        "which a quantity has covered half of its change between the first and the last "
        "checkpoint (errors on a log scale: mean log<sub>10</sub> over states and "
        "non-identity elements; coherence: median diagonal over them). Its resolution is "
        "the spacing of the checkpoints.</p>",
        "<h2>When does the orbit become coherent?</h2><table><tr><th>model</th>"
        "<th>mean log10 E_g: first → last (half-way step); min at step</th>"
        "<th>mean log10 D_g: first → last (half-way step); min at step</th>"
        "<th>Frobenius diagonal: first → last (half-way step); max at step</th>"
        "<th>cosine diagonal: first → last (half-way step); max at step</th>"
        "<th>reading</th></tr>",
    ]
    for model, v in numbers["models"].items():
        ms = v["milestones"]
        cells = []
        for key in ("log_error", "log_defect", "frobenius", "cosine"):
            m = ms[key]
            cells.append(
                "<td>–</td>"
                if m is None
                else f"<td class='num'>{_fmt(m['first'], '.3f')} → {_fmt(m['last'], '.3f')} "
                f"({_e(m['half_way_step'] if m['half_way_step'] is not None else 'no')}); "
                f"{'min' if key.startswith('log') else 'max'} {_fmt(m['extreme'], '.3f')} at "
                f"{m['extreme_step']}</td>"
            )
        p.append(f"<tr><td>{_e(model)}</td>{''.join(cells)}<td>{_e(_verdict(ms))}</td></tr>")
    p.append("</table>")
    p.append(
        f"<figure><img src='{FIGURE}.svg' alt='symmetry diagnostics against training step'>"
        "<figcaption>Per model (columns), against the optimiser step: training loss per epoch "
        "and the test one-step SMSE of each checkpoint; median transformed error E_g and "
        "defect D_g per element; median Frobenius-normalised and cosine influence diagonal "
        "per element. Dotted lines: half-way steps. "
        f"(<a href='{FIGURE}.png'>PNG</a>, <a href='{FIGURE}.svg'>SVG</a>)</figcaption>"
        "</figure>"
    )
    for model, v in numbers["models"].items():
        c = v["curves"]
        p.append(
            f"<h2>{_e(model)}: every checkpoint</h2><table><tr><th>step</th><th>epoch</th>"
            "<th>test one-step SMSE</th><th>mean log10 E_g</th><th>mean log10 D_g</th>"
            "<th>Frobenius diagonal</th><th>cosine diagonal</th></tr>"
        )
        o = c["orbit"]
        for k, step in enumerate(c["steps"]):
            p.append(
                f"<tr><td class='num'>{step}</td><td class='num'>{c['epochs'][k]}</td>"
                f"<td class='num'>{_fmt(c['test_one_step'][k])}</td>"
                f"<td class='num'>{_fmt(o['log_error'][k], '.3f')}</td>"
                f"<td class='num'>{_fmt(o['log_defect'][k], '.3f')}</td>"
                f"<td class='num'>{_fmt(o['frobenius'][k], '.3f')}</td>"
                f"<td class='num'>{_fmt(o['cosine'][k], '.3f')}</td></tr>"
            )
        p.append("</table>")
    p.append("<h2>Sources</h2><ul>")
    p += [f"<li><code>{_e(a)}</code></li>" for a in numbers["audits"]]
    p.append(
        f"</ul><p>All numbers of this page are in <a href='{FIGURE}.json'>{FIGURE}.json</a>."
        "</p></body></html>"
    )
    return "\n".join(p)
