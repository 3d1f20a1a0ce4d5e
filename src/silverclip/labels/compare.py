"""Where two label tables disagree, with the sentences that decided each side, for human review.

Evidence comes from the ``<labels stem>.evidence.jsonl`` file that ``silverclip labels extract``
writes next to a labels CSV (one JSON object per line: ``{"id": ..., "evidence": {finding: [sentences]}}``,
plus ``"decided_by": {finding: "rules" | "llm"}`` for the cascade).
For a table without evidence (a manual or third-party file), the sentences of the report that
mention the finding are shown instead (found with the rule labeller's patterns, whatever their
negation status, and the vocabulary's synonyms).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from silverclip.findings import FINDINGS, load_findings
from silverclip.io import atomic_open
from silverclip.labels.evaluate import align
from silverclip.labels.sentences import split_sentences

COLUMNS = ("id", "finding", "label_a", "label_b", "evidence_a", "evidence_b")


def evidence_path(labels_csv: str | Path) -> Path:
    """``out/labels.csv`` -> ``out/labels.evidence.jsonl``."""
    p = Path(labels_csv)
    return p.with_name(f"{p.stem}.evidence.jsonl")


def probabilities_path(labels_csv: str | Path) -> Path:
    """``out/labels.csv`` -> ``out/labels_probs.csv``."""
    p = Path(labels_csv)
    return p.with_name(f"{p.stem}_probs.csv")


def write_evidence(
    path: str | Path,
    evidence: dict[str, dict[str, list[str]]],
    decided_by: dict[str, dict[str, str]] | None = None,
) -> None:
    """Write id -> finding -> sentences as JSON lines, atomically.

    ``decided_by`` (cascade: id -> finding -> ``rules``/``llm``) adds a ``decided_by`` object to each
    line naming the labeller that decided every one of the 18 labels.
    """
    with atomic_open(path, "w", encoding="utf-8") as f:
        for rid, ev in evidence.items():
            record = {"id": rid, "evidence": {k: v for k, v in ev.items() if v}}
            if decided_by is not None and rid in decided_by:
                record["decided_by"] = decided_by[rid]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_evidence(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """Read a file written by :func:`write_evidence`; a bad line is an error naming the line."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out[str(obj["id"])] = {k: list(v) for k, v in obj["evidence"].items()}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}:{n}: not an evidence record ({e})") from None
    return out


class MentionFinder:
    """Sentences of a report that mention a finding (rule patterns or vocabulary synonyms)."""

    def __init__(self) -> None:
        from silverclip.labels.rules import RuleLabeler

        self.labeler = RuleLabeler()
        self.synonyms = {
            f.name: re.compile("|".join(re.escape(s) for s in (f.name, *f.synonyms)), re.IGNORECASE)
            for f in load_findings()
        }

    def sentences(self, text: str, finding: str) -> list[str]:
        found = [m.sentence for m in self.labeler.mentions(text) if m.finding == finding]
        found += [s.text for s in split_sentences(text) if self.synonyms[finding].search(s.text)]
        return list(dict.fromkeys(found))


def disagreements(
    a: pd.DataFrame,
    b: pd.DataFrame,
    reports: dict[str, str] | None = None,
    evidence_a: dict[str, dict[str, list[str]]] | None = None,
    evidence_b: dict[str, dict[str, list[str]]] | None = None,
    findings: list[str] | None = None,
) -> pd.DataFrame:
    """One row per (report, finding) where ``a`` and ``b`` differ; ids aligned with :func:`align` (must match).

    ``evidence_*`` columns hold the deciding sentences joined by `` | `` (from the evidence files,
    or from ``reports`` when a side has none).
    """
    a, b = align(a, b)
    finder = MentionFinder() if reports is not None and (evidence_a is None or evidence_b is None) else None
    reports_by_id = {}
    if reports is not None:
        from silverclip.labels.table import volume_id

        reports_by_id = {volume_id(k): v for k, v in reports.items()}

    def norm(ev: dict | None) -> dict | None:
        if ev is None:
            return None
        from silverclip.labels.table import volume_id

        return {volume_id(k): v for k, v in ev.items()}

    evidence_a, evidence_b = norm(evidence_a), norm(evidence_b)
    rows = []
    for f in findings or FINDINGS:
        va, vb = a[f].to_numpy(dtype=float), b[f].to_numpy(dtype=float)
        differ = ~((va == vb) | (pd.isna(va) & pd.isna(vb)))
        for rid, la, lb in zip(a.index[differ], va[differ], vb[differ], strict=True):
            ev_a = _side(evidence_a, rid, f, finder, reports_by_id)
            ev_b = _side(evidence_b, rid, f, finder, reports_by_id)
            rows.append((rid, f, _fmt(la), _fmt(lb), ev_a, ev_b))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def disagreements_markdown(df: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> str:
    """Markdown for review: a count per finding, then each disagreement with both sides' sentences."""
    lines = [f"# Disagreements: {name_a} vs {name_b}", "", f"{len(df)} (report, finding) pairs differ.", ""]
    if len(df):
        lines += ["| finding | disagreements |", "|---|---:|"]
        for f, n in df.groupby("finding", sort=False).size().items():
            lines.append(f"| {f} | {n} |")
        lines.append("")
    for r in df.itertuples(index=False):
        lines += [
            f"## {r.id} - {r.finding}: {name_a}={r.label_a}, {name_b}={r.label_b}",
            f"- **{name_a}**: {r.evidence_a or '(no sentence)'}",
            f"- **{name_b}**: {r.evidence_b or '(no sentence)'}",
            "",
        ]
    return "\n".join(lines)


def _side(ev: dict | None, rid: str, finding: str, finder: MentionFinder | None, reports: dict[str, str]) -> str:
    if ev is not None:
        return " | ".join(ev.get(rid, {}).get(finding, []))
    if finder is not None and rid in reports:
        return " | ".join(finder.sentences(reports[rid], finding))
    return ""


def _fmt(x: float) -> str:
    return "NaN" if math.isnan(x) else str(int(x)) if float(x).is_integer() else f"{x:.3f}"
