"""Checkpoints that describe themselves, and the training state for exact resumption.

A checkpoint is a folder::

    model.safetensors      weights (safetensors: loading never unpickles)
    checkpoint.json        {"format": 1, "model_config", "findings", "preset", "tokenizer",
                            "code_version", "step", "task", "timestamp", "text_files", "extra",
                            optional "provenance": {"dataset", "synthetic", "preset", ...},
                            optional "thresholds": {finding: float}, "threshold_source": str}
    text/<module>/         config.json + tokenizer files of each Hugging Face text tower (no weights)
    training_state.pt      optional: optimizer, scheduler, step, RNG states (plain tensors and
                           containers, read with torch.load(weights_only=True))

``load_model(folder)`` rebuilds the model from the folder alone: the architecture from
``model_config`` (with text towers pointed at ``text/`` and pretrained downloads switched off), the
weights from ``model.safetensors``. No hub access, no pickle.

Writing is atomic: everything goes into a temporary sibling folder, JSON last, which is then renamed
into place (an existing folder is first renamed aside and deleted afterwards), so a reader sees the
old complete checkpoint or the new complete one. In DDP only rank 0 should call the save functions.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from silverclip.io import apply_umask, atomic_open, atomic_write_json

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
TRAINING_STATE_FILE = "training_state.pt"
TEXT_DIR = "text"

__all__ = [
    "save_checkpoint",
    "is_checkpoint",
    "load_model",
    "read_checkpoint_meta",
    "record_calibration",
    "unwrap_model",
    "capture_rng_state",
    "restore_rng_state",
    "recover_checkpoint",
    "training_state_dict",
    "save_training_state",
    "load_training_state",
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (``.module``) and/or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


# --------------------------------------------------------------------------------------- model files
def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    model_config: dict[str, Any] | None = None,
    *,
    findings: Sequence[str] | None = None,
    preset: Any = None,
    tokenizer: str | None = None,
    step: int = 0,
    task: str | None = None,
    extra: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    thresholds: dict[str, float] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    Args:
        model: the model (DDP/compile wrappers are unwrapped).
        model_config: ``{"name": ..., **kw}`` for ``create_model``; defaults to ``model.model_config``.
        findings: label names of the head / of the labels trained on (default: the 18 CT-RATE findings).
        preset: preprocessing preset (a ``Preset``, its dict, or a built-in name), stored as a dict.
        tokenizer: tokenizer name/path (default: the text tower's, if the model has one).
        step: optimiser step count at saving.
        task: the stage that produced it (``pretrain`` / ``clip``), recorded for readers.
        extra: anything JSON-able (metrics, the run's config, ...).
        training_state: optional :func:`training_state_dict` output, written in the same atomic swap.
        provenance: what the model was trained on (``{"dataset", "synthetic", "preset"}``, see
            :func:`record_calibration`); thresholds: P(present) threshold per finding.
    """
    from safetensors.torch import save_file

    from silverclip.findings import FINDINGS
    from silverclip.models.text import HFTextEncoder
    from silverclip.runs import code_version

    folder = Path(folder)
    model = unwrap_model(model)
    if model_config is None:
        model_config = getattr(model, "model_config", None)
        if model_config is None:
            raise ValueError("model_config is required for a model not built by silverclip.models.create_model")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        apply_umask(tmp / WEIGHTS_FILE)  # safetensors writes 0600 whatever the umask
        _fsync(tmp / WEIGHTS_FILE)
        text_files = {}
        for name, module in model.named_modules():
            if isinstance(module, HFTextEncoder):
                rel = f"{TEXT_DIR}/{name or 'model'}"
                module.save_pretrained_files(tmp / rel)
                text_files[name] = rel
                if tokenizer is None:
                    tokenizer = module.tokenizer_name
        if training_state is not None:
            with atomic_open(tmp / TRAINING_STATE_FILE, "wb") as f:
                torch.save(training_state, f)
        meta = {
            "format": FORMAT_VERSION,
            "model_config": model_config,
            "findings": list(findings) if findings is not None else list(FINDINGS),
            "preset": _preset_dict(preset),
            "tokenizer": tokenizer,
            "code_version": code_version(),
            "step": int(step),
            "task": task,
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "text_files": text_files,
            "extra": extra or {},
        }
        if provenance is not None:
            meta["provenance"] = dict(provenance)
        if thresholds is not None:
            meta["thresholds"] = {str(k): float(v) for k, v in thresholds.items()}
        _check_calibration(meta, tmp / META_FILE)
        atomic_write_json(tmp / META_FILE, meta)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def is_checkpoint(folder: str | Path) -> bool:
    """True when ``folder`` holds a complete checkpoint (weights and metadata)."""
    folder = Path(folder)
    return (folder / META_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def read_checkpoint_meta(folder: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of a checkpoint folder, checked for completeness."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if int(meta.get("format", 0)) > FORMAT_VERSION:
        raise ValueError(f"{meta_path}: checkpoint format {meta['format']} is newer than this code ({FORMAT_VERSION})")
    for key in ("model_config", "step"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing field {key!r}")
    _check_calibration(meta, meta_path)
    return meta


def _check_calibration(meta: dict[str, Any], path: Path) -> None:
    """``provenance`` must be a JSON object of plain values, ``thresholds`` ``{finding: float in [0, 1]}``."""
    import math

    prov = meta.get("provenance")
    if prov is not None:
        if not isinstance(prov, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, bool, int, float))) for k, v in prov.items()
        ):
            raise ValueError(f"{path}: 'provenance' must be an object of strings, numbers and booleans")
        if "synthetic" in prov and not isinstance(prov["synthetic"], bool):
            raise ValueError(f"{path}: provenance 'synthetic' must be true or false")
    thr = meta.get("thresholds")
    if thr is not None:
        if not isinstance(thr, dict):
            raise ValueError(f"{path}: 'thresholds' must be an object {{finding: number}}")
        for k, v in thr.items():
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0
            if not isinstance(k, str) or not ok:
                raise ValueError(f"{path}: threshold of {k!r} is {v!r}; thresholds are numbers in [0, 1]")


