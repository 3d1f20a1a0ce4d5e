"""``silverclip ablate CONFIG``: the paper's thesis in miniature.

Same data, same CLIP recipe, several seeds; the arms differ only in how the image tower starts:

- ``scratch``: CLIP from a random image tower (with ``equal_budget``, CLIP also gets the pre-training
  epochs, so every arm trains its image tower for the same number of epochs);
- ``gold``: supervised pre-training on the dataset's own labels, then CLIP;
- ``rules``: the same on silver labels from the offline rule labeller;
- ``llm``: the same on silver labels from an LLM endpoint (``labels.llm``).

Shared stages (data, preprocessing, labels) run once in ``<run_dir>``; each arm and seed gets
``<run_dir>/arms/<arm>_seed<k>`` with its own resumable stages. The table reports mean and standard
deviation over seeds, and each supervised arm's paired difference to scratch (same seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from silverclip.io import atomic_write_json, atomic_write_text
from silverclip.pipeline.config import PipelineConfig
from silverclip.pipeline.run import Pipeline
from silverclip.pipeline.stages import StageRunner
from silverclip.runs import prepare_run_dir

ARM_TITLES = {
    "scratch": "(a) CLIP from scratch",
    "gold": "(b) pre-trained on gold labels",
    "rules": "(c) pre-trained on silver labels (rules)",
    "llm": "(d) pre-trained on silver labels (LLM)",
}


def metric_row(evaluation: dict[str, Any]) -> dict[str, float]:
    """The compared numbers of one arm/seed: zero-shot mean AUC, MAP@K, report-to-image Recall@K."""
    zs, rt = evaluation["zero_shot"], evaluation["retrieval"]
    row = {"zero-shot AUC": zs["auc"], "zero-shot F1": zs["f1"]}
    for k, v in rt["map"].items():
        row[f"MAP@{k}"] = v
    for k, v in rt.get("report_to_image", {}).items():
        row[f"R@{k} (report->image)"] = v
    return {k: float(v) for k, v in row.items()}


def aggregate(rows: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Mean/std per arm and paired (same-seed) differences of every supervised arm to scratch."""
    out: dict[str, Any] = {}
    metrics = list(rows[0]["metrics"]) if rows else []
    for arm in arms:
        arm_rows = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        vals = {m: np.array([r["metrics"][m] for r in arm_rows]) for m in metrics}
        out[arm] = {
            "n_seeds": len(arm_rows),
            "mean": {m: float(v.mean()) for m, v in vals.items()},
            "std": {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in vals.items()},
            "seconds": float(np.mean([r["seconds"] for r in arm_rows])) if arm_rows else 0.0,
        }
        if arm != "scratch" and "scratch" in arms:
            base = {r["seed"]: r for r in rows if r["arm"] == "scratch"}
            diffs = {
                m: [r["metrics"][m] - base[r["seed"]]["metrics"][m] for r in arm_rows if r["seed"] in base]
                for m in metrics
            }
            out[arm]["diff_vs_scratch"] = {
                m: {
                    "mean": float(np.mean(d)),
                    "std": float(np.std(d, ddof=1)) if len(d) > 1 else 0.0,
                    "wins": int(sum(x > 0 for x in d)),
                    "n": len(d),
                }
                for m, d in diffs.items()
                if d
            }
    return out


