"""Preprocessing: volume -> preset (resample, HU window, centre crop/pad) -> the int16 cache.

One volume: ``read (int16, canonical views) -> trilinear resample to preset.spacing (float32, only the
needed slices, silverclip.data.resample) -> clip to preset.window -> round -> centre crop/pad to
preset.shape with preset.pad_hu -> int16``. This is the path DESIGN.md measured at 1.22x the bare
read; MONAI's LoadImage/Orientation/Spacing chain was 3.18x (float64 copies, full-volume float
conversion), so the few lines of resampling are written by hand and tested against torch's trilinear.

A dataset: :func:`preprocess_manifest` fans volumes out to worker processes (spawn-safe, one torch
thread each), writes each finished volume atomically into the cache, skips volumes already there
(resumable, idempotent), takes a deterministic ``shard=(i, n)`` of the manifest, and records any
volume that fails (file + reason) while the others go on.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import sys
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from silverclip.data.cache import FAILURES_FILE, CacheWriter
from silverclip.data.presets import Preset, load_preset
from silverclip.data.readers import Volume, VolumeReadError, load_volume
from silverclip.data.resample import center_crop_pad, output_shape, resample
from silverclip.io import FailureLog
from silverclip.workers import init_worker

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

INDEX_FLUSH_SECONDS = 30.0


#: Voxel spacings (mm) outside this range are not a CT's: micrometres read as mm, or a broken header.
SPACING_RANGE_MM = (0.05, 20.0)
#: Most float32 voxels resampling may hold before the crop (2**28: 1 GiB); a larger one is refused, not allocated.
MAX_RESAMPLED_VOXELS = 2**28


def check_geometry(volume: Volume, preset: Preset) -> None:
    """Refuse, naming the file, a volume whose spacing or resampled size is absurd, before anything is allocated."""
    shape, spacing, target = volume.shape, tuple(float(s) for s in volume.spacing), preset.spacing
    lo, hi = SPACING_RANGE_MM
    mm = "x".join(f"{s:g}" for s in spacing)
    if not all(np.isfinite(s) and lo <= s <= hi for s in spacing):
        raise VolumeReadError(
            f"{volume.source}: voxel spacing {mm} mm is outside the range of CT scans ({lo:g}-{hi:g} mm): "
            "a header in micrometres, or a wrong one; fix the file's voxel size"
        )
    size = "x".join(str(n) for n in shape)
    if any(n * s / t < 1 for n, s, t in zip(shape, spacing, target)):
        raise VolumeReadError(
            f"{volume.source}: {size} voxels of {mm} mm are smaller than one "
            f"{'x'.join(f'{t:g}' for t in target)} mm voxel of preset {preset.name!r} along an axis: not a CT volume"
        )
    out = output_shape(shape, spacing, target)
    # resample() first gathers the output slices along one axis at the input's size on the other two
    peak = max(math.prod(out), *(o * math.prod(shape) // n for o, n in zip(out, shape)))
    if peak > MAX_RESAMPLED_VOXELS:
        raise VolumeReadError(
            f"{volume.source}: resampling {size} voxels of {mm} mm to {'x'.join(f'{t:g}' for t in target)} mm "
            f"would hold {peak * 4 / 2**30:.1f} GiB (to {'x'.join(map(str, out))} voxels) before the crop to "
            f"{'x'.join(map(str, preset.shape))}; the limit is {MAX_RESAMPLED_VOXELS * 4 / 2**30:g} GiB"
        )


def preprocess_volume(volume: Volume, preset: Preset | str) -> np.ndarray:
    """A canonical Volume -> int16 HU array of shape ``preset.shape`` (x, y, z), clipped to ``preset.window``
    (for a preset with ``cache_dtype: uint8``, its 8-bit window codes:
    :func:`~silverclip.data.model_input.quantize_window`).

    Raises :class:`~silverclip.data.readers.VolumeReadError` for an absurd geometry (:func:`check_geometry`).
    """
    import torch

    preset = load_preset(preset)
    check_geometry(volume, preset)
    lo, hi = preset.window
    with torch.no_grad():
        t = resample(volume.array, volume.spacing, preset.spacing)
        t.clamp_(lo, hi).round_()
        arr = t.to(torch.int16).numpy()
    pad = np.int16(np.clip(preset.pad_hu, lo, hi))
    out = center_crop_pad(arr, preset.shape, pad)
    if preset.cache_dtype == "uint8":
        from silverclip.data.model_input import quantize_window

        out = quantize_window(out, preset.window)
    return out


def preprocess_path(
    path: str | Path,
    preset: Preset | str,
    rescale: tuple[float, float] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Read one scan (NIfTI, DICOM folder or .npz) and preprocess it: what ``silverclip predict`` feeds the model.

    Returns int16 HU (uint8 codes for an 8-bit preset), shape ``preset.shape``, as the cache stores it;
    :func:`silverclip.data.model_input.normalize_batch` maps either to the model's input range.
    """
    return preprocess_volume(load_volume(path, rescale=rescale, spacing=spacing), preset)


