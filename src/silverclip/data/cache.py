"""The preprocessed-volume cache: the contract between preprocessing and every consumer.

Layout of a cache folder::

    <cache>/preset.json            # the Preset used (silverclip.data.presets.Preset.to_dict())
    <cache>/volumes/<id>.npy       # int16 HU, clipped to preset.window, canonical RAS+ orientation,
                                   # axes (x, y, z), shape == preset.shape; written atomically
    <cache>/index.csv              # volume_id, file, plus per-volume info (original shape/spacing)
    <cache>/failures.json          # volumes that could not be preprocessed, with the reason

Volumes are stored in HU (not normalised) so one cache serves any output range, and int16 keeps
a 240x240x120 volume at 13.8 MB and lets readers memory-map it (``np.load(mmap_mode="r")``):
a random crop then reads only the bytes it touches.
"""

from __future__ import annotations

import json
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

    def load(self, volume_id: str, mmap: bool = True) -> np.ndarray:
        """The int16 HU array of ``volume_id``, shape ``preset.shape``, memory-mapped by default."""
        path = self.path(volume_id)
        if not path.is_file():
            raise FileNotFoundError(f"volume {volume_id!r} is not in cache {self.root}")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
