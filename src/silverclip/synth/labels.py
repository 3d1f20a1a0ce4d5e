"""Label-vector sampler that follows CT-RATE's real label frequencies and co-occurrences.

The shipped table ``resources/synth/label_patterns.csv`` was derived once from CT-RATE's official
``train_predicted_labels.csv`` (47,149 volumes; 24,128 scans of 20,000 patients) with
:func:`build_pattern_table`. It holds rows ``pattern,next,count`` with 18-character bit strings in
:data:`FINDINGS` order:

- rows with an empty ``next``: the label pattern of each patient's first scan, with its count (5,301 patterns);
- rows with ``next``: (previous scan pattern -> next scan pattern) transitions between consecutive scans of
  the same patient, with counts (3,587 transitions).

Sampling a first scan from the ``first`` rows reproduces the joint distribution of the 18 labels
exactly (frequencies and every co-occurrence), not only the marginals. Follow-up scans use the
transition whose previous pattern is nearest (Hamming) to the patient's current pattern, so a patient's
scans stay correlated the way real follow-ups are. Nothing here reads ``../shared`` at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from silverclip.findings import FINDINGS

RESOURCE = "synth/label_patterns.csv"


def _bits(pattern: str) -> np.ndarray:
    if len(pattern) != len(FINDINGS) or set(pattern) - {"0", "1"}:
        raise ValueError(f"bad label pattern {pattern!r}: expected {len(FINDINGS)} characters of 0/1")
    return np.frombuffer(pattern.encode(), dtype=np.uint8) - ord("0")


def _pattern(bits: np.ndarray) -> str:
    return "".join("1" if b else "0" for b in bits)


def build_pattern_table(labels_csv: str | Path) -> pd.DataFrame:
    """Derive the pattern table from a CT-RATE ``*_predicted_labels.csv``.

    Volumes are collapsed to scans (reconstructions of a scan share labels in CT-RATE); scans of a
    patient are ordered by their letter. Returns columns ``pattern, next, count`` (``next`` empty
    on first-scan rows) sorted for a stable, diff-friendly file.
    """
    df = pd.read_csv(labels_csv)
    missing = [f for f in FINDINGS if f not in df.columns]
    if missing:
        raise ValueError(f"{labels_csv}: missing finding columns {missing}")
    name = df.iloc[:, 0].astype(str).str.replace(r"\.nii(\.gz)?$", "", regex=True)
    df = df.assign(scan=name.str.replace(r"_\d+$", "", regex=True))
    scans = df.drop_duplicates("scan").copy()
    scans["patient"] = scans["scan"].str.replace(r"_[a-z]+$", "", regex=True)
    scans["letter"] = scans["scan"].str.extract(r"_([a-z]+)$")[0]
    scans = scans.sort_values(["patient", "letter"], kind="stable")
    scans["pattern"] = scans[list(FINDINGS)].astype(int).astype(str).agg("".join, axis=1)
    first = scans.groupby("patient", sort=False).head(1)["pattern"].value_counts()
    scans["prev"] = scans.groupby("patient", sort=False)["pattern"].shift()
    trans = scans.dropna(subset=["prev"]).groupby(["prev", "pattern"]).size()
    first_rows = pd.DataFrame({"pattern": first.index, "next": "", "count": first.to_numpy(int)})
    next_rows = pd.DataFrame(
        {
            "pattern": trans.index.get_level_values(0),
            "next": trans.index.get_level_values(1),
            "count": trans.to_numpy(int),
        }
    )
    first_rows = first_rows.sort_values(["count", "pattern"], ascending=[False, True])
    next_rows = next_rows.sort_values(["pattern", "next"])
    return pd.concat([first_rows, next_rows], ignore_index=True)


@dataclass(frozen=True)
class PatternTable:
    """Arrays behind :class:`LabelSampler`: first-scan patterns (P, 18) with probabilities, transitions."""

    first: np.ndarray  # (P, 18) uint8
    first_p: np.ndarray  # (P,) float64, sums to 1
    prev: np.ndarray  # (T, 18) uint8
    next: np.ndarray  # (T, 18) uint8
    next_count: np.ndarray  # (T,) float64


@lru_cache(maxsize=1)
def load_pattern_table() -> PatternTable:
    """The shipped table (see module docstring), parsed once."""
    path = resources.files("silverclip.resources").joinpath(RESOURCE)
    with path.open("r") as f:
        df = pd.read_csv(f, comment="#", dtype={"pattern": str, "next": str, "count": int}, keep_default_na=False)
    return table_from_frame(df)


def table_from_frame(df: pd.DataFrame) -> PatternTable:
    """Parse a ``pattern, next, count`` frame (as written by :func:`build_pattern_table`)."""
    is_first = df["next"].fillna("").astype(str) == ""
    first = df[is_first]
    nxt = df[~is_first]
    if first.empty:
        raise ValueError("label pattern table has no 'first' rows")
    f_bits = np.stack([_bits(p) for p in first["pattern"]])
    f_p = first["count"].to_numpy(float)
    if nxt.empty:
        p_bits = n_bits = np.zeros((0, len(FINDINGS)), np.uint8)
    else:
        p_bits = np.stack([_bits(p) for p in nxt["pattern"]])
        n_bits = np.stack([_bits(p) for p in nxt["next"]])
    return PatternTable(f_bits, f_p / f_p.sum(), p_bits, n_bits, nxt["count"].to_numpy(float))


class LabelSampler:
    """Draws 18-label vectors (uint8, :data:`FINDINGS` order) for patients and their follow-up scans."""

    def __init__(self, table: PatternTable | None = None):
        self.table = table or load_pattern_table()

    def first(self, rng: np.random.Generator) -> np.ndarray:
        """Labels of a patient's first scan: a pattern drawn with its real frequency."""
        i = rng.choice(len(self.table.first_p), p=self.table.first_p)
        return self.table.first[i].copy()

    def follow_up(self, previous: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Labels of the next scan of the same patient, given the previous scan's labels.

        Picks among the real transitions whose previous pattern is nearest to ``previous`` (weighted by
        count) and applies that transition's changes (findings that appeared / resolved) to ``previous``.
        """
        t = self.table
        if len(t.prev) == 0:
            return previous.copy()
        dist = np.abs(t.prev.astype(np.int16) - previous.astype(np.int16)).sum(axis=1)
        idx = np.flatnonzero(dist == dist.min())
        w = t.next_count[idx]
        j = idx[rng.choice(len(idx), p=w / w.sum())]
        out = previous.copy()
        appeared = (t.next[j] == 1) & (t.prev[j] == 0)
        resolved = (t.next[j] == 0) & (t.prev[j] == 1)
        out[appeared] = 1
        out[resolved] = 0
        return out

    def patient(self, n_scans: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Labels for ``n_scans`` consecutive scans of one patient."""
        out = [self.first(rng)]
        for _ in range(n_scans - 1):
            out.append(self.follow_up(out[-1], rng))
        return out


def write_pattern_table(labels_csv: str | Path, out: str | Path) -> None:
    """Regenerate the shipped resource from a CT-RATE labels CSV (run once by maintainers)."""
    from silverclip.io import atomic_open

    table = build_pattern_table(labels_csv)
    header = (
        "# CT-RATE label patterns (derived from CT-RATE train_predicted_labels.csv, CC BY-NC-SA 4.0).\n"
        "# pattern/next: 18 characters of 0/1 in CT-RATE's finding order (silverclip.findings.FINDINGS).\n"
        "# next empty: first scan of a patient; next set: transition pattern -> next between consecutive scans.\n"
        "# Regenerate: python -m silverclip.synth.labels <train_predicted_labels.csv> <this file>\n"
    )
    with atomic_open(out, "w", encoding="utf-8", newline="") as f:
        f.write(header)
        table.to_csv(f, index=False)
    Path(out).chmod(0o644)  # package data must be world-readable (atomic_open creates 0600 files)


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import sys

    write_pattern_table(sys.argv[1], sys.argv[2])
