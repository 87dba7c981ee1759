"""The augmentation comparison's page: ``OUT/compare/{index.html, augment.json, augment.png,
augment.svg}`` (`symaudit.pipeline.augment`).

Errors are relative to persistence per family and then averaged over families, so each
family counts once whatever its field scale (pooled SMSE is owned by CE-RPUI):

    rel E_g = mean_f  E_g,f / P_f,     E_g,f = mean over family f's test transitions of
    SMSE(f(g x_t), g x_t+1),  P_f = mean SMSE(x_t, x_t+1).

"untransformed" is rel E_e, "transformed" the mean of rel E_g over the seven g ≠ e. The
influence columns are the new audit's ρ_g = median_i M^g_ii / M^e_ii
(`symaudit.diagnostics.augmentation`), averaged over the seven g ≠ e.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from symaudit._io import atomic_write_json, atomic_write_text, staged_dir
from symaudit.training.augment_subset import D4_ORDER

__all__ = ["augment_summary", "write_augment_report"]

_ARM_COLOURS = {"none": "#7f7f7f", "influence": "#d62728", "d4": "#2ca02c"}
_RANDOM_COLOUR = "#1f77b4"


def _rel(orbit: dict[str, dict]) -> dict[str, float]:
    """rel E_g per element (module docstring) from `orbit_errors` output."""
    fams = list(orbit)
    return {
        g: float(np.mean([orbit[f]["error"][g] / orbit[f]["persistence"] for f in fams]))
        for g in orbit[fams[0]]["error"]
    }


def _mean_others(values: dict[str, float]) -> float:
    return float(np.mean([v for g, v in values.items() if g != "e"]))


def augment_summary(rows: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per-seed comparisons and their spread from the per-(arm, seed) ``rows`` (each with
    ``arm``, ``seed``, ``untransformed``, ``transformed``): for each seed, the influence
    arm's transformed error minus the mean over the random arms (Δ < 0: influence picked
    better than chance), the share of random arms it beats, and each arm's fraction of the
    full-D4 gain (T_none − T_arm) / (T_none − T_d4); then mean and standard deviation over
    seeds (sample sd, ddof = 1; None for one seed)."""
    seeds = sorted({r["seed"] for r in rows})
    at = {(r["arm"], r["seed"]): r for r in rows}
    randoms = [a for a in arms if a.startswith("random")]
    per_seed = []
    for s in seeds:
        t = {a: at[(a, s)]["transformed"] for a in arms if (a, s) in at}
        rand = [t[a] for a in randoms if a in t]
        gain = t["none"] - t["d4"]
        none = at.get(("none", s), {})
        per_seed.append(
            {
                "seed": s,
                # does low cross-influence mark the elements the un-augmented model gets
                # wrong? Spearman over the seven g != e of rho_g against rel E_g
                "spearman_influence_error": _spearman(none.get("influence"), none.get("rel_error")),
                "delta_vs_random": t["influence"] - float(np.mean(rand)) if rand else None,
                "beats_random": (
                    float(np.mean([t["influence"] < x for x in rand])) if rand else None
                ),
                "gain_fraction": {a: (t["none"] - t[a]) / gain if gain != 0 else None for a in t},
            }
        )

    def spread(values: list[float | None]) -> dict[str, Any]:
        v = [x for x in values if x is not None]
        return {
            "mean": float(np.mean(v)) if v else None,
            "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "n": len(v),
        }

    by_arm = {}
    for a in arms:
        rs = [r for r in rows if r["arm"] == a]
        by_arm[a] = {k: spread([r[k] for r in rs]) for k in ("untransformed", "transformed")}
    # pooled over seeds: every random arm of every seed, against the influence arms
    rand_all = [r["transformed"] for r in rows if r["arm"] in randoms]
    return {
        "per_seed": per_seed,
        "delta_vs_random": spread([p["delta_vs_random"] for p in per_seed]),
        "beats_random": spread([p["beats_random"] for p in per_seed]),
        "by_arm": by_arm,
        "random_pooled": spread(rand_all),
    }


def _spearman(a: dict[str, float] | None, b: dict[str, float] | None) -> float | None:
    """Spearman rank correlation of ``a[g]`` and ``b[g]`` over g != e (no ties expected in
    continuous measurements; None if either is missing)."""
    if not a or not b:
        return None
    keys = [g for g in D4_ORDER if g != "e" and g in a and g in b]
    ra = np.argsort(np.argsort([a[g] for g in keys]))
    rb = np.argsort(np.argsort([b[g] for g in keys]))
    return float(np.corrcoef(ra, rb)[0, 1])


