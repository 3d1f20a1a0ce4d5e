"""The real training loop under ``torchrun --nproc_per_node 2`` (gloo, CPU): what DDP must guarantee.

- the run finishes on both ranks;
- only rank 0 writes into the run folder (an audit hook on every rank records file writes there);
- both ranks end with identical parameters, and rank 0's are the saved ``last/`` weights;
- every rank validates its own share of the validation set (gathered: the one-process numbers), and each
  rank seeds its own RNG (dropout);
- 2 processes x batch 2 take the same steps as 1 process x batch 4: the same logged loss and gradient
  norm, the same weights after 2 steps. DDP averages gradients, which equals the big batch's gradient
  only when the per-rank losses are means over equally many entries (``uncertain_policy=positive``:
  every label entry has weight 1) and the forward pass is batch-independent. BatchNorm in training
  mode normalises with per-rank batch statistics (by design; the default ``norm: batch`` is what is
  tested here), so both runs train with BatchNorm frozen in eval mode (running statistics), patched
  into ``SupervisedTask.loss`` identically.

In ordinary training BatchNorm *buffers* (running statistics) differ between ranks: DDP broadcasts
rank 0's buffers at each forward, then every rank updates them with its own batch; rank 0's are saved.
Hence the rank comparison covers parameters.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from silverclip.cli import main
from train_fixtures import TINY_IMAGE, make_all

pytestmark = pytest.mark.integration


def frozen_batchnorm(loss):
    """``SupervisedTask.loss`` with the model in eval mode: BatchNorm uses its running statistics."""

    def wrapped(self, model, batch):
        model.eval()
        return loss(self, model, batch)

    return wrapped


def _digest(tensors: dict, names: list) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


WORKER = """
import hashlib, json, os, sys
from pathlib import Path

out, run, argv = Path(sys.argv[1]), os.path.abspath(sys.argv[2]), sys.argv[3:]
rank = int(os.environ["RANK"])
writes = []
WRITE_EVENTS = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate")


