"""``silverclip ablate CONFIG``: the paper's thesis in miniature.

Same data, same CLIP recipe, several seeds; the arms differ only in how the image tower starts:

- ``scratch``: CLIP from a random image tower (with ``equal_budget``, CLIP also gets the pre-training
  epochs, so every arm trains its image tower for at least as many epochs as the pre-trained arms);
- ``gold``: supervised pre-training on the dataset's own labels, then CLIP;
- any labeller backend (``rules``, ``keyword``, ``llm``, ``cascade``): the same on that labeller's silver
  labels of the training reports (``keyword`` = matching without negation, the weak-labeller control).

Shared stages (data, preprocessing, labels) run once in ``<run_dir>``; each arm and seed gets
``<run_dir>/arms/<arm>_seed<k>`` with its own resumable stages. Every (arm, seed) result is a flat record
(:mod:`silverclip.pipeline.ablation_report`) in ``<run_dir>/ablation.json``; ``results.md`` (tables: mean
and standard deviation over seeds, paired differences to scratch, per seed) and ``ablation.png`` are
rendered from it, as ``silverclip ablate --render`` re-renders them from a committed copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from silverclip.io import atomic_write_json, atomic_write_text
from silverclip.pipeline.ablation_report import aggregate, make_record, plot_records, results_markdown
from silverclip.pipeline.config import PipelineConfig
from silverclip.pipeline.run import Pipeline
from silverclip.pipeline.stages import StageRunner
from silverclip.runs import prepare_run_dir


def pretrain_validation_auc(pretrain_dir: str | Path) -> float | None:
    """The last validation mean AUC a pre-training run logged (``metrics.jsonl``), if any."""
    import json

    path = Path(pretrain_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    vals = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == "val" and "mean_auc" in r]
    return float(vals[-1]["mean_auc"]) if vals else None


def run_ablation(
    cfg: PipelineConfig, command: str = "silverclip ablate", force: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run every arm x seed of ``cfg.ablation``; write ``ablation.json`` (records), ``results.json``,
    ``results.md`` and ``ablation.png`` into ``cfg.run_dir``."""
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
    for arm in arms:
        if arm not in ("scratch", "gold"):
            labels[arm] = base.labels(data, backend=arm)
    pre_epochs = int(cfg.pretrain.get("train", {}).get("epochs", 10))
    if cfg.ablation.scratch_extra_epochs is not None:
        pre_epochs = int(cfg.ablation.scratch_extra_epochs)
    records = []
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
            rec = make_record(
                arm,
                seed,
                ev,
                seconds,
                pretrain_val_auc=pretrain_validation_auc(arm_dir / "pretrain") if arm != "scratch" else None,
                label_quality=labels.get(arm, {}).get("quality"),
            )
            records.append(rec)
            print(
                f"[ablate] {arm} seed {seed}: zero-shot AUC {_f(rec['zero_shot_auc'])}, "
                f"MAP@50 {_f(rec.get('map_at_50'))}, R@100 {_f(rec.get('r2i_recall_at_100'))}, "
                f"pre-training val AUC {_f(rec['pretrain_val_auc'])}",
                flush=True,
            )
            atomic_write_json(Path(run_dir) / "ablation.json", records)  # finished work is never lost
    results = {
        "arms": arms,
        "seeds": seeds,
        "records": records,
        "aggregate": aggregate(records, arms),
        "equal_budget": cfg.ablation.equal_budget,
        "command": command,
    }
    atomic_write_json(Path(run_dir) / "results.json", results)
    plot_records(records, arms, Path(run_dir) / "ablation.png")
    md = results_markdown(records, arms, command) + "\n![zero-shot AUC and MAP@50 per seed](ablation.png)\n"
    atomic_write_text(Path(run_dir) / "results.md", md)
    results["report"] = str(Path(run_dir) / "results.md")
    return results


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