def results_markdown(agg: dict[str, Any], label_quality: dict[str, Any], arms: list[str], command: str) -> str:
    metrics = list(next(iter(agg.values()))["mean"]) if agg else []
    lines = ["| arm | " + " | ".join(metrics) + " | s/run |", "|---|" + "---:|" * (len(metrics) + 1)]
    for arm in arms:
        a = agg[arm]
        cells = [f"{a['mean'][m]:.3f} ± {a['std'][m]:.3f}" for m in metrics]
        lines.append(f"| {ARM_TITLES[arm]} (n={a['n_seeds']}) | " + " | ".join(cells) + f" | {a['seconds']:.0f} |")
    diff_lines = []
    for arm in arms:
        d = agg[arm].get("diff_vs_scratch")
        if not d:
            continue
        cells = [f"{d[m]['mean']:+.3f} ± {d[m]['std']:.3f} ({d[m]['wins']}/{d[m]['n']})" for m in metrics]
        diff_lines.append(f"| {ARM_TITLES[arm]} - scratch | " + " | ".join(cells) + " |")
    md = ["Mean ± standard deviation over seeds (validation split of the synthetic dataset).", "", *lines]
    if diff_lines:
        md += [
            "",
            "Paired difference to scratch (same seed): mean ± std (seeds where the arm wins / seeds).",
            "",
            "| comparison | " + " | ".join(metrics) + " |",
            "|---|" + "---:|" * len(metrics),
            *diff_lines,
        ]
    if label_quality:
        md += [
            "",
            "Label quality of the pre-training labels against the gold labels (training split):",
            "",
            "| labels | macro AUC | macro F1 |",
            "|---|---:|---:|",
        ]
        for name, q in label_quality.items():
            md.append(f"| {name} | {q.get('auc', float('nan')):.3f} | {q.get('f1', float('nan')):.3f} |")
    md += ["", f"Produced by: `{command}`"]
    return "\n".join(md) + "\n"


def run_ablation(
    cfg: PipelineConfig, command: str = "silverclip ablate", force: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run every arm x seed of ``cfg.ablation`` and write ``results.json``/``results.md`` into ``cfg.run_dir``."""
    arms, seeds = list(cfg.ablation.arms), list(cfg.ablation.seeds)
    if "llm" in arms and not cfg.labels.llm.get("base_url"):
        raise ValueError("the llm arm needs labels.llm.base_url (an OpenAI-compatible endpoint)")
    base = Pipeline(cfg, force=force)
    base.validate(backends=tuple(a for a in arms if a != "scratch"))  # every stage, before the first
    run_dir = prepare_run_dir(cfg.run_dir, cfg)
    data = base.data()
    if "gold_train" not in data or "gold_valid" not in data:
        raise RuntimeError("the ablation needs gold labels for the training and validation splits")
    cache = base.preprocess(data)["cache"]
    labels = {"gold": {"labels": data["gold_train"]}}
    for arm in ("rules", "llm"):
        if arm in arms:
            labels[arm] = base.labels(data, backend=arm)
    pre_epochs = int(cfg.pretrain.get("train", {}).get("epochs", 10))
    rows = []
    for seed in seeds:
        for arm in arms:
            arm_dir = run_dir / "arms" / f"{arm}_seed{seed}"
            runner = StageRunner(arm_dir, force=force)
            seconds = 0.0
            init = None
            if arm != "scratch":
                init = base.pretrain(
                    cache, labels[arm]["labels"], data["gold_valid"], arm_dir / "pretrain", seed, runner=runner
                )["checkpoint"]
                seconds += runner.done("pretrain")["seconds"]
            extra = pre_epochs if (arm == "scratch" and cfg.ablation.equal_budget) else 0
            clip = base.clip(cache, data, init, arm_dir / "clip", seed, extra_epochs=extra, runner=runner)
            seconds += runner.done("clip")["seconds"]
            emb = base.embed(clip["checkpoint"], cache, data, arm_dir / "embeddings", runner=runner)
            ev = base.evaluate(emb, data, arm_dir / "eval", runner=runner)
            rows.append({"arm": arm, "seed": seed, "metrics": metric_row(ev), "seconds": seconds})
            print(f"[ablate] {arm} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1]["metrics"].items()))
    agg = aggregate(rows, arms)
    quality = {
        f"silver ({a})": labels[a]["quality"] for a in ("rules", "llm") if a in labels and "quality" in labels[a]
    }
    results = {
        "arms": arms,
        "seeds": seeds,
        "rows": rows,
        "aggregate": agg,
        "label_quality": quality,
        "equal_budget": cfg.ablation.equal_budget,
        "command": command,
    }
    atomic_write_json(Path(run_dir) / "results.json", results)
    atomic_write_text(Path(run_dir) / "results.md", results_markdown(agg, quality, arms, command))
    results["report"] = str(Path(run_dir) / "results.md")
    return results
