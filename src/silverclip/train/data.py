"""Training and evaluation data read from the preprocessing cache.

Volumes come memory-mapped from a :class:`silverclip.data.cache.VolumeCache` (int16 HU, axes
(x, y, z)); a crop reads only the bytes it touches and leaves the worker as stored (int16, or uint8
for an 8-bit cache): normalisation (window -> [-1, 1]) and flips happen on the device, in
:func:`silverclip.data.model_input.normalize_batch`. Training takes random crops of ``crop`` (default
``preset.crop``), optionally with random flips; evaluation takes the centre crop. Every item is a dict::

    image:   int16 (or uint8) tensor (1, X, Y, Z), the stored crop
    flip:    bool (3,) flip decisions per axis (training with random_flip only)
    id:      the volume id
    targets, weights: float32 (18,)   (supervised datasets; weights 0 = left out of the loss)
    text:    str                       (CLIP datasets)
    labels:  float32 (18,) in {1, 0, -1, nan}  (CLIP datasets with labels, for zero-shot AUC)

Reproducibility: the randomness of an item is drawn from its own generator seeded with
``(seed, epoch, index)``, so crops do not depend on the number of workers, on which worker loads an
item, or on where a resumed run restarts. The sampler (:class:`EpochSampler`) hands ``(epoch, index)``
pairs to the dataset because persistent workers keep their own copy of the dataset and would never
see an epoch counter set in the main process.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from silverclip.data.cache import VolumeCache
from silverclip.data.model_input import crop_array, crop_starts, draw_flips, normalize_batch
from silverclip.findings import FINDINGS
from silverclip.labels.table import read_labels, to_targets, volume_id

log = logging.getLogger(__name__)

VALID_SPLITS = ("valid", "validation", "val")


# --------------------------------------------------------------------------------------------- ids
@dataclass
class Alignment:
    """Ids present on both sides, and the ids each side lacks (reported, never silently dropped)."""

    ids: list[str]
    missing_in_cache: list[str] = field(default_factory=list)
    missing_in_table: list[str] = field(default_factory=list)

    def report(self, cache_name: str, table_name: str) -> None:
        if self.missing_in_cache:
            log.warning(
                "%d id(s) of %s are not in cache %s (skipped), e.g. %s",
                len(self.missing_in_cache),
                table_name,
                cache_name,
                self.missing_in_cache[:5],
            )
        if self.missing_in_table:
            log.info(
                "%d volume(s) of cache %s have no row in %s (not used), e.g. %s",
                len(self.missing_in_table),
                cache_name,
                table_name,
                self.missing_in_table[:5],
            )


def align_ids(cache_ids: Sequence[str], table_ids: Sequence[str], cache_name: str, table_name: str) -> Alignment:
    """Intersect ids explicitly (sorted, so the order never depends on file order); error when none match."""
    cache_set, table_set = set(cache_ids), set(table_ids)
    common = sorted(cache_set & table_set)
    out = Alignment(common, sorted(table_set - cache_set), sorted(cache_set - table_set))
    out.report(cache_name, table_name)
    if not common:
        raise ValueError(
            f"no volume id of {table_name} is in cache {cache_name} "
            f"(e.g. table {sorted(table_set)[:3]}, cache {sorted(cache_set)[:3]})"
        )
    return out


def load_label_table(path: str | Path) -> pd.DataFrame:
    """A labels CSV (``read_labels``) re-indexed by volume id (``train_1_a_1.nii.gz`` -> ``train_1_a_1``)."""
    df = read_labels(path)
    ids = [volume_id(v) for v in df.index]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].tolist()
        raise ValueError(f"{path}: ids repeat after stripping suffixes: {dup[:5]}")
    df.index = pd.Index(ids, name="volume_id")
    return df


TEXT_COLUMNS = ("volume_id", "split", "findings", "impressions")


def read_report_manifest(source: str | Path | pd.DataFrame, require: Sequence[str] = ("findings",)) -> pd.DataFrame:
    """A report manifest (CSV/Parquet path, or a frame) indexed by volume id, for training and embedding.

    The lenient reader: only ``volume_id`` and the ``require``d columns must exist (CLIP needs
    ``findings``; embedding needs none), so a ``volume_id, findings, impressions`` table works as well as
    a full manifest of :mod:`silverclip.data.manifest` (whose strict reader is for preprocessing: it
    also demands paths, formats and spacing). Ids are normalised (``x.nii.gz`` -> ``x``) and must be
    unique; text columns are read as strings (empty cells stay ``""``, ids keep leading zeros).
    """
    name = "manifest" if isinstance(source, pd.DataFrame) else str(source)
    if isinstance(source, pd.DataFrame):
        df = source.copy()
        if "volume_id" not in df.columns and df.index.name == "volume_id":
            df = df.reset_index()
    else:
        from silverclip.data.manifest import read_table

        df = read_table(source, tuple(TEXT_COLUMNS))
    for col in ("volume_id", *require):
        if col not in df.columns:
            raise ValueError(f"{name}: manifest has no {col!r} column (columns: {list(df.columns)})")
    df["volume_id"] = df["volume_id"].astype(str).map(volume_id)
    dup = df["volume_id"][df["volume_id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{name}: duplicate volume_id(s): {dup[:5]}")
    return df.set_index("volume_id")


def report_text(row: pd.Series | dict, include_impressions: bool = False) -> str:
    """The text of a report as CLIP trains on it and ``silverclip embed`` embeds it: Findings, optionally
    followed by Impressions (empty/NaN parts dropped)."""
    parts = [row.get("findings", "")]
    if include_impressions:
        parts.append(row.get("impressions", ""))
    return " ".join(str(p).strip() for p in parts if isinstance(p, str) and p.strip())


def patient_of(vid: str) -> str:
    """``train_1_a_1`` -> ``train_1`` (CT-RATE naming); other ids are their own patient."""
    parts = vid.split("_")
    return "_".join(parts[:2]) if len(parts) >= 4 else vid


def split_by_patient(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``fraction`` of the patients (all their volumes) for validation, deterministically."""
    patients = sorted({patient_of(i) for i in ids})
    rng = np.random.default_rng(seed)
    n_val = int(round(fraction * len(patients)))
    if fraction > 0:
        n_val = min(max(1, n_val), len(patients) - 1)
    val_patients = set(rng.permutation(patients)[:n_val].tolist())
    train = [i for i in ids if patient_of(i) not in val_patients]
    val = [i for i in ids if patient_of(i) in val_patients]
    return train, val


