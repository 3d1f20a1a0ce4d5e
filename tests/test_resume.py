"""An interrupted-and-resumed run ends with bit-identical weights to an uninterrupted one (CPU, tiny models)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from silverclip.config import load_config
from silverclip.train.config import ClipConfig, PretrainConfig
from silverclip.train.stages import _clip, _pretrain
from train_fixtures import TINY_IMAGE, TINY_TEXT, make_all


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pretrain_resume_is_bit_exact(tmp_path):
    p = make_all(tmp_path)
    common = [
        f"cache={p['cache']}",
        f"labels={p['labels']}",
        f"val_labels={p['val_labels']}",
        "model=resnet10_3d",
        f"model_kwargs={TINY_IMAGE}",
        "train.epochs=2",
        "train.warmup_steps=2",
        "train.progress=false",
        "data.random_flip=true",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.grad_clip=1.0",
    ]  # 8 volumes, batch 2: 4 steps per epoch, 8 in all
    full = _pretrain(load_config(PretrainConfig, None, [*common, f"out={tmp_path / 'full'}"]))
    assert full.step == 8
    part = _pretrain(load_config(PretrainConfig, None, [*common, f"out={tmp_path / 'cut'}", "train.stop_at_step=3"]))
    assert part.step == 3 and not part.completed  # stopped mid-epoch, between two periodic checkpoints
    assert json.loads((tmp_path / "cut" / "last" / "checkpoint.json").read_text())["step"] == 3
    assert not torch.equal(_weights(part.last)["fc.weight"], _weights(full.last)["fc.weight"])
    resumed = _pretrain(load_config(PretrainConfig, None, [*common, f"out={tmp_path / 'cut'}"]))
    assert resumed.step == 8 and resumed.completed
    _assert_same(_weights(full.last), _weights(resumed.last))
    _assert_same(_weights(full.best), _weights(resumed.best))

    # the metrics log of the resumed run equals the uninterrupted one (apart from timings)
    def rows(run):
        drop = {"volumes_per_s", "data_wait", "time_s"}
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]

    assert rows("full") == rows("cut")


def test_clip_resume_with_dropout_and_accumulation_is_bit_exact(tmp_path):
    p = make_all(tmp_path)
    common = [
        f"cache={p['cache']}",
        f"manifest={p['manifest']}",
        f"model_kwargs={{image: {TINY_IMAGE}, text: {TINY_TEXT}, embed_dim: 16}}",
        "train.max_steps=3",
        "train.grad_accum=2",
        "train.progress=false",
        "train.lr=1e-3",
    ]  # BERT dropout consumes the global RNG: resuming must restore it
    full = _clip(load_config(ClipConfig, None, [*common, f"out={tmp_path / 'full'}"]))
    part = _clip(load_config(ClipConfig, None, [*common, f"out={tmp_path / 'cut'}", "train.stop_at_step=1"]))
    assert part.step == 1
    resumed = _clip(load_config(ClipConfig, None, [*common, f"out={tmp_path / 'cut'}"]))
    assert full.step == resumed.step == 3
    _assert_same(_weights(full.last), _weights(resumed.last))
