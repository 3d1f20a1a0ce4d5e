"""Typed config of ``silverclip run`` / ``silverclip ablate`` (see configs/demo.yaml, configs/ctrate_paper.yaml).

The training sections (``pretrain``, ``clip``) are passed through as overrides of the stage configs in
:mod:`silverclip.train.config` (same keys as ``silverclip pretrain/clip`` config files), and are
validated there when the stage is built, so the two entry points cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from silverclip.config import ConfigError


@dataclass
class SourceConfig:
    """Where the volumes and reports come from.

    kind: ``synth`` (generate a CT-RATE-format dataset into ``<run>/data``), ``ctrate`` (a downloaded
        CT-RATE folder at ``root``) or ``manifest`` (your own ``train_manifest``/``valid_manifest`` CSV/Parquet).
    synth: options of :class:`silverclip.synth.dataset.SynthConfig` (n_patients, shape, difficulty, ...).
    version: CT-RATE volume version (``auto``: the ``*_fixed`` v2 folders when present).
    max_train_volumes: keep only the first N training volumes (quick trials on a real dataset).
    """

    kind: Literal["synth", "ctrate", "manifest"] = "synth"
    root: Path | None = None
    version: str = "auto"
    train_manifest: Path | None = None
    valid_manifest: Path | None = None
    synth: dict[str, Any] = field(default_factory=dict)
    max_train_volumes: int | None = None

    def validate(self) -> None:
        if self.kind == "ctrate" and self.root is None:
            raise ConfigError("source.root (the CT-RATE folder) is required when source.kind is ctrate")
        if self.kind == "manifest" and (self.train_manifest is None or self.valid_manifest is None):
            raise ConfigError("source.train_manifest and source.valid_manifest are required for source.kind manifest")


@dataclass
class PreprocessStageConfig:
    preset: str = "paper"
    workers: int = 2


@dataclass
class LabelsStageConfig:
    """Silver labels for pre-training.

    backend: ``rules`` (offline rule labeller), ``keyword`` (the rules' patterns without negation: a
        weak-labelling baseline), ``llm`` (an OpenAI-compatible endpoint, options in ``llm``: base_url,
        model, allow_remote, concurrency, ... as :class:`silverclip.labels.llm_client.LLMConfig`),
        ``cascade`` (rules first, the ``llm`` endpoint only for the findings they leave open; options in
        ``cascade`` as :class:`silverclip.labels.cascade.CascadeConfig`) or ``gold`` (the dataset's own
        labels: the supervised upper bound).
    include_flagged: also label empty and non-English reports (by default they stay unlabelled: masked).
    """

    backend: Literal["rules", "keyword", "llm", "cascade", "gold"] = "rules"
    llm: dict[str, Any] = field(default_factory=dict)
    cascade: dict[str, Any] = field(default_factory=dict)
    include_flagged: bool = False

    def validate(self) -> None:
        if self.backend in ("llm", "cascade") and not self.llm.get("base_url"):
            raise ConfigError(f"labels.llm.base_url is required when labels.backend is {self.backend}")
        if "@" in str(self.llm.get("base_url", "")).split("//", 1)[-1].split("/", 1)[0]:
            # The resolved config is saved in the run folder: credentials there would be written to disk.
            raise ConfigError(
                "labels.llm.base_url must not carry credentials (user:key@host): the config is saved in the run "
                "folder; give the key through the environment variable named by labels.llm.api_key_env"
            )
        if self.cascade:
            from silverclip.config import config_from_dict
            from silverclip.labels.cascade import CascadeConfig

            try:
                config_from_dict(CascadeConfig, self.cascade)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"labels.cascade: {e}") from None


@dataclass
class EvaluateStageConfig:
    """Zero-shot and retrieval evaluation of the validation split.

    threshold_volumes: zero-shot thresholds (default mode) are chosen on this many *training* volumes'
        embeddings, never on the evaluated split; 0 = fixed 0.5 thresholds.
    min_positives: a finding with fewer positive (or negative) volumes in the evaluated split is reported
        as not estimable and left out of the mean AUC.
    compare_template_sets: zero-shot is also scored with these prompt sets (``resources/prompts.yaml``) and
        shown next to the main one (``template_set``, default CT-CLIP's pair: the field's protocol), because
        zero-shot numbers move with the prompt wording.
    """

    mode: Literal["default", "ctclip-compatible"] = "default"
    template_set: str | None = None
    threshold_method: Literal["youden", "f1"] = "youden"
    threshold_volumes: int = 300
    n_boot: int = 200
    min_positives: int = 10
    compare_template_sets: list[str] = field(default_factory=lambda: ["ctrate"])
    recall_mode: Literal["per-volume", "per-scan"] = "per-volume"
    exclude: Literal["none", "self", "scan"] = "none"
    batch_size: int = 4
    device: str = "auto"


@dataclass
class ExternalConfig:
    """External test set (RAD-ChestCT): ``volumes`` (folder of .npz) and ``labels`` (its label CSV folder)."""

    enabled: bool = False
    volumes: Path | None = None
    labels: Path | None = None
    split: str | None = "test"

    def validate(self) -> None:
        if self.enabled and (self.volumes is None or self.labels is None):
            raise ConfigError("external.volumes and external.labels are required when external.enabled is true")


@dataclass
class AblationConfig:
    """``silverclip ablate``: arms x seeds on the same data.

    arms: ``scratch`` (CLIP from scratch), ``gold`` (pre-trained on the dataset's labels) and any labeller
        backend (``rules``, ``keyword``, ``llm``, ``cascade``: CLIP initialised from supervised pre-training on
        that labeller's silver labels). ``llm``/``cascade`` need ``labels.llm.base_url``.
    equal_budget: the scratch arm's CLIP also gets the pre-training epochs, so every arm trains the
        image tower for at least as many epochs (and the scratch arm gets more seconds of compute: a CLIP
        epoch costs more than a pre-training epoch).
    scratch_extra_epochs: with ``equal_budget``, the CLIP epochs the scratch arm gets instead of the
        pre-training epochs: a CLIP epoch costs many pre-training epochs (its text tower dominates), so equal
        *compute* is fewer epochs; ``results.md`` prints the measured seconds per arm to check it.
    """

    arms: list[str] = field(default_factory=lambda: ["scratch", "gold", "rules"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    equal_budget: bool = True
    scratch_extra_epochs: int | None = None

    def validate(self) -> None:
        known = ("scratch", "gold", "rules", "keyword", "llm", "cascade")
        bad = sorted(set(self.arms) - set(known))
        if bad:
            raise ConfigError(f"ablation.arms: unknown arm(s) {bad}; use {', '.join(known)}")


@dataclass
class PipelineConfig:
    run_dir: Path
    seed: int = 0
    progress: bool = True
    source: SourceConfig = field(default_factory=SourceConfig)
    preprocess: PreprocessStageConfig = field(default_factory=PreprocessStageConfig)
    labels: LabelsStageConfig = field(default_factory=LabelsStageConfig)
    pretrain_enabled: bool = True
    pretrain: dict[str, Any] = field(default_factory=dict)
    clip: dict[str, Any] = field(default_factory=dict)
    evaluate: EvaluateStageConfig = field(default_factory=EvaluateStageConfig)
    external: ExternalConfig = field(default_factory=ExternalConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
