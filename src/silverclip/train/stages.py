"""The two training stages as library functions: ``run_pretrain(cfg)`` and ``run_clip(cfg)``.

Both build datasets from the cache (+ labels table or report manifest), hand a task to
:func:`silverclip.train.loop.fit` and return the folder of the checkpoint to use next (``best/``).
Called by the CLI (``silverclip pretrain`` / ``silverclip clip``) and by the pipeline
(``silverclip run``); a run whose ``last/`` checkpoint already finished its schedule returns at once,
an interrupted one resumes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from silverclip.data.cache import VolumeCache
from silverclip.findings import FINDINGS
from silverclip.runs import prepare_run_dir
from silverclip.train.config import ClipConfig, PretrainConfig
from silverclip.train.data import (
    VALID_SPLITS,
    LabeledVolumeDataset,
    ReportVolumeDataset,
    align_ids,
    load_label_table,
    read_report_manifest,
    report_text,
    split_by_patient,
)
from silverclip.train.loop import FitResult, fit
from silverclip.train.tasks import ClipTask, SupervisedTask

log = logging.getLogger(__name__)


def _is_main_process() -> bool:
    """Rank 0 by torchrun's ``RANK`` (the process group only starts inside ``fit``)."""
    return int(os.environ.get("RANK", "0")) == 0


def _val_cache(cfg: PretrainConfig | ClipConfig, cache: VolumeCache) -> VolumeCache:
    """The validation cache (``cfg.val_cache``, else the training cache), checked to share its preset."""
    if not cfg.val_cache:
        return cache
    val = VolumeCache(cfg.val_cache)
    pa, pb = cache.preset, val.preset
    if (pa.window, pa.output_range, pa.spacing) != (pb.window, pb.output_range, pb.spacing):
        raise ValueError(
            f"caches {cache.root} and {val.root} were made with different presets ({pa.name} vs {pb.name}); "
            "training and validation must share spacing and HU window"
        )
    return val


def _dataset_kwargs(cfg: PretrainConfig | ClipConfig) -> dict:
    return {"crop": cfg.data.crop, "random_flip": cfg.data.random_flip, "seed": cfg.train.seed}


def pretrain_datasets(cfg: PretrainConfig) -> tuple[LabeledVolumeDataset, LabeledVolumeDataset | None, VolumeCache]:
    """Training/validation datasets of a pre-training config (ids aligned explicitly, mismatches reported)."""
    cache = VolumeCache(cfg.cache)
    labels = load_label_table(cfg.labels)
    ids = align_ids(cache.ids(), list(labels.index), str(cfg.cache), str(cfg.labels)).ids
    kw = _dataset_kwargs(cfg)
    val = None
    if cfg.val_labels is not None:
        val_cache = _val_cache(cfg, cache)
        val_labels = load_label_table(cfg.val_labels)
        val_ids = align_ids(val_cache.ids(), list(val_labels.index), str(val_cache.root), str(cfg.val_labels)).ids
        if val_cache is cache:
            overlap = set(ids) & set(val_ids)
            if overlap:
                log.warning(
                    "%d validation volume(s) are also in the training labels; training without them", len(overlap)
                )
                ids = [i for i in ids if i not in overlap]
        val = LabeledVolumeDataset(val_cache, val_labels.loc[val_ids], train=False, policy=cfg.uncertain_policy, **kw)
    elif cfg.data.val_fraction > 0:
        ids, val_ids = split_by_patient(ids, cfg.data.val_fraction, cfg.train.seed)
        val = LabeledVolumeDataset(cache, labels.loc[val_ids], train=False, policy=cfg.uncertain_policy, **kw)
    train = LabeledVolumeDataset(cache, labels.loc[ids], train=True, policy=cfg.uncertain_policy, **kw)
    log.info("pre-training on %d volume(s), validating on %d", len(train), len(val) if val else 0)
    return train, val, cache


def run_pretrain(cfg: PretrainConfig) -> Path:
    """Supervised pre-training into ``cfg.out``; returns the best checkpoint folder (``best/``)."""
    return _pretrain(cfg).best


def _pretrain(cfg: PretrainConfig) -> FitResult:
    def make_task(cache: VolumeCache, val: LabeledVolumeDataset | None) -> SupervisedTask:
        return SupervisedTask(cfg.model, cache.preset, cfg.model_kwargs)

    return _run_stage(cfg, pretrain_datasets, make_task)


