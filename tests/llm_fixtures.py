"""A scripted OpenAI-compatible chat server on 127.0.0.1 and helpers, shared by the LLM labeller tests."""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import default as email_default
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
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    body = json.loads(raw)
                except ValueError:  # not a chat request (a file upload): recorded as seen, raw
                    body = {"raw": raw}
                with fake.lock:
                    record = {
                        "report": body["messages"][1]["content"] if "messages" in body else None,
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


class FakeBatchAPI:
    """A loopback server implementing OpenAI's files and batches endpoints for the batch mode.

    ``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
    ``GET /v1/batches`` (list) and ``GET /v1/batches/{id}``. A batch stays ``in_progress`` until
    ``release`` is set and it has been polled ``polls_to_finish`` times; then every line is answered
    by ``answer(body) -> chat completion dict`` (or an error dict with ``status_code``) and the batch
    is ``completed``. ``fail_create`` (a number of calls) makes ``POST /v1/batches`` answer 500, after
    creating the batch when ``create_then_fail`` (the answer was lost, not the batch).
    """

    def __init__(self, answer: Callable[[dict], dict], polls_to_finish: int = 2) -> None:
        self.answer = answer
        self.polls_to_finish = polls_to_finish
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.polls: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        self.fail_create = 0
        self.create_then_fail = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, body: bytes | dict, ctype: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                with api.lock:
                    api.calls.append(("GET", self.path))
                    api.auth.append(self.headers.get("Authorization"))
                    parts = self.path.split("?")[0].strip("/").split("/")
                    if parts[:2] == ["v1", "batches"] and len(parts) == 2:
                        data = list(api.batches.values())
                        return self.reply(200, {"object": "list", "data": data, "has_more": False})
                    if parts[:2] == ["v1", "batches"] and parts[2] in api.batches:
                        return self.reply(200, api.poll(parts[2]))
                    if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[2] in api.files:
                        return self.reply(200, api.files[parts[2]], "application/octet-stream")
                self.reply(404, {"error": {"message": f"no {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with api.lock:
                    api.calls.append(("POST", self.path))
                    api.auth.append(self.headers.get("Authorization"))
                    if self.path.startswith("/v1/files"):
                        msg = BytesParser(policy=email_default).parsebytes(
                            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
                        )
                        data = next(p for p in msg.iter_parts() if p.get_filename()).get_payload(decode=True)
                        fid = f"file-{len(api.files) + 1}"
                        api.files[fid] = data
                        obj = {"id": fid, "object": "file", "bytes": len(data), "created_at": 0}
                        return self.reply(200, {**obj, "filename": "labels.jsonl", "purpose": "batch"})
                    if self.path.startswith("/v1/batches"):
                        req = json.loads(body)
                        if api.fail_create and not api.create_then_fail:
                            api.fail_create -= 1
                            return self.reply(500, {"error": {"message": "scripted failure"}})
                        bid = f"batch-{len(api.batches) + 1}"
                        api.batches[bid] = {
                            "id": bid,
                            "object": "batch",
                            "endpoint": req["endpoint"],
                            "input_file_id": req["input_file_id"],
                            "completion_window": req["completion_window"],
                            "status": "validating",
                            "created_at": 0,
                        }
                        api.polls[bid] = 0
                        if api.fail_create:
                            api.fail_create -= 1
                            return self.reply(500, {"error": {"message": "scripted failure after creating"}})
                        return self.reply(200, api.batches[bid])
                self.reply(404, {"error": {"message": f"no {self.path}"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, method: str, prefix: str) -> int:
        with self.lock:
            return sum(m == method and p.startswith(prefix) for m, p in self.calls)

    def poll(self, bid: str) -> dict:
        batch = self.batches[bid]
        self.polls[bid] += 1
        if batch["status"] in ("validating", "in_progress"):
            batch["status"] = "in_progress"
            if self.release.is_set() and self.polls[bid] >= self.polls_to_finish:
                self.finish(batch)
        return batch

    def finish(self, batch: dict) -> None:
        out, n_failed = [], 0
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]].decode().splitlines() if x.strip()]
        for i, line in enumerate(lines):
            result = self.answer(line["body"])
            status = result.pop("status_code", 200)
            n_failed += status != 200
            response = {"status_code": status, "body": result}
            out.append({"id": f"r{i}", "custom_id": line["custom_id"], "response": response})
        fid = f"file-{len(self.files) + 1}"
        self.files[fid] = ("\n".join(json.dumps(o) for o in out) + "\n").encode()
        batch.update(
            status="completed",
            output_file_id=fid,
            request_counts={"total": len(lines), "completed": len(lines) - n_failed, "failed": n_failed},
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def good_batch_answer(body: dict) -> dict:
    """A batch line's answer: the scripted judgement of the report, with a cached-token count."""
    text, tokens = answer_with_logprobs(expected_labels(body["messages"][1]["content"]))
    return completion(text, tokens if body.get("logprobs") else None, prompt_tokens=100, cached_tokens=60)
