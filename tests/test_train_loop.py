"""The training building blocks on CPU without DDP: data crops and determinism, id alignment, schedule, loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from silverclip.data.cache import VolumeCache
from silverclip.train.data import (
    VolumeDataset,
    align_ids,
    make_loader,
    patient_of,
    read_report_manifest,
    report_text,
    split_by_patient,
)
from silverclip.train.schedule import cosine_with_warmup, lr_factor
from train_fixtures import N_TRAIN, TINY_IMAGE, TINY_PRESET, ids, make_all, make_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> VolumeCache:
    return VolumeCache(make_cache(tmp_path_factory.mktemp("cache")))


def test_centre_crop_is_the_stored_centre_and_normalises_to_the_preset(cache):
    ds = VolumeDataset(cache, ids()[:2], train=False)
    item = ds[0]
    x = item["image"]
    assert x.shape == (1, *TINY_PRESET.crop) and x.dtype == torch.int16 and "flip" not in item  # the worker's output
    vol = cache.load(ids()[0])
    (cx, cy, cz), (sx, sy, sz) = TINY_PRESET.crop, TINY_PRESET.shape
    x0, y0, z0 = (sx - cx) // 2, (sy - cy) // 2, (sz - cz) // 2
    raw = vol[x0 : x0 + cx, y0 : y0 + cy, z0 : z0 + cz]
    np.testing.assert_array_equal(x[0].numpy(), raw)
    normalised = ds.load_image(0)  # what the model sees (normalised on the device in training)
    assert normalised.dtype == torch.float32
    np.testing.assert_array_equal(normalised[0].numpy(), TINY_PRESET.normalize(raw))
    assert normalised.min() >= -1 and normalised.max() <= 1
    assert torch.equal(ds[(5, 0)]["image"], x)  # evaluation ignores the epoch


def test_random_crops_are_seeded_per_sample(cache):
    ds = VolumeDataset(cache, ids(), train=True, random_flip=True, seed=3)
    a, b = ds.load_image(4, 1), ds.load_image(4, 1)
    assert torch.equal(a, b) and ds[(1, 4)]["flip"].dtype == torch.bool
    assert not torch.equal(a, ds.load_image(4, 2))  # another epoch, another crop
    other_seed = VolumeDataset(cache, ids(), train=True, random_flip=True, seed=4)
    assert not torch.equal(a, other_seed.load_image(4, 1))
    # every random crop is a sub-block of the normalised volume (possibly flipped)
    full = torch.from_numpy(TINY_PRESET.normalize(cache.load(ids()[4])))
    crops = full.unfold(0, 24, 1).unfold(1, 24, 1).unfold(2, 16, 1)  # (9, 9, 9, 24, 24, 16)
    cands = [a[0]] + [a[0].flip(d) for d in ([0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2])]
    assert any((crops == c).all(-1).all(-1).all(-1).any() for c in cands)


def test_crop_larger_than_volume_is_a_clear_error(cache):
    with pytest.raises(ValueError, match="larger than the cached volume"):
        VolumeDataset(cache, ids(), train=True, crop=(40, 24, 16))


def test_loader_batches_do_not_depend_on_workers_or_resume_point(cache):
    ds = VolumeDataset(cache, ids(), train=True, seed=1)

    def epoch_batches(workers: int, skip_batches: int = 0):
        loader = make_loader(ds, batch_size=2, train=True, seed=1, num_workers=workers)
        loader.sampler.set_epoch(1, skip=2 * skip_batches)
        return [(b["id"], b["image"]) for b in loader]

    ref = epoch_batches(0)
    assert len(ref) == len(ids()) // 2
    with_workers = epoch_batches(2)
    resumed = epoch_batches(0, skip_batches=3)
    for (i1, x1), (i2, x2) in zip(ref, with_workers):
        assert i1 == i2 and torch.equal(x1, x2)
    assert len(resumed) == len(ref) - 3
    for (i1, x1), (i2, x2) in zip(ref[3:], resumed):
        assert i1 == i2 and torch.equal(x1, x2)
    # shuffled, and differently in another epoch
    loader = make_loader(ds, batch_size=2, train=True, seed=1)
    loader.sampler.set_epoch(2)
    assert [b["id"] for b in loader] != [i for i, _ in ref]


def test_loader_leaves_global_rng_alone(cache):
    ds = VolumeDataset(cache, ids(), train=True)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for _ in make_loader(ds, batch_size=4, train=True):
        pass
    assert torch.equal(before, torch.get_rng_state())


def test_align_ids_reports_both_sides(caplog):
    out = align_ids(["a", "b", "c"], ["b", "c", "d"], "cache", "labels.csv")
    assert out.ids == ["b", "c"] and out.missing_in_cache == ["d"] and out.missing_in_table == ["a"]
    assert "labels.csv" in caplog.text
    with pytest.raises(ValueError, match="no volume id"):
        align_ids(["a"], ["z"], "cache", "labels.csv")


def test_split_by_patient_keeps_patients_together():
    vol_ids = [f"train_{p}_{s}_{r}" for p in range(10) for s in "ab" for r in (1, 2)]
    train, val = split_by_patient(vol_ids, 0.2, seed=0)
    assert len({patient_of(v) for v in val}) == 2
    assert not {patient_of(v) for v in train} & {patient_of(v) for v in val}
    assert sorted(train + val) == sorted(vol_ids)
    assert split_by_patient(vol_ids, 0.2, seed=0) == (train, val)


def test_report_text():
    row = {"findings": " Lungs clear. ", "impressions": "Normal."}
    assert report_text(row, False) == "Lungs clear."
    assert report_text(row, True) == "Lungs clear. Normal."
    assert report_text({"findings": float("nan"), "impressions": "x"}, False) == ""


def test_report_manifest_from_a_path_or_a_frame(tmp_path):
    import pandas as pd

    path = tmp_path / "m.csv"
    path.write_text("volume_id,findings,impressions\n007.nii.gz,Lungs clear.,\ntrain_1_a_1,,Normal.\n")
    df = read_report_manifest(path)
    assert list(df.index) == ["007", "train_1_a_1"]  # suffix stripped, leading zeros kept
    assert df.loc["train_1_a_1", "findings"] == "" and report_text(df.loc["007"], True) == "Lungs clear."
    frame = read_report_manifest(pd.DataFrame({"volume_id": ["a", "b"]}), require=())  # embedding needs no text
    assert list(frame.index) == ["a", "b"]
    assert list(read_report_manifest(df).index) == list(df.index)  # a frame indexed by volume_id is accepted
    with pytest.raises(ValueError, match="no 'findings' column"):
        read_report_manifest(pd.DataFrame({"volume_id": ["a"]}))
    with pytest.raises(ValueError, match="duplicate volume_id"):
        read_report_manifest(pd.DataFrame({"volume_id": ["a.nii.gz", "a"], "findings": ["x", "y"]}))


class _Threads(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, key):
        return torch.get_num_threads()


def test_loader_workers_use_one_thread_and_the_main_process_keeps_its_own():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a forked worker would inherit 2 without its own setting
    try:
        loader = make_loader(_Threads(), batch_size=2, train=False, num_workers=1)
        assert [int(t) for b in loader for t in b] == [1, 1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_schedule_shape():
    warm, total, lr, min_lr = 3, 14, 1e-3, 1e-5
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = cosine_with_warmup(opt, warm, total, min_lr)
    lrs = []
    for _ in range(total + 2):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([lr / 3, 2 * lr / 3, lr])  # linear warm-up, first step already moves
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # then monotone decay
    assert lrs[total - 1] == pytest.approx(min_lr) and lrs[-1] == pytest.approx(min_lr)
    mid = warm + (total - 1 - warm) // 2  # span 10: exactly half-way
    assert lr_factor(mid, warm, total, min_lr / lr) == pytest.approx((1 + min_lr / lr) / 2)
    assert math.isclose(lr_factor(0, 0, 1, 0.1), 1.0)


def test_fit_runs_and_checkpoints_on_a_single_cpu_process(tmp_path):
    from silverclip.config import load_config
    from silverclip.train.config import PretrainConfig
    from silverclip.train.stages import _pretrain

    paths = make_all(tmp_path)
    cfg = load_config(
        PretrainConfig,
        None,
        [
            f"out={tmp_path / 'run'}",
            f"cache={paths['cache']}",
            f"labels={paths['labels']}",
            f"val_labels={paths['val_labels']}",
            "model=resnet10_3d",
            f"model_kwargs={TINY_IMAGE}",
            "train.epochs=2",
            "train.grad_accum=2",
            "train.log_every=1",
            "train.warmup_steps=1",
            "train.progress=false",
        ],
    )
    res = _pretrain(cfg)
    steps_per_epoch = N_TRAIN // (2 * 2)
    assert res.completed and res.step == res.total_steps == 2 * steps_per_epoch
    records = [r for r in _records(tmp_path / "run") if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, res.step + 1))
    assert all(0 <= r["data_wait"] <= 1 and r["volumes_per_s"] > 0 and math.isfinite(r["loss"]) for r in records)
    assert records[-1]["lr"] == pytest.approx(cfg.train.min_lr)
    val = [r for r in _records(tmp_path / "run") if r["kind"] == "val"]
    assert len(val) == 2 and all("mean_auc" in r for r in val)
    assert (tmp_path / "run" / "metrics.csv").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    assert (res.best / "model.safetensors").is_file() and (res.last / "model.safetensors").is_file()
    # a finished run is not redone
    again = _pretrain(cfg)
    assert again.step == res.step and again.best == res.best


def _records(run):
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["pretrain_demo", "clip_demo"])
def test_demo_configs_load(name):
    from pathlib import Path

    from silverclip.config import load_config
    from silverclip.train.config import ClipConfig, PretrainConfig

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    required = ["out=r", "cache=c", "labels=l"] if name.startswith("pretrain") else ["out=r", "cache=c", "manifest=m"]
    cfg = load_config(PretrainConfig if name.startswith("pretrain") else ClipConfig, path, required)
    assert cfg.train.lr == (1e-4 if name.startswith("pretrain") else 1e-5)
