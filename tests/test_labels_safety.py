"""Regression tests for issue 11 in the labels domain: redirects, outputs that are inputs, secrets.

- 11.3: a loopback endpoint answering 307 to another host must not get the report re-sent there;
  the run stops with an error naming the Location.
- 11.4: ``labels extract --out`` (or any file it writes) equal to the reports file, by path, relative
  path, symlink or hard link, is refused before anything is written.
- 11.7: an endpoint echoing the API key in a malformed answer, and credentials in the base URL, never
  reach a file the run writes, stdout/stderr or the log (everything grepped).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest

import llm_fixtures
from llm_fixtures import SECRET, Reply, completion, config, good_reply
from silverclip.cli import main
from silverclip.labels.llm import FatalEndpointError, extract_labels_llm
from silverclip.labels.redact import Redactor, redact_url

fake_llm = llm_fixtures.fake_llm  # fixtures
reports = llm_fixtures.reports


def _reports_csv(reports: dict[str, str], path: Path, n: int = 3) -> Path:
    ids = list(reports)[:n]
    pd.DataFrame({"AccessionNo": ids, "report_text": [reports[i] for i in ids]}).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------ 11.3


def test_a_redirect_is_never_followed_and_names_the_location(fake_llm, reports, tmp_path, capsys) -> None:
    elsewhere = fake_llm()  # stands for another host: it must never see a report
    target = f"{elsewhere.base_url}/chat/completions"
    server = fake_llm(lambda req, n: Reply(307, headers={"Location": target}))
    one = dict(list(reports.items())[:2])
    with pytest.raises(FatalEndpointError, match="307") as err:
        extract_labels_llm(one, config(server.base_url, concurrency=1), tmp_path / "c.sqlite", progress=False)
    assert target in str(err.value) and "never followed" in str(err.value)
    assert len(elsewhere.requests) == 0 and len(server.requests) == 1  # stopped: no retry, no follow

    out = tmp_path / "labels.csv"
    argv = ["labels", "extract", "--backend", "llm", "--reports", str(_reports_csv(reports, tmp_path / "r.csv"))]
    argv += ["--out", str(out), "--base-url", server.base_url, "--no-progress"]
    assert main(argv) == 2
    assert target in capsys.readouterr().err and len(elsewhere.requests) == 0 and not out.exists()


def test_a_redirect_of_the_batch_api_is_not_followed_either(fake_llm, reports, tmp_path) -> None:
    elsewhere = fake_llm()
    server = fake_llm(lambda req, n: Reply(308, headers={"Location": f"{elsewhere.base_url}/files"}))
    one = dict(list(reports.items())[:1])
    cfg = config(server.base_url, batch=True, batch_poll_s=0.01)
    with pytest.raises(FatalEndpointError, match="308"):
        extract_labels_llm(one, cfg, tmp_path / "c.sqlite", progress=False)
    assert len(elsewhere.requests) == 0


# ------------------------------------------------------------------------------------------ 11.4


@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink", "probs", "cache"])
def test_extract_refuses_an_output_that_is_the_reports_file(reports, tmp_path, monkeypatch, capsys, how) -> None:
    src = _reports_csv(reports, tmp_path / "reports.csv")
    before = src.read_bytes()
    monkeypatch.chdir(tmp_path)
    extra: list[str] = []
    if how == "same":
        out = str(src)
    elif how == "relative":
        (tmp_path / "sub").mkdir()
        out = "sub/../reports.csv"
    elif how == "symlink":
        (tmp_path / "link.csv").symlink_to(src)
        out = "link.csv"
    elif how == "hardlink":
        os.link(src, tmp_path / "hard.csv")
        out = "hard.csv"
    elif how == "probs":  # labels.csv would write its probabilities to labels_probs.csv = the reports
        src = src.rename(tmp_path / "labels_probs.csv")
        before = src.read_bytes()
        out = "labels.csv"
    else:  # the LLM answer cache pointed at the reports
        out, extra = "labels.csv", ["--backend", "llm", "--llm-cache", str(src)]
    code = main(["labels", "extract", "--reports", str(src), "--out", out, "--no-progress", *extra])
    assert code == 2 and "refusing to overwrite an input" in capsys.readouterr().err
    assert src.read_bytes() == before and not (tmp_path / "labels.csv").exists()


# ------------------------------------------------------------------------------------------ 11.7


def test_redaction_helpers() -> None:
    url = f"http://user:{SECRET}@127.0.0.1:9/v1"
    assert redact_url(url) == "http://***@127.0.0.1:9/v1" and redact_url("http://127.0.0.1/v1") == "http://127.0.0.1/v1"
    redact = Redactor([SECRET], [url])
    assert SECRET not in redact(f"got {SECRET} from {url}") and "user" not in redact(url)
    assert Redactor([None, ""], ["http://h/v1"])("text") == "text"  # nothing to hide: unchanged


def _grep_everything(root: Path, *texts: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {t[:6]}..." for t in texts if t.encode() in data]
    return hits


def test_secrets_never_reach_files_stderr_or_logs(fake_llm, reports, tmp_path, monkeypatch, capsys, caplog) -> None:
    password = "gw-pass-3e7b1d90c4"
    monkeypatch.setenv("MY_LLM_KEY", SECRET)

    def script(req: dict, n: int) -> Reply:
        if req["messages"][1]["content"] == first:  # always malformed, echoing the key: the last answer is shown
            return Reply(body=completion(f"Sure, {SECRET}: 1,0"))
        return good_reply(req)

    server = fake_llm(script)
    base = server.base_url.replace("http://", f"http://gateway-user:{password}@")
    (tmp_path / "in").mkdir()
    src = _reports_csv(reports, tmp_path / "in" / "reports.csv", 4)
    first = pd.read_csv(src)["report_text"].iloc[0]
    run = tmp_path / "run"
    run.mkdir()
    caplog.set_level(logging.DEBUG)  # as under `silverclip -v`: the HTTP libraries would log the URL
    for backend in ("llm", "cascade"):
        argv = ["labels", "extract", "--backend", backend, "--reports", str(src), "--out", str(run / f"{backend}.csv")]
        argv += ["--base-url", base, "--key-from-env", "MY_LLM_KEY", "--max-reasks", "1"]
        assert main(argv) in (0, 1)  # 1: the malformed report is listed as failed
        assert (run / f"{backend}.csv").exists()  # the run did its work (not stopped before it began)
    out = capsys.readouterr()
    assert len(server.requests) >= 4 + 1  # 4 reports by llm (one re-asked) + the cascade's open findings
    assert (run / "llm.failures.json").exists()  # the malformed, key-echoing answer was recorded ...
    assert "***" in (run / "llm.failures.json").read_text()  # ... redacted
    assert "***@127.0.0.1" in (run / "llm.failures.json").read_text()
    for text in (SECRET, password):
        assert text not in out.out and text not in out.err and text not in caplog.text
    assert _grep_everything(run, SECRET, password) == [] and _grep_everything(tmp_path / "in", SECRET, password) == []
