"""The LLM labeller against a scripted OpenAI-compatible server on 127.0.0.1 (no real network, no model).

Covers: labels and P(present) per report under concurrency, bounded concurrency, retries on 429 /
timeout / 5xx, re-asks on malformed answers and recorded failures, a run SIGKILLed midway and
resumed (every report labelled once, the server asked once per finished report), the privacy guard
and that the API key never reaches outputs or logs, and the cost estimate.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import openai
import pandas as pd
import pytest

import llm_fixtures
from llm_fixtures import SECRET, Reply, completion, config, expected_labels, expected_probs, good_reply
from silverclip.findings import FINDINGS
from silverclip.labels import llm_jobs as jobs_module
from silverclip.labels.llm import (
    FatalEndpointError,
    LLMConfig,
    RemoteEndpointError,
    extract_labels_llm,
)
from silverclip.labels.llm_client import backoff_delay, is_loopback_url

N = len(FINDINGS)
fake_llm = llm_fixtures.fake_llm  # fixtures
reports = llm_fixtures.reports


def test_labels_probabilities_usage_and_cache(fake_llm, reports, tmp_path) -> None:
    server = fake_llm(lambda req, n: Reply(body=good_reply(req).body, delay=0.05))
    cfg = config(server.base_url, concurrency=3, price_input_per_m=0.28, price_output_per_m=0.42)
    result = extract_labels_llm(reports, cfg, tmp_path / "cache.sqlite", progress=False)

    assert list(result.labels.index) == list(reports) and list(result.labels.columns) == list(FINDINGS)
    for rid, text in reports.items():
        assert result.labels.loc[rid].tolist() == expected_labels(text)
        np.testing.assert_allclose(result.probabilities.loc[rid].to_numpy(), expected_probs(text), rtol=1e-9)
    assert len(result.failures) == 0
    assert len(server.requests) == len(reports)
    assert 2 <= server.max_in_flight <= 3  # bounded by the semaphore, and really concurrent
    u = result.usage
    assert (u["requests"], u["labelled"], u["cache_hits"], u["failed"]) == (len(reports), len(reports), 0, 0)
    assert u["prompt_tokens"] == 100 * len(reports) and u["completion_tokens"] == 40 * len(reports)
    assert u["cost_usd"] == pytest.approx(len(reports) * (100 * 0.28 + 40 * 0.42) / 1e6)
    assert server.requests[0]["body"]["logprobs"] is True and server.requests[0]["body"]["temperature"] == 0

    # Second run: everything from the cache, nothing sent, same labels and probabilities.
    again = extract_labels_llm(reports, cfg, tmp_path / "cache.sqlite", progress=False)
    assert len(server.requests) == len(reports)
    assert again.usage["cache_hits"] == len(reports) and again.usage["requests"] == 0
    assert "cost_usd" in again.usage and again.usage["cost_usd"] == 0
    pd.testing.assert_frame_equal(again.labels, result.labels)
    pd.testing.assert_frame_equal(again.probabilities, result.probabilities)

    # Another model name is another cache key: asked again.
    other = LLMConfig(base_url=server.base_url, model="m2")
    extract_labels_llm(dict(list(reports.items())[:2]), other, tmp_path / "cache.sqlite", progress=False)
    assert len(server.requests) == len(reports) + 2


def test_identical_texts_sent_once_and_empty_reports_fail_without_a_request(fake_llm, reports, tmp_path) -> None:
    server = fake_llm()
    text = next(iter(reports.values()))
    result = extract_labels_llm(
        {"a": text, "b": text, "c": "  "}, config(server.base_url), tmp_path / "c.sqlite", False
    )
    assert len(server.requests) == 1
    assert result.labels.loc["a"].tolist() == result.labels.loc["b"].tolist() == expected_labels(text)
    assert result.labels.loc["c"].isna().all()
    assert [f.item for f in result.failures.failures] == ["c"]


def test_retry_on_429_with_backoff(fake_llm, reports, tmp_path) -> None:
    def script(req: dict, n: int) -> Reply:
        return Reply(429, headers={"Retry-After": "0"}) if n <= 2 else good_reply(req)

    server = fake_llm(script)
    one = dict(list(reports.items())[:1])
    result = extract_labels_llm(one, config(server.base_url, concurrency=1), tmp_path / "c.sqlite", progress=False)
    assert len(server.requests) == 3 and result.usage["retries"] == 2 and result.usage["requests"] == 3
    rid, text = next(iter(one.items()))
    assert result.labels.loc[rid].tolist() == expected_labels(text) and len(result.failures) == 0


def test_retry_on_timeout(fake_llm, reports, tmp_path) -> None:
    def script(req: dict, n: int) -> Reply:
        return Reply(body=good_reply(req).body, delay=1.5 if n == 1 else 0.0)

    server = fake_llm(script)
    one = dict(list(reports.items())[:1])
    cfg = config(server.base_url, concurrency=1, timeout_s=0.5)
    t0 = time.perf_counter()
    result = extract_labels_llm(one, cfg, tmp_path / "c.sqlite", progress=False)
    assert time.perf_counter() - t0 < 1.4  # gave up on the slow answer instead of waiting for it
    assert len(server.requests) == 2 and result.usage["retries"] == 1
    assert len(result.failures) == 0 and not result.labels.isna().any().any()


def test_5xx_until_the_last_try_is_a_recorded_failure(fake_llm, reports, tmp_path) -> None:
    server = fake_llm(lambda req, n: Reply(503))
    two = dict(list(reports.items())[:2])
    result = extract_labels_llm(two, config(server.base_url, max_retries=2), tmp_path / "c.sqlite", progress=False)
    assert len(server.requests) == 2 * 3  # 1 try + 2 retries each
    assert result.labels.isna().all().all() and result.probabilities is None
    assert sorted(f.item for f in result.failures.failures) == sorted(two)
    assert all("HTTP 503 on all 3 tries" in f.reason for f in result.failures.failures)
    assert result.failures.exit_code == 1
    # failures are not cached: a later run asks again
    server.script = lambda req, n: good_reply(req)
    again = extract_labels_llm(two, config(server.base_url), tmp_path / "c.sqlite", progress=False)
    assert len(again.failures) == 0 and again.usage["requests"] == 2


def test_400_is_not_retried(fake_llm, reports, tmp_path) -> None:
    server = fake_llm(lambda req, n: Reply(400, body={"error": {"message": "context length exceeded"}}))
    one = dict(list(reports.items())[:1])
    result = extract_labels_llm(one, config(server.base_url, logprobs=False), tmp_path / "c.sqlite", False)
    assert len(server.requests) == 1 and "context length exceeded" in result.failures.failures[0].reason


def test_endpoint_without_logprobs_falls_back_to_labels_only(fake_llm, reports, tmp_path) -> None:
    def script(req: dict, n: int) -> Reply:
        if req.get("logprobs"):
            return Reply(400, body={"error": {"message": "logprobs is not supported by this model"}})
        return good_reply(req)

    server = fake_llm(script)
    three = dict(list(reports.items())[:3])
    result = extract_labels_llm(three, config(server.base_url, concurrency=1), tmp_path / "c.sqlite", False)
    assert len(result.failures) == 0 and result.probabilities is None
    assert len(server.requests) == 4  # one refused request, then no more log-prob requests
    assert result.labels.loc[list(three)[0]].tolist() == expected_labels(three[list(three)[0]])


def test_malformed_answer_is_reasked_then_accepted(fake_llm, reports, tmp_path) -> None:
    def script(req: dict, n: int) -> Reply:
        if len(req["messages"]) == 2:
            return Reply(body=completion("Sure! " + ",".join(["1"] * (N - 1))))
        return good_reply(req)

    server = fake_llm(script)
    one = dict(list(reports.items())[:1])
    result = extract_labels_llm(one, config(server.base_url), tmp_path / "c.sqlite", progress=False)
    rid, text = next(iter(one.items()))
    assert result.labels.loc[rid].tolist() == expected_labels(text)
    assert result.usage["reasks"] == 1 and result.usage["requests"] == 2
    assert result.usage["prompt_tokens"] == 200  # both asks are paid
    second = server.requests[1]["body"]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"].startswith("Sure!") and "got 17" in second[3]["content"]


def test_always_malformed_is_a_recorded_failure_after_the_last_ask(fake_llm, reports, tmp_path) -> None:
    server = fake_llm(lambda req, n: Reply(body=completion("1,0,2" + ",0" * (N - 3))))
    one = dict(list(reports.items())[:1])
    result = extract_labels_llm(one, config(server.base_url, max_reasks=2), tmp_path / "c.sqlite", False)
    assert len(server.requests) == 3
    (failure,) = result.failures.failures
    assert "malformed answer after 3 asks" in failure.reason and "value 3 is '2'" in failure.reason
    assert result.labels.isna().all().all()


def test_unauthorised_stops_the_run_without_showing_the_key(fake_llm, reports, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    body = {"error": {"message": f"Incorrect API key provided: {SECRET}"}}
    server = fake_llm(lambda req, n: Reply(401, body=body))
    with pytest.raises(FatalEndpointError) as err:
        extract_labels_llm(reports, config(server.base_url, concurrency=2), tmp_path / "c.sqlite", progress=False)
    assert SECRET not in str(err.value) and "HTTP 401" in str(err.value)
    assert len(server.requests) <= 2  # stopped, not 12 more doomed requests


def test_backoff_is_exponential_with_jitter() -> None:
    import random

    rng = random.Random(0)
    for attempt in range(6):
        d = min(8.0, 1.0 * 2**attempt)
        samples = [backoff_delay(attempt, 1.0, 8.0, rng) for _ in range(200)]
        assert d / 2 <= min(samples) and max(samples) <= d and np.std(samples) > 0


# ----------------------------------------------------------------------------------------- privacy


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.8.9.10/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://[::ffff:127.0.0.1]:8000/v1", True),
        ("https://api.openai.com/v1", False),
        ("https://api.deepseek.com", False),
        ("http://10.0.0.5:8000/v1", False),
        ("http://127.0.0.1.nip.io/v1", False),  # resolves to loopback via DNS: still refused
        ("http://localhost.example.com/v1", False),
        (None, False),
    ],
)
def test_loopback_detection(url: str | None, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def _httpx_flavour():
    """The httpx module the installed openai client is built on (httpx, or its fork httpx2 in openai>=3)."""
    return sys.modules[openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0]]


def test_privacy_guard_refuses_remote_endpoint_before_sending_anything(reports, tmp_path, monkeypatch) -> None:
    def no_client(*args, **kwargs):
        raise AssertionError("a client was built for a refused endpoint")

    monkeypatch.setattr(jobs_module, "make_client", no_client)
    for url in ("https://api.example.com/v1", "http://10.1.2.3:8000/v1", "http://127.0.0.1.nip.io/v1"):
        with pytest.raises(RemoteEndpointError, match="--allow-remote-endpoint"):
            extract_labels_llm(reports, LLMConfig(base_url=url), tmp_path / "c.sqlite")
    assert not (tmp_path / "c.sqlite").exists()


def test_remote_endpoint_needs_the_option_and_a_key_from_the_environment(reports, tmp_path, monkeypatch) -> None:
    cfg = LLMConfig(base_url="https://api.example.com/v1", model="m", allow_remote=True, logprobs=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        extract_labels_llm(reports, cfg, tmp_path / "c.sqlite", progress=False)

    # With the option and the key set, the request goes out (to a mock transport, not the network).
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    one = dict(list(reports.items())[:1])
    text = next(iter(one.values()))
    hx = _httpx_flavour()
    seen = []

    def handler(request):
        seen.append(request)
        return hx.Response(200, json=completion(",".join(str(v) for v in expected_labels(text))))

    real_make_client = jobs_module.make_client
    monkeypatch.setattr(jobs_module, "make_client", lambda c, k: real_make_client(c, k, hx.MockTransport(handler)))
    result = extract_labels_llm(one, cfg, tmp_path / "c.sqlite", progress=False)
    assert len(seen) == 1 and str(seen[0].url) == "https://api.example.com/v1/chat/completions"
    assert seen[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert result.labels.iloc[0].tolist() == expected_labels(text)


def test_loopback_requests_ignore_proxy_settings(fake_llm, reports, tmp_path, monkeypatch) -> None:
    # A proxy from the environment must not see report text meant for a loopback server.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there: using it would fail
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server = fake_llm()
    one = dict(list(reports.items())[:1])
    result = extract_labels_llm(one, config(server.base_url, max_retries=0), tmp_path / "c.sqlite", False)
    assert len(result.failures) == 0 and len(server.requests) == 1


def test_api_key_never_reaches_cache_logs_or_outputs(fake_llm, reports, tmp_path, monkeypatch, caplog, capsys) -> None:
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    echo = {"error": {"message": f"bad request from key {SECRET}"}}

    def script(req: dict, n: int) -> Reply:
        return Reply(400, body=echo) if n == 1 else good_reply(req)

    server = fake_llm(script)
    run = tmp_path / "run"
    cfg = config(server.base_url, api_key_env="MY_LLM_KEY", concurrency=1)
    caplog.set_level(logging.DEBUG)  # as under `silverclip -v`
    result = extract_labels_llm(reports, cfg, run / "llm_cache.sqlite", progress=True)
    from silverclip.labels.table import write_labels
    from silverclip.runs import prepare_run_dir

    prepare_run_dir(run, cfg)
    result.failures.write(run / "failures.json")
    write_labels(result.labels, run / "labels.csv")
    (run / "usage.json").write_text(json.dumps(result.usage))

    assert all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)  # the key really was used
    assert len(result.failures) == 1  # the 400 whose body echoed the key
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert "***" in result.failures.failures[0].reason


# ------------------------------------------------------------------------------------ kill + resume

CHILD = """
import json, sys
from silverclip.labels.llm import LLMConfig, extract_labels_llm
reports = json.load(open(sys.argv[1]))
config = LLMConfig(base_url=sys.argv[2], model="fake-model", concurrency=4)
extract_labels_llm(reports, config, sys.argv[3], progress=False)
"""


def _count_rows(cache: Path) -> int:
    """Answers committed so far (0 while the child is still creating the file or its table)."""
    if not cache.exists():
        return 0
    db = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
    except sqlite3.OperationalError:  # no such table yet
        return 0
    finally:
        db.close()


def test_run_killed_midway_resumes_without_losing_or_repeating_work(fake_llm, reports, tmp_path) -> None:
    finish_first = 5
    release = threading.Event()

    def script(req: dict, n: int) -> Reply:
        if n > finish_first and not release.is_set():
            release.wait(60)  # hold every later request: they are in flight when the client dies
            return Reply(503)
        return good_reply(req)

    server = fake_llm(script)
    src = tmp_path / "reports.json"
    src.write_text(json.dumps(reports))
    cache = tmp_path / "cache.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(src), server.base_url, str(cache)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # all finished answers committed, the next ones in flight
            rows = _count_rows(cache)
            with server.lock:
                held = len(server.requests) - finish_first
            if rows == finish_first and held == 4:
                break
            assert child.poll() is None, "the labelling process ended before it was killed"
            time.sleep(0.05)
        else:
            pytest.fail("the child never reached the kill point")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        release.set()
    killed_requests = len(server.requests)
    assert killed_requests == finish_first + 4

    result = extract_labels_llm(reports, LLMConfig(base_url=server.base_url, model="fake-model"), cache, False)
    for rid, text in reports.items():
        assert result.labels.loc[rid].tolist() == expected_labels(text)
    assert result.usage["cache_hits"] == finish_first
    assert result.usage["requests"] == len(reports) - finish_first  # only the unfinished ones were sent
    answered: dict[str, int] = {}
    for r in server.requests:
        answered[r["report"]] = answered.get(r["report"], 0) + int(r["answered"])
    assert sorted(answered) == sorted(reports.values()) and set(answered.values()) == {1}
    assert len(server.requests) == len(reports) + 4  # + the 4 in flight at the kill, never answered
    db = sqlite3.connect(cache)
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT text_sha256) FROM answers").fetchone() == (12, 12)
    db.close()


# ------------------------------------------------------------------------------------- CLI end to end


def test_labels_extract_cli_with_llm_backend(fake_llm, reports, tmp_path, capsys) -> None:
    from silverclip.cli import main
    from silverclip.labels.table import read_labels

    server = fake_llm()
    ids = list(reports)[:3]
    csv = tmp_path / "reports.csv"
    pd.DataFrame(
        {
            "VolumeName": [f"{i}_a_1.nii.gz" for i in ids],
            "Findings_EN": [reports[i] for i in ids],
            "Impressions_EN": ["No acute findings."] * 3,
        }
    ).to_csv(csv, index=False)
    out = tmp_path / "labels.csv"
    argv = ["labels", "extract", "--backend", "llm", "--reports", str(csv), "--out", str(out)]
    argv += ["--base-url", server.base_url, "--no-progress", "--price-input-per-m", "1", "--price-output-per-m", "2"]
    assert main(argv) == 0
    labels = read_labels(out)
    assert len(labels) == 3 and len(server.requests) == 3
    expected = sorted(expected_labels(r["report"]) for r in server.requests)
    assert sorted(labels.astype(int).values.tolist()) == expected
    assert "cost_usd" in capsys.readouterr().out
    assert main(argv) == 0 and len(server.requests) == 3  # rerun: everything from the cache
    capsys.readouterr()
    assert main([*argv[:8], "--base-url", "https://api.example.com/v1", "--no-progress"]) != 0
    assert "--allow-remote-endpoint" in capsys.readouterr().err and len(server.requests) == 3


def test_a_cache_from_before_cached_token_accounting_is_upgraded_in_place(tmp_path) -> None:
    from silverclip.labels.llm_cache import AnswerCache, CachedAnswer, cached_keys

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # the first release's schema: no cached_prompt_tokens column
    db.execute(
        "CREATE TABLE answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, prompt_id TEXT NOT NULL, text_sha256 TEXT "
        "NOT NULL, labels TEXT NOT NULL, probabilities TEXT, answer TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
        "completion_tokens INTEGER NOT NULL, requests INTEGER NOT NULL, created REAL NOT NULL)"
    )
    db.execute("INSERT INTO answers VALUES ('k1', 'm', 'p', 'h', '[1, 0]', NULL, '1,0', 10, 3, 1, 0.0)")
    db.commit()
    db.close()
    assert cached_keys(path, ["k1", "k2"]) == {"k1"}  # read-only look-up works on the old file
    with AnswerCache(path) as cache:
        old = cache.get_many(["k1"])["k1"]
        assert (old.labels, old.prompt_tokens, old.cached_prompt_tokens) == ([1, 0], 10, 0)
        cache.put("k2", "m", "p", "h2", CachedAnswer([0, 1], None, "0,1", 20, 4, 1, cached_prompt_tokens=15))
        assert cache.get_many(["k2"])["k2"].cached_prompt_tokens == 15 and len(cache) == 2
    assert cached_keys(tmp_path / "absent.sqlite", ["k1"]) == set() and not (tmp_path / "absent.sqlite").exists()