def _run_stage(cfg: PretrainConfig | ClipConfig, datasets: Callable, make_task: Callable) -> FitResult:
    """Run folder (rank 0), datasets, task, :func:`~silverclip.train.loop.fit`: the steps both stages share."""
    if _is_main_process():
        prepare_run_dir(cfg.out, cfg)
    train, val, cache = datasets(cfg)
    return fit(make_task(cache, val), train, val, cfg.train, cfg.data, cfg.out)


def _manifest_labels(manifest: pd.DataFrame, ids: list[str], labels_csv: Path | None) -> np.ndarray | None:
    """(N, 18) labels for zero-shot AUC: the manifest's finding columns, else a labels CSV, else None."""
    if all(f in manifest.columns for f in FINDINGS):
        return manifest.loc[ids, list(FINDINGS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    if labels_csv is not None:
        table = load_label_table(labels_csv)
        missing = [i for i in ids if i not in table.index]
        if missing:
            log.warning(
                "%d validation volume(s) have no labels in %s (left out of zero-shot AUC)", len(missing), labels_csv
            )
        return table.reindex(ids)[list(FINDINGS)].to_numpy(np.float32)
    return None


def _pairs(manifest: pd.DataFrame, cache: VolumeCache, name: str, include_impressions: bool) -> tuple[list, list]:
    texts = {vid: report_text(row, include_impressions) for vid, row in manifest.iterrows()}
    empty = sorted(v for v, t in texts.items() if not t)
    if empty:
        log.warning("%d report(s) in %s have no text (skipped), e.g. %s", len(empty), name, empty[:5])
    ids = align_ids(cache.ids(), [v for v, t in texts.items() if t], str(cache.root), name).ids
    return ids, [texts[i] for i in ids]


def clip_datasets(cfg: ClipConfig) -> tuple[ReportVolumeDataset, ReportVolumeDataset | None, VolumeCache]:
    """Training/validation (volume, report) datasets of a CLIP config."""
    cache = VolumeCache(cfg.cache)
    manifest = read_report_manifest(cfg.manifest)
    kw = _dataset_kwargs(cfg)
    val_cache, val_manifest = cache, None
    if cfg.val_manifest is not None:
        val_cache = _val_cache(cfg, cache)
        val_manifest = read_report_manifest(cfg.val_manifest)
    elif "split" in manifest.columns:
        is_val = manifest["split"].astype(str).str.lower().isin(VALID_SPLITS)
        if is_val.any():
            val_manifest, manifest = manifest[is_val], manifest[~is_val]
    ids, texts = _pairs(manifest, cache, str(cfg.manifest), cfg.include_impressions)
    if val_manifest is None and cfg.data.val_fraction > 0:
        train_ids, val_ids = split_by_patient(ids, cfg.data.val_fraction, cfg.train.seed)
        val_manifest = manifest.loc[val_ids]
        manifest = manifest.loc[train_ids]
        ids, texts = _pairs(manifest, cache, str(cfg.manifest), cfg.include_impressions)
    train = ReportVolumeDataset(cache, ids, texts, train=True, sentence_keep=cfg.sentence_keep, **kw)
    val = None
    if val_manifest is not None:
        v_ids, v_texts = _pairs(val_manifest, val_cache, str(cfg.val_manifest or cfg.manifest), cfg.include_impressions)
        labels = _manifest_labels(val_manifest, v_ids, cfg.val_labels)
        val = ReportVolumeDataset(val_cache, v_ids, v_texts, train=False, labels=labels, **kw)
    log.info("CLIP training on %d pair(s), validating on %d", len(train), len(val) if val else 0)
    return train, val, cache


def run_clip(cfg: ClipConfig) -> Path:
    """CLIP training into ``cfg.out``; returns the best checkpoint folder (``best/``)."""
    return _clip(cfg).best


def _clip(cfg: ClipConfig) -> FitResult:
    def make_task(cache: VolumeCache, val: ReportVolumeDataset | None) -> ClipTask:
        return ClipTask(
            cache.preset,
            image_model=cfg.image_model,
            text_model=cfg.text_model,
            init=cfg.init,
            model_kwargs=cfg.model_kwargs,
            retrieval_ks=cfg.retrieval_ks,
            has_labels=val is not None and val.labels is not None,
            include_impressions=cfg.include_impressions,
            template_set=cfg.zero_shot_templates,
        )

    return _run_stage(cfg, clip_datasets, make_task)
