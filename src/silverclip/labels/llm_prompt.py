"""Prompt variants of the LLM labellers, as data: ``resources/prompts/labels_<name>.yaml``, selectable by name.

Shipped variants (``list_prompts()``):

- ``v1`` (default): ours, every finding with its one-line definition from ``findings.yaml``, which
  states CT-RATE's annotation conventions;
- ``authors``: the authors' design as the paper describes it: a system prompt with the short list
  of the 18 finding names only, the report as the user message, one line of values as the answer.

The finding names and definitions come from ``findings.yaml`` (via :mod:`silverclip.findings`), in
CT-RATE's column order. A prompt renders for all 18 findings (``--backend llm``) or for a subset
(``--backend cascade`` asks only the findings the rules left open): ``system_subset`` (optional in
the file) is the system template used for a subset, ``system`` otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from silverclip.findings import Finding, load_findings

_REQUIRED = ("version", "finding_line", "system", "user", "reask", "report")


def example_answer(n: int) -> str:
    """A fixed, mostly-absent example answer of ``n`` values (shows the format, not an answer)."""
    if n == 1:
        return "0"
    return ",".join("1" if i in (1, 9) else "-1" if i == 10 else "0" for i in range(n))


@dataclass(frozen=True)
class LabelPrompt:
    """A loaded prompt variant. ``prompt_id`` = ``<name>-<sha256 of everything sent besides the report>[:12]``.

    The id goes into the cache key, so editing the template or a finding definition (without
    bumping the name) never serves answers given to another prompt.
    """

    version: str
    finding_line: str
    system_template: str
    system_subset_template: str
    user_template: str
    reask_template: str
    report_template: str
    findings: tuple[Finding, ...]
    prompt_id: str

    @property
    def n_findings(self) -> int:
        return len(self.findings)

    @property
    def system(self) -> str:
        """The system prompt for all findings."""
        return self.system_for(None)

    def system_for(self, indices: Sequence[int] | None = None) -> str:
        """The system prompt listing the findings ``indices`` (positions in CT-RATE's order; None: all)."""
        return _render_system(self, None if indices is None else tuple(sorted(indices)))

    def subset_id(self, indices: Sequence[int] | None) -> str:
        """``prompt_id`` for all findings; for a subset, ``prompt_id`` + the hash of its rendered system prompt."""
        if indices is None or tuple(sorted(indices)) == tuple(range(self.n_findings)):
            return self.prompt_id
        digest = hashlib.sha256(self.system_for(indices).encode()).hexdigest()[:12]
        return f"{self.prompt_id}/{digest}"

    def messages(self, report: str, indices: Sequence[int] | None = None) -> list[dict[str, str]]:
        """Chat messages for one report: system prompt (for ``indices``, default all findings) + user message."""
        return [
            {"role": "system", "content": self.system_for(indices)},
            {"role": "user", "content": self.user_template.format(report=report)},
        ]

    def reask(self, reason: str, n_values: int | None = None) -> str:
        """The corrective user message sent after a malformed answer."""
        return self.reask_template.format(reason=reason, n_findings=n_values or self.n_findings)


@lru_cache(maxsize=4096)
def _render_system(prompt: LabelPrompt, indices: tuple[int, ...] | None) -> str:
    subset = indices is not None and tuple(indices) != tuple(range(prompt.n_findings))
    chosen = [(i, prompt.findings[i]) for i in (indices if subset else range(prompt.n_findings))]
    lines = [
        prompt.finding_line.format(index=k + 1, name=f.name, definition=f.definition or f.name)
        for k, (_, f) in enumerate(chosen)
    ]
    template = prompt.system_subset_template if subset else prompt.system_template
    n = len(chosen)
    return template.format(n_findings=n, findings_list="\n".join(lines), example=example_answer(n)).strip()


def list_prompts() -> list[str]:
    """Names of the shipped prompt variants (``resources/prompts/labels_<name>.yaml``)."""
    folder = resources.files("silverclip.resources").joinpath("prompts")
    return sorted(p.name[len("labels_") : -len(".yaml")] for p in folder.iterdir() if p.name.startswith("labels_"))


@lru_cache(maxsize=8)
def load_prompt(version: str = "v1") -> LabelPrompt:
    """Load the prompt variant ``version`` (a name). Raises ValueError naming the file if absent or incomplete."""
    name = f"labels_{version}.yaml"
    path = resources.files("silverclip.resources").joinpath("prompts", name)
    if not path.is_file():
        raise ValueError(f"unknown prompt version {version!r}: no resources/prompts/{name} (have {list_prompts()})")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"resources/prompts/{name}: missing key(s) {missing}")
    if str(data["version"]) != version:
        raise ValueError(f"resources/prompts/{name}: declares version {data['version']!r}, expected {version!r}")
    prompt = LabelPrompt(
        version=version,
        finding_line=data["finding_line"],
        system_template=data["system"],
        system_subset_template=data.get("system_subset", data["system"]),
        user_template=data["user"],
        reask_template=data["reask"].strip(),
        report_template=data["report"],
        findings=load_findings(),
        prompt_id="",
    )
    # The id identifies the full-list prompt (unchanged since v1's first release, so cached answers stay
    # valid); a subset's request is keyed by its rendered system text as well (see subset_id).
    digest = hashlib.sha256("\x00".join([prompt.system, data["user"], data["reask"]]).encode()).hexdigest()[:12]
    return LabelPrompt(**{**prompt.__dict__, "prompt_id": f"{version}-{digest}"})


def format_report(findings: str | None, impressions: str | None, version: str = "v1") -> str:
    """A CT-RATE report's Findings_EN + Impressions_EN as the user message text (missing parts left empty)."""
    clean = ["" if (s is None or s != s) else str(s).strip() for s in (findings, impressions)]  # s != s: NaN
    return load_prompt(version).report_template.format(findings=clean[0], impressions=clean[1])


def labels_grammar(n: int) -> str:
    """A llama.cpp GBNF grammar that only admits the answer format: ``n`` values in {1, 0, -1}, comma-separated.

    Sent as ``extra_body={"grammar": ...}`` it makes even a tiny local model answer parsably; the
    log-probabilities llama.cpp returns are those of the unconstrained model.
    """
    if n == 1:
        return 'root ::= v\nv ::= "1" | "0" | "-1"\n'
    return f'root ::= v ("," v){{{n - 1}}}\nv ::= "1" | "0" | "-1"\n'
