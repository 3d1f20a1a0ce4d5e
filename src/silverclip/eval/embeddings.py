"""Image and report embeddings of a dataset, computed once and reused by every evaluation.

Layout of an embeddings folder (``silverclip embed --out EMB``)::

    EMB/meta.json                  # checkpoint, model config, preset, embed_dim, normalized, logit_scale,
                                   # findings, template sets, counts, code version
    EMB/image.npy, image_ids.json  # (N, E) float32 image embeddings; ids = volume ids (row order)
    EMB/text.npy,  text_ids.json   # (M, E) float32 report embeddings; id = the volume the report belongs to
    EMB/zero_shot/<set>.npy        # (F, 2, E) zero-shot text classifier per template set (prompts.yaml)
    EMB/parts/                     # shards of an unfinished run (removed when the run completes)
    EMB/failures.json              # volumes that could not be embedded, with the reason

Every file is written atomically. An interrupted run resumes from its finished shards. With the
classifiers stored, no evaluation needs the model again: zero-shot is a matrix product of stored
image embeddings with (F, 2, E), retrieval a chunked product of stored embeddings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from silverclip.data.cache import VolumeCache
from silverclip.data.presets import Preset
from silverclip.findings import FINDINGS
from silverclip.io import FailureLog, atomic_save_npy, atomic_write_json
from silverclip.runs import code_version

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass
class Embeddings:
    """A loaded embeddings folder. ``image`` (N, E) rows match ``image_ids``; ``text`` (M, E) ``text_ids``."""

    image_ids: list[str]
    image: np.ndarray
    text_ids: list[str] = field(default_factory=list)
    text: np.ndarray | None = None
    classifiers: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def logit_scale(self) -> float:
        return float(self.meta.get("logit_scale", 1.0))

    @property
    def findings(self) -> list[str]:
        return list(self.meta.get("findings", FINDINGS))

    def classifier(self, template_set: str | None = None) -> np.ndarray:
        """The stored (F, 2, E) classifier of ``template_set`` (the meta's default when None)."""
        name = template_set or self.meta.get("default_template_set") or next(iter(self.classifiers), None)
        if name not in self.classifiers:
            raise KeyError(f"no zero-shot classifier for template set {name!r}; stored: {sorted(self.classifiers)}")
        return self.classifiers[name]


def save_embeddings(out: str | Path, emb: Embeddings) -> Path:
    """Write ``emb`` into folder ``out`` (atomic per file; meta.json last, so a folder with meta is complete)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(emb.image_ids) != len(emb.image):
        raise ValueError("image ids and embeddings differ in length")
    atomic_save_npy(out / "image.npy", np.asarray(emb.image, dtype=np.float32))
    atomic_write_json(out / "image_ids.json", list(emb.image_ids))
    if emb.text is not None:
        atomic_save_npy(out / "text.npy", np.asarray(emb.text, dtype=np.float32))
        atomic_write_json(out / "text_ids.json", list(emb.text_ids))
    for name, cls in emb.classifiers.items():
        atomic_save_npy(out / "zero_shot" / f"{name}.npy", np.asarray(cls, dtype=np.float32))
    meta = {
        "format": FORMAT_VERSION,
        **emb.meta,
        "n_images": len(emb.image_ids),
        "n_texts": len(emb.text_ids),
        "template_sets": sorted(emb.classifiers),
    }
    atomic_write_json(out / "meta.json", meta)
    return out


def load_embeddings(path: str | Path) -> Embeddings:
    """Read an embeddings folder written by :func:`save_embeddings` / ``silverclip embed``."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"{path} is not a finished embeddings folder (meta.json is missing)")
    meta = json.loads((path / "meta.json").read_text())
    image = np.load(path / "image.npy", allow_pickle=False)
    image_ids = json.loads((path / "image_ids.json").read_text())
    text, text_ids = None, []
    if (path / "text.npy").is_file():
        text = np.load(path / "text.npy", allow_pickle=False)
        text_ids = json.loads((path / "text_ids.json").read_text())
    classifiers = {p.stem: np.load(p, allow_pickle=False) for p in sorted((path / "zero_shot").glob("*.npy"))}
    if len(image_ids) != len(image):
        raise ValueError(f"{path}: image.npy has {len(image)} rows but image_ids.json {len(image_ids)} ids")
    return Embeddings(image_ids, image, text_ids, text, classifiers, meta)


def center_crop(array: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    """Centre crop (X, Y, Z) to ``crop``: the evaluation view (:func:`silverclip.data.model_input.center_crop`,
    the one definition training validation uses too)."""
    from silverclip.data.model_input import center_crop as crop_centre

    return crop_centre(array, crop)


def model_input(hu: np.ndarray, preset: Preset, device: str | torch.device = "cpu") -> torch.Tensor:
    """Cached int16 HU volume (preset.shape) -> centre-cropped, normalised tensor (1, 1, X, Y, Z) float32 on
    ``device`` (:func:`silverclip.data.model_input.volume_tensor`)."""
    from silverclip.data.model_input import volume_tensor

    return volume_tensor(hu, preset, device)


def checkpoint_includes_impressions(checkpoint_meta: dict[str, Any]) -> bool:
    """Whether the CLIP run that wrote a checkpoint trained on Findings + Impressions (``extra``
    ``include_impressions``, recorded by the CLIP stage); False (Findings only, the paper's choice) for
    checkpoints that do not say."""
    return bool((checkpoint_meta.get("extra") or {}).get("include_impressions", False))


class _Shards:
    """Finished shards of one modality in ``parts/`` (npy written first, ids json last = complete)."""

    def __init__(self, root: Path, kind: str):
        self.root, self.kind = root, kind
        root.mkdir(parents=True, exist_ok=True)

    def _ids_files(self) -> list[Path]:
        return sorted(self.root.glob(f"{self.kind}_*.json"))

    def done(self) -> set[str]:
        return {i for p in self._ids_files() for i in json.loads(p.read_text())}

    def write(self, ids: list[str], vectors: list[np.ndarray]) -> None:
        if not ids:
            return
        n = len(self._ids_files())
        stem = self.root / f"{self.kind}_{n:06d}"
        atomic_save_npy(stem.with_suffix(".npy"), np.stack(vectors).astype(np.float32))
        atomic_write_json(stem.with_suffix(".json"), ids)

    def merge(self) -> tuple[list[str], np.ndarray | None]:
        ids, arrays = [], []
        for p in self._ids_files():
            ids += json.loads(p.read_text())
            arrays.append(np.load(p.with_suffix(".npy"), allow_pickle=False))
        return ids, (np.concatenate(arrays) if arrays else None)


@torch.no_grad()
def encode_batches(
    loader: Iterable[dict[str, Any]],
    preset: Preset,
    device: str | torch.device,
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    encode_text: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Iterator[dict[str, Any]]:
    """The one evaluation loop: loader batches (stored crops + tokens, :class:`silverclip.train.data.Collate`)
    -> per-batch outputs on the host, float32.

    Used by training validation (both tasks) and :func:`compute_embeddings`. Each batch's crops go to
    ``device`` as stored and are normalised there (:func:`silverclip.data.model_input.normalize_batch`);
    ``encode_image`` (a CLIP's ``encode_image`` or a classifier's forward) and ``encode_text`` run under
    ``autocast`` (bf16 on a GPU). Yields ``{"ids", "image" (B, ...), "text_ids", "text" (T, E) or None,
    "failed": [(id, message)], "batch": the loader batch}``.
    """
    from silverclip.data.model_input import normalize_batch

    autocast = autocast or contextlib.nullcontext
    for batch in loader:
        out: dict[str, Any] = {
            "ids": [],
            "image": None,
            "text_ids": [],
            "text": None,
            "failed": batch.get("failed", []),
        }
        out["batch"] = batch
        if "image" in batch:
            x = normalize_batch(batch["image"].to(device, non_blocking=True), preset)
            with autocast():
                out["image"] = encode_image(x).float().cpu().numpy()
            out["ids"] = list(batch["id"])
            if encode_text is not None and "tokens" in batch:
                tokens = {k: v.to(device, non_blocking=True) for k, v in batch["tokens"].items()}
                with autocast():
                    out["text"] = encode_text(tokens).float().cpu().numpy()
                out["text_ids"] = [out["ids"][i] for i in batch["text_rows"].tolist()]
        yield out


def gather_in_order(parts: dict[str, list], order: Sequence[str]) -> dict[str, list]:
    """Per-rank lists (``ids`` plus aligned columns) gathered from every rank, sorted by ``order`` (dataset order).

    ``parts``: ``{"ids": [...], column: [...], ...}`` of this rank; returns the same keys for the whole set on
    every rank (the rank split never changes the result). Single process: sorted only.
    """
    from silverclip.distributed import all_gather_objects

    gathered = all_gather_objects(parts)
    merged = {k: [v for p in gathered for v in p[k]] for k in parts}
    position = {vid: i for i, vid in enumerate(order)}
    idx = sorted(range(len(merged["ids"])), key=lambda i: position[merged["ids"][i]])
    return {k: [v[i] for i in idx] for k, v in merged.items()}


@torch.no_grad()
def compute_embeddings(
    model: torch.nn.Module | str | Path,
    cache: str | Path | VolumeCache,
    manifest: str | Path | pd.DataFrame,
    out: str | Path,
    *,
    meta: dict[str, Any] | None = None,
    template_sets: Sequence[str] | None = None,
    batch_size: int = 2,
    shard_size: int = 64,
    device: str = "cpu",
    texts: bool = True,
    include_impressions: bool | None = None,
    split: str | None = None,
    progress: bool = True,
    num_workers: int = 0,
    precision: str = "auto",
) -> tuple[Embeddings, FailureLog]:
    """Embed every manifest volume found in ``cache`` (and its report), plus the zero-shot classifiers.

    ``model`` is a CLIP model (``encode_image``, ``encode_text``, ``tokenize``) or a CLIP checkpoint
    folder (loaded onto ``device``; its path, model config and step go into ``meta``). ``manifest``: a
    CSV/Parquet path or a frame with ``volume_id`` (+ ``findings``, ``impressions``, ``split``), read by
    :func:`silverclip.train.data.read_report_manifest`. Volumes go through training's data path: a
    :class:`~silverclip.train.data.ReportVolumeDataset` (centre crop of the preset's ``crop``) in a loader
    (``num_workers`` processes, tokenising there), batches of ``batch_size`` normalised on ``device`` and
    encoded under ``precision`` (``auto``: bf16 on a GPU), by :func:`encode_batches`, the loop training
    validation runs. Finished shards of an earlier run in ``out/parts`` are reused (resume).
    Per-volume failures (missing from the cache, unreadable) are collected, not raised.
    Report text (:func:`silverclip.train.data.report_text`) = Findings, + Impressions when
    ``include_impressions``; None = what the checkpoint's CLIP run trained on (a checkpoint folder's
    ``extra.include_impressions``; Findings only for a model object). ``split`` keeps only manifest rows
    of that split.
    Returns the saved :class:`Embeddings` and the failure log (also written to ``out/failures.json``).
    """
    from silverclip import precision as precisions
    from silverclip.eval.zero_shot import build_zero_shot_classifier, list_template_sets, logit_scale_of
    from silverclip.train.data import Collate, ReportVolumeDataset, make_loader, read_report_manifest, report_text

    if isinstance(model, str | Path):
        from silverclip.checkpoint import load_model

        checkpoint = model
        model, ckpt_meta = load_model(checkpoint, map_location=device)
        from_ckpt = {k: ckpt_meta.get(k) for k in ("model_config", "step")}
        meta = {"checkpoint": str(checkpoint), **from_ckpt, **(meta or {})}
        if include_impressions is None:
            include_impressions = checkpoint_includes_impressions(ckpt_meta)
    include_impressions = bool(include_impressions)
    out = Path(out)
    cache = cache if isinstance(cache, VolumeCache) else VolumeCache(cache)
    df = read_report_manifest(manifest, require=())
    if split is not None:
        if "split" not in df.columns:
            raise ValueError("manifest has no split column to select from")
        df = df[df["split"].astype(str) == split]
    failures = FailureLog("embed")
    model.eval().to(device)
    img_shards, txt_shards = _Shards(out / "parts", "image"), _Shards(out / "parts", "text")
    done = img_shards.done()
    todo = df[~df.index.isin(done)]
    if done:
        log.info("resuming: %d volumes already embedded, %d to go", len(done), len(todo))
    ids, report = [], []
    for vid, row in todo.iterrows():
        if vid not in cache:  # one bad volume never stops the run
            failures.add(vid, cache.path(vid), FileNotFoundError(f"volume {vid!r} is not in cache {cache.root}"))
            continue
        ids.append(vid)
        report.append(report_text(row, include_impressions) if texts else "")

    dataset = ReportVolumeDataset(cache, ids, report, train=False, skip_errors=True)
    tokenize = model.batch_tokenizer() if hasattr(model, "batch_tokenizer") else model.tokenize
    loader = make_loader(
        dataset,
        batch_size,
        train=False,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        collate_fn=Collate(tokenize if texts else None),
    )
    buf: dict[str, list] = {"ids": [], "img": [], "txt_ids": [], "txt": []}

    def flush() -> None:
        # text shard first: a crash between the two leaves texts that are simply recomputed
        txt_shards.write(list(buf["txt_ids"]), list(buf["txt"]))
        img_shards.write(list(buf["ids"]), list(buf["img"]))
        for b in buf.values():
            b.clear()

    bar = tqdm(total=len(todo), desc="embed", disable=not progress)
    bar.update(len(todo) - len(ids))
    autocast = lambda: precisions.autocast(device, precision)  # noqa: E731
    for part in encode_batches(loader, cache.preset, device, model.encode_image, model.encode_text, autocast):
        for vid, message in part["failed"]:
            failures.add(vid, cache.path(vid), message)
        if part["image"] is not None:
            buf["ids"] += part["ids"]
            buf["img"] += list(part["image"])
        if part["text"] is not None:
            buf["txt_ids"] += part["text_ids"]
            buf["txt"] += list(part["text"])
        bar.update(len(part["ids"]) + len(part["failed"]))
        if len(buf["ids"]) >= shard_size:
            flush()
    flush()
    bar.close()

    image_ids, image = img_shards.merge()
    text_ids, text = txt_shards.merge()
    if text is not None:  # a text shard may repeat after a crash between the two writes: keep the first
        _, first = np.unique(np.asarray(text_ids), return_index=True)
        keep = np.sort(first)
        text_ids, text = [text_ids[i] for i in keep], text[keep]
    if image is None:
        raise RuntimeError(f"no volume could be embedded (see {out / 'failures.json'})")
    sets = list(template_sets or list_template_sets())
    classifiers = {s: build_zero_shot_classifier(model, FINDINGS, s).numpy() for s in sets}
    norms = np.linalg.norm(image, axis=1)
    info = {
        **(meta or {}),
        "embed_dim": int(image.shape[1]),
        "normalized": bool(np.allclose(norms, 1.0, atol=1e-3)),
        "logit_scale": logit_scale_of(model),
        "findings": list(FINDINGS),
        "default_template_set": sets[0] if template_sets else None,
        "preset": cache.preset.to_dict(),
        "include_impressions": include_impressions,
        "cache": str(cache.root),
        "code_version": code_version(),
    }
    if info["default_template_set"] is None:
        from silverclip.eval.zero_shot import default_template_set

        info["default_template_set"] = default_template_set()
    emb = Embeddings(image_ids, image, text_ids if text is not None else [], text, classifiers, info)
    save_embeddings(out, emb)
    failures.write(out / "failures.json")
    shutil.rmtree(out / "parts", ignore_errors=True)
    return emb, failures
