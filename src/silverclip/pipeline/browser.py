"""Headless Chromium for looking at a report as a reader would: its DOM, a screenshot, the requests it makes.

Used by the tests (the report must render and request nothing) and by ``docs/make_images.py`` (the
screenshot in the docs). Debian's ``chromium`` package (``apt-get install chromium``) or any Chrome binary.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def dump_dom(page: str | Path, timeout: float = 120) -> str:
    """The DOM of ``page`` (a local HTML file) after Chromium has loaded it."""
    res = _run(["--dump-dom", Path(page).resolve().as_uri()], timeout)
    if res.returncode != 0 or "<html" not in res.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def screenshot(page: str | Path, png: str | Path, width: int = 1280, height: int = 2400, timeout: float = 120) -> Path:
    """A PNG screenshot of the top ``width`` x ``height`` pixels of ``page``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    res = _run([f"--screenshot={png}", f"--window-size={width},{height}", Path(page).resolve().as_uri()], timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium --screenshot wrote nothing ({res.returncode}): {res.stderr[-2000:]}")
    return png


def requested_urls(page: str | Path, timeout: float = 120) -> list[str]:
    """Every URL Chromium's network log records while it loads ``page`` (``--log-net-log``)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "net.json"
        _run(
            [f"--log-net-log={log}", "--net-log-capture-mode=Everything", "--dump-dom", Path(page).resolve().as_uri()],
            timeout,
        )
        text = log.read_text() if log.is_file() else ""
    if not text:
        raise RuntimeError("chromium wrote no network log")
    try:
        events = json.loads(text if text.rstrip().endswith("}") else text.rstrip().rstrip(",") + "]}").get("events", [])
    except ValueError:
        events = []
    urls = []
    for ev in events:
        params = ev.get("params") or {}
        for key in ("url", "original_url"):
            if isinstance(params.get(key), str):
                urls.append(params[key])
    return urls


def page_requests(page: str | Path, timeout: float = 120) -> list[str]:
    """The network URLs (http, https, ws) that loading ``page`` adds to what Chromium requests by itself.

    Chromium contacts its own services (updates, accounts, dictionaries) whatever the page; those hosts are
    measured on a blank page in the same way and left out, so what remains is what the page asked for.
    """
    from urllib.parse import urlsplit

    def network(urls: list[str]) -> list[str]:
        return [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")]

    with tempfile.TemporaryDirectory() as tmp:
        blank = Path(tmp) / "blank.html"
        blank.write_text("<!DOCTYPE html><html><body></body></html>")
        own = {urlsplit(u).hostname for u in network(requested_urls(blank, timeout))}
    return [u for u in network(requested_urls(page, timeout)) if urlsplit(u).hostname not in own]