# ------------------------------------------------------------------------------------------- crops
class VolumeDataset(Dataset):
    """Crops of cached volumes, as stored (int16 HU; uint8 codes for an 8-bit cache). ``__getitem__`` takes
    an index or an ``(epoch, index)`` pair.

    train=True: random crop (and flip decisions ``flip`` (3,) bool if ``random_flip``) from a generator
    seeded by ``(seed, epoch, index)``; train=False: centre crop, no randomness. Normalisation and flips
    happen on the device (:func:`silverclip.data.model_input.normalize_batch`).
    ``skip_errors``: an item that cannot be read becomes ``{"id", "error"}`` (the collate function sets it
    aside as ``batch["failed"]``) instead of stopping the loader: for embedding, where one bad volume
    must not end the run.
    """

    def __init__(
        self,
        cache: VolumeCache,
        ids: Sequence[str],
        train: bool,
        crop: Sequence[int] | None = None,
        random_flip: bool = False,
        seed: int = 0,
        skip_errors: bool = False,
    ):
        self.cache = cache
        self.preset = cache.preset
        self.ids = list(ids)
        self.train = train
        self.crop = tuple(crop) if crop is not None else tuple(cache.preset.crop)
        self.random_flip = random_flip
        self.seed = seed
        self.skip_errors = skip_errors
        crop_starts(cache.preset.shape, self.crop, None)  # fail early on a crop larger than the volume

    def __len__(self) -> int:
        return len(self.ids)

    def load_crop(self, index: int, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(crop (1, X, Y, Z) as stored, flips (3,) bool or None)`` of item ``index`` in ``epoch``."""
        vid = self.ids[index]
        vol = self.cache.load(vid, copy_on_write=True)  # memory-mapped: slicing reads only the crop
        if tuple(vol.shape) != tuple(self.cache.preset.shape):
            raise ValueError(f"{self.cache.path(vid)}: shape {vol.shape} != preset shape {self.cache.preset.shape}")
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        # a strided view of the mapped file: the collate function's stack is the one copy (into shared memory
        # in a worker): about half the CPU time per volume of copying here first (benchmarks/loader.py)
        arr = crop_array(vol, self.crop, rng, copy=False)
        flips = torch.from_numpy(draw_flips(rng)) if self.train and self.random_flip else None
        return torch.from_numpy(arr)[None], flips

    def load_image(self, index: int, epoch: int = 0) -> torch.Tensor:
        """The normalised float32 crop (1, X, Y, Z), flipped as drawn: what the model sees (for inspection;
        training normalises whole batches on the device)."""
        crop, flips = self.load_crop(index, epoch)
        return normalize_batch(crop[None], self.preset, None if flips is None else flips[None])[0]

    def _unpack(self, key: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(key, tuple):
            return key[1], key[0]
        return int(key), 0

    def _image_item(self, index: int, epoch: int) -> dict:
        crop, flips = self.load_crop(index, epoch)
        item = {"image": crop, "id": self.ids[index]}
        if flips is not None:
            item["flip"] = flips
        return item

    def _item(self, index: int, epoch: int) -> dict:
        return self._image_item(index, epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = self._unpack(key)
        if not self.skip_errors:
            return self._item(index, epoch)
        try:
            return self._item(index, epoch)
        except Exception as e:  # noqa: BLE001 - reported per volume by the consumer
            return {"id": self.ids[index], "error": f"{type(e).__name__}: {e}"}


class LabeledVolumeDataset(VolumeDataset):
    """Volumes with multi-label targets: ``labels`` is a frame indexed by volume id, the 18 findings as columns."""

    def __init__(self, cache: VolumeCache, labels: pd.DataFrame, train: bool, policy: str = "mask", **kw):
        super().__init__(cache, list(labels.index), train, **kw)
        values = labels.loc[self.ids, list(FINDINGS)].to_numpy(dtype=np.float32)
        self.targets, self.weights = to_targets(values, policy)  # (N, 18) each

    def _item(self, index: int, epoch: int) -> dict:
        item = self._image_item(index, epoch)
        item["targets"] = torch.from_numpy(self.targets[index])
        item["weights"] = torch.from_numpy(self.weights[index])
        return item


class ReportVolumeDataset(VolumeDataset):
    """(volume, report text) pairs; ``labels`` (optional, (N, 18) in {1, 0, -1, nan}) for zero-shot AUC.

    ``sentence_keep`` < 1 (training only): each item's text is a random subset of its report's sentences
    (:func:`silverclip.data.text_augment.sample_sentences`), drawn from the item's ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        cache: VolumeCache,
        ids: Sequence[str],
        texts: Sequence[str],
        train: bool,
        labels: np.ndarray | None = None,
        sentence_keep: float = 1.0,
        **kw,
    ):
        super().__init__(cache, ids, train, **kw)
        if len(texts) != len(self.ids):
            raise ValueError("texts and ids differ in length")
        self.texts = list(texts)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.float32)
        self.sentence_keep = float(sentence_keep)

    def text(self, index: int, epoch: int = 0) -> str:
        if not self.train or self.sentence_keep >= 1.0:
            return self.texts[index]
        from silverclip.data.text_augment import sample_sentences

        # its own stream (not the crop's generator), so that crops do not change with the option
        return sample_sentences(
            self.texts[index], self.sentence_keep, np.random.default_rng([self.seed, epoch, index, 1])
        )

    def _item(self, index: int, epoch: int) -> dict:
        item = self._image_item(index, epoch)
        item["text"] = self.text(index, epoch)
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[index])
        return item


