"""RAD-ChestCT external evaluation: map its 84 abnormality columns onto CT-RATE's findings.

The mapping is data (``resources/radchestct_mapping.csv``, documented in docs/evaluation.md): each
CT-RATE finding lists the RAD-ChestCT columns that feed it (a scan is positive when any of them is
1) and the name it is scored under. Both calcification findings are fed by RAD-ChestCT's single
``calcification`` column and scored as one finding, "Calcification", whose prediction is the max of
the two CT-RATE predictions (as CT-CLIP's ``evaluate_external`` does). Mosaic attenuation has no
source and is not scored. That leaves 16 scored findings, in CT-RATE order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd

from silverclip.findings import FINDINGS

ID_COLUMN = "NoteAcc_DEID"


@dataclass(frozen=True)
class Mapping:
    """``sources[finding]`` = RAD-ChestCT columns; ``scored_as[finding]`` = scored name or None."""

    sources: dict[str, tuple[str, ...]]
    scored_as: dict[str, str | None]

    @property
    def scored(self) -> list[str]:
        """The scored finding names, each once, in CT-RATE order (16 with the built-in mapping)."""
        out: list[str] = []
        for f in FINDINGS:
            s = self.scored_as.get(f)
            if s and s not in out:
                out.append(s)
        return out

    def members(self, scored: str) -> list[str]:
        """CT-RATE findings scored under ``scored`` (two for Calcification)."""
        return [f for f in FINDINGS if self.scored_as.get(f) == scored]


def load_mapping(path: str | Path | None = None) -> Mapping:
    """The built-in mapping, or a CSV with the same columns (``ctrate_finding, scored_as, radchestct_columns``)."""
    if path is None:
        return _builtin_mapping()
    return _parse(Path(path).read_text(), str(path))


@lru_cache(maxsize=1)
def _builtin_mapping() -> Mapping:
    text = resources.files("silverclip.resources").joinpath("radchestct_mapping.csv").read_text()
    return _parse(text, "radchestct_mapping.csv")


def _parse(text: str, where: str) -> Mapping:
    df = pd.read_csv(StringIO(text), dtype=str, keep_default_na=False)
    unknown = sorted(set(df["ctrate_finding"]) - set(FINDINGS))
    if unknown:
        raise ValueError(f"{where}: unknown CT-RATE finding(s) {unknown}")
    sources, scored_as = {}, {}
    for row in df.itertuples(index=False):
        cols = tuple(c.strip() for c in row.radchestct_columns.split(";") if c.strip())
        sources[row.ctrate_finding] = cols
        scored_as[row.ctrate_finding] = row.scored_as.strip() or None
        if scored_as[row.ctrate_finding] and not cols:
            raise ValueError(f"{where}: {row.ctrate_finding} is scored but has no RAD-ChestCT column")
    for scored in {s for s in scored_as.values() if s}:
        feeds = {sources[f] for f in scored_as if scored_as[f] == scored}
        if len(feeds) != 1:
            raise ValueError(f"{where}: findings scored as {scored!r} must share the same RAD-ChestCT columns")
    return Mapping(sources=sources, scored_as=scored_as)


def read_radchestct_labels(path: str | Path) -> pd.DataFrame:
    """A RAD-ChestCT label CSV (``NoteAcc_DEID`` + 84 columns of 0/1) indexed by ``NoteAcc_DEID``."""
    path = Path(path)
    df = pd.read_csv(path)
    if ID_COLUMN not in df.columns:
        raise ValueError(f"{path}: no {ID_COLUMN} column; is this a RAD-ChestCT label file?")
    return df.set_index(ID_COLUMN)


def map_labels(labels: pd.DataFrame, mapping: Mapping | None = None) -> pd.DataFrame:
    """RAD-ChestCT labels (rows = scans, its 84 columns) -> the scored findings (0/1 ints, 16 columns).

    A scored finding is 1 when any of its source columns is 1. Missing source columns raise
    ValueError naming them.
    """
    mapping = mapping or load_mapping()
    needed = sorted({c for cols in mapping.sources.values() for c in cols})
    missing = [c for c in needed if c not in labels.columns]
    if missing:
        raise ValueError(f"RAD-ChestCT labels lack column(s) {missing}")
    out = {}
    for scored in mapping.scored:
        cols = list(mapping.sources[mapping.members(scored)[0]])
        out[scored] = (labels[cols].to_numpy(dtype=float) == 1).any(axis=1).astype(int)
    return pd.DataFrame(out, index=labels.index)


def map_predictions(probs: pd.DataFrame | np.ndarray, mapping: Mapping | None = None) -> pd.DataFrame | np.ndarray:
    """P(present) for the 18 CT-RATE findings -> the scored findings (max over merged members).

    Accepts a frame with the 18 finding columns (returns a frame with the scored columns, same index)
    or an array (N, 18) in CT-RATE order (returns (N, n_scored)).
    """
    mapping = mapping or load_mapping()
    as_array = isinstance(probs, np.ndarray)
    frame = pd.DataFrame(probs, columns=list(FINDINGS)) if as_array else probs
    out = pd.DataFrame(
        {s: frame[mapping.members(s)].max(axis=1) for s in mapping.scored},
        index=frame.index,
    )
    return out.to_numpy() if as_array else out


def read_eval_labels(labels: str | Path | pd.DataFrame, protocol: str = "auto") -> tuple[pd.DataFrame, str]:
    """Ground truth for an evaluation: (frame indexed by volume id, protocol actually used).

    ``protocol``: ``ctrate`` (a CT-RATE-format CSV, 18 findings; ids stripped of ``.nii.gz``),
    ``radchestct`` (a RAD-ChestCT CSV mapped onto the 16 scored findings), or ``auto`` (RAD-ChestCT
    when the file has a ``NoteAcc_DEID`` column). A frame is taken as already in CT-RATE layout.
    """
    from silverclip.labels.table import read_labels, volume_id

    if isinstance(labels, pd.DataFrame):
        df = labels.copy()
        df.index = [volume_id(i) for i in df.index]
        return df, "ctrate" if protocol == "auto" else protocol
    path = Path(labels)
    if protocol == "auto":
        header = pd.read_csv(path, nrows=0).columns
        protocol = "radchestct" if ID_COLUMN in header else "ctrate"
    if protocol == "radchestct":
        df = map_labels(read_radchestct_labels(path))
    elif protocol == "ctrate":
        df = read_labels(path)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; use auto, ctrate or radchestct")
    df.index = [volume_id(i) for i in df.index]
    return df, protocol
