"""DDP settings that CPU runs cannot show by themselves: float32 CLIP logits under bf16, every CLIP parameter
gets a gradient (so ``find_unused_parameters=False`` is safe), and an explicit process-group timeout.

The sharded validation and per-rank seeds run for real under ``torchrun`` in tests/test_ddp_train.py.
"""

from __future__ import annotations

import datetime

import pytest
import torch

from silverclip.losses import ClipLoss, clip_logits
from train_fixtures import TINY_IMAGE, TINY_PRESET, TINY_TEXT


def test_clip_logits_and_loss_are_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)
    scale = torch.tensor(100.0)
    ref_logits = clip_logits(img, txt, scale)[0]
    ref = ClipLoss()(img, txt, scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = clip_logits(img.bfloat16(), txt.bfloat16(), scale)[0]
        loss = ClipLoss()(img, txt, scale)
        naive = scale * img @ txt.T  # what autocast would do to the product
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32 and naive.dtype == torch.bfloat16
    assert torch.equal(loss, ref)  # float32 inputs: bit-identical to the fp32 loss
    # bf16 embeddings (the towers' output under autocast) lose only their own rounding, not the product's
    assert (logits - ref_logits).abs().max() < (naive.float() - ref_logits).abs().max()


def test_every_clip_parameter_gets_a_gradient():
    """DDP with ``find_unused_parameters=False`` hangs or fails if a parameter gets no gradient: none may."""
    from silverclip.train.tasks import ClipTask

    task = ClipTask(TINY_PRESET, model_kwargs={"image": TINY_IMAGE, "text": TINY_TEXT, "embed_dim": 8})
    assert task.ddp_find_unused_parameters is False
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    images = torch.randn(3, 1, *TINY_PRESET.crop)
    batch = {"image": images, "text": ["a nodule.", "effusion on the left.", "normal lungs."]}
    batch.update(
        task.collate()([{"image": torch.zeros(1), "id": str(i), "text": t} for i, t in enumerate(batch["text"])])
    )
    batch["image"] = images
    task.loss(model, batch).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert sum(int(p.grad.abs().sum() > 0) for p in model.parameters()) >= 0.9 * len(list(model.parameters()))


def test_process_group_gets_the_configured_timeout(monkeypatch):
    from silverclip import distributed
    from silverclip.config import ConfigError
    from silverclip.train.config import TrainConfig

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    distributed.init_distributed(device="cpu", timeout_s=123)
    assert seen["timeout"] == datetime.timedelta(seconds=123) and seen["backend"] == "gloo"
    assert TrainConfig().dist_timeout_s == 1800
    with pytest.raises(ConfigError, match="dist_timeout_s"):
        TrainConfig(dist_timeout_s=0).validate()
