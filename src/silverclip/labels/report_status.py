"""Which reports can be labelled at all: empty, whitespace-only and non-English reports are flagged.

A labeller reading an empty or a Turkish report finds no English finding mention and would answer
"all 18 absent" with full confidence; trained on, those are wrong negatives. Every backend therefore
labels only reports whose status is ``ok`` and leaves flagged ones empty (NaN: masked in the loss,
left out of metrics), unless the user asks to label them anyway (``include_flagged``,
``silverclip labels extract --include-flagged``). The status goes into the labels CSV
(``report_status`` column) and a summary line.

Statuses: ``ok``; ``empty`` (no letter or digit); ``not_english`` (mostly non-Latin script, or
at least ``min_words`` words of which fewer than ``min_english_share`` are English by the word lists
in ``resources/rules/english.yaml``, a transparent check that needs no language model); and, set
by the backends, ``failed`` (the labeller could not label it: see the failure list).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import pandas as pd
import yaml

from silverclip.findings import load_findings

OK, EMPTY, NOT_ENGLISH, FAILED = "ok", "empty", "not_english", "failed"
FLAGGED = (EMPTY, NOT_ENGLISH)
STATUS_COLUMN = "report_status"
_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class EnglishCheck:
    words: frozenset[str]
    min_words: int
    min_english_share: float
    max_non_latin_share: float

    def english_share(self, words: list[str]) -> float:
        return sum(w in self.words for w in words) / len(words) if words else 0.0


@lru_cache(maxsize=1)
def english_check() -> EnglishCheck:
    """The word lists and thresholds of ``resources/rules/english.yaml`` (+ the findings' vocabulary)."""
    data = yaml.safe_load(resources.files("silverclip.resources").joinpath("rules/english.yaml").read_text())
    words = set(data["function_words"].split()) | set(data["radiology_words"].split())
    for f in load_findings():
        for phrase in (f.name, *f.synonyms):
            words.update(w.lower() for w in _WORD.findall(phrase))
    return EnglishCheck(
        frozenset(words), int(data["min_words"]), float(data["min_english_share"]), float(data["max_non_latin_share"])
    )


def _non_latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum("LATIN" not in unicodedata.name(c, "") for c in letters) / len(letters)


def report_status(text: object) -> str:
    """``ok``, ``empty`` or ``not_english`` for one report text (None/NaN/non-text count as empty)."""
    if not isinstance(text, str) or not re.search(r"[^\W_]", text):
        return EMPTY
    check = english_check()
    if _non_latin_share(text) > check.max_non_latin_share:
        return NOT_ENGLISH
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) >= check.min_words and check.english_share(words) < check.min_english_share:
        return NOT_ENGLISH
    return OK


def report_statuses(reports: dict[str, object]) -> pd.Series:
    """id -> status, in the reports' order."""
    return pd.Series({rid: report_status(text) for rid, text in reports.items()}, name=STATUS_COLUMN, dtype=object)


def status_summary(status: pd.Series, include_flagged: bool) -> str | None:
    """One line counting the flagged reports and what was done with them (None when none is flagged)."""
    counts = status.value_counts()
    n = int(sum(counts.get(s, 0) for s in FLAGGED))
    if not n:
        return None
    parts = ", ".join(f"{int(counts[s])} {s.replace('_', ' ')}" for s in FLAGGED if counts.get(s, 0))
    if include_flagged:
        what = "labelled anyway (--include-flagged): check them before training on them"
    else:
        what = "left unlabelled (empty labels, excluded from training); --include-flagged labels them anyway"
    return f"flagged {n} of {len(status)} report(s) ({parts}): {what}; see the {STATUS_COLUMN} column"
