"""The preprocessed-volume cache: the contract between preprocessing and every consumer.

Layout of a cache folder::

    <cache>/preset.json            # the Preset used (silverclip.data.presets.Preset.to_dict())
    <cache>/volumes/<id>.npy       # int16 HU, clipped to preset.window, canonical RAS+ orientation,
                                   # axes (x, y, z), shape == preset.shape; written atomically
    <cache>/index.csv              # volume_id, file, plus per-volume info (original shape/spacing)
    <cache>/failures.json          # volumes that could not be preprocessed, with the reason

Volumes are stored in HU (not normalised) so one cache serves any output range, and int16 keeps
a 240x240x120 volume at 13.8 MB and lets readers memory-map it (``np.load(mmap_mode="r")``):
a random crop then reads only the bytes it touches. A preset with ``cache_dtype: uint8`` (``paper_uint8``)
stores the window's 8-bit codes instead (6.9 MB; 4.7 HU steps for the paper window, docs/training.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from silverclip.data.presets import Preset

VOLUMES_DIR = "volumes"
PRESET_FILE = "preset.json"
INDEX_FILE = "index.csv"
FAILURES_FILE = "failures.json"


class VolumeCache:
    """Read access to a preprocessed cache folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        preset_path = self.root / PRESET_FILE
        if not preset_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a silverclip cache: {PRESET_FILE} is missing")
        self.preset = Preset.from_dict(json.loads(preset_path.read_text()))

    def path(self, volume_id: str) -> Path:
        return self.root / VOLUMES_DIR / f"{volume_id}.npy"

    def __contains__(self, volume_id: str) -> bool:
        return self.path(volume_id).is_file()

    def ids(self) -> list[str]:
        """Ids of all complete volumes (temporary files from interrupted writes are ignored)."""
        return sorted(p.stem for p in (self.root / VOLUMES_DIR).glob("*.npy"))

    def load(self, volume_id: str, mmap: bool = True, copy_on_write: bool = False) -> np.ndarray:
        """The int16 HU array of ``volume_id``, shape ``preset.shape``, memory-mapped by default.

        ``copy_on_write``: map it writable (``mmap_mode="c"``; writes stay in this process, the file is never
        changed), so that torch can wrap a slice without a copy or a read-only warning.
        """
        path = self.path(volume_id)
        if not path.is_file():
            raise FileNotFoundError(f"volume {volume_id!r} is not in cache {self.root}")
        mode = ("c" if copy_on_write else "r") if mmap else None
        return np.load(path, mmap_mode=mode, allow_pickle=False)


class CacheWriter:
    """Write access to a cache folder, used by preprocessing (``silverclip.data.preprocess``).

    Creating a writer writes ``preset.json`` (or checks that an existing cache was built with the same
    preset: mixing presets in one folder is an error). Volumes are written atomically, so an interrupted
    run leaves only complete ``.npy`` files and a rerun skips them.
    """

    def __init__(self, root: str | Path, preset: Preset):
        from silverclip.io import atomic_write_json

        self.root = Path(root)
        self.preset = preset
        (self.root / VOLUMES_DIR).mkdir(parents=True, exist_ok=True)
        preset_path = self.root / PRESET_FILE
        if preset_path.is_file():
            existing = Preset.from_dict(json.loads(preset_path.read_text()))
            if existing.to_dict() != preset.to_dict():
                raise ValueError(
                    f"{self.root} was built with preset {existing.name!r} {existing.to_dict()}; "
                    f"refusing to add volumes made with {preset.name!r} - use another output folder"
                )
        else:
            from silverclip.runs import code_version

            atomic_write_json(preset_path, preset.to_dict())
            atomic_write_json(self.root / "version.json", code_version())  # which code made these volumes

    def path(self, volume_id: str) -> Path:
        return self.root / VOLUMES_DIR / f"{volume_id}.npy"

    def __contains__(self, volume_id: str) -> bool:
        return self.path(volume_id).is_file()

    def write(self, volume_id: str, array: np.ndarray) -> Path:
        """Atomically save one preprocessed volume (``preset.cache_dtype``, ``preset.shape``)."""
        from silverclip.io import atomic_save_npy

        dtype = np.dtype(self.preset.cache_dtype)
        if array.dtype != dtype or tuple(array.shape) != tuple(self.preset.shape):
            raise ValueError(
                f"{volume_id}: cache volumes must be {dtype} {self.preset.shape}, got {array.dtype} {array.shape}"
            )
        path = self.path(volume_id)
        atomic_save_npy(path, array)
        return path

    def indexed_ids(self) -> set[str]:
        """Ids that have a row in ``index.csv``."""
        import pandas as pd

        path = self.root / INDEX_FILE
        if not path.is_file():
            return set()
        return set(pd.read_csv(path, dtype={"volume_id": str}, usecols=["volume_id"])["volume_id"])

    def remove_stale_temporaries(self, volume_ids: Iterable[str], max_age_s: float = 3600.0) -> int:
        """Delete temporary files left by interrupted writes; returns how many.

        Those of ``volume_ids`` (the caller's own volumes, which no other process writes) go whatever their
        age; any other (another shard's, the index's) only when untouched for ``max_age_s``.
        """
        import time

        own = {f".{v}.npy." for v in volume_ids}
        now, removed = time.time(), 0
        for folder in (self.root / VOLUMES_DIR, self.root):
            for tmp in folder.glob(".*.tmp"):
                name = tmp.name
                mine = folder.name == VOLUMES_DIR and name[: name.rfind(".npy.") + 5] in own
                try:
                    if mine or now - tmp.stat().st_mtime > max_age_s:
                        tmp.unlink()
                        removed += 1
                except FileNotFoundError:  # removed by another process meanwhile
                    pass
        return removed

    def update_index(self, rows: list[dict]) -> None:
        """Merge ``rows`` (dicts with at least ``volume_id``) into ``index.csv``; keep only volumes present on disk."""
        import pandas as pd

        from silverclip.io import atomic_to_csv

        index_path = self.root / INDEX_FILE
        frames = [pd.read_csv(index_path, dtype={"volume_id": str})] if index_path.is_file() else []
        if rows:
            frames.append(pd.DataFrame(rows))
        if not frames:
            return
        df = pd.concat(frames, ignore_index=True).drop_duplicates("volume_id", keep="last")
        df = df[[vid in self for vid in df["volume_id"]]].sort_values("volume_id")
        atomic_to_csv(df, index_path)
