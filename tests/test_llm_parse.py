"""Strict answer parsing, P(present) from token log-probs, the prompt template and the cost estimate."""

from __future__ import annotations

import math

import pytest

from silverclip.findings import FINDINGS, load_findings
from silverclip.labels.llm_parse import AnswerFormatError, TokenLogprob, parse_answer, present_probabilities
from silverclip.labels.llm_prompt import format_report, labels_grammar, load_prompt
from silverclip.labels.llm_usage import Prices, add_cost, format_usage, prices_from

N = len(FINDINGS)
GOOD = [1, 0, -1, 0, 0, 1, 0, 0, 0, 1, -1, 0, 0, 0, 0, 0, 1, 0]
LINE = ",".join(str(v) for v in GOOD)


@pytest.mark.parametrize(
    "text",
    [
        LINE,
        f"  {LINE}  \n",
        ", ".join(str(v) for v in GOOD),  # spaces after commas
        f"\n\n{LINE}\n\n",
        f"```\n{LINE}\n```",
        f"```csv\n{LINE}\n```\n",
        f"`{LINE}`",
        f"```{LINE}```",
        LINE.replace(",", " , "),
        f"{LINE}\r\n",
    ],
)
def test_good_answers_parse(text: str) -> None:
    parsed = parse_answer(text, N)
    assert list(parsed.labels) == GOOD
    # every offset points at the value's first character in the raw text
    for start, value in zip(parsed.starts, GOOD):
        assert text[start : start + len(str(value))] == str(value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        (None, "empty"),
        ("```\n```", "no values"),
        (",".join(["1"] * 17), "got 17"),  # partial answer: one value missing
        (",".join(["0"] * 19), "got 19"),
        (LINE + ",", "got 19"),  # trailing comma = an empty 19th field
        (LINE.replace("-1", "2", 1), "value 3 is '2'"),
        (LINE.replace("-1", "+1", 1), "value 3 is '+1'"),
        (LINE.replace("1", "1.0", 1), "value 1 is '1.0'"),
        (LINE.replace(",0,", ",,", 1), "value 2 is ''"),
        (LINE.replace("1", "yes", 1), "value 1 is 'yes'"),
        (f"Here are the labels:\n{LINE}", "got 2 non-empty lines"),
        (f"{LINE}\n{LINE}", "got 2 non-empty lines"),
        ("1. Medical material: 0\n2. Arterial wall calcification: 1", "got 2 non-empty lines"),
        (f"Labels: {LINE}", "value 1 is 'Labels: 1'"),
        (f"[{LINE}]", "value 1 is '[1'"),
        (f"{LINE}.", "value 18 is '0.'"),
        (LINE.replace(",", ";"), "got 1"),
    ],
)
def test_malformed_and_partial_answers_are_rejected(text: str | None, reason: str) -> None:
    with pytest.raises(AnswerFormatError, match=reason.replace("[", r"\[").replace(".", r"\.").replace("+", r"\+")):
        parse_answer(text, N)


def _tokens_per_char(text: str, alternatives: dict[int, list[tuple[str, float]]]) -> list[TokenLogprob]:
    """One token per character; ``alternatives[offset]`` = top list at that character (chosen token first)."""
    out = []
    for i, ch in enumerate(text):
        top = alternatives.get(i, [(ch, 0.0)])
        out.append(TokenLogprob(ch, dict(top).get(ch, -0.01), tuple(top)))
    return out


def test_probabilities_from_logprobs_match_a_hand_computation() -> None:
    text = "1,0,-1" + ",0" * (N - 3)
    parsed = parse_answer(text, N)
    ln = math.log
    alts = {
        0: [("1", ln(0.6)), ("0", ln(0.2)), ("-", ln(0.1)), ("The", ln(0.05))],  # 'The' starts no value
        2: [("0", ln(0.7)), (" 1", ln(0.1)), ("-", ln(0.1))],  # leading space still counts as '1'
        4: [("-", ln(0.5)), ("1", ln(0.25)), ("0", ln(0.25))],
    }
    probs = present_probabilities(text, parsed, _tokens_per_char(text, alts), uncertain_weight=0.5)
    assert probs is not None and len(probs) == N
    assert probs[0] == pytest.approx((0.6 + 0.05) / 0.9)
    assert probs[1] == pytest.approx((0.1 + 0.05) / 0.9)
    assert probs[2] == pytest.approx((0.25 + 0.25) / 1.0)
    # only the chosen token known: a certain answer
    assert probs[3] == pytest.approx(0.0)
    # uncertain_weight moves only the uncertain mass
    probs1 = present_probabilities(text, parsed, _tokens_per_char(text, alts), uncertain_weight=1.0)
    assert probs1[0] == pytest.approx(0.7 / 0.9)
    probs0 = present_probabilities(text, parsed, _tokens_per_char(text, alts), uncertain_weight=0.0)
    assert probs0[2] == pytest.approx(0.25)


