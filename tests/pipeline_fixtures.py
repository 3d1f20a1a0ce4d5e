"""A tiny pipeline config (synthetic data, tiny preset and models) shared by the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_PRESET = {
    "name": "tiny",
    "spacing": [12.0, 12.0, 12.0],
    "window": [-1000, 200],
    "shape": [32, 32, 24],
    "crop": [24, 24, 16],
}
TINY_IMAGE = {"widen_factor": 0.125}
TINY_TEXT = {"config": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}}


def tiny_config(tmp: Path, run_dir: Path, **extra: object) -> Path:
    """Write a pipeline YAML for a ~1 minute end-to-end run; returns its path."""
    preset = tmp / "tiny_preset.yaml"
    preset.write_text(yaml.safe_dump(TINY_PRESET))
    train = {"epochs": 2, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "progress": False}
    cfg = {
        "run_dir": str(run_dir),
        "seed": 0,
        "progress": False,
        "source": {"kind": "synth", "synth": {"n_patients": 10, "shape": [32, 32, 24], "valid_fraction": 0.3}},
        "preprocess": {"preset": str(preset), "workers": 1},
        "labels": {"backend": "rules"},
        "pretrain": {"model_kwargs": TINY_IMAGE, "data": {"batch_size": 2}, "train": {**train, "lr": 1e-3}},
        "clip": {
            "model_kwargs": {"embed_dim": 16, "text": TINY_TEXT},
            "data": {"batch_size": 4},
            "train": {**train, "lr": 1e-4},
        },
        "evaluate": {"threshold_volumes": 6, "n_boot": 20, "min_positives": 1},
        "ablation": {"arms": ["scratch", "gold", "rules"], "seeds": [0, 1]},
    }
    for key, value in extra.items():
        cfg[key] = value
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
