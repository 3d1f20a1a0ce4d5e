"""ClipLoss against a naive reference and across 2 torchrun processes (gloo); masked BCE against naive."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from silverclip.losses import ClipLoss, masked_bce_with_logits


def _embeddings(n: int, dim: int, seed: int = 0, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    return (F.normalize(img, dim=-1), F.normalize(txt, dim=-1)) if normalize else (img, txt)


def naive_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    """Symmetric InfoNCE written out with Python loops in float64."""
    img, txt = img.double().tolist(), txt.double().tolist()
    n = len(img)
    sim = [[scale * sum(a * b for a, b in zip(img[i], txt[j], strict=True)) for j in range(n)] for i in range(n)]
    i2t = sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return (i2t + t2i) / 2


@pytest.mark.parametrize(("normalize", "scale"), [(True, 1 / 0.07), (False, 1.0)])
def test_clip_loss_matches_naive(normalize: bool, scale: float) -> None:
    img, txt = _embeddings(6, 5, normalize=normalize)
    for gather in (True, False):  # a single process: gathering is the identity
        loss = ClipLoss(gather=gather)(img, txt, torch.tensor(scale))
        assert abs(float(loss) - naive_clip_loss(img, txt, scale)) < 1e-5


def test_clip_loss_perfect_alignment_is_low_and_symmetric() -> None:
    img, _ = _embeddings(4, 8)
    assert float(ClipLoss()(img, img, 100.0)) < 1e-3
    _, txt = _embeddings(4, 8)
    torch.testing.assert_close(ClipLoss()(img, txt, 10.0), ClipLoss()(txt, img, 10.0))


def test_masked_bce_matches_naive() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 18, generator=g, requires_grad=True)
    targets = (torch.rand(5, 18, generator=g) > 0.5).float()
    weights = (torch.rand(5, 18, generator=g) > 0.3).float()
    loss = masked_bce_with_logits(logits, targets, weights)
    keep = weights.bool()
    naive = [
        -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))
        for x, t in zip(logits[keep].tolist(), targets[keep].tolist(), strict=True)
    ]
    assert abs(float(loss.detach()) - sum(naive) / len(naive)) < 1e-5
    loss.backward()
    assert (logits.grad[~keep] == 0).all() and (logits.grad[keep] != 0).all()
    # Unweighted = plain mean BCE; fully masked = 0 with a (zero) gradient.
    torch.testing.assert_close(
        masked_bce_with_logits(logits, targets), F.binary_cross_entropy_with_logits(logits, targets)
    )
    empty = masked_bce_with_logits(logits, targets, torch.zeros_like(weights))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


# ------------------------------------------------------------------------------- 2-process torchrun
WORKER = textwrap.dedent(
    """
    import json, sys
    import torch, torch.nn as nn, torch.nn.functional as F
    from silverclip import distributed as sdist
    from silverclip.losses import ClipLoss

    info = sdist.init_distributed(device="cpu")
    rank, world = info.rank, info.world_size
    B, D = 3, 5
    g = torch.Generator().manual_seed(0)
    img_all = F.normalize(torch.randn(world * B, D, generator=g), dim=-1)
    txt_all = F.normalize(torch.randn(world * B, D, generator=g), dim=-1)
    rows = slice(rank * B, (rank + 1) * B)

    # 1) the loss on embeddings: local rows vs gathered columns
    img = img_all[rows].clone().requires_grad_(True)
    txt = txt_all[rows].clone().requires_grad_(True)
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    loss = ClipLoss()(img, txt, scale)
    loss.backward()

    # 2) DDP on a linear tower: averaged parameter gradients equal the full-batch gradient
    torch.manual_seed(0)
    tower = nn.Linear(D, 4)
    ddp = nn.parallel.DistributedDataParallel(tower)
    x_all = torch.randn(world * B, D, generator=g)
    y_all = torch.randn(world * B, D, generator=g)
    emb = F.normalize(ddp(x_all[rows]), dim=-1)
    emb_t = F.normalize(tower(y_all[rows]), dim=-1)
    ClipLoss()(emb, emb_t, 10.0).backward()

    out = {
        "rank": rank,
        "world": world,
        "loss": float(loss),
        "mean_loss": float(sdist.all_reduce_mean(loss)),
        "img_grad": img.grad.tolist(),
        "txt_grad": txt.grad.tolist(),
        "scale_grad_mean": float(sdist.all_reduce_mean(scale.grad)),
        "tower_grad": tower.weight.grad.tolist(),
        "varlen": sdist.all_gather_varlen(torch.arange(rank + 1)).tolist(),
        "broadcast": sdist.broadcast_object({"from": rank}),
    }
    sdist.barrier()
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
        json.dump(out, f)
    sdist.cleanup()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_clip_loss_gathers_across_two_torchrun_processes(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(_free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # The same data in one process, on the concatenated batch.
    B, D, W = 3, 5, 2
    g = torch.Generator().manual_seed(0)
    img_all = F.normalize(torch.randn(W * B, D, generator=g), dim=-1).requires_grad_(True)
    txt_all = F.normalize(torch.randn(W * B, D, generator=g), dim=-1).requires_grad_(True)
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    ref = ClipLoss()(img_all, txt_all, scale)
    ref.backward()
    torch.manual_seed(0)
    tower = torch.nn.Linear(D, 4)
    x_all, y_all = torch.randn(W * B, D, generator=g), torch.randn(W * B, D, generator=g)
    ClipLoss()(F.normalize(tower(x_all), dim=-1), F.normalize(tower(y_all), dim=-1), 10.0).backward()

    for r, res in enumerate(results):
        assert res["world"] == 2
        # Every rank scored against all 6 columns: the mean of the rank losses is the full-batch loss.
        assert abs(res["mean_loss"] - float(ref)) < 1e-5
        # Rank r's embedding gradients: those of the sum of all rank losses, i.e. W x the full-batch ones.
        rows = slice(r * B, (r + 1) * B)
        torch.testing.assert_close(torch.tensor(res["img_grad"]), W * img_all.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(res["txt_grad"]), W * txt_all.grad[rows], rtol=1e-4, atol=1e-6)
        assert abs(res["scale_grad_mean"] - float(scale.grad)) < 1e-5
        # After DDP's gradient averaging the parameters see exactly the full-batch gradient.
        torch.testing.assert_close(torch.tensor(res["tower_grad"]), tower.weight.grad, rtol=1e-4, atol=1e-6)
        assert res["varlen"] == [0, 0, 1]
        assert res["broadcast"] == {"from": 0}
    # Without gathering, the rank losses would not average to the full-batch loss.
    assert abs(results[0]["loss"] - results[1]["loss"]) > 1e-6
