"""Stage bookkeeping for resumable multi-stage runs.

A stage is complete when ``<run>/stages/<name>.json`` exists: it is written atomically only after
the stage's outputs are complete, and records those outputs, the stage's config fingerprint and
its duration. A killed run therefore restarts at the first incomplete stage; inside a stage,
resumption is the stage's own business (the preprocessing cache skips finished volumes, training
resumes from its last checkpoint, the LLM labeller from its answer cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silverclip.config import config_to_dict
from silverclip.io import atomic_write_json

STAGES_DIR = "stages"


class StageConfigChanged(RuntimeError):
    """A completed stage was run with a different config than the one now given."""


def fingerprint(obj: Any) -> str:
    """A stable hash of a config section (dataclass, dict or value)."""
    text = json.dumps(config_to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageRunner:
    """Runs named stages in order inside ``run_dir``, skipping those already complete."""

    run_dir: Path
    force: tuple[str, ...] = ()
    log: Callable[[str], None] = print

    def marker(self, name: str) -> Path:
        return Path(self.run_dir) / STAGES_DIR / f"{name}.json"

    def done(self, name: str) -> dict[str, Any] | None:
        path = self.marker(name)
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    @property
    def is_main(self) -> bool:
        """Under torchrun every rank runs the training stages; only rank 0 logs and writes markers."""
        return int(os.environ.get("RANK", "0")) == 0

    def run(self, name: str, fn: Callable[[], dict[str, Any]], config: Any = None) -> dict[str, Any]:
        """Run ``fn`` unless stage ``name`` is complete with the same config; return its outputs."""
        fp = fingerprint(config)
        log = self.log if self.is_main else (lambda _msg: None)
        previous = self.done(name)
        if previous is not None and name not in self.force:
            if previous.get("fingerprint") != fp:
                raise StageConfigChanged(
                    f"stage {name!r} in {self.run_dir} was completed with a different config; "
                    f"use a new run folder or rerun it with --force {name}"
                )
            log(f"[{name}] already complete, skipped ({self.marker(name)})")
            return previous["outputs"]
        log(f"[{name}] running ...")
        start = time.perf_counter()
        outputs = fn() or {}
        seconds = time.perf_counter() - start
        if self.is_main:
            atomic_write_json(
                self.marker(name),
                {"stage": name, "fingerprint": fp, "seconds": round(seconds, 2), "outputs": config_to_dict(outputs)},
            )
        log(f"[{name}] done in {seconds:.1f} s")
        return config_to_dict(outputs)