def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if isinstance(mode, str):
            writing = any(c in mode for c in "wax+")
        else:
            writing = isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    elif event in WRITE_EVENTS:
        path, writing = args[1] if event == "os.rename" else args[0], True
    else:
        return
    if writing and isinstance(path, (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(run):
            writes.append([event, path])


sys.addaudithook(hook)

from silverclip import distributed
from silverclip.cli import main
from silverclip.eval import embeddings
from silverclip.train import tasks

validated = []
encode = embeddings.encode_batches


def counting(*args, **kwargs):
    for part in encode(*args, **kwargs):
        validated.extend(part["ids"])
        yield part


embeddings.encode_batches = counting

tasks.SupervisedTask.loss = frozen_batchnorm(tasks.SupervisedTask.loss)
models = []
build = tasks.SupervisedTask.build_model
tasks.SupervisedTask.build_model = lambda self: models.append(build(self)) or models[-1]
rc = main(argv)
params = dict(models[0].named_parameters())
names = sorted(params)
result = {"rank": rank, "rc": rc, "names": names, "params": _digest(params, names), "writes": writes}
import torch

result.update(validated=validated, seed=torch.initial_seed())
(out / f"rank{rank}.json").write_text(json.dumps(result))
distributed.cleanup()
"""


def _argv(p, run, batch: int) -> list[str]:
    return [
        "pretrain",
        "--cache",
        str(p["cache"]),
        "--labels",
        str(p["labels"]),
        "--val-labels",
        str(p["val_labels"]),
        "--out",
        str(run),
        "--uncertain-policy",
        "positive",
        "model=resnet10_3d",
        f"model_kwargs={TINY_IMAGE}",
        f"data.batch_size={batch}",
        "train.epochs=1",  # 8 training volumes: 2 steps of 4 volumes
        "train.lr=1e-3",
        "train.grad_clip=1.0e9",  # no clipping, but the gradient norm gets logged
        "train.log_every=1",
        "train.progress=false",
    ]


def _records(run, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def _train_records(run) -> list[dict]:
    return _records(run, "train")


def test_two_process_ddp_matches_one_process_big_batch(tmp_path, monkeypatch):
    from silverclip.train.tasks import SupervisedTask

    p = make_all(tmp_path)
    script = tmp_path / "worker.py"
    helpers = "\n\n".join(inspect.getsource(f) for f in (frozen_batchnorm, _digest))
    script.write_text(f"import hashlib\n\n\n{helpers}{WORKER}")
    ddp_run, out = tmp_path / "ddp", tmp_path / "ranks"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(script), str(out), str(ddp_run), *_argv(p, ddp_run, batch=2)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rc"] for r in ranks] == [0, 0]

    # every rank validated its own share (the 4 validation volumes once in all), none waited for rank 0 alone;
    # and each rank drew from its own seed (dropout differs between ranks)
    shares = [r["validated"] for r in ranks]
    assert all(shares) and not set(shares[0]) & set(shares[1]) and len(shares[0]) + len(shares[1]) == 4
    assert [r["seed"] for r in ranks] == [0, 1]

    # only rank 0 wrote into the run folder (and it did write: the audit hook works)
    assert ranks[1]["writes"] == []
    written = {os.path.relpath(w[1], ddp_run) for w in ranks[0]["writes"]}
    assert {"metrics.jsonl", "config.yaml"} <= written and any(w.startswith(".last.tmp") for w in written)

    # identical parameters on both ranks, and they are what rank 0 saved
    assert ranks[0]["params"] == ranks[1]["params"]
    saved = load_file(str(ddp_run / "last" / "model.safetensors"))
    assert _digest(saved, ranks[0]["names"]) == ranks[0]["params"]
    assert json.loads((ddp_run / "last" / "checkpoint.json").read_text())["step"] == 2

    # the same 2 steps as one process with the two per-rank batches together
    one_run = tmp_path / "single"
    monkeypatch.setattr(SupervisedTask, "loss", frozen_batchnorm(SupervisedTask.loss))
    assert main(_argv(p, one_run, batch=4)) == 0
    ddp_rec, one_rec = _train_records(ddp_run), _train_records(one_run)
    assert [r["step"] for r in ddp_rec] == [r["step"] for r in one_rec] == [1, 2]
    for a, b in zip(ddp_rec, one_rec):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)  # mean over ranks = big-batch mean
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)  # averaged, not summed, gradients
    # the gathered validation scores the whole set: the one-process numbers (weights agree to ~1e-5)
    ddp_val, one_val = (_records(run, "val") for run in (ddp_run, one_run))
    assert len(ddp_val) == len(one_val) == 1
    assert ddp_val[0]["mean_auc"] == pytest.approx(one_val[0]["mean_auc"], abs=1e-6)
    assert ddp_val[0]["loss"] == pytest.approx(one_val[0]["loss"], rel=1e-4)
    single = load_file(str(one_run / "last" / "model.safetensors"))
    init = _initial_weights()
    moved = np.sqrt(sum(float(((single[k] - init[k]) ** 2).sum()) for k in ranks[0]["names"]))
    apart = np.sqrt(sum(float(((single[k] - saved[k]) ** 2).sum()) for k in ranks[0]["names"]))
    assert moved > 0 and apart < 1e-4 * moved  # measured: ~1e-5 (float summation order)


def _initial_weights() -> dict:
    """The weights both runs start from: ``fit`` seeds with train.seed (0), then builds the task's model."""
    from silverclip.data.presets import load_preset
    from silverclip.train.loop import seed_everything
    from silverclip.train.tasks import SupervisedTask

    seed_everything(0)
    task = SupervisedTask("resnet10_3d", load_preset("demo"), TINY_IMAGE)
    return {k: v.detach().clone() for k, v in task.build_model().state_dict().items()}
