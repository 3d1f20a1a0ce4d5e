"""CT-RATE-style report text for a synthetic scan, from the phrase bank ``resources/synth/report_phrases.yaml``.

Findings_EN walks the organs in CT-RATE's usual order (airways, mediastinum and heart, pericardium,
oesophagus, lymph nodes, lung parenchyma, pleura, upper abdomen, bones), asserting the scan's positive
findings with details taken from the drawn lesions (side, lobe, size, device), negating many absent
ones with the stock sentences of the real reports, and adding distractor sentences about organs outside
the 18 findings. Impressions_EN summarises the positives.

``report_noise`` is the probability that a report is imperfect: one or two findings are then corrupted,
each either a real finding left out (*omitted*), stated with hedging (*hedged*: "cannot be excluded",
"possible"), or an absent finding hedged (*spurious*). Every finding's status is returned so that silver
labels can be compared with what the text really says as well as with the gold labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import yaml

from silverclip.findings import FINDING_KEYS
from silverclip.synth.phantom import Case

SECTION_ORDER = ("airway", "mediastinum", "esophagus", "lymph", "lung", "pleura")
STATUSES = ("positive", "hedged", "omitted", "negated", "unmentioned", "spurious")
"""Per-finding mention status: gold positive stated / hedged / left out; gold negative denied / not
mentioned / hedged although absent."""


@dataclass
class Report:
    clinical_information: str
    technique: str
    findings: str
    impressions: str
    status: dict[str, str]  # finding key -> one of STATUSES


@lru_cache(maxsize=1)
def load_phrases() -> dict:
    text = resources.files("silverclip.resources").joinpath("synth/report_phrases.yaml").read_text()
    bank = yaml.safe_load(text)
    missing = [k for k in FINDING_KEYS if k not in bank["findings"]]
    if missing:
        raise ValueError(f"report_phrases.yaml: no phrases for findings {missing}")
    return bank


class _Ctx(dict):
    def __missing__(self, key: str) -> str:  # a placeholder without a value reads naturally
        return {"side": "right", "lung": "both lungs", "lobe": "lower", "where": ""}.get(key, "")


def _lung(sides) -> str:
    sides = [sides] if isinstance(sides, str) else list(sides)
    if len(sides) > 1 or "bilateral" in sides:
        return "both lungs"
    return f"the {sides[0]} lung"


def _context(key: str, p: dict, noun: str) -> _Ctx:
    c = _Ctx(noun=noun, Noun=noun[:1].upper() + noun[1:])
    sides = p.get("sides", p.get("side"))
    if sides is not None:
        c["lung"] = _lung(sides)
        sides_l = [sides] if isinstance(sides, str) else list(sides)
        c["hemithorax"] = "both hemithoraces" if len(sides_l) > 1 else f"the {sides_l[0]} hemithorax"
        if isinstance(sides, str) and sides in ("right", "left"):
            c["side"] = sides
        c["where"] = f" in {c['lung']}"
    for k in ("lobe", "device", "station"):
        if k in p:
            c[k] = p[k]
    if "device" in p:
        c["Device"] = p["device"][:1].upper() + p["device"][1:]
    if "stations" in p:
        c["station"] = p["stations"][int(np.argmax(p["radii"]))]
    size = p.get("size_mm", p.get("largest_mm"))
    if size is not None:
        c["size"] = str(int(size))
        c["Size"] = str(int(size))
    if "thickness" in p:
        c["thick"] = str(round(p["thickness"]))
    if "depth" in p:
        c["depth"] = str(round(p["depth"]))
    if "solid" in p:
        c["solidity"] = "solid" if p["solid"] else "subsolid"
    if "bronchogram" in p:
        c["bronchogram"] = "containing air bronchograms " if p["bronchogram"] else ""
    if "zone" in p:
        c["zone"] = "the basal parts" if p["zone"] == "basal" else "all zones"
    if "extent" in p:
        c["Extent"] = p["extent"].capitalize()
    return c


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return str(items[int(rng.integers(len(items)))])


def mention_status(case: Case, report_noise: float, rng: np.random.Generator) -> dict[str, str]:
    """Decide for every finding how the report treats it (see :data:`STATUSES`)."""
    status = {k: ("positive" if k in case.findings else "unmentioned") for k in FINDING_KEYS}
    if rng.random() < report_noise:
        for _ in range(1 if rng.random() < 0.7 else 2):
            pos = [k for k in FINDING_KEYS if status[k] == "positive"]
            neg = [k for k in FINDING_KEYS if status[k] == "unmentioned"]
            if pos and (rng.random() < 0.7 or not neg):
                k = pos[int(rng.integers(len(pos)))]
                status[k] = "omitted" if rng.random() < 0.5 else "hedged"
            elif neg:
                status[neg[int(rng.integers(len(neg)))]] = "spurious"
    return status


def write_report(case: Case, rng: np.random.Generator, report_noise: float = 0.1, z_spacing: float = 1.5) -> Report:
    """Compose the four report fields for ``case``; deterministic given ``rng``."""
    bank = load_phrases()
    status = mention_status(case, report_noise, rng)
    by_section: dict[str, list[str]] = {s: [] for s in SECTION_ORDER}
    impressions: list[str] = []
    for key in FINDING_KEYS:
        spec = bank["findings"][key]
        ctx = _context(key, case.findings.get(key, {}), spec["noun"])
        st = status[key]
        if st == "positive":
            phrases = spec["positive"]
            if isinstance(phrases, dict):  # phrasings per device type
                phrases = phrases[case.findings[key]["device"]]
            by_section[spec["section"]].append(_pick(rng, phrases).format_map(ctx))
            impressions.append(_pick(rng, spec["impression"]).format_map(ctx))
        elif st in ("hedged", "spurious"):
            if st == "spurious":
                ctx["where"] = ""
            by_section[spec["section"]].append(_pick(rng, bank["uncertain"]).format_map(ctx))
            if rng.random() < 0.6:
                impressions.append(_pick(rng, bank["uncertain_impression"]).format_map(ctx))
    # negations of absent findings, each finding denied at most once
    for group in bank["negations"]:
        covers = group["covers"]
        if all(status[k] == "unmentioned" for k in covers) and rng.random() < group["p"]:
            section = bank["findings"][covers[0]]["section"]
            by_section[section].append(_pick(rng, group["phrases"]))
            for k in covers:
                status[k] = "negated"
    # normal-anatomy sentences and distractors
    normal, dis = bank["normal"], bank["distractors"]
    parts = [_pick(rng, normal["airway"])]
    heart_abn = any(status[k] in ("positive", "hedged") for k in ("cardiomegaly", "medical_material"))
    if not heart_abn and not by_section["mediastinum"]:
        parts.append(_pick(rng, normal["mediastinum"]))
    parts.append(
        _pick(rng, dis["aorta_abnormal"]).format(n=int(rng.integers(38, 46)))
        if rng.random() < 0.08
        else _pick(rng, normal["aorta"])
    )
    parts += by_section["mediastinum"]
    if rng.random() < 0.07:
        parts.append(_pick(rng, dis["thyroid_abnormal"]))
    parts += by_section["esophagus"] or [_pick(rng, normal["esophagus"])]
    parts += by_section["lymph"]
    lung = by_section["lung"]
    rng.shuffle(lung)
    parts.append(" ".join([_pick(rng, normal["lung_intro"])] + lung) if lung else _pick(rng, normal["lung_intro"]))
    parts += by_section["pleura"]
    abdomen = list(rng.choice(dis["abdomen_normal"], size=int(rng.integers(1, 4)), replace=False))
    if rng.random() < 0.2:
        abdomen.append(_pick(rng, dis["abdomen_abnormal"]).format(n=int(rng.integers(8, 30))))
    parts += [str(a) for a in abdomen]
    parts.append(_pick(rng, dis["bones_abnormal"]) if rng.random() < 0.2 else _pick(rng, dis["bones_normal"]))
    findings_text = " ".join(p.strip() for p in parts if p.strip())
    if not impressions:
        impressions = [_pick(rng, bank["normal_impression"])]
    technique = _pick(rng, bank["technique"]).format(z=f"{z_spacing:g}")
    return Report(
        clinical_information=_pick(rng, bank["clinical_information"]),
        technique=technique,
        findings=findings_text,
        impressions=" ".join(impressions),
        status=status,
    )
