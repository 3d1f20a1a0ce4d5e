"""The one training loop shared by supervised pre-training and CLIP.

A task object (:mod:`silverclip.train.tasks`) supplies the model, the loss of a batch and the
validation; this loop supplies everything else, identically for both stages:

- devices and DDP (``torchrun``; a single process, CPU included, is the same code path with
  ``world_size == 1``; an explicit process-group timeout; per-rank seeds after the common initial weights;
  validation sharded over every rank and gathered by the task), bf16 autocast on GPU
  (``silverclip.precision``), optional ``channels_last_3d`` and ``torch.compile``;
- the batch crosses to the device as stored int16/uint8 crops and is normalised and flipped there
  (:func:`model_batch`); the loss and gradient norm stay on the device and are read on the host only at log
  steps and before a checkpoint (a diverged step is remembered by number and raised then);
- gradient accumulation (``no_sync`` on all but the last micro-batch) and clipping, AdamW (no weight
  decay on biases, norms and the temperature) with warm-up + cosine (:mod:`silverclip.train.schedule`);
- a tqdm bar with loss, volumes/s and the share of time spent waiting for data; metrics in
  ``metrics.jsonl``/``.csv`` (TensorBoard optional);
- checkpoints (``silverclip.checkpoint``): ``last/`` every ``checkpoint_every`` steps, at every epoch
  end and at the end, with the training state (optimizer, scheduler, step, position in the epoch,
  RNG states); ``best/`` whenever the validation metric improves.

Resuming (``train.resume``, default on; rank 0 decides and broadcasts) from ``last/`` continues bit-exactly:
the loaders draw from their own generators, crops are seeded per sample (:mod:`silverclip.train.data`), the
sampler skips the samples already consumed in the epoch, and the global RNG states (dropout) are restored.
tests/test_resume.py checks that an interrupted-and-resumed run ends with the same weights as an
uninterrupted one. The checkpoint records the layout (world size, per-rank batch, ``grad_accum``) and the
samples seen: another split of the same volumes per step continues on the samples seen, another number of
volumes per step is refused (:func:`resume_position`). A ``last/`` lost inside the checkpoint swap is put back
first (:func:`silverclip.checkpoint.recover_checkpoint`).
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
def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors (and the tensors of nested dicts such as ``tokens``) moved to ``device`` without blocking."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            v = to_device(v, device)
        out[k] = v
    return out


def model_batch(batch: dict[str, Any], device: torch.device, preset: Any, channels_last: bool) -> dict[str, Any]:
    """A loader batch on ``device`` with ``image`` normalised (and flipped) there: the training step's input.

    The stored int16/uint8 crops cross to the device; :func:`silverclip.data.model_input.normalize_batch`
    makes the float32 input (channels-last when asked) where it is used.
    """
    from silverclip.data.model_input import normalize_batch

    batch = to_device(batch, device)
    batch["image"] = normalize_batch(batch["image"], preset, batch.pop("flip", None), channels_last)
    return batch


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


LOOP_STATE_KEYS = (
    "step",
    "epoch",
    "samples_in_epoch",
    "samples_seen",
    "world_size",
    "batch_size",
    "grad_accum",
    "best_metric",
    "val",
)


def resume_position(saved: dict[str, Any], layout: dict[str, int], n_train: int, folder: Path) -> dict[str, Any]:
    """The loop state to continue from, checked against this run's layout; refuses what would change the schedule.

    ``saved``: the checkpoint's loop state; ``layout``: this run's ``world_size``, ``batch_size`` (per rank),
    ``grad_accum``. The schedule (steps per epoch, total steps, learning rate at each step) depends only on the
    volumes per step ``world_size x batch_size x grad_accum``; with the same product the run continues at the
    saved step on the samples seen (the epoch's order does not depend on the split, :class:`EpochSampler`),
    with another one it is refused. Checkpoints from before these fields were recorded count batches per rank
    (``batch_in_epoch``) and are taken to come from this run's layout.
    """
    old = {k: int(saved.get(k, layout[k])) for k in ("world_size", "batch_size", "grad_accum")}
    old_step, new_step = (math.prod(d.values()) for d in (old, layout))
    if old_step != new_step:
        raise ValueError(
            f"{folder}: was trained with {old['world_size']} process(es) x batch {old['batch_size']} x grad_accum "
            f"{old['grad_accum']} = {old_step} volumes per step; this run has {layout['world_size']} x "
            f"{layout['batch_size']} x {layout['grad_accum']} = {new_step}. Resuming would change the schedule "
            f"(steps per epoch, learning rate): set data.batch_size / train.grad_accum so that the product is "
            f"{old_step}, or start over with --restart."
        )
    out = dict(saved)
    if "samples_in_epoch" not in out:
        out["samples_in_epoch"] = int(out.pop("batch_in_epoch", 0)) * old["batch_size"] * old["world_size"]
    out.pop("batch_in_epoch", None)
    out.setdefault("samples_seen", int(out["step"]) * old_step)
    if out["samples_in_epoch"] % new_step or out["samples_in_epoch"] > n_train:
        raise ValueError(
            f"{folder}: its position in the epoch ({out['samples_in_epoch']} volumes) does not fit this run's "
            f"{n_train} training volumes in steps of {new_step}; was the dataset changed? Start over with --restart."
        )
    out.update(old)
    return out


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
    env = dist.init_distributed(device=None if cfg.device == "auto" else cfg.device, timeout_s=cfg.dist_timeout_s)
    device, rank, world, main = env.device, env.rank, env.world_size, env.is_main
    last_dir, best_dir = run_dir / LAST, run_dir / BEST

    seed_everything(cfg.seed)  # same initial weights on every rank
    model = task.build_model().to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(model, cfg)
    seed_everything(cfg.seed + rank)  # per-rank streams from here on (dropout): each rank drops other units

    pin = device.type == "cuda"
    collate = task.collate()  # tokenises in the loader workers (CLIP)
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
        collate_fn=collate,
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
            world_size=world,  # every rank validates its share (gathered in the task): none idles
            rank=rank,
            pin_memory=pin,
            collate_fn=collate,
        )
    per_step = data.batch_size * cfg.grad_accum * world  # volumes per optimizer step, all ranks together
    steps_per_epoch = len(train_set) // per_step  # = (len // world // batch) // accum: the same for any split
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(train_set)} training volume(s) are too few for one step of batch_size={data.batch_size} x "
            f"grad_accum={cfg.grad_accum} x {world} process(es)"
        )
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = cosine_with_warmup(optimizer, cfg.warmup_steps, total, cfg.min_lr)

    layout = {"world_size": world, "batch_size": data.batch_size, "grad_accum": cfg.grad_accum}
    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "samples_in_epoch": 0,
        "samples_seen": 0,
        "best_metric": None,
        "val": {},
        **layout,
    }
    resume = False
    if main and cfg.resume:
        ckpt.recover_checkpoint(last_dir)  # a process killed inside the last swap left it beside last/
        resume = _resumable(last_dir)
    if _broadcast_from_main(resume):  # rank 0 decides, so that no rank resumes alone
        saved = ckpt.load_training_state(  # weights, optimizer, scheduler; every rank reads the same file
            last_dir, model=model, optimizer=optimizer, scheduler=scheduler, map_location=device, restore_rng=False
        )
        loop_state = resume_position(saved["extra"]["loop"], layout, len(train_set), last_dir)
        rngs = saved.get("rng")
        if loop_state["world_size"] == world and rngs is not None:  # the same ranks: each its own RNG states
            ckpt.restore_rng_state(rngs[rank] if isinstance(rngs, list) else rngs)
        else:  # another number of ranks: new per-rank streams (the schedule and the samples are kept, not the bits)
            seed_everything(cfg.seed + rank + 1_000_003 * int(saved["step"]))
        state.update(loop_state, **layout)
        log.info(
            "resumed from %s at step %d (epoch %d, %d volumes into it, %d seen)",
            last_dir,
            state["step"],
            state["epoch"],
            state["samples_in_epoch"],
            state["samples_seen"],
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
        check_finite()  # never write weights of a diverged step
        training_state = None
        if with_state:
            rngs = _gather_to_main(ckpt.capture_rng_state())  # one RNG state per rank
            loop_state = {k: state[k] for k in LOOP_STATE_KEYS}
            training_state = ckpt.training_state_dict(
                optimizer,
                scheduler,
                extra={"loop": loop_state},
                step=state["step"],
                rng_states=rngs if world > 1 else rngs[0],
            )
        if main:
            extra = {**info.get("extra", {}), "val": state["val"], "epoch": state["epoch"]}
            extra.update({k: state[k] for k in ("samples_seen", "world_size", "batch_size", "grad_accum")})
            ckpt.save_checkpoint(
                folder, model, step=state["step"], task=task.name, extra=extra, training_state=training_state, **meta
            )
        dist.barrier()

    def validate() -> dict[str, float]:
        """Every rank embeds its share of the validation set; the task gathers the shares and scores them."""
        if val_loader is None:
            return {}
        t0 = time.perf_counter()
        metrics = task.validate(model, val_loader, device, autocast)
        metrics["time_s"] = time.perf_counter() - t0
        model.train()
        return _broadcast_from_main(metrics)  # rank 0's numbers decide best/ on every rank

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
    zero = torch.zeros((), device=device)
    health = {"first_bad": torch.zeros((), dtype=torch.long, device=device), "loss": zero, "grad_norm": zero}

    def check_finite() -> None:
        """Raise if any step since the last check had a non-finite loss or gradient norm (one host sync)."""
        bad = int(health["first_bad"])
        if bad:
            raise FloatingPointError(
                f"training diverged at step {bad}: loss {float(health['loss']):.4g}, gradient norm "
                f"{float(health['grad_norm']):.4g}. Lower train.lr, set train.grad_clip, or use "
                f"train.precision=fp32; the last checkpoint ({last_dir}) is untouched."
            )

    while state["step"] < total and not stop:
        epoch = state["epoch"]
        loader.sampler.set_epoch(epoch, skip=state["samples_in_epoch"])  # skips what all ranks consumed
        it = iter(loader)
        while state["step"] < total and state["samples_in_epoch"] + per_step <= steps_per_epoch * per_step:
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                t0 = time.perf_counter()
                batch = next(it)
                window["data_s"] += time.perf_counter() - t0
                batch = model_batch(batch, device, task.preset, cfg.channels_last)
                sync = ddp_model.no_sync() if world > 1 and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
                with sync:
                    with autocast():
                        loss = task.loss(step_model, batch)
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.detach().float()
                window["volumes"] += len(batch["image"]) * world
            # the total norm is computed either way (max_norm=inf clips nothing): it is logged and, since DDP
            # has already averaged the gradients, every rank sees the same value. It stays on the device: the
            # finiteness check is read on the host only at log steps and before a checkpoint (check_finite),
            # so a step never waits for the GPU; a diverged step is remembered by number.
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            finite = torch.isfinite(grad_norm) & torch.isfinite(loss_sum)
            health["first_bad"] = torch.where(
                (~finite) & (health["first_bad"] == 0),
                torch.full_like(health["first_bad"], state["step"] + 1),
                health["first_bad"],
            )
            health["loss"] = torch.where(finite, health["loss"], loss_sum / cfg.grad_accum)
            health["grad_norm"] = torch.where(finite, health["grad_norm"], grad_norm.detach().float())
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["samples_in_epoch"] += per_step
            state["samples_seen"] += per_step
            window["loss"] = window["loss"] + loss_sum.double() / cfg.grad_accum
            window["n"] += 1
            bar.update(1)
            if window["n"] >= cfg.log_every or state["step"] == total:
                check_finite()
                elapsed = time.perf_counter() - window["t0"]
                loss_mean = window["loss"] / window["n"]
                if world > 1:  # every rank logs at the same steps; log the mean over ranks, not rank 0's shard
                    loss_mean = dist.all_reduce_mean(loss_mean)
                values = {
                    "loss": float(loss_mean),
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm),
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
        epoch_done = state["samples_in_epoch"] + per_step > steps_per_epoch * per_step
        if epoch_done:
            state["epoch"] += 1
            state["samples_in_epoch"] = 0
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
