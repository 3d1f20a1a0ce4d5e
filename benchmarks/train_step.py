"""Training-step throughput and peak memory of both stages, and whether the data loader keeps up.

Measures, at a stated input size and batch, on CPU or GPU (``--device auto``):
- supervised pre-training step (resnet18_3d + masked BCE + AdamW) and CLIP step (resnet18_3d + the
  offline MiniLM BERT + ClipLoss + AdamW): volumes/s and peak memory;
- variants as ratios against the fp32 baseline measured in the same run: bf16 autocast,
  channels_last_3d, torch.compile (``--compile``; its compile time is reported separately);
- the cache data loader's volumes/s (memory-mapped int16, random crop; normalisation happens on the device
  in the step, see benchmarks/loader.py) next to the model's step rate: ``data/model > 1`` means data keeps
  the model fed.

Usage: ``python benchmarks/train_step.py [--size 96 96 48] [--batch 2] [--steps 3] [--compile] [--workers 0]``.
The default CPU run takes about 2 minutes of CPU time on 2 idle cores (longer on a shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from silverclip.data.cache import PRESET_FILE, VOLUMES_DIR, VolumeCache
from silverclip.data.presets import Preset
from silverclip.findings import FINDINGS
from silverclip.io import atomic_save_npy, atomic_write_json
from silverclip.losses import ClipLoss, masked_bce_with_logits
from silverclip.models import create_model
from silverclip.precision import autocast
from silverclip.train.config import TrainConfig
from silverclip.train.data import VolumeDataset, make_loader
from silverclip.train.loop import make_optimizer

TEXT = "Findings: bilateral pleural effusion and a 6 mm nodule in the right upper lobe. No lymphadenopathy. " * 4


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def bench_step(stage: str, device, size, batch, steps, bf16, channels_last, compile_) -> dict:
    torch.manual_seed(0)
    if stage == "pretrain":
        model = create_model("resnet18_3d").to(device)
    else:
        model = create_model("clip", text={"name_or_path": "offline"}).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = make_optimizer(model, TrainConfig(lr=1e-4))
    step_model = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 1, *size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    targets = torch.randint(0, 2, (batch, len(FINDINGS)), device=device).float()
    weights = torch.ones_like(targets)
    tokens = {k: v.to(device) for k, v in model.tokenize([TEXT] * batch).items()} if stage == "clip" else None
    clip_loss = ClipLoss()

    def step():
        with autocast(device, "bf16") if bf16 else contextlib.nullcontext():
            if stage == "pretrain":
                loss = masked_bce_with_logits(step_model(x), targets, weights)
            else:
                out = step_model(x, tokens)
                loss = clip_loss(out["image_embeds"].float(), out["text_embeds"].float(), out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step()  # warm-up (and compilation)
    _sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    return {"s_per_step": dt, "volumes_per_s": batch / dt, "peak_mb": peak_memory_mb(device), "first_step_s": warm}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_loader(size, batch, workers, n_volumes=12, batches=12) -> float:
    shape = tuple(int(s * 1.25) for s in size)  # cache volumes a quarter larger than the crop, like the presets
    preset = Preset(name="bench", spacing=(1.5, 1.5, 3.0), window=(-1000.0, 200.0), shape=shape, crop=tuple(size))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        atomic_write_json(root / PRESET_FILE, preset.to_dict())
        rng = np.random.default_rng(0)
        ids = [f"train_{i}_a_1" for i in range(n_volumes)]
        for vid in ids:
            atomic_save_npy(root / VOLUMES_DIR / f"{vid}.npy", rng.integers(-1000, 200, shape).astype(np.int16))
        ds = VolumeDataset(VolumeCache(root), ids, train=True)
        loader = make_loader(ds, batch, train=True, num_workers=workers)
        n, epoch = 0, 0
        t0 = time.perf_counter()
        while n < batches:
            loader.sampler.set_epoch(epoch)
            for _b in loader:
                n += 1
                if n >= batches:
                    break
            epoch += 1
        return batches * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=[96, 96, 48], help="crop (x, y, z)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--stages", nargs="+", default=["pretrain", "clip"])
    args = ap.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    size = tuple(args.size)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"input (1, {size[0]}, {size[1]}, {size[2]}), batch {args.batch}, {args.steps} timed steps"
    )
    loader_vps = bench_loader(size, args.batch, args.workers)
    print(f"data loader (memmap int16 cache, random int16 crop, {args.workers} workers): {loader_vps:.1f} volumes/s")
    variants = [("fp32", {}), ("bf16 autocast", {"bf16": True}), ("channels_last_3d", {"channels_last": True})]
    if args.compile:
        variants.append(("torch.compile", {"compile_": True}))
    print(f"\n{'stage':9} {'variant':17} {'s/step':>8} {'vol/s':>7} {'x fp32':>7} {'peak MB':>8} {'data/model':>10}")
    for stage in args.stages:
        base = None
        for name, kw in variants:
            opts = {"bf16": False, "channels_last": False, "compile_": False, **kw}
            r = bench_step(stage, device, size, args.batch, args.steps, **opts)
            base = base or r["volumes_per_s"]
            extra = f"  (first step {r['first_step_s']:.1f} s)" if opts["compile_"] else ""
            print(
                f"{stage:9} {name:17} {r['s_per_step']:8.3f} {r['volumes_per_s']:7.2f} "
                f"{r['volumes_per_s'] / base:7.2f} {r['peak_mb']:8.0f} {loader_vps / r['volumes_per_s']:10.1f}{extra}"
            )


if __name__ == "__main__":
    main()