# ----------------------------------------------------------------------------------------- loading
class EpochSampler(Sampler):
    """This rank's share of an epoch, yielding ``(epoch, index)`` pairs.

    The epoch's order is one permutation of the dataset seeded by ``seed + epoch`` (the rule and the
    generator of ``DistributedSampler``; identity without ``shuffle``); rank ``r`` of ``world_size`` takes
    every ``world_size``-th position from ``r``. ``drop_last`` (training) truncates the order to a multiple
    of ``world_size`` first, so every rank gets equally many items (what ``DistributedSampler`` does);
    without it (evaluation) nothing is padded or repeated: ranks may differ by one item, and the union of
    the ranks' shares is the dataset exactly once.

    ``set_epoch(epoch, skip)``: ``skip`` counts the items of the epoch already consumed *by all ranks*
    together (positions ``[0, skip)`` of the order). The positions a step consumes do not depend on how the
    global batch is split over ranks, so a run resumed after ``k`` steps of ``G`` volumes continues with
    position ``k * G`` of the same order under any ``world_size x batch_size x grad_accum = G``.
    """

    def __init__(
        self, dataset: Dataset, shuffle: bool, seed: int, world_size: int = 1, rank: int = 0, drop_last: bool = False
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.n = len(dataset)
        self.shuffle, self.seed, self.world_size, self.rank, self.drop_last = shuffle, seed, world_size, rank, drop_last
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = int(skip)

    def order(self) -> list[int]:
        """The whole epoch's order (all ranks)."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def _positions(self, skip: int) -> range:
        end = self.n - (self.n % self.world_size if self.drop_last else 0)
        return range(skip + self.rank, end, self.world_size)

    def samples_per_rank(self) -> int:
        """Items of a whole epoch on this rank (no skip)."""
        return len(self._positions(0))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        for p in self._positions(self.skip):
            yield (self.epoch, order[p])

    def __len__(self) -> int:
        return len(self._positions(self.skip))


class Collate:
    """Batches items (``default_collate``) in the loader workers and tokenises the texts there.

    ``tokenize`` (texts -> dict of tensors, picklable): when given and the items carry ``text``, the batch
    gets ``tokens`` for its non-empty texts and ``text_rows`` (their rows in the batch). Items that failed
    to load (``{"id", "error"}``, datasets with ``skip_errors``) are left out and listed in ``failed``
    as ``(id, message)`` pairs; a batch of failures only is ``{"failed": [...]}``.
    """

    def __init__(self, tokenize: Callable[[list[str]], dict[str, torch.Tensor]] | None = None):
        self.tokenize = tokenize

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        if not items or not isinstance(items[0], dict):
            return default_collate(items)
        failed = [(it["id"], it["error"]) for it in items if "error" in it]
        items = [it for it in items if "error" not in it]
        batch: dict[str, Any] = default_collate(items) if items else {}
        if failed:
            batch["failed"] = failed
        if self.tokenize is not None and items and "text" in batch:
            rows = [i for i, t in enumerate(batch["text"]) if t]
            if rows:
                batch["tokens"] = self.tokenize([batch["text"][i] for i in rows])
                batch["text_rows"] = torch.tensor(rows, dtype=torch.long)
        return batch


def seed_worker(worker_id: int) -> None:
    """Worker set-up: one intra-op thread, and numpy/random seeded from torch's per-worker seed.

    Workers only slice and normalise; with N workers each running torch's default thread pool the
    machine would be oversubscribed (torch's worker loop also sets 1 thread; said here explicitly).
    The main process keeps its own setting for the model.
    """
    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    world_size: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable[[list[dict]], dict] | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with an :class:`EpochSampler` (``loader.sampler``).

    ``collate_fn`` defaults to :class:`Collate` without tokeniser (batches int16 crops; failed items set aside).

    Training drops the last incomplete batch (equal batches on every rank); evaluation keeps all items.
    The loader gets its own torch generator so that creating an iterator (which draws worker seeds)
    never touches the global RNG of the model (dropout) — required for bit-exact resume.
    """
    sampler = EpochSampler(dataset, shuffle=train, seed=seed, world_size=world_size, rank=rank, drop_last=train)
    kwargs = {}
    if num_workers > 0:
        # forked workers tokenise; the Rust tokenizer's own thread pool must not be live across fork
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        kwargs = {"persistent_workers": True, "prefetch_factor": prefetch_factor, "worker_init_fn": seed_worker}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=train,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_fn or Collate(),
        **kwargs,
    )
