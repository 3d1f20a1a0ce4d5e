"""Worker processes that die with their parent.

A spawned worker of a ``ProcessPoolExecutor`` or ``multiprocessing.Pool`` waits on its task queue for
ever once its parent is killed (SIGKILL, SIGTERM, the OOM killer): nothing tells it, and each one keeps
its memory (hundreds of MB with torch imported). :func:`die_with_parent`, called first in the pool's
initializer with the parent's pid, makes Linux send the worker SIGKILL when the parent dies
(``prctl(PR_SET_PDEATHSIG)``) and, on every platform, starts a daemon thread that ends the worker as soon
as its parent is gone. :func:`init_worker` is that initializer; this module imports nothing heavy, so a
spawned worker gets there before it imports numpy or torch.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

__all__ = ["die_with_parent", "init_worker"]


def die_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> None:
    """End this process when ``parent_pid`` (the pid of the process that started it) exits."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc: the thread below suffices
            pass
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="silverclip-parent-watch", daemon=True).start()


def init_worker(parent_pid: int, torch_threads: int | None = 1) -> None:
    """Pool initializer: die with ``parent_pid``; then, unless ``None``, this many torch threads per worker
    (the workers are the parallelism: more threads only oversubscribe the cores)."""
    die_with_parent(parent_pid)
    if torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(torch_threads)
        import torch

        torch.set_num_threads(torch_threads)
