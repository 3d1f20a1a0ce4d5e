"""Retrieval metrics, computed in chunks so that an N x N similarity matrix never sits in memory.

**Image-to-image MAP@K** (CT-CLIP's ``scripts/image_to_image.py``): every volume queries; the
gallery is the volumes with at least one positive label; similarity is cosine; each of the top-K
hits scores the Jaccard overlap of its 18 binary labels with the query's
(``|q & h| / |q | h|``); scores are averaged over the hits, then over the queries. CT-CLIP does
not exclude the query itself from the gallery (so a query with a positive label finds itself
first); ``exclude="self"`` removes it, ``exclude="scan"`` removes every reconstruction of the
query's scan (near-duplicates). Labels other than 1 (0, uncertain -1, NaN) count as absent.
CT-CLIP's script also never resets its list of per-query scores between K values, so the numbers it
prints for K > 1 are running means over all smaller K; :func:`map_at_k` returns that quantity as
``ctclip_script_value`` next to the correct one.

**Recall@K** (report-to-image and image-to-report): a query hits when its target is among the K
most similar gallery items. Queries and gallery items are matched by explicit ids (volume ids; a
report's id is the id of the volume it describes). Several reconstructions of one scan share one
report, so two treatments are offered:

- ``per-volume`` (strict): the only target is the item with exactly the query's id;
- ``per-scan``: any item of the query's scan (all its reconstructions / copies of its report) is a target.

Ties are broken towards the lower gallery index, in both the fast and the naive implementation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

Exclude = Literal["none", "self", "scan"]
RecallMode = Literal["per-volume", "per-scan"]
MAP_KS = (1, 5, 10, 50)
RECALL_KS = (5, 10, 50, 100)
_RECON = re.compile(r"^(.+_[A-Za-z]+)_\d+$")


def scan_id(volume_id: str) -> str:
    """``train_1_a_2`` -> ``train_1_a``; ids without a reconstruction suffix are their own scan."""
    m = _RECON.match(str(volume_id))
    return m.group(1) if m else str(volume_id)


def l2_normalize(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x).float()
    return torch.nn.functional.normalize(t, dim=-1)


def _codes(values: Sequence[str], vocab: dict[str, int]) -> torch.Tensor:
    return torch.tensor([vocab.setdefault(v, len(vocab)) for v in values], dtype=torch.long)


def stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row, ordered by (score descending, index ascending): deterministic under ties.

    ``torch.topk`` does not promise which of several equal scores it returns; rows whose k-th value
    is tied with unselected items (rare with real embeddings) are redone with a stable full sort.
    """
    k = min(k, scores.shape[1])
    vals, idx = torch.topk(scores, k, dim=1)
    # Inside the selection, order equal scores by index.
    order = torch.argsort(idx, dim=1)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    kth = vals[:, -1:]
    ambiguous = ((scores > kth).sum(1) + (scores == kth).sum(1)) > k
    for r in torch.nonzero(ambiguous).flatten().tolist():
        s, i = torch.sort(scores[r], descending=True, stable=True)
        vals[r], idx[r] = s[:k], i[:k]
    return vals, idx


