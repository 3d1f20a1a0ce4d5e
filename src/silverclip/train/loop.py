"""The one training loop shared by supervised pre-training and CLIP.

A task object (:mod:`silverclip.train.tasks`) supplies the model, the loss of a batch and the
validation; this loop supplies everything else, identically for both stages:

- devices and DDP (``torchrun``; a single process, CPU included, is the same code path with
  ``world_size == 1``), bf16 autocast on GPU (``silverclip.precision``), optional ``channels_last_3d``
  and ``torch.compile``;
- gradient accumulation (``no_sync`` on all but the last micro-batch) and clipping, AdamW (no weight
  decay on biases, norms and the temperature) with warm-up + cosine (:mod:`silverclip.train.schedule`);
- a tqdm bar with loss, volumes/s and the share of time spent waiting for data; metrics in
  ``metrics.jsonl``/``.csv`` (TensorBoard optional);
- checkpoints (``silverclip.checkpoint``): ``last/`` every ``checkpoint_every`` steps, at every epoch
  end and at the end, with the training state (optimizer, scheduler, step, position in the epoch,
  RNG states); ``best/`` whenever the validation metric improves.

Resuming (``train.resume``, default on) from ``last/`` continues bit-exactly: the loaders draw from
their own generators, crops are seeded per sample (:mod:`silverclip.train.data`), the sampler skips
the batches already consumed in the epoch, and the global RNG states (dropout) are restored.
tests/test_resume.py checks that an interrupted-and-resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from silverclip.train.config import DataConfig, TrainConfig
from silverclip.train.data import make_loader
from silverclip.train.logging import MetricsLogger
from silverclip.train.schedule import cosine_with_warmup
from silverclip.train.tasks import Task

log = logging.getLogger(__name__)

LAST = "last"
BEST = "best"


@dataclass
class FitResult:
    """Where a (possibly resumed) run ended."""

    best: Path
    last: Path
    step: int
    total_steps: int
    completed: bool
    val_metrics: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- optimiser
def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices/kernels only; biases, norm scales and scalars (temperature) are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))


# ------------------------------------------------------------------------------------------ RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- helpers
def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 5:
                v = v.contiguous(memory_format=torch.channels_last_3d)
        out[k] = v
    return out


def _is_ckpt(folder: Path) -> bool:
    from silverclip.checkpoint import META_FILE, WEIGHTS_FILE

    return (folder / META_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _resumable(folder: Path) -> bool:
    from silverclip.checkpoint import TRAINING_STATE_FILE

    return _is_ckpt(folder) and (folder / TRAINING_STATE_FILE).is_file()


def _gather_to_main(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    from silverclip import distributed as dist

    if not dist.is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity in a single process)."""
    from silverclip import distributed as dist

    if not dist.is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------------ the loop