def write_augment_report(out: Path, preset, *, device: str = "cpu") -> Path:
    """Evaluate every arm of ``preset`` under ``out`` and write ``out/compare`` (replaced as
    a whole). Returns the HTML path."""
    from symaudit.diagnostics.augmentation import cross_influence, orbit_errors

    rows: list[dict[str, Any]] = []
    selections = {}
    for seed in preset.seeds:
        sel = _read_json(out / "selection" / f"s{seed}.json")
        selections[seed] = sel
        for arm in preset.arms:
            name = f"{arm}-s{seed}"
            orbit = orbit_errors(out / "runs" / name, [out / "data" / "test"], device=device)
            rel = _rel(orbit)
            audit = out / "audits" / name
            rho = (
                {g: float(np.median(v)) for g, v in cross_influence(audit).items()}
                if (audit / "audit.json").exists()
                else None  # not audited (`AugmentPreset.audit_random`)
            )
            elements = (
                []
                if arm == "none"
                else list(D4_ORDER[1:])
                if arm == "d4"
                else sel["influence"]
                if arm == "influence"
                else sel["random"][int(arm[6:])]
                if int(arm[6:]) < len(sel["random"])
                else None
            )
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "elements": elements,
                    "orbit": orbit,
                    "rel_error": rel,
                    "untransformed": rel["e"],
                    "transformed": _mean_others(rel),
                    "influence": rho,
                    "mean_influence": None if rho is None else _mean_others(rho),
                }
            )
    summary = augment_summary(rows, list(preset.arms))
    data = {
        "preset": preset.to_dict(),
        "selections": {
            str(s): {k: v for k, v in sel.items() if k != "per_state"}
            for s, sel in selections.items()
        },
        "rows": rows,
        "summary": summary,
    }
    final = out / "compare"
    with staged_dir(final) as build:
        atomic_write_json(build / "augment.json", data)
        _figure(rows, list(preset.arms), build)
        atomic_write_text(build / "index.html", _html(data, preset))
    return final / "index.html"


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _arm_colour(arm: str) -> str:
    return _ARM_COLOURS.get(arm, _RANDOM_COLOUR)


def _figure(rows: list[dict], arms: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for i, arm in enumerate(arms):
        rs = [r for r in rows if r["arm"] == arm]
        for j, key in enumerate(("untransformed", "transformed")):
            x = i + (j - 0.5) * 0.3
            ax.scatter(
                [x] * len(rs),
                [r[key] for r in rs],
                color=_arm_colour(arm),
                marker="o" if j == 0 else "s",
                facecolors="none" if j == 0 else _arm_colour(arm),
                label=("untransformed (○)" if j == 0 else "D4-transformed (■)") if i == 0 else None,
            )
    ax.set_xticks(range(len(arms)), arms, rotation=30)
    ax.set_ylabel("test SMSE / persistence (mean over families)")
    ax.set_title("error per arm (one point per seed)")
    ax.legend(fontsize=8)
    for ax, key, ylabel in (
        (axes[1], "rel_error", "E_g / persistence"),
        (axes[2], "influence", "cross-influence ρ_g = M^g_ii / M^e_ii (median)"),
    ):
        for arm in arms:
            rs = [r for r in rows if r["arm"] == arm and r[key] is not None]
            if not rs:
                continue
            vals = np.array([[r[key][g] for g in D4_ORDER] for r in rs])
            ax.plot(
                range(8),
                vals.mean(0),
                marker="o",
                color=_arm_colour(arm),
                alpha=0.5 if arm.startswith("random") else 1.0,
                label=arm,
            )
        ax.set_xticks(range(8), D4_ORDER)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.split(' ')[0]} per element (mean over seeds)")
    axes[1].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "augment.png", dpi=110, bbox_inches="tight")
    fig.savefig(out / "augment.svg", bbox_inches="tight")
    plt.close(fig)


def _f(x: float | None, spec: str = ".4g") -> str:
    return "–" if x is None else format(x, spec)


def _pm(s: dict) -> str:
    if s["mean"] is None:
        return "–"
    return _f(s["mean"]) + ("" if s["sd"] is None else f" ± {_f(s['sd'], '.2g')}")


def _html(data: dict, preset) -> str:
    """The page, rendered from ``templates/augment.html.j2``."""
    from symaudit.report.html import render_page

    rows, summary = data["rows"], data["summary"]
    d, b = summary["delta_vs_random"], summary["beats_random"]
    return render_page(
        "augment.html.j2",
        name=preset.name,
        model=preset.model.preset,
        epochs=preset.model.epochs,
        batch_size=preset.model.batch_size,
        seeds=", ".join(map(str, preset.seeds)),
        rule=preset.rule,
        selections=[
            {
                "seed": s,
                "scores": ", ".join(
                    f"{g} {sel['scores'][g]:.3g}" for g in D4_ORDER if g in sel["scores"]
                ),
                "chosen": ", ".join(sel["influence"]) or "∅",
                "random": " | ".join(", ".join(r) or "∅" for r in sel["random"]),
            }
            for s, sel in data["selections"].items()
        ],
        elements=D4_ORDER,
        rows=[
            {
                "arm": r["arm"],
                "seed": r["seed"],
                "elements": "–" if r["elements"] is None else (", ".join(r["elements"]) or "∅"),
                "untransformed": _f(r["untransformed"]),
                "transformed": _f(r["transformed"]),
                "rel_error": [_f(r["rel_error"][g], ".3g") for g in D4_ORDER],
                "mean_influence": _f(r["mean_influence"], ".3g"),
            }
            for r in rows
        ],
        by_arm=[
            {
                "arm": a,
                "untransformed": _pm(s["untransformed"]),
                "transformed": _pm(s["transformed"]),
            }
            for a, s in summary["by_arm"].items()
        ],
        delta=_pm(d),
        delta_n=d["n"],
        beats=_pm(b),
        per_seed=[
            {
                "seed": q["seed"],
                "delta": _f(q["delta_vs_random"], ".3g"),
                "gain": _f(q["gain_fraction"].get("influence"), ".2f"),
                "spearman": _f(q["spearman_influence_error"], ".2f"),
            }
            for q in summary["per_seed"]
        ],
    )
