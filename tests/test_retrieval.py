"""Chunked MAP@K and Recall@K against naive full-matrix loops (ties, empty label rows, exclusion)."""

from __future__ import annotations

import numpy as np
import pytest

from silverclip.eval.retrieval import map_at_k, recall_at_k, scan_id, stable_topk


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a.astype(np.float32) @ b.astype(np.float32).T).astype(np.float32)


def _order(row):
    # score descending, index ascending (same tie rule as the library)
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def naive_map(emb, labels, ids, ks, exclude):
    lab = (labels == 1).astype(int)
    gallery = [j for j in range(len(emb)) if lab[j].sum() > 0]
    out = {}
    for k in ks:
        per_query = []
        for i in range(len(emb)):
            cand = [
                j
                for j in gallery
                if not (
                    (exclude == "self" and ids[j] == ids[i])
                    or (exclude == "scan" and scan_id(ids[j]) == scan_id(ids[i]))
                )
            ]
            sims = _cos(emb[i : i + 1], emb[cand])[0]
            hits = [cand[j] for j in _order(sims)[:k]]
            scores = []
            for h in hits:
                both = int(np.sum((lab[i] == 1) & (lab[h] == 1)))
                diff = int(np.sum(lab[i] != lab[h]))
                scores.append(both / (both + diff))
            per_query.append(np.mean(scores))
        out[k] = float(np.mean(per_query))
    return out


def naive_recall(q, g, qids, gids, ks, mode):
    key = (lambda x: x) if mode == "per-volume" else scan_id
    sims = _cos(q, g)
    out = {}
    for k in ks:
        hits = 0
        for i in range(len(q)):
            top = _order(sims[i])[:k]
            hits += any(key(gids[j]) == key(qids[i]) for j in top)
        out[k] = hits / len(q)
    return out


def _dataset(seed, n_scans=40, recon=3, dim=8, quantise=True):
    rng = np.random.default_rng(seed)
    ids = [f"valid_{s}_a_{r}" for s in range(n_scans) for r in range(1, recon + 1)]
    base = rng.normal(size=(n_scans, dim))
    emb = np.repeat(base, recon, 0) + rng.normal(scale=0.5, size=(n_scans * recon, dim))
    if quantise:
        # +-1 on the 4 largest coordinates, 0 elsewhere: every norm is 2, so normalised entries are
        # +-0.5 and every cosine is an exact multiple of 1/4 -> many exact ties in any float order.
        top = np.argsort(-np.abs(emb), axis=1)[:, :4]
        q = np.zeros_like(emb)
        np.put_along_axis(q, top, np.sign(np.take_along_axis(emb, top, 1)), 1)
        emb = q
        emb[3] = emb[4]  # exact duplicate
    labels = np.repeat((rng.random((n_scans, 18)) < 0.15).astype(float), recon, 0)
    labels[:9] = 0  # empty label rows: queries that can never be in the gallery
    labels[10, 2] = -1  # uncertain counts as absent
    return ids, emb.astype(np.float32), labels


@pytest.mark.parametrize("exclude", ["none", "self", "scan"])
@pytest.mark.parametrize("chunk", [7, 1000])
def test_map_matches_naive(exclude, chunk):
    ids, emb, labels = _dataset(0)
    ks = (1, 5, 10, 50)
    fast = map_at_k(emb, labels, ids=ids, ks=ks, exclude=exclude, chunk_size=chunk)
    ref = naive_map(emb, labels, ids, ks, exclude)
    for k in ks:
        assert fast["map"][k] == pytest.approx(ref[k], abs=1e-6), k
    assert fast["n_gallery"] == int(((labels == 1).sum(1) > 0).sum())


def test_map_without_exclusion_finds_itself_first():
    ids, emb, labels = _dataset(1, quantise=False)
    out = map_at_k(emb, labels, ids=ids, ks=(1,))
    has_pos = (labels == 1).any(1)
    # every query with a positive label retrieves itself (Jaccard 1); the others score 0 at K=1
    assert out["map"][1] >= has_pos.mean() - 1e-9
    strict = map_at_k(emb, labels, ids=ids, ks=(1,), exclude="self")
    assert strict["map"][1] < out["map"][1]


def test_ctclip_script_value_is_running_mean():
    ids, emb, labels = _dataset(2)
    out = map_at_k(emb, labels, ids=ids, ks=(1, 5, 10, 50))
    m = out["map"]
    assert out["ctclip_script_value"][1] == pytest.approx(m[1])
    assert out["ctclip_script_value"][10] == pytest.approx((m[1] + m[5] + m[10]) / 3)


@pytest.mark.parametrize("mode", ["per-volume", "per-scan"])
@pytest.mark.parametrize("chunk", [5, 1000])
def test_recall_matches_naive(mode, chunk):
    ids, emb, _ = _dataset(3)
    rng = np.random.default_rng(3)
    # reports: one per volume, identical text (embedding) for all reconstructions of a scan
    scan_text = {s: rng.normal(size=emb.shape[1]) for s in {scan_id(i) for i in ids}}
    raw = np.stack([scan_text[scan_id(i)] + 0.3 * emb[j] for j, i in enumerate(ids)])
    # +-1 on the 4 largest coordinates (norm 2, normalised entries +-0.5, as the images): every cosine is an
    # exact multiple of 1/4 in any summation order -> exact ties. (+-1 on all 8 coordinates normalises to
    # +-1/sqrt(8), which is not exact: near-ties then flip with the BLAS path and the test was flaky.)
    top = np.argsort(-np.abs(raw), axis=1)[:, :4]
    text = np.zeros_like(raw)
    np.put_along_axis(text, top, np.sign(np.take_along_axis(raw, top, 1)), 1)
    text = text.astype(np.float32)
    perm = rng.permutation(len(ids))  # gallery order differs from query order: alignment is by id
    g_ids = [ids[p] for p in perm]
    ks = (1, 5, 10, 50)
    for q, qid, g, gid in ((text, ids, emb[perm], g_ids), (emb, ids, text[perm], g_ids)):
        fast = recall_at_k(q, g, qid, gid, ks=ks, mode=mode, chunk_size=chunk)
        ref = naive_recall(q, g, qid, gid, ks, mode)
        for k in ks:
            assert fast["recall"][k] == pytest.approx(ref[k]), (mode, k)


def test_per_scan_recall_is_at_least_per_volume():
    ids, emb, _ = _dataset(4, quantise=False)
    text = emb + np.random.default_rng(0).normal(scale=2.0, size=emb.shape).astype(np.float32)
    strict = recall_at_k(text, emb, ids, ids, ks=(5,), mode="per-volume")["recall"][5]
    loose = recall_at_k(text, emb, ids, ids, ks=(5,), mode="per-scan")["recall"][5]
    assert loose >= strict


def test_recall_missing_target_is_an_error():
    ids, emb, _ = _dataset(5, n_scans=5)
    with pytest.raises(ValueError, match="no target"):
        recall_at_k(emb, emb[1:], ids, ids[1:], mode="per-volume")


def test_stable_topk_breaks_ties_by_index():
    import torch

    s = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0]])
    vals, idx = stable_topk(s, 3)
    assert idx.tolist() == [[1, 2, 4]]
    assert vals.tolist() == [[3.0, 3.0, 3.0]]
