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

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from silverclip.data.cache import VolumeCache
from silverclip.data.resample import center_crop, model_input  # noqa: F401 - re-exported (defined there)
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
) -> tuple[Embeddings, FailureLog]:
    """Embed every manifest volume found in ``cache`` (and its report), plus the zero-shot classifiers.

    ``model`` is a CLIP model (``encode_image``, ``encode_text``, ``tokenize``) or a CLIP checkpoint
    folder (loaded onto ``device``; its path, model config and step go into ``meta``). ``manifest``: a
    CSV/Parquet path or a frame with ``volume_id`` (+ ``findings``, ``impressions``, ``split``), read by
    :func:`silverclip.train.data.read_report_manifest`. Volumes are centre-cropped to the cache preset's
    ``crop`` and normalised. Finished shards of an earlier run in ``out/parts`` are reused (resume).
    Per-volume failures (missing from the cache, unreadable) are collected, not raised.
    Report text (:func:`silverclip.train.data.report_text`) = Findings, + Impressions when
    ``include_impressions``; None = what the checkpoint's CLIP run trained on (a checkpoint folder's
    ``extra.include_impressions``; Findings only for a model object). ``split`` keeps only manifest rows
    of that split.
    Returns the saved :class:`Embeddings` and the failure log (also written to ``out/failures.json``).
    """
    from silverclip.eval.zero_shot import build_zero_shot_classifier, list_template_sets, logit_scale_of
    from silverclip.train.data import read_report_manifest, report_text

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

    buf_ids: list[str] = []
    buf_img: list[np.ndarray] = []
    buf_txt_ids: list[str] = []
    buf_txt: list[np.ndarray] = []
    batch: list[tuple[str, torch.Tensor, str]] = []

    def run_batch() -> None:
        if not batch:
            return
        x = torch.cat([b[1] for b in batch]).to(device)
        emb = model.encode_image(x).float().cpu().numpy()
        for (vid, _, text), e in zip(batch, emb):
            buf_ids.append(vid)
            buf_img.append(e)
            if texts and text:
                buf_txt_ids.append(vid)
        report = [b[2] for b in batch if texts and b[2]]
        if report:
            tokens = model.tokenize(report)
            tokens = {k: v.to(device) for k, v in tokens.items()}
            buf_txt.extend(model.encode_text(tokens).float().cpu().numpy())
        batch.clear()

    def flush() -> None:
        # text shard first: a crash between the two leaves texts that are simply recomputed
        txt_shards.write(list(buf_txt_ids), list(buf_txt))
        img_shards.write(list(buf_ids), list(buf_img))
        for b in (buf_ids, buf_img, buf_txt_ids, buf_txt):
            b.clear()

    for vid, row in tqdm(todo.iterrows(), total=len(todo), desc="embed", disable=not progress):
        try:
            hu = cache.load(vid)
            batch.append((vid, model_input(hu, cache.preset), report_text(row, include_impressions)))
        except Exception as e:  # one bad volume never stops the run
            failures.add(vid, cache.path(vid), e)
            continue
        if len(batch) >= batch_size:
            run_batch()
        if len(buf_ids) >= shard_size:
            flush()
    run_batch()
    flush()

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
