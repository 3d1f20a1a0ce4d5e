"""Loader throughput per process at the paper preset: int16 crops (normalised on the device) vs the float32 host path.

A synthetic cache of ``--volumes`` int16 volumes of 240x240x120 (the ``paper`` preset, 13.8 MB each) is
written to a temporary folder and read memory-mapped (warm page cache: one pass first), as a training
loader worker reads it. Each mode runs the dataset's ``__getitem__`` + collate in this one process
(= one loader worker) for ``--seconds`` and prints volumes/s and the bytes/s it reads from the cache, per
second of wall time and per second of this process's CPU time (user + system: on a shared machine the latter is
what one loader process gives on a core of its own; ratios are taken on it):

- ``float32 host`` (the baseline, the loader before issue 10): random 192x192x96 crop, ``Preset.normalize``
  to float32, random flips with ``np.flip`` + a contiguous copy, float32 batch;
- ``int16 crop``: the current loader (:class:`silverclip.train.data.VolumeDataset`): random crop copied out
  as int16 plus three flip decisions; normalisation and flips happen on the device
  (:func:`silverclip.data.model_input.normalize_batch`, timed here on this CPU for one batch too);
- ``uint8 crop``: the same from an 8-bit cache (``silverclip preprocess cache_dtype=uint8``): half the bytes.

Usage: ``python benchmarks/loader.py [--volumes 24] [--seconds 4] [--batch 4]``. Goal: >= 500 vol/s per
process for the int16 path. Numbers on a shared machine are lower bounds (say so when quoting them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from silverclip.data.cache import PRESET_FILE, VOLUMES_DIR, VolumeCache
from silverclip.data.model_input import normalize_batch, quantize_window
from silverclip.data.presets import load_preset
from silverclip.io import atomic_write_json
from silverclip.train.data import Collate, VolumeDataset


class Float32HostDataset(VolumeDataset):
    """The pre-issue-10 item: normalise to float32 and flip on the CPU (the baseline)."""

    def __getitem__(self, key):
        index, epoch = self._unpack(key)
        vol = self.cache.load(self.ids[index])
        rng = np.random.default_rng([self.seed, epoch, index])
        starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(vol.shape, self.crop)]
        arr = self.preset.normalize(vol[tuple(slice(s, s + c) for s, c in zip(starts, self.crop))])
        flips = [ax for ax in range(3) if rng.random() < 0.5]
        if flips:
            arr = np.flip(arr, axis=flips)
        return {"image": torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None], "id": self.ids[index]}


def make_cache(root: Path, n: int, dtype: str) -> VolumeCache:
    preset = load_preset("paper" if dtype == "int16" else "paper_uint8")
    atomic_write_json(root / PRESET_FILE, preset.to_dict())
    (root / VOLUMES_DIR).mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(-1000, 201, size=preset.shape, dtype=np.int16)
    for i in range(n):
        vol = np.roll(base, i, axis=0)  # distinct files, cheap to make
        if dtype == "uint8":
            vol = quantize_window(vol, preset.window)
        np.save(root / VOLUMES_DIR / f"vol_{i:03d}.npy", vol)
    return VolumeCache(root)


def run(ds: VolumeDataset, seconds: float, batch: int) -> tuple[float, float, float]:
    """(volumes/s of wall time, volumes per CPU second of this process, crop bytes per CPU second) of ``ds`` +
    collate. On a machine shared with other jobs the wall rate is what this process got; the CPU-time rate
    (user + system, page-cache copies included) is what one loader process gives on a core of its own."""
    collate = Collate()
    n = len(ds)
    for i in range(n):  # warm the page cache (and numpy's mmap path)
        ds[(0, i)]
    count, t0, c0, epoch = 0, time.perf_counter(), time.process_time(), 1
    while time.perf_counter() - t0 < seconds:
        for start in range(0, n - batch + 1, batch):
            collate([ds[(epoch, i)] for i in range(start, start + batch)])
            count += batch
        epoch += 1
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    crop_bytes = int(np.prod(ds.crop)) * np.dtype(ds.cache.load(ds.ids[0]).dtype).itemsize
    return count / elapsed, count / cpu, count * crop_bytes / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a loader worker has one thread
    with tempfile.TemporaryDirectory() as tmp:
        c16 = make_cache(Path(tmp) / "int16", args.volumes, "int16")
        c8 = make_cache(Path(tmp) / "uint8", args.volumes, "uint8")
        ids = c16.ids()
        shape, crop = c16.preset.shape, c16.preset.crop
        print(f"{args.volumes} volumes of {shape} (int16: 13.8 MB each), crops {crop}, batch {args.batch}")
        modes = {
            "float32 host (baseline)": Float32HostDataset(c16, ids, train=True, random_flip=True),
            "int16 crop (device norm)": VolumeDataset(c16, ids, train=True, random_flip=True),
            "uint8 crop (8-bit cache)": VolumeDataset(c8, ids, train=True, random_flip=True),
        }
        results = {}
        print(f"{'':28s} {'vol/s (wall)':>12s} {'vol/s per CPU-s':>16s} {'GB/s per CPU-s':>15s}")
        for name, ds in modes.items():
            wall, vs, bs = run(ds, args.seconds, args.batch)
            results[name] = vs
            print(f"{name:28s} {wall:12.1f} {vs:16.1f} {bs / 1e9:15.2f}")
        base = results["float32 host (baseline)"]
        for name in list(results)[1:]:
            print(f"{name:28s} {results[name] / base:8.2f}x the float32 host path (per CPU second)")
        ds = modes["int16 crop (device norm)"]
        items = [ds[(0, i)] for i in range(args.batch)]
        b = Collate()(items)
        c0 = time.process_time()
        for _ in range(3):
            normalize_batch(b["image"], ds.preset, b["flip"])
        per = (time.process_time() - c0) / 3
        print(
            f"the device's part, here on this CPU (1 thread): normalise + flip a batch of {args.batch}: "
            f"{per * 1e3:.0f} ms CPU"
        )


if __name__ == "__main__":
    main()