def test_probabilities_with_merged_tokens() -> None:
    # Real tokenisers merge ",-" (SmolLM2 does): the value starts inside the token, after the prefix ",".
    text = "1" + ",-1" + ",0" * (N - 2)
    parsed = parse_answer(text, N)
    ln = math.log
    tokens = [TokenLogprob("1", ln(0.9), (("1", ln(0.9)), ("0", ln(0.1))))]
    tokens.append(TokenLogprob(",-", ln(0.4), ((",", ln(0.5)), (",-", ln(0.4)), (".", ln(0.1)))))
    tokens.append(TokenLogprob("1", 0.0, (("1", 0.0),)))
    for _ in range(N - 2):
        tokens += [TokenLogprob(",", 0.0, ((",", 0.0),)), TokenLogprob("0", ln(0.8), (("0", ln(0.8)), ("1", ln(0.2))))]
    probs = present_probabilities(text, parsed, tokens)
    assert probs[0] == pytest.approx(0.9)
    assert probs[1] == pytest.approx(0.5)  # only ",-" starts a value there: certain "uncertain" -> 0.5
    assert probs[2] == pytest.approx(0.2)


def test_probabilities_none_when_tokens_do_not_fit_the_text() -> None:
    text = ",".join(["0"] * N)
    parsed = parse_answer(text, N)
    assert present_probabilities(text, parsed, []) is None
    other = _tokens_per_char(",".join(["1"] * N), {})
    assert present_probabilities(text, parsed, other) is None


def test_prompt_lists_every_finding_in_order_and_is_versioned() -> None:
    prompt = load_prompt("v1")
    positions = [prompt.system.index(f"{i + 1}. {f.name}: {f.definition}") for i, f in enumerate(load_findings())]
    assert positions == sorted(positions)
    assert prompt.n_findings == N and prompt.prompt_id.startswith("v1-")
    msgs = prompt.messages("Findings: x")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[1]["content"] == "Findings: x"
    # the example in the prompt is itself a valid answer
    example = prompt.system.split("Example of the format:")[1].strip()
    assert len(parse_answer(example, N).labels) == N
    assert "got 17" in prompt.reask("expected 18 comma-separated values, got 17")
    with pytest.raises(ValueError, match="unknown prompt version"):
        load_prompt("v999")
    assert format_report("Heart normal.", float("nan")) == "Findings: Heart normal.\nImpressions: "
    assert labels_grammar(N).count('","') == 1 and "{17}" in labels_grammar(N)


def test_cost_estimate() -> None:
    # 50k reports x 1,000 prompt (200 of them cached) + 40 completion tokens at $0.28 / $0.028 / $0.42 per million
    prices = Prices(0.28, 0.42, cached_input_per_m=0.028)
    assert prices.cost(50_000 * 800, 50_000 * 200, 50_000 * 40) == pytest.approx(40 * 0.28 + 10 * 0.028 + 2 * 0.42)
    assert Prices(0.28, 0.42).cost(800, 200, 0) == pytest.approx(1000 * 0.28 / 1e6)  # cached billed as uncached
    assert prices_from(None, 1.0) is None and prices_from(1.0, 2.0) == Prices(1.0, 2.0)
    usage = {"reports": 2, "prompt_tokens": 10, "cached_prompt_tokens": 4, "completion_tokens": 3}
    add_cost(usage, Prices(1.0, 2.0, 0.5))
    assert usage["cost_usd"] == pytest.approx((6 * 1.0 + 4 * 0.5 + 3 * 2.0) / 1e6)
    line = format_usage(usage)
    assert "10 input tokens (6 uncached, 4 cached)" in line and "$0.0000" in line and "$0.5/M cached" in line


def test_prompt_variants_are_data_selectable_by_name() -> None:
    from silverclip.labels.llm_prompt import list_prompts

    assert {"v1", "authors"} <= set(list_prompts())
    v1, authors = load_prompt("v1"), load_prompt("authors")
    assert v1.prompt_id == "v1-f9170391a7c5"  # unchanged since the first release: existing caches stay valid
    assert authors.prompt_id.startswith("authors-") and authors.n_findings == N
    for f in load_findings():  # the short list: names, no definitions
        assert f"{f.name}" in authors.system and f.definition not in authors.system
    assert len(authors.system) < len(v1.system) / 2
    example = authors.system.split("Example:")[1].strip()
    assert len(parse_answer(example, N).labels) == N
    # A subset (the cascade): only those findings, numbered 1..k in CT-RATE's order, k values in the example.
    sub = v1.system_for([12, 3])
    assert "1. Pericardial effusion:" in sub and "2. Pleural effusion:" in sub and "Cardiomegaly" not in sub
    assert len(parse_answer(sub.split("Example of the format:")[1].strip(), 2).labels) == 2
    assert v1.subset_id([3, 12]) == v1.subset_id([12, 3]) != v1.subset_id([3]) != v1.prompt_id
    assert v1.subset_id(range(N)) == v1.prompt_id