def fit(
    task: Task,
    train_set: Dataset,
    val_set: Dataset | None,
    cfg: TrainConfig,
    data: DataConfig,
    run_dir: str | Path,
) -> FitResult:
    """Train ``task`` on ``train_set`` (validating on ``val_set`` each epoch) into ``run_dir``.

    Returns where the best (by ``task.primary_metric``; the last one without validation) and last
    checkpoints are. Resumes from ``run_dir/last`` when ``cfg.resume`` and it exists; returns at once
    when that checkpoint already finished the schedule.
    """
    from silverclip import checkpoint as ckpt
    from silverclip import distributed as dist
    from silverclip import precision

    run_dir = Path(run_dir)
    env = dist.init_distributed(device=None if cfg.device == "auto" else cfg.device)
    device, rank, world, main = env.device, env.rank, env.world_size, env.is_main
    last_dir, best_dir = run_dir / LAST, run_dir / BEST

    seed_everything(cfg.seed)  # same initial weights on every rank
    model = task.build_model().to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(model, cfg)

    pin = device.type == "cuda"
    loader = make_loader(
        train_set,
        data.batch_size,
        train=True,
        seed=cfg.seed,
        num_workers=data.num_workers,
        prefetch_factor=data.prefetch_factor,
        world_size=world,
        rank=rank,
        pin_memory=pin,
    )
    val_loader = None
    if val_set is not None and len(val_set) > 0:
        val_loader = make_loader(
            val_set,
            data.eval_batch_size or data.batch_size,
            train=False,
            seed=cfg.seed,
            num_workers=data.num_workers,
            prefetch_factor=data.prefetch_factor,
            pin_memory=pin,
        )
    batches_per_epoch = len(loader.sampler.inner) // data.batch_size
    steps_per_epoch = batches_per_epoch // cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(train_set)} training volume(s) are too few for one step of batch_size={data.batch_size} x "
            f"grad_accum={cfg.grad_accum} x {world} process(es)"
        )
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = cosine_with_warmup(optimizer, cfg.warmup_steps, total, cfg.min_lr)

    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None, "val": {}}
    if cfg.resume and _resumable(last_dir):
        saved = ckpt.load_training_state(  # weights, optimizer, scheduler and RNG states
            last_dir, model=model, optimizer=optimizer, scheduler=scheduler, map_location=device
        )
        state.update(saved["extra"]["loop"])
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            last_dir,
            state["step"],
            state["epoch"],
            state["batch_in_epoch"],
        )
        if state["step"] >= total:
            log.info("%s already finished its %d steps; nothing to do", run_dir, total)
            best = best_dir if _is_ckpt(best_dir) else last_dir
            return FitResult(best, last_dir, state["step"], total, True, state.get("val", {}))

    step_model: nn.Module = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.ddp_find_unused_parameters,
        )
    ddp_model = step_model
    if cfg.compile:
        step_model = torch.compile(step_model)

    def autocast() -> contextlib.AbstractContextManager:
        return precision.autocast(device, cfg.precision)

    logger = MetricsLogger(run_dir, enabled=main, tensorboard=cfg.tensorboard, resume_step=state["step"])
    info = task.checkpoint_info()
    meta = {"findings": info.get("findings"), "preset": info.get("preset"), "tokenizer": info.get("tokenizer")}

    def save(folder: Path, with_state: bool) -> None:
        training_state = None
        if with_state:
            rngs = _gather_to_main(ckpt.capture_rng_state())  # one RNG state per rank
            loop_state = {k: state[k] for k in ("step", "epoch", "batch_in_epoch", "best_metric", "val")}
            training_state = ckpt.training_state_dict(
                optimizer,
                scheduler,
                extra={"loop": loop_state},
                step=state["step"],
                rng_states=rngs if world > 1 else rngs[0],
            )
        if main:
            extra = {**info.get("extra", {}), "val": state["val"], "epoch": state["epoch"]}
            ckpt.save_checkpoint(
                folder, model, step=state["step"], task=task.name, extra=extra, training_state=training_state, **meta
            )
        dist.barrier()

    def validate() -> dict[str, float]:
        if val_loader is None:
            return {}
        metrics: dict[str, float] = {}
        if main:
            t0 = time.perf_counter()
            metrics = task.validate(model, val_loader, device, autocast)
            metrics["time_s"] = time.perf_counter() - t0
            model.train()
        return _broadcast_from_main(metrics)

    def end_of_epoch_eval() -> None:
        metrics = validate()
        if not metrics:
            return
        state["val"] = metrics
        logger.log(state["step"], state["epoch"], "val", metrics)
        value = metrics.get(task.primary_metric, float("nan"))
        best = state["best_metric"]
        log.info("epoch %d step %d: %s = %.4f", state["epoch"], state["step"], task.primary_metric, value)
        if best is None or (math.isfinite(value) and (not math.isfinite(best) or value > best)):
            state["best_metric"] = value
            save(best_dir, with_state=False)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=state["step"], desc=task.name, disable=not (main and cfg.progress), unit="step")
    model.train()
    stop = False
    window = {"loss": 0.0, "n": 0, "data_s": 0.0, "t0": time.perf_counter(), "volumes": 0}
    while state["step"] < total and not stop:
        epoch = state["epoch"]
        loader.sampler.set_epoch(epoch, skip=state["batch_in_epoch"] * data.batch_size)
        it = iter(loader)
        while state["step"] < total and state["batch_in_epoch"] + cfg.grad_accum <= batches_per_epoch:
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                t0 = time.perf_counter()
                batch = next(it)
                window["data_s"] += time.perf_counter() - t0
                batch = to_device(batch, device, cfg.channels_last)
                sync = ddp_model.no_sync() if world > 1 and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
                with sync:
                    with autocast():
                        loss = task.loss(step_model, batch)
                    (loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach())
                window["volumes"] += len(batch["image"]) * world
            # the total norm is computed either way (max_norm=inf clips nothing): it is logged and, since DDP
            # has already averaged the gradients, every rank sees the same value and stops together on NaN/inf
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")))
            if not (math.isfinite(grad_norm) and math.isfinite(loss_sum)):
                raise FloatingPointError(
                    f"training diverged at step {state['step'] + 1}: loss {loss_sum / cfg.grad_accum:.4g}, gradient "
                    f"norm {grad_norm:.4g}. Lower train.lr, set train.grad_clip, or use train.precision=fp32; "
                    f"the last checkpoint ({last_dir}) is untouched."
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["batch_in_epoch"] += cfg.grad_accum
            window["loss"] += loss_sum / cfg.grad_accum
            window["n"] += 1
            bar.update(1)
            if window["n"] >= cfg.log_every or state["step"] == total:
                elapsed = time.perf_counter() - window["t0"]
                loss_mean = window["loss"] / window["n"]
                if world > 1:  # every rank logs at the same steps; log the mean over ranks, not rank 0's shard
                    loss_mean = float(dist.all_reduce_mean(torch.tensor(loss_mean, device=device, dtype=torch.float64)))
                values = {
                    "loss": loss_mean,
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": grad_norm,
                    "volumes_per_s": window["volumes"] / max(elapsed, 1e-9),
                    "data_wait": window["data_s"] / max(elapsed, 1e-9),
                }
                logger.log(state["step"], epoch, "train", values)
                bar.set_postfix(
                    loss=f"{values['loss']:.4f}",
                    vol_s=f"{values['volumes_per_s']:.2f}",
                    data=f"{values['data_wait']:.0%}",
                )
                window.update(loss=0.0, n=0, data_s=0.0, t0=time.perf_counter(), volumes=0)
            if cfg.stop_at_step is not None and state["step"] >= cfg.stop_at_step:
                stop = True
                break
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                save(last_dir, with_state=True)
        del it
        epoch_done = state["batch_in_epoch"] + cfg.grad_accum > batches_per_epoch
        if epoch_done:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            if state["epoch"] % cfg.validate_every_epochs == 0 or state["step"] >= total:
                end_of_epoch_eval()
        elif state["step"] >= total:
            end_of_epoch_eval()  # max_steps ended mid-epoch: still validate the final weights
        save(last_dir, with_state=True)
    bar.close()
    logger.close()
    completed = state["step"] >= total
    if val_loader is None and completed:
        save(best_dir, with_state=False)  # without validation the final model is the one to use
    best = best_dir if _is_ckpt(best_dir) else last_dir
    return FitResult(best, last_dir, state["step"], total, completed, state.get("val", {}))