def record_calibration(
    folder: str | Path,
    *,
    thresholds: dict[str, float] | None = None,
    threshold_source: str | None = None,
    template_set: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the thresholds chosen on a validation split and/or the training provenance into an existing
    checkpoint's ``checkpoint.json`` (atomically: a reader sees the old file or the new one) and return the meta.

    ``provenance``: ``{"dataset": name, "synthetic": bool, "preset": name, ...}`` (plain values only);
    ``thresholds``: ``{finding: P(present) threshold}``, as ``silverclip predict`` applies them;
    ``template_set``: the prompt template set the thresholds were chosen with.
    """
    folder = Path(folder)
    meta = read_checkpoint_meta(folder)
    if provenance is not None:
        meta["provenance"] = dict(provenance)
    if thresholds is not None:
        meta["thresholds"] = {str(k): float(v) for k, v in thresholds.items()}
        if threshold_source is not None:
            meta["threshold_source"] = str(threshold_source)
        if template_set is not None:
            meta["threshold_template_set"] = str(template_set)
    _check_calibration(meta, folder / META_FILE)
    atomic_write_json(folder / META_FILE, meta)
    return meta


def load_model(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved in ``folder`` (in eval mode, on ``map_location``) and return ``(model, meta)``.

    As safe as opening a safetensors file, whatever ``checkpoint.json`` says: the text towers are read
    from the folder's own ``text/`` files (no hub, no path outside the folder, links resolved), no
    repository code is run (``trust_remote_code`` and custom tokenizer/model classes are refused or
    ignored), external image weights are not reloaded, and nothing is unpickled.
    """
    from safetensors.torch import load_file

    from silverclip.device import resolve_device
    from silverclip.models import create_model
    from silverclip.models.hf_files import only_files_under

    map_location = resolve_device(map_location)  # --device cuda on a CPU machine: one clear error, first
    folder = Path(folder)
    meta = read_checkpoint_meta(folder)
    cfg = offline_model_config(meta["model_config"], meta.get("text_files") or {}, folder)
    with only_files_under(folder):
        model = create_model(**cfg)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: checkpoint has no {WEIGHTS_FILE}")
    state = load_file(str(weights), device=str(torch.device(map_location)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights}: weights do not fit the model described in {META_FILE}: {e}") from e
    model.to(map_location)
    model.eval()
    return model, meta


TEXT_MODEL_NAMES = ("hf_text",)
CLIP_MODEL_NAMES = ("clip", "clip_authors")


def offline_model_config(
    cfg: dict[str, Any], text_files: dict[str, str], folder: Path, path: str = ""
) -> dict[str, Any]:
    """``model_config`` rewritten to rebuild from ``folder``: text towers read the saved config and
    tokenizer without pretrained weights; external image weights are not reloaded (the checkpoint has them).

    Every text tower must have its files in the folder (``text_files``); its other options (hub ids,
    tokenizer paths, ``trust_remote_code``, a random-init ``config``) are dropped.
    """
    meta_path = folder / META_FILE
    if not isinstance(cfg, dict) or not isinstance(text_files, dict):
        raise ValueError(f"{meta_path}: model_config and text_files must be JSON objects")
    cfg = dict(cfg)
    cfg.pop("weights", None)
    cfg.pop("weights_source", None)
    if path in text_files or cfg.get("name") in TEXT_MODEL_NAMES:
        rel = text_files.get(path)
        if not isinstance(rel, str):
            raise ValueError(
                f"{meta_path}: the text tower {path or 'model'!r} has no files in the checkpoint (text_files); "
                "a checkpoint is rebuilt from its own folder only, never from a hub or another folder"
            )
        kept = {k: cfg[k] for k in ("name", "max_length") if k in cfg}
        return {**kept, "name_or_path": _inside_checkpoint(folder, rel), "pretrained": False}
    is_clip = cfg.get("name") in CLIP_MODEL_NAMES
    for key, module in (("image", "image_tower"), ("text", "text_tower")):
        sub = f"{path}.{module}" if path else module
        if (sub in text_files or (is_clip and key == "text")) and not isinstance(cfg.get(key), dict):
            cfg[key] = {}
        if isinstance(cfg.get(key), dict):
            child = dict(cfg[key])
            if is_clip and key == "text":
                child.setdefault("name", "hf_text")  # CLIP's text tower is an hf_text unless named otherwise
            cfg[key] = offline_model_config(child, text_files, folder, sub)
    return cfg


def _inside_checkpoint(folder: Path, rel: str) -> str:
    root = folder.resolve()
    target = (root / rel).resolve()
    if Path(rel).is_absolute() or not target.is_relative_to(root):
        raise ValueError(f"{folder / META_FILE}: text files {rel!r} lie outside the checkpoint folder")
    return str(target)


def _preset_dict(preset: Any) -> dict[str, Any] | None:
    if preset is None:
        return None
    from silverclip.data.presets import load_preset

    return load_preset(preset).to_dict()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _swap_in(tmp: Path, folder: Path) -> None:
    """Put the complete checkpoint ``tmp`` at ``folder``.

    A directory cannot be ``os.replace()``d over a non-empty one, so the old one is moved aside first:
    between the two renames ``folder`` does not exist, but ``.<name>.old-*`` (the previous checkpoint) and
    ``.<name>.tmp-*`` (the new one, complete: its ``checkpoint.json`` is written last) both do, and
    :func:`recover_checkpoint` puts the newest complete one back. A process killed there loses nothing.
    """
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(folder: str | Path) -> Path | None:
    """Repair ``folder`` after a process died inside :func:`_swap_in`; returns what was put back (or None).

    When ``folder`` is missing, the newest complete sibling (``.<name>.tmp-*`` written to replace it, or
    ``.<name>.old-*`` moved aside for it; by their ``checkpoint.json`` step, the new one first on a tie) is
    renamed into place. Incomplete temporaries (no ``checkpoint.json``: the process died while writing)
    and leftovers beside a present ``folder`` are deleted. Call from one process only (rank 0).
    """
    folder = Path(folder)
    siblings = sorted(folder.parent.glob(f".{folder.name}.tmp-*")) + sorted(folder.parent.glob(f".{folder.name}.old-*"))
    restored = None
    if not folder.exists():
        complete = []
        for rank, path in enumerate(siblings):
            try:
                step = int(read_checkpoint_meta(path)["step"]) if is_checkpoint(path) else None
            except (ValueError, OSError):
                step = None
            if step is not None:
                complete.append((step, -rank, path))  # tmp-* sort before old-*: the newer on equal steps
        if complete:
            restored = max(complete)[2]
            os.replace(restored, folder)
    for path in siblings:
        if path != restored and path.exists():
            shutil.rmtree(path, ignore_errors=True)
    return folder if restored is not None else None


# ------------------------------------------------------------------------------------ training state
def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python RNG states as tensors/ints/floats only,
    so that ``torch.load(weights_only=True)`` reads them back."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's own device only: with one visible GPU per process (or all GPUs visible to every
        # process) each rank saves and restores the generator it actually draws from
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        device = torch.cuda.current_device()
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device's state
            cuda = cuda[device] if device < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda.cpu(), device)


def training_state_dict(
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
    *,
    step: int = 0,
    rng_states: dict[str, Any] | list[dict[str, Any]] | None = None,
    scaler: Any = None,
) -> dict[str, Any]:
    """Everything besides the weights that resumption needs, as plain tensors/containers.

    ``rng_states``: one :func:`capture_rng_state` dict, or a list with one per rank (restored by rank);
    default: this process's states, captured now. ``extra``: JSON-like loop state (epoch, batch, ...).
    """
    return {
        "format": FORMAT_VERSION,
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_states if rng_states is not None else capture_rng_state(),
        "extra": _weights_only_safe(extra or {}),
    }


def _weights_only_safe(obj: Any) -> Any:
    """numpy scalars/arrays -> Python numbers/tensors, paths -> str: what ``weights_only`` loading accepts."""
    if isinstance(obj, dict):
        return {k: _weights_only_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_weights_only_safe(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_training_state(
    folder: str | Path,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
    *,
    step: int = 0,
    rng_states: dict[str, Any] | list[dict[str, Any]] | None = None,
    scaler: Any = None,
) -> Path:
    """Write ``<folder>/training_state.pt`` atomically (the file alone; passing
    ``training_state=training_state_dict(...)`` to :func:`save_checkpoint` swaps weights and state together)."""
    path = Path(folder) / TRAINING_STATE_FILE
    state = training_state_dict(optimizer, scheduler, extra, step=step, rng_states=rng_states, scaler=scaler)
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    return path


def load_training_state(
    folder: str | Path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    scaler: Any = None,
    restore_rng: bool = True,
    rank: int | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Resume from a checkpoint folder: load ``model.safetensors`` into ``model`` (strict; DDP/compile
    wrappers are unwrapped), ``training_state.pt`` (weights-only) into ``optimizer``/``scheduler``/``scaler``,
    restore the RNG states (this rank's when a per-rank list was saved) and return the state dict
    ``{"step", "extra", "rng", "optimizer", "scheduler", "scaler", "format"}``. Any argument may be ``None``.
    """
    folder = Path(folder)
    path = folder / TRAINING_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {TRAINING_STATE_FILE} to resume from")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: cannot be read as a weights-only training state ({type(e).__name__}: {e})") from e
    if model is not None:
        from safetensors.torch import load_file

        weights = load_file(str(folder / WEIGHTS_FILE), device=str(torch.device(map_location)))
        unwrap_model(model).load_state_dict(weights, strict=True)
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise ValueError(f"{path}: has no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng and state.get("rng") is not None:
        rng = state["rng"]
        if isinstance(rng, list):
            from silverclip.distributed import get_rank

            rng = rng[get_rank() if rank is None else rank]
        restore_rng_state(rng)
    return state
