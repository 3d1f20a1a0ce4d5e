"""The one model-input path: stored crops leave the workers as integers and are normalised/flipped on the device.

Checked against the float32 host path it replaces (``Preset.normalize`` + ``np.flip``), bit for bit; the
collate function tokenises in the workers and sets unreadable volumes aside; the training step makes
no host sync for the loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from silverclip.data.cache import VolumeCache
from silverclip.data.model_input import (
    center_crop,
    crop_array,
    dequantize_window,
    normalize_batch,
    quantize_window,
    volume_tensor,
)
from silverclip.data.presets import load_preset
from silverclip.train.data import Collate, ReportVolumeDataset, VolumeDataset, make_loader
from train_fixtures import TINY_PRESET, ids, make_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> VolumeCache:
    return VolumeCache(make_cache(tmp_path_factory.mktemp("cache"), n=6))


def test_device_normalisation_equals_the_host_float32_path():
    preset = load_preset("paper")
    rng = np.random.default_rng(0)
    hu = rng.integers(-1200, 400, size=(3, 1, 10, 9, 8)).astype(np.int16)  # some outside the window
    flips = np.array([[False, False, False], [True, False, True], [True, True, True]])
    out = normalize_batch(torch.from_numpy(hu), preset, torch.from_numpy(flips))
    assert out.dtype == torch.float32 and out.shape == hu.shape
    for b in range(3):
        ref = preset.normalize(hu[b, 0])
        axes = [k for k in range(3) if flips[b, k]]
        ref = np.flip(ref, axis=axes) if axes else ref
        np.testing.assert_array_equal(out[b, 0].numpy(), ref)
    assert out.min() == -1 and out.max() == 1
    cl = normalize_batch(torch.from_numpy(hu), preset, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(cl, normalize_batch(torch.from_numpy(hu), preset))


def test_eight_bit_codes_normalise_to_the_window_within_half_a_step():
    preset = load_preset("paper")  # window [-1000, 200]: 1200 HU in 255 steps of 4.7 HU
    hu = np.arange(-1100, 301, dtype=np.int16).reshape(1, 1, -1, 1, 1)
    codes = quantize_window(hu, preset.window)
    assert codes.dtype == np.uint8 and codes.min() == 0 and codes.max() == 255
    back = dequantize_window(codes, preset.window)
    step = 1200 / 255
    err = back - np.clip(hu, -1000, 200)
    assert np.abs(err).max() <= step / 2 + 1e-3
    inside = err[(hu > -1000) & (hu < 200)]  # (values outside the window clip to exact codes)
    assert np.sqrt((inside**2).mean()) == pytest.approx(step / np.sqrt(12), rel=0.05)  # uniform rounding error
    from_codes = normalize_batch(torch.from_numpy(codes), preset).numpy()
    from_hu = normalize_batch(torch.from_numpy(hu), preset).numpy()
    assert np.abs(from_codes - from_hu).max() <= (step / 2) * (2 / 1200) + 1e-6


def test_one_centre_crop_for_training_and_evaluation(cache):
    vol = cache.load(ids()[0])
    ds = VolumeDataset(cache, ids()[:1], train=False)
    np.testing.assert_array_equal(ds[0]["image"][0].numpy(), center_crop(vol, TINY_PRESET.crop))
    x = volume_tensor(np.asarray(vol), TINY_PRESET)  # predict / embed of one volume
    assert x.shape == (1, 1, *TINY_PRESET.crop) and torch.equal(x[0], ds.load_image(0))
    from silverclip.eval.embeddings import center_crop as eval_crop
    from silverclip.eval.embeddings import model_input

    np.testing.assert_array_equal(eval_crop(vol, TINY_PRESET.crop), center_crop(vol, TINY_PRESET.crop))
    assert torch.equal(model_input(np.asarray(vol), TINY_PRESET), x)
    with pytest.raises(ValueError, match="larger than the cached volume"):
        crop_array(vol, (40, 8, 8))


def test_flip_decisions_are_applied_on_the_device_as_the_host_path_did(cache):
    ds = VolumeDataset(cache, ids()[:6], train=True, random_flip=True, seed=2)
    items = [ds[(0, i)] for i in range(6)]
    assert {tuple(it["flip"].tolist()) for it in items} != {(False, False, False)}
    batch = Collate()(items)
    assert batch["image"].dtype == torch.int16 and batch["flip"].shape == (6, 3)
    x = normalize_batch(batch["image"], TINY_PRESET, batch["flip"])
    for i in range(len(items)):
        rng = np.random.default_rng([2, 0, i])  # the old path: crop, then flips, from the same generator
        vol = cache.load(ids()[i])
        starts = [int(rng.integers(0, s - c + 1)) for s, c in zip(vol.shape, TINY_PRESET.crop)]
        ref = TINY_PRESET.normalize(vol[tuple(slice(s, s + c) for s, c in zip(starts, TINY_PRESET.crop))])
        axes = [ax for ax in range(3) if rng.random() < 0.5]
        ref = np.flip(ref, axis=axes) if axes else ref
        np.testing.assert_array_equal(x[i, 0].numpy(), ref)


def test_collate_tokenises_in_the_workers_and_sets_failures_aside(cache):
    seen = []

    def tokenize(texts):
        seen.append(list(texts))
        return {"input_ids": torch.tensor([[len(t)] for t in texts])}

    vids = [*ids()[:3], "missing_volume"]
    ds = ReportVolumeDataset(cache, vids, ["a b.", "", "c.", "d."], train=False, skip_errors=True)
    loader = make_loader(ds, batch_size=4, train=False, num_workers=1, collate_fn=Collate(tokenize))
    (batch,) = list(loader)
    assert seen == []  # tokenised in the worker process, not here
    assert batch["id"] == ids()[:3] and batch["text_rows"].tolist() == [0, 2]  # empty text: no tokens
    assert batch["tokens"]["input_ids"].tolist() == [[4], [2]]
    ((vid, message),) = batch["failed"]
    assert vid == "missing_volume" and "missing_volume" in message
    assert Collate(tokenize)([ds[3]]) == {"failed": [("missing_volume", ds[3]["error"])]}


def test_training_step_reads_the_loss_on_the_host_only_at_log_steps(tmp_path, monkeypatch):
    """Reading a tensor on the host (``item``, ``float``, ``int``, ``bool``) is a sync on a GPU: count the loop's own.

    (The optimiser reads its CPU step counters, which costs no sync; only reads made in ``train/loop.py`` count.)
    """
    import sys

    from silverclip.config import load_config
    from silverclip.train import loop
    from silverclip.train.config import PretrainConfig
    from silverclip.train.stages import _pretrain
    from train_fixtures import TINY_IMAGE, make_all

    p = make_all(tmp_path)
    calls = {"n": 0}

    def counting(real):
        def read(self, *a):
            calls["n"] += sys._getframe(1).f_code.co_filename == loop.__file__
            return real(self, *a)

        return read

    for name in ("__float__", "__int__", "__bool__", "item"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    cfg = [
        f"out={tmp_path / 'run'}",
        f"cache={p['cache']}",
        f"labels={p['labels']}",
        "model=resnet10_3d",
        f"model_kwargs={TINY_IMAGE}",
        "data.batch_size=2",
        "train.max_steps=8",  # 2 epochs of 4 steps
        "train.log_every=100",
        "train.progress=false",
    ]
    res = _pretrain(load_config(PretrainConfig, None, cfg))
    assert res.step == 8
    # read at the one log step and the 2 epoch-end saves (loss, grad norm, divergence check): fewer than one per
    # step (the old loop read the loss of every micro-batch and the gradient norm of every step: 16 here)
    assert 0 < calls["n"] < 8, calls


def test_eight_bit_cache_option_preprocesses_trains_and_predicts_from_codes(tmp_path):
    """``cache_dtype: uint8`` (preset ``paper_uint8``): preprocessing writes window codes, the loader returns them,
    and the model input is the int16 path's within half a code step (2.35 HU of 1200)."""
    import dataclasses

    from silverclip.data.cache import CacheWriter
    from silverclip.data.preprocess import preprocess_volume
    from silverclip.data.readers import Volume

    assert load_preset("paper_uint8").cache_dtype == "uint8" and "cache_dtype" not in load_preset("paper").to_dict()
    p16 = dataclasses.replace(TINY_PRESET, spacing=(6.0, 6.0, 6.0))
    p8 = dataclasses.replace(p16, cache_dtype="uint8")
    rng = np.random.default_rng(0)
    arr = rng.integers(-1100, 400, size=(34, 30, 26)).astype(np.int16)
    vol = Volume(array=arr, spacing=(6.0, 6.0, 6.0), affine=np.diag([6.0, 6.0, 6.0, 1.0]), source="synthetic")
    hu, codes = preprocess_volume(vol, p16), preprocess_volume(vol, p8)
    assert hu.dtype == np.int16 and codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, quantize_window(hu, p8.window))
    writer = CacheWriter(tmp_path / "c8", p8)
    with pytest.raises(ValueError, match="must be uint8"):
        writer.write("x", hu)
    writer.write("train_0_a_1", codes)
    cache = VolumeCache(tmp_path / "c8")
    assert cache.preset == p8
    ds = VolumeDataset(cache, ["train_0_a_1"], train=False)
    x8 = ds[0]["image"]
    assert x8.dtype == torch.uint8
    x16 = torch.from_numpy(center_crop(hu, p16.crop))[None]
    diff = normalize_batch(x8[None], p8) - normalize_batch(x16[None], p16)
    assert float(diff.abs().max()) <= (1200 / 255 / 2) * (2 / 1200) + 1e-6
