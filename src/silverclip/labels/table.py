"""Label tables in CT-RATE's format and the policy that turns them into training targets.

A labels CSV has an id column (``VolumeName`` for CT-RATE, e.g. ``train_1_a_1.nii.gz``; any id
column name is accepted on reading) followed by the 18 findings in CT-RATE's order, each
1 (present), 0 (absent) or -1 (uncertain: mentioned with hedging such as "possible", "cannot be
excluded"). Uncertain values are kept in the files; only :func:`to_targets` decides what they mean
for training:

- ``mask`` (default): uncertain entries are left out of the loss (target 0, weight 0);
- ``positive``: uncertain counts as present ("U-Ones" in CheXpert's terms);
- ``negative``: uncertain counts as absent ("U-Zeros").

Missing values (NaN) are always masked. A probabilities table has the same layout with floats in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from silverclip.findings import FINDINGS
from silverclip.io import FailureLog, atomic_to_csv

UncertainPolicy = Literal["mask", "positive", "negative"]
UNCERTAIN_POLICIES = ("mask", "positive", "negative")
ID_COLUMN = "VolumeName"
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npz", ".npy")


def volume_id(name: str) -> str:
    """``train_1_a_1.nii.gz`` -> ``train_1_a_1`` (the id used by manifests and the cache)."""
    name = str(name)
    for suf in _VOLUME_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def read_labels(path: str | Path, allow_uncertain: bool = True) -> pd.DataFrame:
    """Read a labels CSV; return a frame indexed by id (first column) with the 18 findings as columns.

    Raises ValueError naming the file when finding columns are missing, ids repeat, or values fall
    outside {1, 0, -1} (or [0, 1] for probability tables, detected by non-integer values).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except Exception as e:  # pandas raises many types for bad CSVs
        raise ValueError(f"{path}: cannot read labels CSV ({e})") from None
    if df.shape[1] < 2:
        raise ValueError(f"{path}: expected an id column followed by the 18 finding columns")
    id_col = df.columns[0]
    missing = [f for f in FINDINGS if f not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing finding column(s): {missing}")
    dup = df[id_col][df[id_col].duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: duplicate id(s) in column {id_col!r}: {dup[:5]}")
    out = df.set_index(df[id_col].astype(str))[list(FINDINGS)].astype(float)
    out.index.name = id_col
    values = out.to_numpy()
    finite = values[~np.isnan(values)]
    is_integer = np.all(np.equal(np.mod(finite, 1), 0))
    if is_integer:
        allowed = {1.0, 0.0, -1.0} if allow_uncertain else {1.0, 0.0}
        bad = set(np.unique(finite).tolist()) - allowed
        if bad:
            raise ValueError(f"{path}: label values must be in {sorted(allowed)}, found {sorted(bad)}")
    elif finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"{path}: probabilities must lie in [0, 1]")
    return out


def write_labels(
    df: pd.DataFrame,
    path: str | Path,
    id_column: str = ID_COLUMN,
    float_format: str | None = None,
    status: pd.Series | None = None,
) -> None:
    """Write a frame (indexed by id, columns = the 18 findings) as a CT-RATE-format CSV, atomically.

    ``status`` (id -> ``ok``/``empty``/``not_english``/``failed``, see :mod:`silverclip.labels.report_status`)
    is appended as a last ``report_status`` column; readers of the 18 finding columns ignore it.
    """
    missing = [f for f in FINDINGS if f not in df.columns]
    if missing:
        raise ValueError(f"cannot write {path}: missing finding column(s) {missing}")
    out = df[list(FINDINGS)].copy()
    if float_format is None:
        out = out.astype("Int64")  # labels: keep 1/0/-1 as integers, NaN as empty
    if status is not None:
        out[status.name or "report_status"] = status.reindex(out.index).to_numpy()
    out.index.name = id_column
    atomic_to_csv(out.reset_index(), path, float_format=float_format)


def to_targets(labels: np.ndarray, policy: UncertainPolicy = "mask") -> tuple[np.ndarray, np.ndarray]:
    """Labels in {1, 0, -1, NaN} -> (targets, weights), both float32 of the same shape.

    ``weights`` is 0 where an entry must not contribute to the loss (NaN always; -1 under ``mask``).
    """
    if policy not in UNCERTAIN_POLICIES:
        raise ValueError(f"unknown uncertain-label policy {policy!r}; use one of {UNCERTAIN_POLICIES}")
    labels = np.asarray(labels, dtype=np.float32)
    missing = np.isnan(labels)
    uncertain = labels == -1
    targets = np.where(labels == 1, 1.0, 0.0).astype(np.float32)
    weights = np.ones_like(labels, dtype=np.float32)
    if policy == "positive":
        targets[uncertain] = 1.0
    elif policy == "mask":
        weights[uncertain] = 0.0
    weights[missing] = 0.0
    return targets, weights


@dataclass
class LabelingResult:
    """What every labeller backend (rules, LLM) returns for a batch of reports.

    labels: frame indexed by report/volume id, the 18 findings as columns, values 1/0/-1 (NaN where
        the report could not be labelled; those ids are also in ``failures``).
    probabilities: same layout with P(present) in [0, 1] where the backend gives one, else None.
    evidence: id -> finding -> the sentence(s) that decided the label (for review), where available.
    failures: the reports that could not be labelled, with the reason.
    usage: counters such as prompt/completion tokens, requests, cache hits, cost.
    decided_by: id -> finding -> which labeller decided the label (``rules``/``llm``; cascade only).
    status: id -> report status (``ok``, ``empty``, ``not_english``, ``failed``), set by
        :func:`silverclip.labels.backends.label_reports`.
    """

    labels: pd.DataFrame
    probabilities: pd.DataFrame | None = None
    evidence: dict[str, dict[str, list[str]]] | None = None
    failures: FailureLog = field(default_factory=lambda: FailureLog("labels"))
    usage: dict[str, float] = field(default_factory=dict)
    decided_by: dict[str, dict[str, str]] | None = None
    status: pd.Series | None = None
