"""The ablation's records and their report: one JSON list of (arm, seed) records, Markdown tables and a plot.

A record is flat and self-describing, so ``docs/results/ablation.json`` can be re-rendered without rerunning
anything (``silverclip ablate --render RECORDS.json --out results.md``)::

    {"arm": "rules", "seed": 0, "zero_shot_auc": 0.91, "zero_shot_auc_ci": [0.89, 0.93], "zero_shot_f1": ...,
     "map_at_1": ..., "map_at_50": ..., "r2i_recall_at_5": ..., "r2i_recall_at_100": ..., "r2i_gallery": 360,
     "pretrain_val_auc": 0.93, "label_macro_auc": 0.99, "label_macro_f1": 0.97, "seconds": 410.0, ...}

Paired differences are taken against ``scratch`` on the same seed; a claim "arm > scratch" is called
*shown* when the arm wins on every seed and the mean difference exceeds twice its standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ARM_TITLES = {
    "scratch": "(a) CLIP from scratch",
    "gold": "(b) pre-trained on gold labels",
    "rules": "(c) pre-trained on silver labels (rules)",
    "keyword": "(d) pre-trained on weak labels (keyword matching, no negation)",
    "llm": "(e) pre-trained on silver labels (LLM)",
    "cascade": "(f) pre-trained on silver labels (rules, then LLM)",
}

# (record key, column title) of the compared numbers, in table order.
COLUMNS = [
    ("zero_shot_auc", "zero-shot AUC"),
    ("zero_shot_f1", "zero-shot F1"),
    ("map_at_1", "MAP@1"),
    ("map_at_5", "MAP@5"),
    ("map_at_10", "MAP@10"),
    ("map_at_50", "MAP@50"),
    ("r2i_recall_at_5", "R@5 report->image"),
    ("r2i_recall_at_10", "R@10"),
    ("r2i_recall_at_50", "R@50"),
    ("r2i_recall_at_100", "R@100"),
    ("pretrain_val_auc", "pre-training val AUC"),
]


def arm_title(arm: str) -> str:
    return ARM_TITLES.get(arm, arm)


def make_record(
    arm: str,
    seed: int,
    evaluation: dict[str, Any],
    seconds: float,
    pretrain_val_auc: float | None = None,
    label_quality: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One flat (arm, seed) record from the pipeline's evaluate-stage outputs."""
    zs, rt = evaluation["zero_shot"], evaluation["retrieval"]
    rec: dict[str, Any] = {
        "arm": arm,
        "seed": int(seed),
        "zero_shot_auc": _num(zs.get("auc")),
        "zero_shot_auc_ci": [_num(x) for x in zs["auc_ci"]] if zs.get("auc_ci") else None,
        "zero_shot_f1": _num(zs.get("f1")),
        "n_findings": zs.get("n_findings"),
        "not_estimable": list(zs.get("not_estimable") or []),
        "n_valid_volumes": zs.get("n_volumes"),
    }
    for k, v in rt["map"].items():
        rec[f"map_at_{k}"] = _num(v)
    rec["map_gallery"] = rt.get("map_gallery")
    for k, v in (rt.get("report_to_image") or {}).items():
        rec[f"r2i_recall_at_{k}"] = _num(v)
    rec["r2i_gallery"] = rt.get("report_to_image_gallery")
    rec["pretrain_val_auc"] = _num(pretrain_val_auc)
    if label_quality:
        rec["label_macro_auc"] = _num(label_quality.get("auc"))
        rec["label_macro_f1"] = _num(label_quality.get("f1"))
    rec["seconds"] = round(float(seconds), 1)
    rec["zero_shot_per_finding_auc"] = {n: _num(v) for n, v in (zs.get("per_finding_auc") or {}).items()}
    return rec


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _values(records: Sequence[dict], arm: str, key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in records if r["arm"] == arm and r.get(key) is not None}


