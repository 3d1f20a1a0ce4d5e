"""``silverclip run CONFIG``: data, preprocess, labels, pre-training, CLIP, embeddings, evaluation, report.

Every stage writes into one run folder and is skipped when complete (:mod:`silverclip.pipeline.stages`);
stages that take long resume internally (preprocessing cache, training checkpoints, LLM answer cache),
so a killed run resumes at the stage *and step* where it stopped. The functions below only wire the
library together; each does what the matching ``silverclip <stage>`` command does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from silverclip.config import ConfigError, config_from_dict, deep_merge
from silverclip.findings import FINDINGS
from silverclip.io import atomic_write_json
from silverclip.pipeline.config import PipelineConfig
from silverclip.pipeline.stages import StageRunner
from silverclip.runs import prepare_run_dir

log = logging.getLogger(__name__)


def _device(name: str) -> str:
    from silverclip.device import resolve_device

    return str(resolve_device(name))


def final_checkpoint(best: str | Path) -> Path:
    """The final weights (``last/``) of a training run whose ``best/`` folder is given.

    The pipeline validates on the split it evaluates on, so ``best/`` (chosen by that validation metric)
    would leak the evaluation labels into model selection; the pipeline therefore always continues from,
    and evaluates, the final weights. ``best/`` stays available for standalone use.
    """
    last = Path(best).parent / "last"
    return last if (last / "checkpoint.json").is_file() else Path(best)


def _reports(manifest: pd.DataFrame) -> dict[str, str]:
    """volume id -> Findings + Impressions (what a labeller reads)."""
    out = {}
    for row in manifest.itertuples(index=False):
        parts = [str(p) for p in (row.findings, row.impressions) if isinstance(p, str) and p.strip()]
        out[str(row.volume_id)] = "\n\n".join(parts)
    return out


def _labels_fingerprint(cfg: Any) -> dict[str, Any]:
    """The labels section as the stage fingerprint sees it: options added later count only when set, so run
    folders completed before they existed are still recognised as complete."""
    out: dict[str, Any] = {"backend": cfg.backend, "llm": cfg.llm}
    if cfg.cascade:
        out["cascade"] = cfg.cascade
    if cfg.include_flagged:
        out["include_flagged"] = True
    return out


def _gold(manifest: pd.DataFrame) -> pd.DataFrame | None:
    if not all(f in manifest.columns for f in FINDINGS):
        return None
    gold = manifest.set_index("volume_id")[list(FINDINGS)]
    return None if gold.isna().all().all() else gold


@dataclass
class Pipeline:
    """The stages of one run; each method is one resumable stage returning its outputs (paths, numbers)."""

    cfg: PipelineConfig
    force: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.run_dir = Path(self.cfg.run_dir)
        self.runner = StageRunner(self.run_dir, force=self.force)

    # ---------------------------------------------------------------- data
    def data(self) -> dict[str, Any]:
        src = self.cfg.source

        def build() -> dict[str, Any]:
            from silverclip.data.manifest import read_manifest, write_manifest

            out = self.run_dir / "manifests"
            if src.kind == "manifest":
                train, valid = read_manifest(src.train_manifest), read_manifest(src.valid_manifest)
            else:
                from silverclip.data.ctrate import ingest_ctrate

                root = src.root if src.kind == "ctrate" else self.run_dir / "data"
                if src.kind == "synth":
                    from silverclip.synth.dataset import SynthConfig, make_synthetic_ctrate

                    synth_cfg = config_from_dict(SynthConfig, {"seed": self.cfg.seed, **src.synth})
                    failures = make_synthetic_ctrate(root, synth_cfg, progress=self.cfg.progress)
                    failures.report()
                    if failures:
                        raise RuntimeError(f"synthetic data generation failed for {len(failures)} volume(s)")
                train = ingest_ctrate(root, "train", version=src.version)
                valid = ingest_ctrate(root, "valid", version=src.version)
            if src.max_train_volumes:
                train = train.iloc[: src.max_train_volumes]
            outputs: dict[str, Any] = {
                "train_manifest": str(write_manifest(train, out / "train.csv")),
                "valid_manifest": str(write_manifest(valid, out / "valid.csv")),
                "n_train": len(train),
                "n_valid": len(valid),
            }
            from silverclip.labels.table import write_labels

            for split, df in (("train", train), ("valid", valid)):
                gold = _gold(df)
                if gold is not None:
                    write_labels(gold, self.run_dir / "labels" / f"gold_{split}.csv")
                    outputs[f"gold_{split}"] = str(self.run_dir / "labels" / f"gold_{split}.csv")
            return outputs

        return self.runner.run("data", build, config=(src, self.cfg.seed))

    # ---------------------------------------------------------------- preprocess
    def preprocess(self, data: dict[str, Any]) -> dict[str, Any]:
        pcfg = self.cfg.preprocess

        def build() -> dict[str, Any]:
            from silverclip.data.manifest import read_manifest
            from silverclip.data.preprocess import preprocess_manifest

            both = pd.concat([read_manifest(data["train_manifest"]), read_manifest(data["valid_manifest"])])
            cache = self.run_dir / "cache"
            failures = preprocess_manifest(both, pcfg.preset, cache, workers=pcfg.workers, progress=self.cfg.progress)
            failures.report()  # bad volumes are listed and left out; the run goes on with the rest
            if len(failures) == len(both):
                raise RuntimeError(f"preprocessing failed for every volume; see {cache / 'failures.json'}")
            return {"cache": str(cache), "failed_volumes": [f.item for f in failures.failures]}

        return self.runner.run("preprocess", build, config=pcfg)

    # ---------------------------------------------------------------- labels
    def labels(self, data: dict[str, Any], backend: str | None = None) -> dict[str, Any]:
        """Silver labels of the training reports with ``backend`` and their quality against the gold labels."""
        backend = backend or self.cfg.labels.backend
        name = "labels" if backend == self.cfg.labels.backend else f"labels_{backend}"

        def build() -> dict[str, Any]:
            from silverclip.data.manifest import read_manifest
            from silverclip.io import atomic_write_text
            from silverclip.labels.compare import probabilities_path, write_evidence
            from silverclip.labels.evaluate import evaluate_labels, metrics_markdown
            from silverclip.labels.table import write_labels

            train = read_manifest(data["train_manifest"])
            out_dir = self.run_dir / "labels"
            if backend == "gold":
                if "gold_train" not in data:
                    raise RuntimeError("labels.backend is gold but the training manifest has no labels")
                return {"labels": data["gold_train"], "backend": "gold"}
            reports = _reports(train)
            from silverclip.labels.backends import LLM_BACKENDS, BackendOptions, label_reports
            from silverclip.labels.report_status import status_summary

            options = BackendOptions(progress=self.cfg.progress)
            if backend in LLM_BACKENDS:
                from silverclip.labels.cascade import CascadeConfig
                from silverclip.labels.llm import LLMConfig

                options.llm = config_from_dict(LLMConfig, self.cfg.labels.llm)
                options.cascade = config_from_dict(CascadeConfig, self.cfg.labels.cascade)
                options.cache_path = out_dir / "llm_cache.sqlite"
            result = label_reports(backend, reports, options, include_flagged=self.cfg.labels.include_flagged)
            labels_csv = out_dir / f"silver_{backend}_train.csv"
            # Flagged (empty, non-English) and failed reports are empty rows: masked in pre-training's loss.
            write_labels(result.labels, labels_csv, status=result.status)
            if result.probabilities is not None:
                write_labels(result.probabilities, probabilities_path(labels_csv), float_format="%.4f")
            if result.evidence:
                write_evidence(out_dir / f"silver_{backend}_train.evidence.jsonl", result.evidence, result.decided_by)
            summary = status_summary(result.status, self.cfg.labels.include_flagged)
            if summary:
                log.warning("labels (%s): %s", backend, summary)
            result.failures.report()
            outputs: dict[str, Any] = {"labels": str(labels_csv), "backend": backend, "usage": result.usage}
            outputs["flagged_reports"] = int(result.usage.get("flagged", 0))
            if "gold_train" in data:
                from silverclip.labels.table import read_labels

                gold = read_labels(data["gold_train"])
                pred = result.labels.dropna()
                probs = result.probabilities.loc[pred.index] if result.probabilities is not None else None
                quality = evaluate_labels(pred, gold.loc[pred.index], probs=probs)
                atomic_write_json(out_dir / f"quality_{backend}.json", quality)
                atomic_write_text(
                    out_dir / f"quality_{backend}.md",
                    metrics_markdown(quality, title=f"Silver labels ({backend}) vs gold, training split"),
                )
                outputs["quality"] = {k: quality["macro"][k] for k in ("auc", "f1") if k in quality["macro"]}
            return outputs

        return self.runner.run(name, build, config=(backend, _labels_fingerprint(self.cfg.labels)))

    # ---------------------------------------------------------------- training
    def pretrain_config(self, cache: str, labels: str, val_labels: str | None, out: Path, seed: int) -> Any:
        """The ``silverclip pretrain`` config of this run: the ``pretrain`` section plus the run's paths."""
        from silverclip.train.config import PretrainConfig

        fixed = {"out": str(out), "cache": cache, "labels": labels, "val_labels": val_labels}
        data = deep_merge(self.cfg.pretrain, {**fixed, "train": {"seed": seed, "progress": self.cfg.progress}})
        return _section_config(PretrainConfig, data, "pretrain")

    def clip_config(
        self, cache: str, data: dict[str, Any], init: str | None, out: Path, seed: int, extra_epochs: int = 0
    ) -> Any:
        """The ``silverclip clip`` config of this run: the ``clip`` section plus the run's paths."""
        from silverclip.train.config import ClipConfig

        fixed = {
            "out": str(out),
            "cache": cache,
            "manifest": data["train_manifest"],
            "val_manifest": data["valid_manifest"],
            "init": init,
        }
        merged = deep_merge(self.cfg.clip, {**fixed, "train": {"seed": seed, "progress": self.cfg.progress}})
        if extra_epochs:
            merged["train"]["epochs"] = merged["train"].get("epochs", 10) + extra_epochs
        return _section_config(ClipConfig, merged, "clip")

    def validate(self, backends: tuple[str, ...] = (), until: str | None = None) -> None:
        """Build every stage's config now, so that a typo in a late stage fails before the first stage runs.

        Stage configs only record paths (nothing is opened), so the run's future outputs stand in for them.
        ``backends``: label backends besides ``labels.backend`` that will run (the ablation's arms). Devices are
        checked for the stages up to ``until`` only (``--until labels`` may prepare on a machine without GPUs).
        """
        from silverclip.data.presets import load_preset
        from silverclip.device import resolve_device

        cfg, ph = self.cfg, self.run_dir
        try:
            load_preset(cfg.preprocess.preset)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise ConfigError(f"preprocess.preset: {e}") from None
        if cfg.source.kind == "synth":
            from silverclip.synth.dataset import SynthConfig

            _section_config(SynthConfig, {"seed": cfg.seed, **cfg.source.synth}, "source.synth")
        if "llm" in (cfg.labels.backend, *backends):
            from silverclip.labels.llm import LLMConfig

            if not cfg.labels.llm.get("base_url"):
                raise ConfigError("labels.llm.base_url (an OpenAI-compatible endpoint) is required for LLM labels")
            _section_config(LLMConfig, cfg.labels.llm, "labels.llm")
        data = {"train_manifest": str(ph / "manifests/train.csv"), "valid_manifest": str(ph / "manifests/valid.csv")}
        devices = {"clip": self.clip_config(str(ph / "cache"), data, None, ph / "clip", cfg.seed).train.device}
        if cfg.pretrain_enabled or backends:
            labels = str(ph / "labels/silver.csv")
            devices["pretrain"] = self.pretrain_config(
                str(ph / "cache"), labels, None, ph / "pretrain", cfg.seed
            ).train.device
        devices["embed"] = cfg.evaluate.device
        for stage, device in devices.items():
            if until is not None and STAGE_ORDER.index(stage) > STAGE_ORDER.index(until):
                continue
            try:
                resolve_device(device)
            except ValueError as e:
                key = "evaluate.device" if stage == "embed" else f"{stage}.train.device"
                raise ConfigError(f"{key}: {e}") from None

    def pretrain(
        self,
        cache: str,
        labels: str,
        val_labels: str | None,
        out: Path,
        seed: int,
        stage: str = "pretrain",
        runner: StageRunner | None = None,
    ) -> dict[str, Any]:
        cfg = self.pretrain_config(cache, labels, val_labels, out, seed)

        def build() -> dict[str, Any]:
            from silverclip.train import run_pretrain

            return {"checkpoint": str(final_checkpoint(run_pretrain(cfg)))}

        return (runner or self.runner).run(stage, build, config=cfg)

    def clip(
        self,
        cache: str,
        data: dict[str, Any],
        init: str | None,
        out: Path,
        seed: int,
        extra_epochs: int = 0,
        stage: str = "clip",
        runner: StageRunner | None = None,
    ) -> dict[str, Any]:
        cfg = self.clip_config(cache, data, init, out, seed, extra_epochs)

        def build() -> dict[str, Any]:
            from silverclip.train import run_clip

            return {"checkpoint": str(final_checkpoint(run_clip(cfg)))}

        return (runner or self.runner).run(stage, build, config=cfg)

    # ---------------------------------------------------------------- embeddings + evaluation
    def embed(
        self, checkpoint: str, cache: str, data: dict[str, Any], out: Path, runner: StageRunner | None = None
    ) -> dict[str, Any]:
        ecfg = self.cfg.evaluate

        def build() -> dict[str, Any]:
            from silverclip.checkpoint import load_model
            from silverclip.data.manifest import read_manifest
            from silverclip.eval.embeddings import compute_embeddings

            device = _device(ecfg.device)
            model, meta = load_model(checkpoint, map_location=device)
            info = {"checkpoint": checkpoint, "model_config": meta.get("model_config"), "step": meta.get("step")}
            outputs: dict[str, Any] = {}
            parts = {"valid": read_manifest(data["valid_manifest"])}
            if ecfg.mode == "default" and ecfg.threshold_volumes > 0:
                train = read_manifest(data["train_manifest"])
                parts["threshold"] = train.sample(
                    n=min(ecfg.threshold_volumes, len(train)), random_state=self.cfg.seed
                ).sort_index()
            for name, manifest in parts.items():
                emb, failures = compute_embeddings(
                    model,
                    cache,
                    manifest,
                    out / name,
                    meta=info,
                    batch_size=ecfg.batch_size,
                    device=device,
                    texts=name == "valid",
                    include_impressions=None,  # as the checkpoint was trained
                    progress=self.cfg.progress,
                )
                failures.report()
                outputs[name] = str(out / name)
            return outputs

        # only what changes the embeddings (not batch size, device, or the metrics' options) is fingerprinted
        return (runner or self.runner).run("embed", build, config=(checkpoint, ecfg.mode, ecfg.threshold_volumes))

    def evaluate(
        self, emb: dict[str, Any], data: dict[str, Any], out: Path, runner: StageRunner | None = None
    ) -> dict[str, Any]:
        ecfg = self.cfg.evaluate

        def build() -> dict[str, Any]:
            from silverclip.eval.retrieval import evaluate_retrieval
            from silverclip.eval.zero_shot import evaluate_zero_shot

            gold_valid = data.get("gold_valid")
            if gold_valid is None:
                raise RuntimeError("the validation manifest has no labels: zero-shot and retrieval need them")
            zs = evaluate_zero_shot(
                emb["valid"],
                gold_valid,
                out / "zero_shot",
                val_embeddings=emb.get("threshold"),
                val_labels=data.get("gold_train") if "threshold" in emb else None,
                mode=ecfg.mode,
                template_set=ecfg.template_set,
                threshold_method=ecfg.threshold_method,
                n_boot=ecfg.n_boot,
                seed=self.cfg.seed,
                min_positives=ecfg.min_positives,
            )
            others = {}
            for name in ecfg.compare_template_sets:
                if name == zs["template_set"]:
                    continue
                other = evaluate_zero_shot(
                    emb["valid"],
                    gold_valid,
                    out / f"zero_shot_{name}",
                    val_embeddings=emb.get("threshold"),
                    val_labels=data.get("gold_train") if "threshold" in emb else None,
                    mode=ecfg.mode,
                    template_set=name,
                    threshold_method=ecfg.threshold_method,
                    n_boot=ecfg.n_boot,
                    seed=self.cfg.seed,
                    min_positives=ecfg.min_positives,
                )
                others[name] = headline_zero_shot(other)
            rt = evaluate_retrieval(
                emb["valid"],
                gold_valid,
                out / "retrieval",
                exclude=ecfg.exclude,
                recall_mode=ecfg.recall_mode,
            )
            headline = headline_zero_shot(zs)
            if others:
                headline["other_template_sets"] = {
                    k: {"auc": v["auc"], "auc_ci": v.get("auc_ci")} for k, v in others.items()
                }
            return {"zero_shot": headline, "retrieval": headline_retrieval(rt), "dir": str(out)}

        return (runner or self.runner).run("evaluate", build, config=(emb, ecfg))

    def calibrate(self, checkpoint: str, data: dict[str, Any], eval_dir: Path) -> dict[str, Any]:
        """Record in the CLIP checkpoint what it was trained on and the zero-shot thresholds the evaluation chose
        (on the threshold split, see ``evaluate.threshold_volumes``), so that ``silverclip predict`` can say
        present/absent and warn off its domain. Cheap and idempotent: runs every time the evaluation is there."""
        import json

        from silverclip.checkpoint import record_calibration
        from silverclip.data.manifest import read_manifest
        from silverclip.data.presets import load_preset
        from silverclip.data.provenance import training_provenance

        src = self.cfg.source
        train = read_manifest(data["train_manifest"])
        provenance = training_provenance(
            src.kind,
            root=src.root if src.kind == "ctrate" else (src.train_manifest if src.kind == "manifest" else None),
            first_volume=str(train["path"].iloc[0]) if len(train) else None,
            preset=load_preset(self.cfg.preprocess.preset).name,
            version=src.version if src.kind == "ctrate" else None,
            seed=self.cfg.seed,
        )
        zs_file = eval_dir / "zero_shot" / "zero_shot.json"
        thresholds, source, templates = None, None, None
        if zs_file.is_file():
            zs = json.loads(zs_file.read_text())
            thresholds = {n: float(zs["metrics"][n]["threshold"]) for n in zs["findings"]}
            source, templates = zs.get("threshold_source"), zs.get("template_set")
        meta = record_calibration(
            checkpoint, thresholds=thresholds, threshold_source=source, template_set=templates, provenance=provenance
        )
        return {"provenance": meta.get("provenance"), "thresholds": meta.get("thresholds")}

    def pointing(self, checkpoint: str, out: Path, runner: StageRunner | None = None) -> dict[str, Any]:
        """Pointing game on the synthetic validation volumes (at most ``POINTING_MAX_VOLUMES``)."""

        def build() -> dict[str, Any]:
            from silverclip.eval.pointing import add_masks, run_pointing_game

            root = self.run_dir / "data"
            add_masks(root, "valid", progress=self.cfg.progress)  # data made before masks existed: render them
            res = run_pointing_game(
                checkpoint,
                root,
                out,
                max_volumes=POINTING_MAX_VOLUMES,
                device=_device(self.cfg.evaluate.device),
                progress=self.cfg.progress,
            )
            keep = ("hit_rate", "chance", "n_trials", "n_volumes")
            return {**{k: res[k] for k in keep}, "dir": str(out)}

        return (runner or self.runner).run("pointing", build, config=(checkpoint, POINTING_MAX_VOLUMES))

    # ---------------------------------------------------------------- everything
    def external(self, checkpoint: str, out: Path, runner: StageRunner | None = None) -> dict[str, Any]:
        """RAD-ChestCT external test: ingest, preprocess with the run's preset, embed, 16-finding evaluation."""
        ext, ecfg = self.cfg.external, self.cfg.evaluate

        def build() -> dict[str, Any]:
            from silverclip.checkpoint import load_model
            from silverclip.data.manifest import write_manifest
            from silverclip.data.preprocess import preprocess_manifest
            from silverclip.data.radchestct import ingest_radchestct
            from silverclip.eval.embeddings import compute_embeddings
            from silverclip.eval.retrieval import evaluate_retrieval
            from silverclip.eval.zero_shot import evaluate_zero_shot

            manifest = ingest_radchestct(ext.volumes, ext.labels, split=ext.split)
            manifest_path = write_manifest(manifest, out / "manifest.csv")
            cache = out / "cache"
            failures = preprocess_manifest(
                manifest,
                self.cfg.preprocess.preset,
                cache,
                workers=self.cfg.preprocess.workers,
                progress=self.cfg.progress,
            )
            failures.report()
            device = _device(ecfg.device)
            model, meta = load_model(checkpoint, map_location=device)
            info = {"checkpoint": checkpoint, "model_config": meta.get("model_config"), "step": meta.get("step")}
            emb, failures = compute_embeddings(
                model,
                cache,
                manifest_path,
                out / "embeddings",
                meta=info,
                batch_size=ecfg.batch_size,
                device=device,
                texts=False,
                progress=self.cfg.progress,
            )
            failures.report()
            from silverclip.data.manifest import REQUIRED_COLUMNS
            from silverclip.eval.radchestct import map_labels

            raw = manifest.set_index("volume_id").drop(columns=[c for c in REQUIRED_COLUMNS if c != "volume_id"])
            labels = map_labels(raw)  # the 84 RAD-ChestCT columns -> the 16 scored CT-RATE findings
            zs = evaluate_zero_shot(
                out / "embeddings",
                labels,
                out / "zero_shot",
                mode=ecfg.mode,
                template_set=ecfg.template_set,
                protocol="radchestct",
                n_boot=ecfg.n_boot,
                seed=self.cfg.seed,
                min_positives=ecfg.min_positives,
            )
            rt = evaluate_retrieval(out / "embeddings", labels, out / "retrieval", protocol="radchestct")
            return {"zero_shot": headline_zero_shot(zs), "retrieval": headline_retrieval(rt), "dir": str(out)}

        return (runner or self.runner).run("external", build, config=(checkpoint, ext, ecfg))

    # ---------------------------------------------------------------- everything
    def run_all(self, until: str | None = None) -> dict[str, Any] | None:
        """Run every stage (or up to and including ``until``); return the summary (None on non-zero ranks).

        Under ``torchrun`` every rank runs the two training stages together (DDP); the stages before them must
        already be complete (``silverclip run CONFIG --until labels`` in one process), and the stages after
        them run on rank 0 only.
        """
        import os

        if until is not None and until not in STAGE_ORDER:
            raise ConfigError(f"--until: unknown stage {until!r}; stages: {', '.join(STAGE_ORDER)}")
        self.validate(until=until)  # every stage's config before the first stage: a typo never waits
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if distributed:
            missing = [s for s in ("data", "preprocess", "labels") if self.runner.done(s) is None]
            if missing:
                raise RuntimeError(
                    f"stage(s) {missing} are not complete in {self.run_dir}: run them once in a single process "
                    "first (silverclip run CONFIG --until labels), then start the training stages under torchrun"
                )
        elif self.runner.is_main:
            prepare_run_dir(self.run_dir, self.cfg)

        def stop(stage: str) -> bool:
            return until is not None and STAGE_ORDER.index(stage) >= STAGE_ORDER.index(until)

        data = self.data()
        if stop("data"):
            return None
        pre = self.preprocess(data)
        if stop("preprocess"):
            return None
        labels = self.labels(data)
        if stop("labels"):
            return None
        init = None
        if self.cfg.pretrain_enabled:
            init = self.pretrain(
                pre["cache"], labels["labels"], data.get("gold_valid"), self.run_dir / "pretrain", seed=self.cfg.seed
            )["checkpoint"]
        if stop("pretrain"):
            return None
        clip = self.clip(pre["cache"], data, init, self.run_dir / "clip", seed=self.cfg.seed)
        if not self.runner.is_main or stop("clip"):
            return None
        emb = self.embed(clip["checkpoint"], pre["cache"], data, self.run_dir / "embeddings")
        if stop("embed"):
            return None
        ev = self.evaluate(emb, data, self.run_dir / "eval")
        self.calibrate(clip["checkpoint"], data, Path(ev["dir"]))
        summary = {"run_dir": str(self.run_dir), "data": data, "labels": labels, "evaluation": ev}
        if self.cfg.source.kind == "synth":
            try:
                summary["pointing_game"] = self.pointing(clip["checkpoint"], self.run_dir / "eval" / "pointing")
            except Exception as e:  # a localisation check never costs the run its results
                log.warning("pointing game failed (%s: %s); silverclip evaluate pointing retries", type(e).__name__, e)
        if self.cfg.external.enabled:
            summary["external"] = self.external(clip["checkpoint"], self.run_dir / "external")
        from silverclip.pipeline.summary import write_summary

        summary["report"] = str(write_summary(self.run_dir, summary))
        try:
            from silverclip.pipeline.html_report import write_html_report

            summary["report_html"] = str(write_html_report(self.run_dir))
        except Exception as e:  # the run's results stand without the page; `silverclip report RUN` retries
            log.warning(
                "report.html could not be written (%s: %s); rerun `silverclip report %s`",
                type(e).__name__,
                e,
                self.run_dir,
            )
        return summary