# ----------------------------------------------------------------------------------------------- dataset


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (0 <= i < n) -> (i, n)."""
    if text is None:
        return None
    if isinstance(text, tuple):
        i, n = text
    else:
        try:
            i, n = (int(v) for v in str(text).split("/"))
        except ValueError:
            raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n")
    return i, n


def in_shard(volume_id: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic shard membership by CRC32 of the id: stable across machines, runs and manifest order."""
    if shard is None:
        return True
    i, n = shard
    return zlib.crc32(volume_id.encode()) % n == i


def _task(row: Any) -> dict[str, Any]:
    rescale = (float(row.rescale_slope), float(row.rescale_intercept)) if bool(row.needs_rescale) else None
    spacing = (row.spacing_x, row.spacing_y, row.spacing_z)
    spacing = tuple(float(v) for v in spacing) if all(np.isfinite(v) and v > 0 for v in spacing) else None
    return {"volume_id": row.volume_id, "path": row.path, "format": row.format, "rescale": rescale, "spacing": spacing}


def _process_one(task: dict[str, Any], preset_dict: dict[str, Any], root: str) -> dict[str, Any]:
    """Worker: read, preprocess and atomically write one volume; returns its index row (raises on failure).

    ``task["index_only"]``: the volume is already cached (written before a kill, its index row lost):
    only read the source again to rebuild the row.
    """
    t0 = time.perf_counter()
    preset = Preset.from_dict(preset_dict)
    vol = load_volume(task["path"], format=task["format"], rescale=task["rescale"], spacing=task["spacing"])
    if not task.get("index_only"):
        out = preprocess_volume(vol, preset)
        CacheWriter(root, preset).write(task["volume_id"], out)
    return {
        "volume_id": task["volume_id"],
        "file": f"volumes/{task['volume_id']}.npy",
        "source": str(task["path"]),
        "source_orientation": vol.source_orientation,
        "source_shape": "x".join(str(s) for s in vol.shape),
        "source_spacing": "x".join(f"{s:.4g}" for s in vol.spacing),
        "seconds": None if task.get("index_only") else round(time.perf_counter() - t0, 3),
    }


def _run_pool(tasks: list[dict], preset_dict: dict, root: str, workers: int) -> Iterator[tuple[dict, Any]]:
    """Yield (task, index row | exception) as workers finish; a crashed worker fails only its in-flight volumes."""
    pending = list(reversed(tasks))
    ctx = mp.get_context("spawn")  # fork + torch threads can deadlock; spawn is safe everywhere
    while pending:
        # init_worker: a killed preprocess takes its workers with it; one torch thread each.
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(os.getpid(), 1)) as pool:
            inflight: dict[Future, dict] = {}
            broken = False
            while (pending or inflight) and not broken:
                while pending and len(inflight) < 2 * workers:
                    t = pending.pop()
                    inflight[pool.submit(_process_one, t, preset_dict, root)] = t
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = inflight.pop(fut)
                    try:
                        yield task, fut.result()
                    except BrokenProcessPool:
                        broken = True
                        yield task, RuntimeError("worker process died (out of memory or crash) on this volume")
                    except Exception as e:  # the volume's own error, raised in the worker
                        yield task, e
            if broken:  # the pool is unusable: everything still in flight is reported, the rest restarts
                for task in inflight.values():
                    yield task, RuntimeError("worker process died (out of memory or crash) while this volume ran")


