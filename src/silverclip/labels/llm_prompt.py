"""The versioned prompt of the LLM labeller, rendered from ``resources/prompts/labels_<version>.yaml``.

The finding names and definitions come from ``findings.yaml`` (via :mod:`silverclip.findings`), so
the prompt lists exactly the 18 findings in CT-RATE's column order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from silverclip.findings import load_findings


@dataclass(frozen=True)
class LabelPrompt:
    """A rendered prompt. ``prompt_id`` = ``<version>-<sha256 of everything sent besides the report>[:12]``.

    The id goes into the cache key, so editing the template or a finding definition (without
    bumping the version) never serves answers given to another prompt.
    """

    version: str
    system: str
    user_template: str
    reask_template: str
    report_template: str
    n_findings: int
    prompt_id: str

    def messages(self, report: str) -> list[dict[str, str]]:
        """Chat messages for one report: system prompt + user message."""
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user_template.format(report=report)},
        ]

    def reask(self, reason: str) -> str:
        """The corrective user message sent after a malformed answer."""
        return self.reask_template.format(reason=reason, n_findings=self.n_findings)


@lru_cache(maxsize=8)
def load_prompt(version: str = "v1") -> LabelPrompt:
    """Load and render ``labels_<version>.yaml``. Raises ValueError naming the file if absent or incomplete."""
    name = f"labels_{version}.yaml"
    path = resources.files("silverclip.resources").joinpath("prompts", name)
    if not path.is_file():
        raise ValueError(f"unknown prompt version {version!r}: no resources/prompts/{name}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = [k for k in ("version", "finding_line", "system", "user", "reask", "report") if k not in data]
    if missing:
        raise ValueError(f"resources/prompts/{name}: missing key(s) {missing}")
    if str(data["version"]) != version:
        raise ValueError(f"resources/prompts/{name}: declares version {data['version']!r}, expected {version!r}")
    findings = load_findings()
    lines = [
        data["finding_line"].format(index=i + 1, name=f.name, definition=f.definition or f.name)
        for i, f in enumerate(findings)
    ]
    n = len(findings)
    # A fixed, mostly-absent example (a few present, one uncertain) shows the format, not an answer.
    example = ",".join("1" if i in (1, 9) else "-1" if i == 10 else "0" for i in range(n))
    system = data["system"].format(n_findings=n, findings_list="\n".join(lines), example=example).strip()
    digest = hashlib.sha256("\x00".join([system, data["user"], data["reask"]]).encode()).hexdigest()[:12]
    return LabelPrompt(
        version=version,
        system=system,
        user_template=data["user"],
        reask_template=data["reask"].strip(),
        report_template=data["report"],
        n_findings=n,
        prompt_id=f"{version}-{digest}",
    )


def format_report(findings: str | None, impressions: str | None, version: str = "v1") -> str:
    """A CT-RATE report's Findings_EN + Impressions_EN as the user message text (missing parts left empty)."""
    clean = ["" if (s is None or s != s) else str(s).strip() for s in (findings, impressions)]  # s != s: NaN
    return load_prompt(version).report_template.format(findings=clean[0], impressions=clean[1])


def labels_grammar(n: int) -> str:
    """A llama.cpp GBNF grammar that only admits the answer format: ``n`` values in {1, 0, -1}, comma-separated.

    Sent as ``extra_body={"grammar": ...}`` it makes even a tiny local model answer parsably; the
    log-probabilities llama.cpp returns are those of the unconstrained model.
    """
    return f'root ::= v ("," v){{{n - 1}}}\nv ::= "1" | "0" | "-1"\n'
