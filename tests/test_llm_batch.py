"""Batch mode end to end against a loopback server implementing the files and batches endpoints.

Covers: upload + create + poll + download with the labels, tokens (cached split) and cache of a live
run; a run SIGKILLed in the middle of polling and restarted (the same batch polled by its id, never
submitted again); an interrupted batch creation found again by its input file; malformed answers as
recorded failures; giving up after ``batch_max_wait_s`` and resuming; the cascade in batch mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import llm_fixtures
from llm_fixtures import FakeBatchAPI, completion, config, expected_labels, good_batch_answer
from silverclip.labels.cascade import extract_labels_cascade
from silverclip.labels.llm import extract_labels_llm
from silverclip.labels.llm_batch import BatchError, BatchPending, state_path

reports = llm_fixtures.reports  # fixture


@pytest.fixture
def batch_api():
    servers: list[FakeBatchAPI] = []

    def start(answer=good_batch_answer, polls_to_finish: int = 2) -> FakeBatchAPI:
        servers.append(FakeBatchAPI(answer, polls_to_finish))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def batch_config(base_url: str, **kw):
    kw.setdefault("batch_poll_s", 0.02)
    return config(base_url, batch=True, **kw)


def test_batch_upload_create_poll_download(batch_api, reports, tmp_path) -> None:
    api = batch_api(polls_to_finish=3)
    cache = tmp_path / "cache.sqlite"
    cfg = batch_config(api.base_url, price_input_per_m=1.0, price_cached_input_per_m=0.5, price_output_per_m=2.0)
    result = extract_labels_llm(reports, cfg, cache, progress=False)
    for rid, text in reports.items():
        assert result.labels.loc[rid].tolist() == expected_labels(text)
    assert result.probabilities is not None and result.probabilities.notna().all().all()
    assert (api.count("POST", "/v1/files"), api.count("POST", "/v1/batches")) == (1, 1)
    assert api.count("GET", "/v1/batches/") == 3 and api.count("GET", "/v1/files/") == 1
    (uploaded,) = [v for k, v in api.files.items() if k == "file-1"]
    lines = [json.loads(x) for x in uploaded.decode().splitlines()]
    assert len(lines) == len(reports) and {ln["url"] for ln in lines} == {"/v1/chat/completions"}
    body = lines[0]["body"]
    assert body["model"] == "fake-model" and body["logprobs"] is True and len(body["messages"]) == 2
    u = result.usage
    assert (u["requests"], u["labelled"], u["failed"]) == (len(reports), len(reports), 0)
    assert (u["prompt_tokens"], u["cached_prompt_tokens"]) == (100 * len(reports), 60 * len(reports))
    assert u["cost_usd"] == pytest.approx(len(reports) * (40 * 1.0 + 60 * 0.5 + 40 * 2.0) / 1e6)
    assert not state_path(cache).exists()  # every batch downloaded: no state left
    calls = len(api.calls)
    again = extract_labels_llm(reports, cfg, cache, progress=False)
    assert len(api.calls) == calls and again.usage["cache_hits"] == len(reports)  # nothing sent again


CHILD = """
import sys
from silverclip.labels.llm import LLMConfig, extract_labels_llm
import json
reports = json.load(open(sys.argv[1]))
config = LLMConfig(base_url=sys.argv[2], model="fake-model", batch=True, batch_poll_s=0.05)
extract_labels_llm(reports, config, sys.argv[3], progress=False)
"""


def test_run_killed_while_polling_resumes_the_same_batch(batch_api, reports, tmp_path) -> None:
    api = batch_api()
    api.release.clear()  # the batch stays in progress: the child polls until it is killed
    src = tmp_path / "reports.json"
    src.write_text(json.dumps(reports))
    cache = tmp_path / "cache.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(src), api.base_url, str(cache)], env=env)
    try:
        deadline = time.monotonic() + 60
        while api.count("GET", "/v1/batches/") < 3:
            assert child.poll() is None, "the batch run ended before it was killed"
            assert time.monotonic() < deadline, "the child never polled"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    state = json.loads(state_path(cache).read_text())
    (entry,) = state["batches"]
    assert entry["batch_id"] == "batch-1" and len(entry["jobs"]) == len(reports)

    api.release.set()
    result = extract_labels_llm(reports, batch_config(api.base_url), cache, progress=False)
    assert (api.count("POST", "/v1/files"), api.count("POST", "/v1/batches")) == (1, 1)  # not submitted again
    for rid, text in reports.items():
        assert result.labels.loc[rid].tolist() == expected_labels(text)
    assert result.usage["labelled"] == len(reports) and not state_path(cache).exists()


@pytest.mark.parametrize("created", [False, True])
def test_interrupted_batch_creation_is_resumed_from_the_upload(batch_api, reports, tmp_path, created) -> None:
    api = batch_api()
    api.fail_create, api.create_then_fail = 1, created  # the create call fails (after creating, if created)
    cache = tmp_path / "cache.sqlite"
    with pytest.raises(BatchError, match="rerun the same command"):
        extract_labels_llm(reports, batch_config(api.base_url, max_retries=0), cache, progress=False)
    entry = json.loads(state_path(cache).read_text())["batches"][0]
    assert entry["input_file_id"] == "file-1" and entry["batch_id"] is None
    result = extract_labels_llm(reports, batch_config(api.base_url), cache, progress=False)
    assert api.count("POST", "/v1/files") == 1  # the upload is reused
    assert len(api.batches) == 1  # an already created batch is found by its input file, not created twice
    assert result.usage["labelled"] == len(reports) and len(result.failures) == 0


def test_malformed_and_failed_lines_are_recorded_and_sent_again_later(batch_api, reports, tmp_path) -> None:
    bad = list(reports.values())[:2]

    def answer(body: dict) -> dict:
        text = body["messages"][1]["content"]
        if text == bad[0]:
            return completion("Here are the labels: 1,0")
        if text == bad[1]:
            return {"status_code": 500, "error": {"message": "server exploded"}}
        return good_batch_answer(body)

    api = batch_api(answer)
    cache = tmp_path / "cache.sqlite"
    result = extract_labels_llm(reports, batch_config(api.base_url), cache, progress=False)
    reasons = {f.item: f.reason for f in result.failures.failures}
    assert len(reasons) == 2 and result.labels.isna().all(axis=1).sum() == 2
    assert any("malformed answer in batch" in r for r in reasons.values())
    assert any("HTTP 500" in r and "server exploded" in r for r in reasons.values())
    api.answer = good_batch_answer
    again = extract_labels_llm(reports, batch_config(api.base_url), cache, progress=False)
    assert len(again.failures) == 0 and again.usage["labelled"] == 2 and again.usage["cache_hits"] == 10
    second = json.loads(api.files["file-3"].decode().splitlines()[0])  # the second upload: the two failed
    assert len(api.files["file-3"].decode().splitlines()) == 2 and second["method"] == "POST"


def test_waiting_limit_stops_and_a_rerun_resumes_polling(batch_api, reports, tmp_path) -> None:
    api = batch_api()
    api.release.clear()
    cache = tmp_path / "cache.sqlite"
    with pytest.raises(BatchPending, match="rerun the same command"):
        extract_labels_llm(reports, batch_config(api.base_url, batch_max_wait_s=0.1), cache, progress=False)
    api.release.set()
    result = extract_labels_llm(reports, batch_config(api.base_url), cache, progress=False)
    assert len(api.batches) == 1 and result.usage["labelled"] == len(reports)


def test_cascade_in_batch_mode_sends_only_the_open_findings(batch_api, tmp_path: Path) -> None:
    api = batch_api(lambda body: completion("1"))
    reports = {"a": "Possible minimal pleural effusion.", "b": "No pleural effusion. Cardiomegaly is observed."}
    result = extract_labels_cascade(reports, batch_config(api.base_url), tmp_path / "c.sqlite", progress=False)
    (line,) = api.files["file-1"].decode().splitlines()
    assert json.loads(line)["body"]["messages"][1]["content"] == reports["a"]
    assert result.labels.loc["a", "Pleural effusion"] == 1 and result.labels.loc["b", "Pleural effusion"] == 0
    assert result.decided_by["a"]["Pleural effusion"] == "llm"