def preprocess_manifest(
    manifest: pd.DataFrame | str | Path,
    preset: Preset | str,
    out_dir: str | Path,
    workers: int = 1,
    shard: tuple[int, int] | str | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> FailureLog:
    """Preprocess every volume of ``manifest`` (frame or path) into the cache at ``out_dir``.

    Writes ``preset.json``, ``volumes/<id>.npy``, ``index.csv`` and ``failures.json`` (silverclip.data.cache).
    Volumes already in the cache are skipped; ``shard=(i, n)`` (or ``"i/n"``) processes only ids with
    ``crc32(id) % n == i``; ``workers > 1`` uses that many spawn-started processes (1 = in this process).
    Returns the FailureLog (also written to failures.json and printed); ``log.exit_code`` is 1 if any failed.
    """
    from tqdm.auto import tqdm

    from silverclip.data.manifest import read_manifest, validate_manifest

    df = read_manifest(manifest) if isinstance(manifest, str | Path) else validate_manifest(manifest)
    preset = load_preset(preset)
    writer = CacheWriter(out_dir, preset)
    shard = parse_shard(shard)
    selected = [r for r in df.itertuples(index=False) if in_shard(r.volume_id, shard)]
    removed = writer.remove_stale_temporaries([r.volume_id for r in selected])
    if removed:
        log.info("preprocess: removed %d temporary file(s) left by an interrupted run", removed)
    # Volumes written before a kill whose index rows were lost: their rows are rebuilt from the source.
    indexed = writer.indexed_ids()
    todo = [_task(r) for r in selected if r.volume_id not in writer]
    unindexed = [
        {**_task(r), "index_only": True} for r in selected if r.volume_id in writer and r.volume_id not in indexed
    ]
    cached = len(selected) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    log.info(
        "preprocess %s: %d volume(s) in manifest, %d in shard, %d already cached (%d to re-index), %d to do",
        preset.name,
        len(df),
        len(selected),
        cached,
        len(unindexed),
        len(todo),
    )
    todo = unindexed + todo
    failures = FailureLog("preprocess")
    rows: list[dict] = []
    preset_dict = preset.to_dict()
    if workers > 1 and len(todo) > 1:
        results: Iterable = _run_pool(todo, preset_dict, str(writer.root), min(workers, len(todo)))
    else:
        results = ((t, _safe(_process_one, t, preset_dict, str(writer.root))) for t in todo)
    bar = tqdm(total=len(todo), desc=f"preprocess[{preset.name}]", unit="vol", disable=not progress)
    flushed = time.monotonic()
    try:
        for task, result in results:
            if isinstance(result, BaseException):
                if not task.get("index_only"):  # an unreadable source of a cached volume keeps the volume
                    failures.add(task["volume_id"], task["path"], result)
            else:
                rows.append(result)
            bar.update(1)
            if time.monotonic() - flushed > INDEX_FLUSH_SECONDS:  # a kill loses at most this much of the index
                writer.update_index(rows)
                rows, flushed = [], time.monotonic()
    finally:
        bar.close()
        writer.update_index(rows)
    _write_failures(writer, failures)
    failures.report(sys.stderr)  # resolved now, not at import time (captured streams, notebooks)
    return failures


def _safe(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:
        return e


def _write_failures(writer: CacheWriter, failures: FailureLog) -> None:
    """failures.json = this run's failures + earlier ones (other shards/runs) that are still not in the cache."""
    import json

    from silverclip.io import Failure

    path = writer.root / FAILURES_FILE
    merged = FailureLog(failures.stage, list(failures.failures))
    seen = {f.item for f in failures.failures}
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get("failures", [])
        except (ValueError, AttributeError):
            old = []
        for f in old:
            if f.get("item") not in seen and f.get("item") not in writer:
                merged.failures.append(Failure(str(f.get("item")), str(f.get("path")), str(f.get("reason"))))
    merged.write(path)
