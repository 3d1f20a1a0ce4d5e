"""Report sentence sampling for CLIP training: order kept, never empty, reproducible per (seed, epoch, index)."""

from __future__ import annotations

import numpy as np

from silverclip.data.text_augment import sample_sentences, split_sentences

REPORT = (
    "Trachea and both main bronchi are open. A nodule measuring 3.5 mm was detected in the right upper lobe. "
    "No pleural effusion was detected; no pneumothorax. Heart size is normal."
)


def test_split_keeps_decimals_and_order() -> None:
    s = split_sentences(REPORT)
    assert s == [
        "Trachea and both main bronchi are open.",
        "A nodule measuring 3.5 mm was detected in the right upper lobe.",
        "No pleural effusion was detected;",
        "no pneumothorax.",
        "Heart size is normal.",
    ]
    assert split_sentences("") == [] and split_sentences("One sentence") == ["One sentence"]


def test_sample_is_an_ordered_nonempty_subset() -> None:
    full = split_sentences(REPORT)
    seen = set()
    for seed in range(200):
        out = sample_sentences(REPORT, 0.3, np.random.default_rng(seed))
        kept = split_sentences(out)
        assert kept and all(k in full for k in kept)
        assert [full.index(k) for k in kept] == sorted(full.index(k) for k in kept)
        seen.add(out)
    assert len(seen) > 10  # it does vary
    mean_kept = np.mean(
        [len(split_sentences(sample_sentences(REPORT, 0.5, np.random.default_rng(s)))) for s in range(400)]
    )
    assert 2.2 < mean_kept < 2.9  # ~ 0.5 x 5 sentences (+ the at-least-one rule)
    assert sample_sentences(REPORT, 1.0, np.random.default_rng(0)) == REPORT
    assert sample_sentences("Only one.", 0.1, np.random.default_rng(0)) == "Only one."


def test_dataset_texts_change_per_epoch_and_are_reproducible(tmp_path) -> None:
    from silverclip.data.cache import VolumeCache
    from silverclip.train.data import ReportVolumeDataset
    from train_fixtures import ids, make_cache

    cache = VolumeCache(make_cache(tmp_path / "cache"))
    vids = ids()[:4]
    ds = ReportVolumeDataset(cache, vids, [REPORT] * 4, train=True, sentence_keep=0.3, seed=0)
    assert ds[(0, 1)]["text"] == ds[(0, 1)]["text"]  # same (epoch, index): same subset
    texts = {ds[(e, 1)]["text"] for e in range(20)}
    assert len(texts) > 3  # a new subset most epochs
    # the crop does not depend on the option
    plain = ReportVolumeDataset(cache, vids, [REPORT] * 4, train=True, seed=0)
    assert (plain[(3, 2)]["image"] == ds[(3, 2)]["image"]).all() and plain[(3, 2)]["text"] == REPORT
    val = ReportVolumeDataset(cache, vids, [REPORT] * 4, train=False, sentence_keep=0.3)
    assert val[1]["text"] == REPORT  # evaluation always reads the whole report
