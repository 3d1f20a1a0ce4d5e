"""Persistent answer cache of the LLM labeller: nothing lost, nothing paid twice.

One SQLite file (WAL journal, ``synchronous=FULL``) with one row per finished request, keyed by
``sha256(model, prompt id, sha256(text sent))`` (the cascade's prompt id names the findings asked).
Each answer is committed the moment it arrives, so a run killed at any instant (SIGKILL, power cut
after the commit) keeps every finished label, and the next run sends only the requests that have no
row. Concurrent readers (a second process looking at progress) are fine under WAL.

Stored per request: labels, P(present) (or NULL), the raw answer text, token usage of all the
requests it took (input, of which cached, and output), and the number of requests. A cache written
before the cached-token column existed is upgraded in place (the column added, old rows 0).
Never stored: the report text itself (only its hash) and anything from the request headers (API keys).

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
    created REAL NOT NULL,
    cached_prompt_tokens INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = (
    "key, model, prompt_id, text_sha256, labels, probabilities, answer, prompt_tokens, completion_tokens, "
    "requests, created, cached_prompt_tokens"
)


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
    cached_prompt_tokens: int = 0


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
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(answers)")}
            if "cached_prompt_tokens" not in columns:
                self._db.execute("ALTER TABLE answers ADD COLUMN cached_prompt_tokens INTEGER NOT NULL DEFAULT 0")
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path}: not a usable LLM answer cache ({e})") from None

    def get_many(self, keys: list[str]) -> dict[str, CachedAnswer]:
        """The cached answers among ``keys`` (absent keys are simply missing from the result)."""
        out: dict[str, CachedAnswer] = {}
        cols = "key, labels, probabilities, answer, prompt_tokens, completion_tokens, requests, cached_prompt_tokens"
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
                    cached_prompt_tokens=row[7],
                )
        return out

    def put(self, key: str, model: str, prompt_id: str, text_hash: str, entry: CachedAnswer) -> None:
        """Store one finished answer (``text_hash``: :func:`text_sha256` of what was sent) and commit at once."""
        self._db.execute(
            f"INSERT OR REPLACE INTO answers ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                model,
                prompt_id,
                text_hash,
                json.dumps(entry.labels),
                json.dumps(entry.probabilities) if entry.probabilities is not None else None,
                entry.answer,
                entry.prompt_tokens,
                entry.completion_tokens,
                entry.requests,
                time.time(),
                entry.cached_prompt_tokens,
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


def cached_keys(path: str | Path, keys: list[str]) -> set[str]:
    """The ``keys`` that have an answer in the cache at ``path``, read-only (no file is created or changed)."""
    path = Path(path)
    if not path.is_file():
        return set()
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path}: not a usable LLM answer cache ({e})") from None
    try:
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in db.execute(f"SELECT key FROM answers WHERE key IN ({marks})", chunk))
        return found
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{path}: not a usable LLM answer cache ({e})") from None
    finally:
        db.close()
