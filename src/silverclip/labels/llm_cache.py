"""Persistent answer cache of the LLM labeller: nothing lost, nothing paid twice.

One SQLite file (WAL journal, ``synchronous=FULL``) with one row per finished report, keyed by
``sha256(model, prompt id, sha256(report text))``. Each answer is committed the moment it arrives,
so a run killed at any instant (SIGKILL, power cut after the commit) keeps every finished label,
and the next run sends only the reports that have no row. Concurrent readers (a second process
looking at progress) are fine under WAL.

Stored per report: labels, P(present) (or NULL), the raw answer text, token usage of all the
requests it took, and the number of requests. Never stored: the report text itself (only its
hash) and anything from the request headers (API keys).

Failed reports are not stored: they were not finished, so the next run tries them again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    labels TEXT NOT NULL,
    probabilities TEXT,
    answer TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(model: str, prompt_id: str, text: str) -> str:
    """The cache key of one report: model, prompt id and the report text (hashed)."""
    return hashlib.sha256("\x00".join([model, prompt_id, text_sha256(text)]).encode()).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    labels: list[int]
    probabilities: list[float] | None
    answer: str
    prompt_tokens: int
    completion_tokens: int
    requests: int


class AnswerCache:
    """SQLite-backed map ``cache_key -> CachedAnswer``. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from silverclip.io import create_file

        create_file(self.path)  # the umask's permissions (SQLite would pick 0644); its -wal/-shm files follow it
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the commit is on disk when put() returns, not only safe against a process kill.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not a usable LLM answer cache ({e})") from None

    def get_many(self, keys: list[str]) -> dict[str, CachedAnswer]:
        """The cached answers among ``keys`` (absent keys are simply missing from the result)."""
        out: dict[str, CachedAnswer] = {}
        cols = "key, labels, probabilities, answer, prompt_tokens, completion_tokens, requests"
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT {cols} FROM answers WHERE key IN ({marks})", chunk):
                out[row[0]] = CachedAnswer(
                    labels=json.loads(row[1]),
                    probabilities=json.loads(row[2]) if row[2] is not None else None,
                    answer=row[3],
                    prompt_tokens=row[4],
                    completion_tokens=row[5],
                    requests=row[6],
                )
        return out

    def put(self, key: str, model: str, prompt_id: str, text: str, entry: CachedAnswer) -> None:
        """Store one finished answer and commit at once (durable when this returns)."""
        self._db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                model,
                prompt_id,
                text_sha256(text),
                json.dumps(entry.labels),
                json.dumps(entry.probabilities) if entry.probabilities is not None else None,
                entry.answer,
                entry.prompt_tokens,
                entry.completion_tokens,
                entry.requests,
                time.time(),
            ),
        )
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