def aggregate(records: Sequence[dict[str, Any]], arms: Sequence[str]) -> dict[str, Any]:
    """Per arm: mean/std over seeds of every column; per non-scratch arm: paired differences to scratch."""
    out: dict[str, Any] = {}
    keys = [k for k, _ in COLUMNS]
    for arm in arms:
        rows = [r for r in records if r["arm"] == arm]
        a: dict[str, Any] = {"n_seeds": len(rows), "mean": {}, "std": {}}
        for k in keys:
            v = np.array(list(_values(records, arm, k).values()), dtype=float)
            a["mean"][k] = float(v.mean()) if v.size else None
            a["std"][k] = float(v.std(ddof=1)) if v.size > 1 else (0.0 if v.size else None)
        a["seconds"] = float(np.mean([r["seconds"] for r in rows])) if rows else 0.0
        if arm != "scratch" and "scratch" in arms:
            a["diff_vs_scratch"] = {k: paired_difference(records, arm, "scratch", k) for k in keys}
            a["diff_vs_scratch"] = {k: d for k, d in a["diff_vs_scratch"].items() if d["n"]}
        out[arm] = a
    return out


def paired_difference(records: Sequence[dict], arm: str, base: str, key: str) -> dict[str, Any]:
    """``arm - base`` on the seeds both have: mean, std, wins, n, and whether the claim is shown."""
    a, b = _values(records, arm, key), _values(records, base, key)
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    if not d.size:
        return {"mean": None, "std": None, "wins": 0, "n": 0, "shown": False, "per_seed": {}}
    std = float(d.std(ddof=1)) if d.size > 1 else 0.0
    mean = float(d.mean())
    return {
        "mean": mean,
        "std": std,
        "wins": int((d > 0).sum()),
        "n": int(d.size),
        "shown": bool(d.size > 1 and (d > 0).all() and mean > 2 * std),
        "per_seed": {int(s): float(x) for s, x in zip(seeds, d)},
    }


