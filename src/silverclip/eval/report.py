"""Evaluation reports: JSON with every number, a Markdown summary, ROC curves as PNG.

Plots use matplotlib's Agg backend (no display needed) and are written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from silverclip.io import atomic_write_bytes, atomic_write_json, atomic_write_text

_MODE_TEXT = {
    "per-volume": "only the query's own volume counts",
    "per-scan": "any reconstruction of the query's scan counts",
}


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _ci(res: dict, key: str) -> str:
    lo, hi = res.get("lower", {}).get(key), res.get("upper", {}).get(key)
    return "" if lo is None or hi is None else f" ({_fmt(lo)}-{_fmt(hi)})"


def plot_roc_curves(
    labels: np.ndarray, probs: np.ndarray, names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """One PNG with a ROC curve per finding (AUC in each panel title). Entries not 0/1 are ignored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    n = len(names)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for j, name in enumerate(names):
        ax = axes[j // cols][j % cols]
        y, p = np.asarray(labels[:, j], dtype=float), np.asarray(probs[:, j], dtype=float)
        keep = (y == 0) | (y == 1)
        y, p = y[keep], p[keep]
        ax.plot([0, 1], [0, 1], "--", color="0.6", lw=0.8)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, lw=1.5)
            ax.set_title(f"{name}\nAUC {roc_auc_score(y, p):.3f} (n+={int(y.sum())})", fontsize=8)
        else:
            ax.set_title(f"{name}\n(one class only)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.supxlabel("false positive rate", fontsize=8)
    fig.supylabel("true positive rate", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def zero_shot_markdown(results: dict) -> str:
    """Markdown summary of :func:`silverclip.eval.zero_shot.evaluate_zero_shot` results."""
    boot = results.get("bootstrap", {})
    names = results["findings"]
    lines = [
        f"# Zero-shot diagnosis ({results['protocol']}, mode `{results['mode']}`)",
        "",
        f"- volumes: {results['n_volumes']} ({results['n_units']} scans as bootstrap units); "
        f"templates: `{results['template_set']}`; logit scale {_fmt(results['logit_scale'], 2)}",
        f"- thresholds: {results['threshold_source']}; F1: {results['f1_average']}; "
        f"positive when P(present) {'>' if results['strict_threshold'] else '>='} threshold",
        f"- intervals: {boot.get('confidence', 0.95):.0%} percentile bootstrap, {boot.get('n_boot', 0)} replicates, "
        f"scans resampled with replacement, seed {boot.get('seed')}",
        "",
        f"**Mean AUC {_fmt(results['metrics']['mean']['auc'])}{_ci(boot, 'mean/auc')}** over "
        f"{_n_averaged(results)} findings, "
        f"F1 {_fmt(results['metrics']['mean']['f1'])}, accuracy {_fmt(results['metrics']['mean']['accuracy'])}, "
        f"precision {_fmt(results['metrics']['mean']['precision'])}",
        "",
        "| finding | n+ / n | AUC (95% CI) | F1 | accuracy | precision | threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    not_estimable = set(results.get("not_estimable") or [])
    for name in [*names, "mean"]:
        m = results["metrics"][name]
        npos = f"{int(m['n_pos'])} / {int(m['n'])}" if "n" in m else ""
        label = f"{name} (not estimable)" if name in not_estimable else name
        lines.append(
            f"| {label} | {npos} | {_fmt(m['auc'])}{_ci(boot, f'{name}/auc')} | {_fmt(m['f1'])} | "
            f"{_fmt(m['accuracy'])} | {_fmt(m['precision'])} | {_fmt(m.get('threshold'))} |"
        )
    if not_estimable:
        lines += [
            "",
            f"Not estimable (fewer than {results.get('min_positives')} positive or negative volumes; reported, not "
            f"averaged): {', '.join(sorted(not_estimable))}.",
        ]
    lines += ["", "ROC curves: `roc_curves.png`. Per-volume probabilities: `probabilities.csv`.", ""]
    if results.get("warnings"):
        lines += ["## Warnings", "", *[f"- {w}" for w in results["warnings"]], ""]
    return "\n".join(lines)


def _n_averaged(results: dict) -> str:
    n = results["metrics"]["mean"].get("n_findings")
    total = len(results["findings"])
    if n is None:
        return str(total)
    n = int(n)
    mp = results.get("min_positives", 1)
    return f"{n} of {total}" + (f" (>= {mp} positives and negatives)" if mp > 1 else "") if n < total else str(n)


def retrieval_markdown(results: dict) -> str:
    """Markdown summary of :func:`silverclip.eval.retrieval.evaluate_retrieval` results."""
    i2i = results["image_to_image"]
    lines = [
        "# Retrieval",
        "",
        "## Image-to-image MAP@K (CT-CLIP definition)",
        "",
        f"- queries: {i2i['n_queries']} volumes; gallery: {i2i['n_gallery']} volumes with >= 1 positive label; "
        f"cosine similarity; hit score = Jaccard overlap of the binary label vectors; exclusion: `{i2i['exclude']}`",
        "",
        "| K | MAP@K | CT-CLIP script value (running mean over K) |",
        "|---|---|---|",
    ]
    for k, v in i2i["map"].items():
        lines.append(f"| {k} | {_fmt(v, 4)} | {_fmt(i2i['ctclip_script_value'][k], 4)} |")
    for key, title in (("report_to_image", "Report-to-image"), ("image_to_report", "Image-to-report")):
        r = results.get(key)
        if not r:
            continue
        lines += [
            "",
            f"## {title} Recall@K",
            "",
            f"- queries: {r['n_queries']}; gallery: {r['n_gallery']}; targets matched by id, mode `{r['mode']}` "
            f"({_MODE_TEXT[r['mode']]})",
            "",
            "| K | Recall@K | chance (K / gallery) |",
            "|---|---|---|",
            *[
                f"| {k} | {_fmt(v, 4)} | {_fmt(min(1.0, int(k) / max(1, r['n_gallery'])), 4)}"
                + (" (K is not well below the gallery size: uninformative)" if int(k) * 4 > r["n_gallery"] else "")
                + " |"
                for k, v in r["recall"].items()
            ],
        ]
    ex = results.get("examples", {})
    if ex.get("image_to_image"):
        lines += ["", "## Example image queries (top hits, Jaccard of labels)", ""]
        for e in ex["image_to_image"]:
            hits = ", ".join(f"{h['id']} ({_fmt(h['jaccard'], 2)})" for h in e["hits"])
            lines.append(f"- `{e['query']}` [{', '.join(e['labels']) or 'no positive label'}] -> {hits}")
    if ex.get("report_to_image"):
        lines += ["", "## Example report queries (top hits; * = the query's own volume/scan)", ""]
        for e in ex["report_to_image"]:
            hits = ", ".join(f"{h['id']}{'*' if h['target'] else ''}" for h in e["hits"])
            lines.append(f'- `{e["query"]}` "{e["text"][:160]}" -> {hits}')
    lines.append("")
    return "\n".join(lines)


def write_report(out_dir: str | Path, name: str, results: dict, markdown: str) -> dict[str, Path]:
    """``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``, atomically."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    atomic_write_json(paths["json"], _jsonable(results))
    atomic_write_text(paths["md"], markdown)
    return paths


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x
