"""Resume that cannot silently go wrong: the layout is recorded and checked, the swap survives a kill, RNG per device.

- ``resume_position`` continues on samples seen when ``world_size x batch_size x grad_accum`` is unchanged
  and refuses another product with a message naming both layouts;
- the epoch's order does not depend on how a step is split over ranks (the samples a step consumes are the
  same positions of one permutation);
- a process SIGKILLed between the two renames of the checkpoint swap leaves a checkpoint that the next run
  finds: it resumes at the step it was saving (not at step 0), ends with the uninterrupted run's weights and
  metrics log, and no leftover folders;
- CUDA RNG state: each process saves and restores its own current device's generator (mocked on CPU).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from silverclip.train.data import EpochSampler
from silverclip.train.loop import resume_position


def test_resume_position_keeps_the_schedule_or_refuses():
    saved = {"step": 3, "epoch": 1, "samples_in_epoch": 12, "samples_seen": 36, "world_size": 2, "batch_size": 2}
    saved["grad_accum"] = 1
    same = resume_position(saved, {"world_size": 2, "batch_size": 2, "grad_accum": 1}, 40, Path("last"))
    assert same["samples_in_epoch"] == 12 and same["samples_seen"] == 36 and same["world_size"] == 2
    regrouped = resume_position(saved, {"world_size": 1, "batch_size": 2, "grad_accum": 2}, 40, Path("last"))
    assert regrouped["step"] == 3 and regrouped["samples_in_epoch"] == 12  # 4 volumes per step either way
    with pytest.raises(ValueError, match=r"2 process\(es\) x batch 2 x grad_accum 1 = 4 volumes per step.*= 8"):
        resume_position(saved, {"world_size": 4, "batch_size": 2, "grad_accum": 1}, 40, Path("last"))
    old = {"step": 2, "epoch": 0, "batch_in_epoch": 2, "best_metric": None, "val": {}}  # before the fields existed
    upgraded = resume_position(old, {"world_size": 1, "batch_size": 4, "grad_accum": 1}, 40, Path("last"))
    assert upgraded["samples_in_epoch"] == 8 and upgraded["samples_seen"] == 8 and "batch_in_epoch" not in upgraded


def test_a_step_consumes_the_same_samples_under_any_split():
    data = list(range(23))

    def steps(world: int, batch: int, accum: int, skip: int) -> list[set[int]]:
        samplers = [EpochSampler(data, True, 7, world, r, drop_last=True) for r in range(world)]
        for s in samplers:
            s.set_epoch(2, skip=skip)
        per_rank = [[i for _, i in s] for s in samplers]
        per_step = batch * accum
        n = min(len(p) for p in per_rank) // per_step
        return [{i for p in per_rank for i in p[k * per_step : (k + 1) * per_step]} for k in range(n)]

    ref = steps(1, 4, 1, 0)
    assert len(ref) == 5 and steps(2, 2, 1, 0) == ref and steps(2, 1, 2, 0) == ref and steps(4, 1, 1, 0) == ref
    assert steps(2, 2, 1, 8) == ref[2:] and steps(1, 2, 2, 8) == ref[2:]  # resumed after 2 steps, either split
    evaluation = [EpochSampler(data, False, 0, 3, r) for r in range(3)]
    assert sorted(i for s in evaluation for _, i in s) == data  # evaluation shards: every item once, no padding


KILLER = """
import json, os, signal, sys
from pathlib import Path

from silverclip import checkpoint
from silverclip.config import load_config
from silverclip.train.config import PretrainConfig
from silverclip.train.stages import _pretrain

kill_step = int(sys.argv[1])
real_replace = os.replace


def replace(src, dst):
    src, dst = Path(src), Path(dst)
    if dst.name == "last" and src.name.startswith(".last.tmp-"):
        if json.loads((src / "checkpoint.json").read_text())["step"] == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)  # between the two renames: last/ has just been moved aside
    return real_replace(src, dst)


