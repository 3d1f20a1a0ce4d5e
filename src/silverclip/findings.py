"""The 18 CT-RATE findings, loaded from ``resources/findings.yaml`` (their single definition).

Everything that needs the list of findings (labellers, prompts, model heads, metrics) imports
``FINDINGS`` from here so that the order always matches CT-RATE's label CSV columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class Finding:
    name: str
    key: str
    prompt: str
    definition: str
    synonyms: tuple[str, ...] = field(default_factory=tuple)
    phrases: tuple[str, ...] = field(default_factory=tuple)


@lru_cache(maxsize=1)
def load_findings() -> tuple[Finding, ...]:
    text = resources.files("silverclip.resources").joinpath("findings.yaml").read_text()
    data = yaml.safe_load(text)
    out = []
    for item in data["findings"]:
        out.append(
            Finding(
                name=item["name"],
                key=item["key"],
                prompt=item.get("prompt", item["name"].lower()),
                definition=item.get("definition", ""),
                synonyms=tuple(item.get("synonyms", [])),
                phrases=tuple(item.get("phrases") or [item.get("prompt", item["name"].lower())]),
            )
        )
    names = [f.name for f in out]
    if len(set(names)) != len(names):
        raise ValueError("findings.yaml: duplicate finding names")
    return tuple(out)


def findings_version() -> int:
    text = resources.files("silverclip.resources").joinpath("findings.yaml").read_text()
    return int(yaml.safe_load(text).get("version", 1))


FINDINGS: tuple[str, ...] = tuple(f.name for f in load_findings())
"""Finding names in CT-RATE's column order (len 18)."""

FINDING_KEYS: tuple[str, ...] = tuple(f.key for f in load_findings())