def _section_config(cls: type, data: dict[str, Any], section: str) -> Any:
    """``config_from_dict`` whose errors name the pipeline config's section (``pretrain.train.epoch``)."""
    try:
        return config_from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"in section {section}: {e}") from None


#: Validation volumes the pipeline's pointing game looks at (a SmoothGrad map per positive finding: 16
#: forward/backward passes each, about 1-2 s on a CPU); `silverclip evaluate pointing` scores every volume.
POINTING_MAX_VOLUMES = 50

STAGE_ORDER = ("data", "preprocess", "labels", "pretrain", "clip", "embed", "evaluate")


def headline_zero_shot(results: dict[str, Any]) -> dict[str, Any]:
    """Mean AUC/F1/accuracy/precision over the estimable findings, with the bootstrap interval of the mean AUC,
    and per-finding AUCs (the not-estimable ones listed apart)."""
    mean = results["metrics"]["mean"]
    out: dict[str, Any] = {k: mean.get(k) for k in ("auc", "f1", "accuracy", "precision")}
    boot = results.get("bootstrap", {})
    if "mean/auc" in boot.get("lower", {}):
        out["auc_ci"] = [boot["lower"]["mean/auc"], boot["upper"]["mean/auc"]]
    out["n_volumes"] = results.get("n_volumes")
    out["template_set"] = results.get("template_set")
    out["n_findings"] = int(mean.get("n_findings", len(results["findings"])))
    out["not_estimable"] = list(results.get("not_estimable") or [])
    out["per_finding_auc"] = {n: results["metrics"][n]["auc"] for n in results["findings"]}
    return out


def headline_retrieval(results: dict[str, Any]) -> dict[str, Any]:
    """Image-to-image MAP@K and report-to-image / image-to-report Recall@K."""
    i2i = results["image_to_image"]
    out: dict[str, Any] = {"map": i2i["map"], "map_exclude": i2i.get("exclude")}
    out["map_gallery"] = i2i.get("n_gallery")
    for key in ("report_to_image", "image_to_report"):
        if key in results:
            out[key] = results[key]["recall"]
            out[f"{key}_gallery"] = results[key]["n_gallery"]
    return out