checkpoint.os.replace = replace
_pretrain(load_config(PretrainConfig, None, sys.argv[2:]))
"""


def _rows(run: Path) -> list[dict]:
    drop = {"volumes_per_s", "data_wait", "time_s"}
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def test_a_kill_between_the_two_renames_of_the_swap_loses_nothing(tmp_path, caplog):
    from safetensors.torch import load_file

    from silverclip.config import load_config
    from silverclip.train.config import PretrainConfig
    from silverclip.train.stages import _pretrain
    from train_fixtures import TINY_IMAGE, make_all

    p = make_all(tmp_path)
    common = [
        f"cache={p['cache']}",
        f"labels={p['labels']}",
        f"val_labels={p['val_labels']}",
        "model=resnet10_3d",
        f"model_kwargs={TINY_IMAGE}",
        "train.epochs=2",  # 8 volumes, batch 2: 4 steps per epoch
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.progress=false",
    ]
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(script), "6", *common, f"out={cut}"], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILLed inside the swap of step 6
    assert not (cut / "last").exists()  # the window the swap leaves: no last/, the old and the new beside it
    assert {q.name.split("-")[0] for q in cut.glob(".last.*")} == {".last.old", ".last.tmp"}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed process (OMP_NUM_THREADS=1): the same float summation order
    try:
        with caplog.at_level(logging.INFO, logger="silverclip.train.loop"):
            resumed = _pretrain(load_config(PretrainConfig, None, [*common, f"out={cut}"]))
        full = _pretrain(load_config(PretrainConfig, None, [*common, f"out={tmp_path / 'full'}"]))
    finally:
        torch.set_num_threads(threads)
    assert "at step 6" in caplog.text and resumed.step == 8  # the new checkpoint was found, not step 0
    assert not list(cut.glob(".last.*"))  # leftovers removed
    full_rows, cut_rows = _rows(tmp_path / "full"), _rows(cut)  # the metrics log is whole (not truncated)
    assert [(r["step"], r["kind"]) for r in cut_rows] == [(r["step"], r["kind"]) for r in full_rows]
    for x, y in zip(full_rows, cut_rows):
        assert x.keys() == y.keys()
        for k, v in x.items():
            assert y[k] == (pytest.approx(v, rel=1e-4, nan_ok=True) if isinstance(v, float) else v), k
    a, b = load_file(str(full.last / "model.safetensors")), load_file(str(resumed.last / "model.safetensors"))
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6) for k in a)


def test_recover_checkpoint_prefers_the_complete_newest(tmp_path):
    from silverclip.checkpoint import recover_checkpoint

    def fake(name: str, step: int | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        if step is not None:
            (d / "checkpoint.json").write_text(json.dumps({"format": 1, "model_config": {}, "step": step}))
        return d

    fake(".last.old-aaaa", 4)
    fake(".last.tmp-bbbb", None)  # died while writing: incomplete
    assert recover_checkpoint(tmp_path / "last") == tmp_path / "last"
    assert json.loads((tmp_path / "last" / "checkpoint.json").read_text())["step"] == 4
    assert sorted(q.name for q in tmp_path.iterdir()) == ["last"]
    assert recover_checkpoint(tmp_path / "last") is None  # nothing to repair


def test_cuda_rng_state_is_this_process_device_only(monkeypatch):
    from silverclip import checkpoint as ckpt

    states = {0: torch.tensor([0], dtype=torch.uint8), 3: torch.tensor([3], dtype=torch.uint8)}
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # e.g. cuda:3 of 8 visible GPUs
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[device])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("must not read other devices"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.update({device: s}))
    state = ckpt.capture_rng_state()
    assert torch.equal(state["cuda"], states[3])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # one visible GPU per process on resume
    ckpt.restore_rng_state(state)
    assert list(restored) == [0] and torch.equal(restored[0], states[3])
    restored.clear()
    ckpt.restore_rng_state({**state, "cuda": [states[0], states[3]]})  # an older checkpoint: all devices
    assert torch.equal(restored[0], states[0])


def test_resume_with_another_split_of_the_step_continues_or_refuses(tmp_path, caplog):
    """Same volumes per step (batch 4 -> batch 2 x grad_accum 2): continues at the saved step with the same
    schedule; another number of volumes per step: refused, naming both layouts (a torchrun world-size change
    goes through the same check, tests/test_resume_layout.py::test_resume_position_keeps_the_schedule_or_refuses)."""
    from silverclip.config import load_config
    from silverclip.train.config import PretrainConfig
    from silverclip.train.stages import _pretrain
    from train_fixtures import TINY_IMAGE, make_all

    p = make_all(tmp_path)
    run = tmp_path / "run"
    common = [
        f"out={run}",
        f"cache={p['cache']}",
        f"labels={p['labels']}",
        "model=resnet10_3d",
        f"model_kwargs={TINY_IMAGE}",
        "train.epochs=2",  # 8 volumes, 4 per step: 2 steps per epoch, 4 in all
        "train.progress=false",
    ]
    first = _pretrain(load_config(PretrainConfig, None, [*common, "data.batch_size=4", "train.stop_at_step=1"]))
    assert first.step == 1 and first.total_steps == 4
    meta = json.loads((run / "last" / "checkpoint.json").read_text())["extra"]
    assert (meta["world_size"], meta["batch_size"], meta["grad_accum"], meta["samples_seen"]) == (1, 4, 1, 4)
    with pytest.raises(ValueError, match=r"1 process\(es\) x batch 4 x grad_accum 1 = 4 volumes per step.*= 2"):
        _pretrain(load_config(PretrainConfig, None, [*common, "data.batch_size=2"]))
    with caplog.at_level(logging.INFO, logger="silverclip.train.loop"):
        done = _pretrain(load_config(PretrainConfig, None, [*common, "data.batch_size=2", "train.grad_accum=2"]))
    assert "at step 1 (epoch 0, 4 volumes into it, 4 seen)" in caplog.text  # continued, not restarted
    assert done.step == done.total_steps == 4 and done.completed
    meta = json.loads((run / "last" / "checkpoint.json").read_text())["extra"]
    assert (meta["batch_size"], meta["grad_accum"], meta["samples_seen"]) == (2, 2, 16)