def map_at_k(
    embeddings: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    ids: Sequence[str] | None = None,
    ks: Sequence[int] = MAP_KS,
    exclude: Exclude = "none",
    chunk_size: int = 512,
    return_topk: int = 0,
) -> dict:
    """Image-to-image MAP@K as CT-CLIP defines it (module docstring). ``embeddings`` (N, E), ``labels`` (N, L).

    Returns ``{"map": {k: value}, "ctclip_script_value": {k: value}, "n_queries", "n_gallery",
    "exclude"}`` and, when ``return_topk > 0``, ``"topk"``: (N, return_topk) gallery row indices
    (into the full N) of each query's best hits, for example listings.
    """
    emb = l2_normalize(embeddings)
    lab = torch.as_tensor(np.asarray(labels, dtype=np.float32) == 1)
    n = emb.shape[0]
    if lab.shape[0] != n:
        raise ValueError(f"{n} embeddings but {lab.shape[0]} label rows")
    if exclude != "none" and ids is None:
        raise ValueError("exclude='self'/'scan' needs ids")
    gallery = torch.nonzero(lab.any(1)).flatten()
    if gallery.numel() == 0:
        raise ValueError("no volume has a positive label: the MAP@K gallery is empty")
    g_emb, g_lab = emb[gallery], lab[gallery].float()
    if exclude != "none":
        keys = list(ids) if exclude == "self" else [scan_id(i) for i in ids]
        codes = _codes(keys, {})
        g_codes = codes[gallery]
    kmax = max(max(ks), return_topk)
    sums = {k: 0.0 for k in ks}
    top_rows = []
    for start in range(0, n, chunk_size):
        q = slice(start, min(start + chunk_size, n))
        sim = emb[q] @ g_emb.T  # (C, G)
        if exclude != "none":
            sim = sim.masked_fill(codes[q, None] == g_codes[None, :], float("-inf"))
        vals, idx = stable_topk(sim, kmax)
        valid = torch.isfinite(vals)
        hit_lab = g_lab[idx]  # (C, kmax, L)
        q_lab = lab[q].float()[:, None, :]
        inter = (hit_lab * q_lab).sum(-1)
        union = ((hit_lab + q_lab) > 0).float().sum(-1)
        jac = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        for k in ks:
            v = valid[:, :k].float()
            per_query = (jac[:, :k] * v).sum(1) / v.sum(1).clamp(min=1)
            sums[k] += float(per_query.sum())
        if return_topk:
            top_rows.append(torch.where(valid[:, :return_topk], gallery[idx[:, :return_topk]], -1))
    maps = {int(k): sums[k] / n for k in ks}
    ks_sorted = sorted(maps)
    cumulative = {k: float(np.mean([maps[j] for j in ks_sorted if j <= k])) for k in ks_sorted}
    out = {"map": maps, "ctclip_script_value": cumulative, "n_queries": n, "n_gallery": int(gallery.numel())}
    out["exclude"] = exclude
    if return_topk:
        out["topk"] = torch.cat(top_rows).numpy()
    return out


def recall_at_k(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    query_ids: Sequence[str],
    gallery_ids: Sequence[str],
    ks: Sequence[int] = RECALL_KS,
    mode: RecallMode = "per-volume",
    chunk_size: int = 512,
    return_topk: int = 0,
) -> dict:
    """Recall@K of ``queries`` (Q, E) against ``gallery`` (G, E), cosine similarity, targets by id.

    A query whose target is absent from the gallery raises ValueError (the ids must align).
    Returns ``{"recall": {k: value}, "n_queries", "n_gallery", "mode", "ranks"}`` where ``ranks``
    (Q,) is the 0-based rank of each query's best-ranked target; optionally ``"topk"`` indices.
    """
    if mode not in ("per-volume", "per-scan"):
        raise ValueError(f"unknown recall mode {mode!r}; use per-volume or per-scan")
    q_emb, g_emb = l2_normalize(queries), l2_normalize(gallery)
    if len(query_ids) != q_emb.shape[0] or len(gallery_ids) != g_emb.shape[0]:
        raise ValueError("ids and embeddings differ in length")
    key = (lambda x: str(x)) if mode == "per-volume" else scan_id
    vocab: dict[str, int] = {}
    g_codes = _codes([key(i) for i in gallery_ids], vocab)
    missing = [i for i in query_ids if key(i) not in vocab]
    if missing:
        raise ValueError(f"{len(missing)} query id(s) have no target in the gallery, e.g. {missing[:3]}")
    q_codes = _codes([key(i) for i in query_ids], vocab)
    ranks = []
    top_rows = []
    g_index = torch.arange(g_emb.shape[0])
    for start in range(0, q_emb.shape[0], chunk_size):
        q = slice(start, min(start + chunk_size, q_emb.shape[0]))
        sim = q_emb[q] @ g_emb.T
        target = q_codes[q, None] == g_codes[None, :]
        best = sim.masked_fill(~target, float("-inf")).max(1, keepdim=True).values
        first = torch.where(target & (sim == best), g_index, g_emb.shape[0]).min(1, keepdim=True).values
        rank = (sim > best).sum(1) + ((sim == best) & (g_index[None, :] < first)).sum(1)
        ranks.append(rank)
        if return_topk:
            top_rows.append(stable_topk(sim, return_topk)[1])
    r = torch.cat(ranks).numpy()
    out = {
        "recall": {int(k): float((r < k).mean()) for k in ks},
        "n_queries": int(q_emb.shape[0]),
        "n_gallery": int(g_emb.shape[0]),
        "mode": mode,
        "ranks": r,
    }
    if return_topk:
        out["topk"] = torch.cat(top_rows).numpy()
    return out