def _pm(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"


def results_markdown(records: Sequence[dict[str, Any]], arms: Sequence[str], command: str = "") -> str:
    """The ablation tables: per arm (mean ± std over seeds), paired differences to scratch, and per seed."""
    agg = aggregate(records, arms)
    cols = [(k, t) for k, t in COLUMNS if any(agg[a]["mean"].get(k) is not None for a in arms)]
    seeds = sorted({r["seed"] for r in records})
    gal = sorted({r.get("r2i_gallery") for r in records if r.get("r2i_gallery")})
    mgal = sorted({r.get("map_gallery") for r in records if r.get("map_gallery")})
    nval = sorted({r.get("n_valid_volumes") for r in records if r.get("n_valid_volumes")})
    chance = f" (chance R@100 = {min(1.0, 100 / gal[0]):.3f})" if gal else ""
    md = [
        f"Mean ± standard deviation over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
        f"{'/'.join(map(str, nval)) or '?'} validation volumes; MAP@K gallery {'/'.join(map(str, mgal)) or '?'} "
        f"volumes; report-to-image gallery {'/'.join(map(str, gal)) or '?'} volumes{chance}.",
        "",
        "| arm | " + " | ".join(t for _, t in cols) + " | s/run |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for arm in arms:
        a = agg[arm]
        cells = [_pm(a["mean"][k], a["std"][k]) for k, _ in cols]
        md.append(f"| {arm_title(arm)} (n={a['n_seeds']}) | " + " | ".join(cells) + f" | {a['seconds']:.0f} |")
    diff_cols = [(k, t) for k, t in cols if k != "pretrain_val_auc"]
    diffs = [arm for arm in arms if agg[arm].get("diff_vs_scratch")]
    if diffs:
        md += [
            "",
            "Paired difference to scratch (same seed): mean ± std (seeds where the arm wins / seeds); "
            "**bold** = shown (wins on every seed and mean > 2 std).",
            "",
            "| comparison | " + " | ".join(t for _, t in diff_cols) + " |",
            "|---|" + "---:|" * len(diff_cols),
        ]
        for arm in diffs:
            d = agg[arm]["diff_vs_scratch"]
            cells = []
            for k, _ in diff_cols:
                if k not in d:
                    cells.append("n/a")
                    continue
                txt = f"{d[k]['mean']:+.3f} ± {d[k]['std']:.3f} ({d[k]['wins']}/{d[k]['n']})"
                cells.append(f"**{txt}**" if d[k]["shown"] else txt)
            md.append(f"| {arm_title(arm)} - scratch | " + " | ".join(cells) + " |")
    md += ["", "Per seed (zero-shot AUC / MAP@50 / R@100):", ""]
    md.append("| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    md.append("|---|" + "---:|" * len(seeds))
    for arm in arms:
        by_seed = {r["seed"]: r for r in records if r["arm"] == arm}
        cells = []
        for s in seeds:
            r = by_seed.get(s)
            cells.append(
                "-"
                if r is None
                else " / ".join(_f3(r.get(k)) for k in ("zero_shot_auc", "map_at_50", "r2i_recall_at_100"))
            )
        md.append(f"| {arm_title(arm)} | " + " | ".join(cells) + " |")
    quality = {
        r["arm"]: (r.get("label_macro_auc"), r.get("label_macro_f1"))
        for r in records
        if r.get("label_macro_auc") is not None
    }
    if quality:
        md += [
            "",
            "Pre-training labels against the gold labels (training split):",
            "",
            "| labels | macro AUC | macro F1 |",
            "|---|---:|---:|",
            *[f"| {arm} | {_f3(q[0])} | {_f3(q[1])} |" for arm, q in quality.items()],
        ]
    if command:
        md += ["", f"Produced by: `{command}`"]
    return "\n".join(md) + "\n"


def _f3(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def plot_records(records: Sequence[dict[str, Any]], arms: Sequence[str], path: str | Path) -> Path:
    """A PNG with one panel per metric (zero-shot AUC, MAP@50): each arm's value on every seed, and its mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from silverclip.io import atomic_open

    metrics = [("zero_shot_auc", "zero-shot mean AUC"), ("map_at_50", "image-to-image MAP@50")]
    seeds = sorted({r["seed"] for r in records})
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4))
    for ax, (key, title) in zip(np.atleast_1d(axes), metrics):
        for i, arm in enumerate(arms):
            vals = _values(records, arm, key)
            xs = [i + 0.08 * (seeds.index(s) - (len(seeds) - 1) / 2) for s in vals]
            ax.scatter(xs, list(vals.values()), s=22, zorder=3)
            if vals:
                ax.hlines(np.mean(list(vals.values())), i - 0.3, i + 0.3, color="k", lw=1.5, zorder=4)
            for x, s in zip(xs, vals):
                ax.annotate(str(s), (x, vals[s]), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xticks(range(len(arms)), arms)
        ax.set_title(f"{title} per seed (bar = mean)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def render(records_json: str | Path, out_md: str | Path, png: str | Path | None = None, command: str = "") -> Path:
    """Re-render the tables (and the plot) of a records JSON; ``out_md`` may be a page with the markers
    ``<!-- ablation:begin -->`` / ``<!-- ablation:end -->``: only the part between them is replaced."""
    import json
    import os

    from silverclip.io import atomic_write_text

    records = json.loads(Path(records_json).read_text())
    arms = list(dict.fromkeys(r["arm"] for r in records))
    out_md = Path(out_md)
    png = Path(png) if png else out_md.with_suffix(".png")
    plot_records(records, arms, png)
    rel = os.path.relpath(png, out_md.parent)
    block = results_markdown(records, arms, command) + f"\n![zero-shot AUC and MAP@50 per seed]({rel})\n"
    begin, end = "<!-- ablation:begin -->", "<!-- ablation:end -->"
    if out_md.is_file() and begin in (text := out_md.read_text()) and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        block = f"{head}{begin}\n{block}{end}{tail}"
    atomic_write_text(out_md, block)
    return out_md
