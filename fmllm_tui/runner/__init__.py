"""fmllm's runner: the minimal test and the full fine-tune, memory-lean, launched detached.

Public API (none of it imports torch; the training runs in a process of its own):

* :func:`run_minimal_test` — the minimal test, returns its report (a dict).
* :func:`start`, :func:`resume`, :func:`stop`, :func:`kill`, :func:`status`, :func:`wait`,
  :func:`follow`, :func:`latest_run`, :func:`list_runs` — launching and watching runs.
* :class:`RunError` — something a person can fix before a run, in plain words.

The training process itself is ``python -m fmllm_tui.runner.train --run-dir DIR``.
"""

from .launch import (
           RunError,
           follow,
           kill,
           latest_run,
           list_runs,
           resume,
           runs_root,
           start,
           status,
           stop,
           wait,
)
from .minimal import run_minimal_test

__all__ = ["RunError", "follow", "kill", "latest_run", "list_runs", "resume", "run_minimal_test", "runs_root",
           "start", "status", "stop", "wait"]
