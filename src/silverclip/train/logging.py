"""Training metrics: one JSON line per record (``metrics.jsonl``), a CSV view, optional TensorBoard.

Only rank 0 writes. On resume, records of steps after the checkpoint being resumed from (logged by
the interrupted run but lost with it) are dropped, so the log matches an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from silverclip.io import atomic_to_csv, atomic_write_text

log = logging.getLogger(__name__)

JSONL = "metrics.jsonl"
CSV = "metrics.csv"


class MetricsLogger:
    """Append-only metric records ``{"step": int, "epoch": int, "kind": "train"|"val", **values}``."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = False, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / JSONL
        self.tb = None
        if not enabled:
            return
        self._truncate(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                log.warning(
                    "TensorBoard is not installed (pip install 'silverclip[tensorboard]'); logging to JSONL/CSV only"
                )

    def _truncate(self, resume_step: int) -> None:
        if not self.path.is_file():
            return
        keep = [r for r in self.records() if r.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def log(self, step: int, epoch: int, kind: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "epoch": int(epoch), "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def write_csv(self) -> None:
        """Rewrite ``metrics.csv`` (one row per record, union of columns) from the JSONL."""
        if not self.enabled or not self.path.is_file():
            return
        atomic_to_csv(pd.DataFrame(self.records()), self.run_dir / CSV)

    def close(self) -> None:
        self.write_csv()
        if self.tb is not None:
            self.tb.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v
