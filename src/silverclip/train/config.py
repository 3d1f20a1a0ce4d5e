"""Typed configs of the two training stages (supervised pre-training and CLIP).

Built with :func:`silverclip.config.load_config` from an optional YAML file plus ``key=value``
overrides (dotted for nesting: ``train.lr=3e-4``, ``data.batch_size=4``); the resolved config is
saved into the run folder. Defaults are the paper's settings (DESIGN.md): pre-training AdamW
lr 1e-4, wd 1e-4, cosine to 1e-6; CLIP lr 1e-5 with gradient clipping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from silverclip.config import ConfigError

if TYPE_CHECKING:
    import argparse

C = TypeVar("C")

Precision = Literal["auto", "bf16", "fp32"]


@dataclass
class DataConfig:
    """How volumes are read from the cache and batched.

    crop: training crop (x, y, z); None = the cache preset's ``crop``. Evaluation uses the centre crop
        of the same size.
    random_flip: flip each axis with probability 1/2 during training (off by default: left-right
        flips swap anatomy such as the heart's side).
    num_workers: DataLoader worker processes (0 = load in the main process).
    """

    batch_size: int = 2
    eval_batch_size: int | None = None
    crop: list[int] | None = None
    random_flip: bool = False
    num_workers: int = 0
    prefetch_factor: int = 2
    val_fraction: float = 0.0

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.crop is not None and (len(self.crop) != 3 or min(self.crop) < 1):
            raise ConfigError(f"data.crop must be three positive sizes (x, y, z), got {self.crop}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class TrainConfig:
    """Optimisation and loop settings shared by both stages.

    Steps are optimizer steps (one step = ``grad_accum`` micro-batches of ``data.batch_size`` per
    process). ``max_steps`` (if set) overrides ``epochs`` for the schedule's length.
    ``stop_at_step`` stops early *without* changing the schedule (a checkpoint is written), for
    time-limited cluster jobs: rerun the same command to continue.
    ``dist_timeout_s``: the process group's timeout under torchrun (a collective waiting longer fails the job).
    """

    epochs: int = 10
    max_steps: int | None = None
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    grad_accum: int = 1
    grad_clip: float | None = None
    precision: Precision = "auto"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    checkpoint_every: int = 0
    stop_at_step: int | None = None
    log_every: int = 10
    validate_every_epochs: int = 1
    tensorboard: bool = False
    progress: bool = True
    device: str = "auto"
    resume: bool = True
    dist_timeout_s: float = 1800.0

    def validate(self) -> None:
        if self.epochs < 1 and not self.max_steps:
            raise ConfigError("train.epochs must be >= 1 (or set train.max_steps)")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"train.lr must be > 0 and 0 <= train.min_lr <= lr (lr={self.lr}, min_lr={self.min_lr})")
        if self.grad_accum < 1:
            raise ConfigError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.dist_timeout_s <= 0:
            raise ConfigError(f"train.dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must hold two numbers, got {self.betas}")


@dataclass
class ClipTrainConfig(TrainConfig):
    """CLIP's defaults (paper: lr 1e-5, gradient clipping). A subclass, not a ``default_factory``, so that
    a YAML or ``train.x=...`` override of one field keeps the stage's defaults for the others."""

    lr: float = 1e-5
    min_lr: float = 1e-7
    grad_clip: float | None = 1.0


@dataclass
class PretrainConfig:
    """``silverclip pretrain``: multi-label BCE of a 3D image encoder on a labels CSV (silver or gold).

    uncertain_policy: how -1 labels enter the loss (silverclip.labels.table.to_targets): ``mask``
        (default, left out of the loss), ``positive`` or ``negative``.
    val_labels: labels of the validation volumes (same cache unless ``val_cache``); without it,
        ``data.val_fraction`` of the patients are held out (0 = no validation; ``best`` = ``last``).
    """

    out: Path
    cache: Path
    labels: Path
    val_labels: Path | None = None
    val_cache: Path | None = None
    uncertain_policy: Literal["mask", "positive", "negative"] = "mask"
    model: str = "resnet18_3d"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # the paper's pre-training settings are the defaults


@dataclass
class ClipConfig:
    """``silverclip clip``: CLIP on (volume, report) pairs.

    manifest: CSV/Parquet with ``volume_id, findings, impressions`` (+ optional ``split`` and the 18
        finding columns, used for zero-shot validation). Rows whose ``split`` is ``valid``/``validation``/
        ``val`` form the validation set unless ``val_manifest`` is given.
    init: a pre-training checkpoint folder for the image tower; null = from scratch (the ablation).
    text_model: Hugging Face name or local path; null = the offline default (the packaged MiniLM
        BERT; real runs: ``microsoft/BiomedVLP-CXR-BERT-specialized``).
    include_impressions: text = Findings + " " + Impressions (default: Findings only, as the paper);
        recorded in the checkpoint, so ``silverclip embed`` builds report texts the same way by default.
    val_labels: labels CSV for zero-shot AUC when the manifest has no finding columns.
    zero_shot_templates: template set (``resources/prompts.yaml``) of the validation's zero-shot AUC;
        null = the file's default, as ``silverclip evaluate``.
    sentence_keep: train on a random subset of each report's sentences, each kept with this probability
        (at least one; a new subset every epoch); 1.0 = the whole report (the paper). Zero-shot prompts are
        single sentences: training on sentence subsets aligns them with the reports (docs/results.md) and
        shortens what the text tower reads.
    """

    out: Path
    cache: Path
    manifest: Path
    val_manifest: Path | None = None
    val_cache: Path | None = None
    val_labels: Path | None = None
    init: Path | None = None
    image_model: str = "resnet18_3d"
    text_model: str | None = None
    include_impressions: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    retrieval_ks: list[int] = field(default_factory=lambda: [5, 10, 50, 100])
    zero_shot_templates: str | None = None
    sentence_keep: float = 1.0
    data: DataConfig = field(default_factory=DataConfig)
    train: ClipTrainConfig = field(default_factory=ClipTrainConfig)

    def validate(self) -> None:
        if not 0.0 < self.sentence_keep <= 1.0:
            raise ConfigError(f"sentence_keep must be in (0, 1], got {self.sentence_keep}")


def split_cli_args(items: list[str]) -> tuple[Path | None, list[str]]:
    """CLI positionals -> (config YAML path or None, ``key=value`` overrides); at most one YAML file."""
    paths = [i for i in items if "=" not in i]
    if len(paths) > 1:
        raise ConfigError(f"expected at most one config file, got {paths} (overrides are key=value)")
    return (Path(paths[0]) if paths else None), [i for i in items if "=" in i]


def path_override(key: str, value: str | Path | None) -> list[str]:
    """``key=value`` for a path flag, quoted so YAML keeps it a string; ``[]`` when unset."""
    import json

    return [] if value is None else [f"{key}={json.dumps(str(value))}"]


# ------------------------------------------------------------------------------------ CLI wiring
def add_stage_arguments(p: argparse.ArgumentParser, example: str) -> None:
    """The arguments ``silverclip pretrain`` and ``silverclip clip`` share (the stage adds its own inputs):
    ``--cache``, ``--val-cache``, ``--out``, ``--resume``/``--restart`` and the config positionals."""
    p.add_argument("--cache", help="preprocessing cache folder (silverclip preprocess)")
    p.add_argument("--val-cache", help="cache of the validation volumes (default: --cache)")
    p.add_argument("--out", help="run folder (checkpoints last/ and best/, metrics, resolved config)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=None, help="resume from last/ (default)")
    g.add_argument("--restart", dest="resume", action="store_false", help="ignore last/ and start over")
    p.add_argument("config", nargs="*", help=f"optional config YAML, then key=value overrides (e.g. {example})")


def config_from_args(cls: type[C], args: argparse.Namespace, path_keys: tuple[str, ...], flags: list[str]) -> C:
    """The stage config from a YAML file, ``key=value`` overrides, then the flags (flags win).

    ``path_keys``: the stage's own path/name flags (attribute name = config key) besides the shared ones.
    """
    from silverclip.config import load_config

    path, overrides = split_cli_args(args.config)
    flags = list(flags)
    for key in ("cache", "val_cache", "out", *path_keys):
        flags += path_override(key, getattr(args, key))
    if args.resume is not None:
        flags.append(f"train.resume={str(args.resume).lower()}")
    return load_config(cls, path, overrides + flags)
