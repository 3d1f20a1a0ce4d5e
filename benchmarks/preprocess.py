"""Time the ``paper`` preset per volume against the bare nibabel read of the same file, in the same run.

    python benchmarks/preprocess.py [--repeats 5] [--preset paper] [--keep DIR]

Generates a 512x512x300 int16 ``.nii.gz`` (0.7 x 0.7 x 1.0 mm, DICOM-like L/P/S storage, CT-like content:
air, body, lungs with vessels, heart, aorta, spine, scanner noise), then times, interleaved, median of
``--repeats``:

- baseline: ``np.asanyarray(nib.load(path).dataobj)`` - nibabel's own read (gzip + int16 array);
- silverclip read: ``load_volume(path)`` (ISA-L decompression, canonical RAS+ view);
- silverclip preset: ``preprocess_path(path, preset)`` (read + resample + window + crop/pad -> int16).

Goal (issue 2): preset time within 1.5x of the baseline read. One torch thread, as in a worker process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from silverclip.data.preprocess import preprocess_path  # noqa: E402
from silverclip.data.readers import load_volume  # noqa: E402

SHAPE = (512, 512, 300)
SPACING = (0.7, 0.7, 1.0)


def make_ct(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """A chest-CT-like int16 HU volume in (x, y, z), built slab by slab to keep memory low."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :]
    out = np.empty(shape, dtype=np.int16)
    for k in range(nz):
        t = k / max(nz - 1, 1)
        sl = np.full((nx, ny), -1000.0, dtype=np.float32)
        body = (x / 0.85) ** 2 + (y / 0.62) ** 2 < 1
        sl[body] = 30.0  # soft tissue
        fat = body & ((x / 0.85) ** 2 + (y / 0.62) ** 2 > 0.85)
        sl[fat] = -100.0
        lung_r = (0.45 + 0.1 * t) * 0.55
        for cx in (-0.38, 0.38):
            lung = ((x - cx) / lung_r) ** 2 + ((y + 0.02) / 0.42) ** 2 < 1
            sl[lung] = -860.0
        heart = ((x - 0.1) / 0.26) ** 2 + ((y + 0.15) / 0.22) ** 2 < 1
        sl[heart & (t < 0.6)] = 40.0
        aorta = ((x + 0.05) / 0.06) ** 2 + ((y - 0.22) / 0.06) ** 2 < 1
        sl[aorta] = 45.0
        spine = (x / 0.09) ** 2 + ((y - 0.45) / 0.09) ** 2 < 1
        sl[spine] = 700.0
        sl += rng.normal(0.0, 15.0, size=sl.shape).astype(np.float32)  # scanner noise
        out[:, :, k] = np.clip(sl, -1024, 3071).astype(np.int16)
    return out


def write_volume(path: Path) -> Path:
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # stored L, P, S as DICOM-derived files are
    affine[:3, 3] = [180.0, 180.0, -150.0]
    img = nib.Nifti1Image(make_ct(), affine)
    img.set_data_dtype(np.int16)
    nib.save(img, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--keep", help="folder to write (or reuse) the test volume in")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    tmp = None
    folder = Path(args.keep) if args.keep else Path(tmp := tempfile.mkdtemp(prefix="silverclip-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ct_512x512x300.nii.gz"
    if not path.is_file():
        t0 = time.perf_counter()
        write_volume(path)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")

    runs: dict[str, list[float]] = {
        "baseline nibabel read": [],
        "silverclip read (ISA-L)": [],
        f"{args.preset} preset": [],
    }
    out = None
    preprocess_path(path, args.preset)  # warm-up (imports, page cache)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        arr = np.asanyarray(nib.load(str(path)).dataobj)
        runs["baseline nibabel read"].append(time.perf_counter() - t0)
        del arr
        t0 = time.perf_counter()
        vol = load_volume(path)
        runs["silverclip read (ISA-L)"].append(time.perf_counter() - t0)
        del vol
        t0 = time.perf_counter()
        out = preprocess_path(path, args.preset)
        runs[f"{args.preset} preset"].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in runs.items()}
    base = med["baseline nibabel read"]
    print(f"volume {SHAPE} int16 at {SPACING} mm -> {args.preset} {out.shape} {out.dtype}; median of {args.repeats}")
    for k, v in med.items():
        print(f"  {k:<26} {v:7.3f} s   {v / base:5.2f}x baseline   (runs: {', '.join(f'{x:.2f}' for x in runs[k])})")
    ratio = med[f"{args.preset} preset"] / base
    print(f"ratio {args.preset} preset / bare read = {ratio:.2f} (goal <= 1.5)")
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
