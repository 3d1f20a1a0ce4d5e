"""A scripted OpenAI-compatible chat server on 127.0.0.1 and helpers, shared by the LLM labeller tests."""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from silverclip.findings import FINDINGS
from silverclip.labels.llm import LLMConfig

N = len(FINDINGS)
SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"


def expected_labels(report: str) -> list[int]:
    """The scripted server's 'judgement': a deterministic function of the report text."""
    h = hashlib.sha256(report.encode()).digest()
    return [(b % 3) - 1 for b in h[:N]]


P_CHOSEN = 0.7  # probability the fake server gives the chosen value token; the other two share the rest


def expected_probs(report: str, uncertain_weight: float = 0.5) -> list[float]:
    out = []
    for v in expected_labels(report):
        mass = {v: P_CHOSEN}
        for other in (1, 0, -1):
            mass.setdefault(other, (1 - P_CHOSEN) / 2)
        out.append(mass[1] + uncertain_weight * mass[-1])
    return out


def answer_with_logprobs(labels: list[int]) -> tuple[str, list[dict]]:
    """Content and OpenAI-style logprobs: tokens '1', '0', '-', '1' and ',' as separate tokens."""
    text = ",".join(str(v) for v in labels)
    tokens = []
    rest = (1 - P_CHOSEN) / 2
    for i, v in enumerate(labels):
        if i:
            tokens.append({"token": ",", "logprob": 0.0, "bytes": None, "top_logprobs": []})
        first = {1: "1", 0: "0", -1: "-"}[v]
        top = [{"token": first, "logprob": math.log(P_CHOSEN), "bytes": None}]
        top += [{"token": t, "logprob": math.log(rest), "bytes": None} for t in ("1", "0", "-") if t != first]
        top.append({"token": "The", "logprob": math.log(0.01), "bytes": None})  # starts no value: ignored
        tokens.append({"token": first, "logprob": math.log(P_CHOSEN), "bytes": None, "top_logprobs": top})
        if v == -1:
            tokens.append({"token": "1", "logprob": 0.0, "bytes": None, "top_logprobs": []})
    return text, tokens


def completion(
    content: str,
    logprobs: list[dict] | None = None,
    prompt_tokens: int = 100,
    completion_tokens: int = 40,
    cached_tokens: int | None = None,
):
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    choice["logprobs"] = {"content": logprobs} if logprobs is not None else None
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            **({"prompt_tokens_details": {"cached_tokens": cached_tokens}} if cached_tokens is not None else {}),
        },
    }


class Reply:
    def __init__(self, status: int = 200, body: dict | None = None, headers: dict | None = None, delay: float = 0.0):
        self.status, self.body, self.headers, self.delay = status, body, headers or {}, delay


def good_reply(request: dict) -> Reply:
    report = request["messages"][1]["content"]
    text, tokens = answer_with_logprobs(expected_labels(report))
    return Reply(body=completion(text, tokens if request.get("logprobs") else None))


class FakeLLM:
    """A threaded HTTP server speaking just enough of /v1/chat/completions; ``script(request, n)`` -> Reply."""

    def __init__(self, script: Callable[[dict, int], Reply]):
        self.script = script
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # {"report", "body", "auth", "answered"}
        self.in_flight = 0
        self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    record = {
                        "report": body["messages"][1]["content"],
                        "body": body,
                        "auth": self.headers.get("Authorization"),
                        "answered": False,
                    }
                    fake.requests.append(record)
                    n = len(fake.requests)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    reply = fake.script(body, n)
                    if reply.delay:
                        time.sleep(reply.delay)
                    data = json.dumps(reply.body or {"error": {"message": "scripted error"}}).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    record["answered"] = reply.status == 200
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) or was killed
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_llm():
    servers: list[FakeLLM] = []

    def start(script: Callable[[dict, int], Reply] = lambda req, n: good_reply(req)) -> FakeLLM:
        servers.append(FakeLLM(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def reports(shared_data: Path) -> dict[str, str]:
    df = pd.read_csv(shared_data / "ctrate_reports_manual" / "reports_manual_labels.csv", nrows=12)
    return dict(zip(df["AccessionNo"], df["report_text"]))


def config(base_url: str, **kw) -> LLMConfig:
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    kw.setdefault("timeout_s", 10.0)
    return LLMConfig(base_url=base_url, model="fake-model", **kw)


ASKED = re.compile(r"^\s*\d+\. ([^:\n]+?)(?::|$)", re.MULTILINE)


def asked_findings(system: str) -> list[str]:
    """The findings a request's system prompt lists ("1. Name: definition" lines), in order."""
    return [m.group(1).strip() for m in ASKED.finditer(system) if m.group(1).strip() in FINDINGS]


def perfect_reply(gold: pd.DataFrame, text_to_id: dict[str, str]) -> Callable[[dict, int], Reply]:
    """A 'perfect labeller': answers the findings a request asks with the manual labels of its report."""

    def script(request: dict, n: int) -> Reply:
        rid = text_to_id[request["messages"][1]["content"]]
        names = asked_findings(request["messages"][0]["content"])
        values = [str(int(gold.loc[rid, f])) for f in names]
        return Reply(body=completion(",".join(values), prompt_tokens=300, completion_tokens=2 * len(values)))

    return script
