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
from pathlib import Path
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


def evaluate_retrieval(
    embeddings,
    labels,
    out_dir: str | Path | None = None,
    *,
    protocol: str = "auto",
    exclude: Exclude = "none",
    recall_mode: RecallMode = "per-volume",
    map_ks: Sequence[int] = MAP_KS,
    recall_ks: Sequence[int] = RECALL_KS,
    n_examples: int = 3,
    chunk_size: int = 512,
    texts: dict[str, str] | None = None,
) -> dict:
    """Image-to-image MAP@K, report-to-image and image-to-report Recall@K from stored embeddings.

    ``labels`` (CT-RATE or RAD-ChestCT CSV, or a frame) give the MAP@K relevance; only volumes with a
    label row take part in MAP@K. Recall@K uses the stored report embeddings (ids = volume ids) against
    the image embeddings; it is skipped when the folder holds no report embeddings. ``texts`` (id ->
    report) is only used to show example queries. Writes ``retrieval.json``/``.md`` when ``out_dir`` is set.
    """
    from silverclip.eval.embeddings import Embeddings, load_embeddings
    from silverclip.eval.radchestct import read_eval_labels

    emb = embeddings if isinstance(embeddings, Embeddings) else load_embeddings(embeddings)
    label_df, protocol = read_eval_labels(labels, protocol)
    pos = {i: r for r, i in enumerate(emb.image_ids)}
    ids = [i for i in emb.image_ids if i in label_df.index]
    if not ids:
        raise ValueError("no embedded volume has a label: check that the ids of embeddings and labels match")
    names = [c for c in label_df.columns]
    lab = label_df.loc[ids, names].to_numpy(dtype=float)
    img = emb.image[[pos[i] for i in ids]]
    n_show = min(5, max(map_ks))
    i2i = map_at_k(img, lab, ids=ids, ks=map_ks, exclude=exclude, chunk_size=chunk_size, return_topk=n_show)
    results: dict = {"task": "retrieval", "protocol": protocol, "image_to_image": i2i, "examples": {}}
    rng = np.random.default_rng(0)
    ex_rows = sorted(rng.choice(len(ids), size=min(n_examples, len(ids)), replace=False).tolist())
    results["examples"]["image_to_image"] = [
        {
            "query": ids[r],
            "labels": [n for n, v in zip(names, lab[r]) if v == 1],
            "hits": [{"id": ids[h], "jaccard": _jaccard(lab[r], lab[h])} for h in i2i["topk"][r].tolist() if h >= 0],
        }
        for r in ex_rows
    ]
    if emb.text is not None and len(emb.text_ids):
        t_ids = [t for t in emb.text_ids if t in pos]
        t_pos = {t: r for r, t in enumerate(emb.text_ids)}
        text = emb.text[[t_pos[t] for t in t_ids]]
        full = emb.image
        r2i = recall_at_k(text, full, t_ids, emb.image_ids, recall_ks, recall_mode, chunk_size, return_topk=n_show)
        i2r = recall_at_k(full, text, emb.image_ids, t_ids, recall_ks, recall_mode, chunk_size)
        key = (lambda x: x) if recall_mode == "per-volume" else scan_id
        results["examples"]["report_to_image"] = [
            {
                "query": t_ids[r],
                "text": (texts or {}).get(t_ids[r], ""),
                "hits": [
                    {"id": emb.image_ids[h], "target": key(emb.image_ids[h]) == key(t_ids[r])}
                    for h in r2i["topk"][r].tolist()
                ],
            }
            for r in sorted(rng.choice(len(t_ids), size=min(n_examples, len(t_ids)), replace=False).tolist())
        ]
        for res in (r2i, i2r):
            res.pop("topk", None)
            res.pop("ranks", None)
        results["report_to_image"], results["image_to_report"] = r2i, i2r
    i2i.pop("topk", None)
    if out_dir is not None:
        from silverclip.eval.report import retrieval_markdown, write_report

        write_report(out_dir, "retrieval", results, retrieval_markdown(results))
    return results


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a == 1, b == 1
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 0.0
