"""One prepared GPU check at the paper settings (<= 8 minutes on one GPU): the figures docs/training.md asks for.

Runs on a CUDA machine, nothing else needed (no data, no hub: a synthetic ``paper`` cache in a temporary
folder, the offline BERT vocabulary with a BERT-base-sized random text tower standing in for CXR-BERT):

1. loader: volumes/s of the training loader (int16 crops, flip decisions, pinned memory) with the planned
   ``--workers`` at pre-training batch 16, and with CLIP's collate (tokenising in the workers) at batch 32;
2. model: optimizer steps of pre-training (resnet18_3d, batch 16) and CLIP (resnet18_3d + 12-layer BERT,
   batch 32, 128 tokens) at 192x192x96 through the tasks' own ``loss`` and the loop's ``model_batch`` (int16
   crops normalised on the device), bf16 autocast, AdamW + clipping; fp32 eager as the baseline, then bf16,
   bf16 + channels_last_3d, and the same with ``torch.compile``; volumes/s, s/step, peak GPU memory;
3. loop: the bf16 channels-last step fed by the real loader for ``--loop-steps`` steps: the share of time
   spent waiting for data.

Every section checks the remaining budget (``--budget-s``, default 450 s) and is skipped, saying so, when it
would overrun. Prints a table and writes ``gpu_check.json`` (into ``$OUT`` when set, else the working folder).

Usage: ``python benchmarks/gpu_check.py [--workers 8] [--budget-s 450]``; ``--smoke`` runs the same code on
the CPU with the demo preset and tiny models (a check of the script itself, no figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from silverclip.data.cache import PRESET_FILE, VOLUMES_DIR, VolumeCache
from silverclip.data.presets import load_preset
from silverclip.io import atomic_write_json
from silverclip.precision import autocast
from silverclip.train.config import ClipTrainConfig, TrainConfig
from silverclip.train.data import ReportVolumeDataset, make_loader
from silverclip.train.loop import make_optimizer, model_batch
from silverclip.train.tasks import ClipTask, SupervisedTask

BERT_BASE = {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
TEXT = (
    "Trachea and both main bronchi are open. Mediastinal structures were evaluated as suboptimal. A 6 mm nodule "
    "is seen in the right upper lobe. No pleural effusion. Heart size is normal. Mild emphysema in both lungs. "
) * 3
T0 = time.perf_counter()


SMOKE = {"on": False}  # --smoke: the same code on the CPU with tiny sizes, to check the script before a GPU session


def left(budget: float) -> float:
    return budget - (time.perf_counter() - T0)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_cache(root: Path, n: int) -> VolumeCache:
    preset = load_preset("demo" if SMOKE["on"] else "paper")
    atomic_write_json(root / PRESET_FILE, preset.to_dict())
    (root / VOLUMES_DIR).mkdir(parents=True)
    base = np.random.default_rng(0).integers(-1000, 201, size=preset.shape, dtype=np.int16)
    for i in range(n):
        np.save(root / VOLUMES_DIR / f"train_{i}_a_1.npy", np.roll(base, i, axis=0))
    return VolumeCache(root)


def bench_loader(ds, batch: int, workers: int, seconds: float, collate=None) -> float:
    pin = torch.cuda.is_available()
    loader = make_loader(ds, batch, train=True, num_workers=workers, pin_memory=pin, collate_fn=collate)
    n, epoch, t0 = 0, 0, None
    while True:
        loader.sampler.set_epoch(epoch)
        for b in loader:
            if torch.cuda.is_available():
                b["image"].cuda(non_blocking=True)
            if t0 is None:  # the first batch includes starting the workers
                t0 = time.perf_counter()
                continue
            n += len(b["image"])
            if time.perf_counter() - t0 > seconds:
                return n / (time.perf_counter() - t0)
        epoch += 1


def build(stage: str, preset):
    small = SMOKE["on"]
    if stage == "pretrain":
        return SupervisedTask("resnet18_3d", preset), 2 if small else 16, TrainConfig()
    text = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    task = ClipTask(preset, model_kwargs={"embed_dim": 512, "text": {"config": text if small else BERT_BASE}})
    return task, 2 if small else 32, ClipTrainConfig()


def synthetic_batch(task, stage: str, batch: int, preset) -> dict:
    crop = preset.crop
    b = {"image": torch.randint(-1000, 201, (batch, 1, *crop), dtype=torch.int16)}
    if stage == "pretrain":
        b["targets"] = torch.randint(0, 2, (batch, 18)).float()
        b["weights"] = torch.ones(batch, 18)
    else:
        b.update(task.collate()([{"image": torch.zeros(1), "id": str(i), "text": TEXT} for i in range(batch)]))
        b.pop("image")
        b["image"] = torch.randint(-1000, 201, (batch, 1, *crop), dtype=torch.int16)
    if not torch.cuda.is_available():
        return b
    return {k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}


def bench_step(stage, preset, device, precision, channels_last, compile_, steps, budget):
    torch.manual_seed(0)
    task, batch, cfg = build(stage, preset)
    model = task.build_model().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = make_optimizer(model, cfg)
    step_model = torch.compile(model) if compile_ else model
    host = synthetic_batch(task, stage, batch, preset)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        b = model_batch(dict(host), device, preset, channels_last)
        with autocast(device, precision):
            loss = task.loss(step_model, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()
    step()
    sync(device)
    first = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    while n < steps and left(budget) > 20:
        step()
        n += 1
    sync(device)
    if n == 0:
        raise TimeoutError("no time left in the budget for a timed step")
    dt = (time.perf_counter() - t0) / n
    out = {"s_per_step": dt, "volumes_per_s": batch / dt, "batch": batch, "steps": n, "first_2_steps_s": first}
    out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return out


def bench_loop(cache, preset, device, workers, steps) -> dict:
    torch.manual_seed(0)
    task, batch, cfg = build("pretrain", preset)
    model = task.build_model().to(device).to(memory_format=torch.channels_last_3d)
    opt = make_optimizer(model, cfg)
    import pandas as pd

    from silverclip.findings import FINDINGS
    from silverclip.train.data import LabeledVolumeDataset

    labels = pd.DataFrame(np.ones((len(cache.ids()), 18)), index=cache.ids(), columns=list(FINDINGS))
    ds = LabeledVolumeDataset(cache, labels, train=True, random_flip=True)
    pin = device.type == "cuda"
    loader = make_loader(ds, batch, train=True, num_workers=workers, pin_memory=pin, collate_fn=task.collate())
    wait, n, epoch, t_start = 0.0, 0, 0, None
    while n < steps:
        loader.sampler.set_epoch(epoch)
        it = iter(loader)
        while n < steps:
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                break
            if t_start is None:
                t_start = time.perf_counter()
            else:
                wait += time.perf_counter() - t0
            b = model_batch(b, device, preset, True)
            with autocast(device, "bf16"):
                loss = task.loss(model, b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            n += 1
        epoch += 1
    sync(device)
    total = time.perf_counter() - t_start
    return {"steps": n, "volumes_per_s": (n - 1) * batch / total, "data_wait": wait / total, "workers": workers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=8, help="loader workers per GPU (configs/ctrate_paper.yaml: 8)")
    ap.add_argument("--volumes", type=int, default=48)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--loop-steps", type=int, default=40)
    ap.add_argument("--budget-s", type=float, default=450)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="CPU, demo preset, tiny models: check the script runs")
    args = ap.parse_args()
    SMOKE["on"] = args.smoke
    if args.smoke:
        device, name = torch.device("cpu"), "cpu (smoke test)"
        args.volumes, args.steps, args.loop_steps, args.budget_s = min(args.volumes, 6), 1, 3, 1e9
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run it on a GPU machine (or --smoke to test the script)")
    else:
        device = torch.device("cuda")
        name = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True
    preset = load_preset("demo" if args.smoke else "paper")
    res: dict = {"device": name, "torch": torch.__version__, "crop": list(preset.crop)}
    print(f"{res['device']}, torch {res['torch']}, crop {preset.crop}, budget {args.budget_s:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        cache = make_cache(Path(tmp), args.volumes)
        ids = cache.ids()
        ds = ReportVolumeDataset(cache, ids, [TEXT] * len(ids), train=True, random_flip=True)
        secs = 2 if args.smoke else 12
        res["loader_pretrain_vol_s"] = bench_loader(ds, 2 if args.smoke else 16, args.workers, secs)
        clip_task, clip_batch, _ = build("clip", preset)
        clip_task.build_model()
        res["loader_clip_vol_s"] = bench_loader(ds, clip_batch, args.workers, secs, collate=clip_task.collate())
        print(
            f"loader, {args.workers} workers: pretrain batch 16 {res['loader_pretrain_vol_s']:.0f} vol/s, "
            f"clip batch 32 (+ tokenise) {res['loader_clip_vol_s']:.0f} vol/s"
        )
        variants = [("fp32", "fp32", False, False), ("bf16", "bf16", False, False), ("bf16+cl", "bf16", True, False)]
        if not args.no_compile and not args.smoke:
            variants.append(("bf16+cl+compile", "bf16", True, True))
        res["steps"] = {}
        print(f"\n{'stage':9} {'variant':16} {'s/step':>8} {'vol/s':>8} {'x fp32':>7} {'peak GiB':>9} {'first 2 s':>9}")
        for stage in ("pretrain", "clip"):
            base = None
            for name, prec, cl, comp in variants:
                need = 0 if args.smoke else (150 if comp else 25)
                if left(args.budget_s) < need:
                    print(f"{stage:9} {name:16} skipped: {left(args.budget_s):.0f} s of the budget left")
                    continue
                try:
                    r = bench_step(stage, preset, device, prec, cl, comp, args.steps, args.budget_s)
                except Exception as e:  # noqa: BLE001 - report and go on (e.g. a compile failure)
                    print(f"{stage:9} {name:16} failed: {type(e).__name__}: {str(e)[:200]}")
                    res["steps"][f"{stage}/{name}"] = {"error": f"{type(e).__name__}: {e}"[:500]}
                    e = None
                    torch.cuda.empty_cache()
                    continue
                torch.cuda.empty_cache()
                base = base or r["volumes_per_s"]
                res["steps"][f"{stage}/{name}"] = r
                print(
                    f"{stage:9} {name:16} {r['s_per_step']:8.3f} {r['volumes_per_s']:8.1f} "
                    f"{r['volumes_per_s'] / base:7.2f} {r['peak_gib']:9.1f} {r['first_2_steps_s']:9.1f}"
                )
        if args.smoke or left(args.budget_s) > 40:
            res["loop"] = bench_loop(cache, preset, device, args.workers, args.loop_steps)
            print(
                f"\nloop (pretrain bf16+cl, real loader, {args.workers} workers): "
                f"{res['loop']['volumes_per_s']:.1f} vol/s, data wait {res['loop']['data_wait']:.0%}"
            )
        else:
            print("loop skipped: budget spent")
    res["wall_s"] = time.perf_counter() - T0
    out = Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"\nwrote {out} ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
