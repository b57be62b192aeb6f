"""A run's processes: who they are, whether they still live, and how to end them. No torch here.

A run is alive while any of its processes is, not only its supervisor: a supervisor killed from
outside leaves its training process running (reparented to init), and a resume that trusted the
supervisor alone started a second trainer beside the first (issue 22, item 1).

A pid alone is no identity: the kernel gives a free number to the next process. Each process is
recorded with its start time (psutil's ``create_time``, from ``/proc/<pid>/stat``'s starttime)
and counts as the run's only while a process of that pid *and* that start time runs (a zombie is
gone). The records, in the run folder:

    pid                    the supervisor (written by the launching process)
    child.pid              what the supervisor started: the trainer, accelerate's launcher or a
                           custom fmllm.train_command
    trainer.rank<N>.pid    each fmllm training process, written by itself (accelerate starts the
                           ranks in sessions of their own, out of the supervisor's process group)

Each holds ``<pid> <start time>``; an older one-number file (or a process that ended before its
start time was read) is judged by its command line mentioning the run folder instead.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import rundir as rd

# Start times are read from the same kernel counter (clock ticks since boot): equal for the same
# process; two processes of one pid are at least the pid space's wrap apart.
_SAME_START_S = 0.05


@dataclass(frozen=True)
class RunProcess:
    """One recorded process of a run: ``role`` is supervisor, child or rank<N>."""

    role: str
    pid: int
    started: float | None
    record: str

    def describe(self) -> str:
        """'training process pid 123 (rank 0)', 'supervisor pid 99', ..."""
        if self.role == "supervisor":
            return f"supervisor pid {self.pid}"
        if self.role == "child":
            return f"training command pid {self.pid}"
        return f"training process pid {self.pid} ({self.role.replace('rank', 'rank ')})"


def start_time(pid: int) -> float | None:
    """The start time of process ``pid`` (seconds since the epoch), or None when it is gone."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # NoSuchProcess, AccessDenied: no identity to record
        return None


def write_pid_record(path: str | os.PathLike[str], pid: int | None = None) -> None:
    """Record ``pid`` (default: this process) with its start time, atomically."""
    pid = os.getpid() if pid is None else int(pid)
    started = start_time(pid)
    rd.write_text_atomic(path, f"{pid} {started:.3f}\n" if started is not None else f"{pid}\n")


def read_pid_record(path: str | os.PathLike[str]) -> tuple[int | None, float | None]:
    """(pid, start time) from a record; (None, None) when missing or unreadable."""
    try:
        parts = Path(path).read_text().split()
        pid = int(parts[0])
    except (OSError, ValueError, IndexError):
        return None, None
    try:
        return pid, float(parts[1]) if len(parts) > 1 else None
    except ValueError:
        return pid, None


def is_alive(pid: int | None, started: float | None = None, must_mention: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and is the recorded process: its start time equals
    ``started`` when known, else its command line mentions ``must_mention`` when given."""
    if not pid or pid <= 0:
        return False
    try:
        import psutil

        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is not None:
            return abs(p.create_time() - started) < _SAME_START_S
        if must_mention is not None:
            return any(must_mention in part for part in p.cmdline())
        return True
    except Exception:  # NoSuchProcess, AccessDenied, psutil missing: treat as gone
        return False


def recorded(run_dir: str | os.PathLike[str]) -> list[RunProcess]:
    """Every process the run folder records, alive or not (supervisor first, then child, ranks)."""
    rdir = Path(run_dir)
    out = []
    for role, path in [("supervisor", rdir / rd.PID), ("child", rdir / rd.CHILD_PID),
                       *((p.name.split(".")[1], p) for p in sorted(rdir.glob(rd.TRAINER_PID_GLOB)))]:
        pid, started = read_pid_record(path)
        if pid:
            out.append(RunProcess(role, pid, started, path.name))
    return out


def alive(run_dir: str | os.PathLike[str], proc: RunProcess) -> bool:
    """Whether ``proc`` still runs as the run's (a pid without a start time: it must name the run)."""
    # fmllm's own processes carry the run folder on their command line; a custom command may not.
    mention = None if proc.role == "child" else str(Path(run_dir).resolve())
    return is_alive(proc.pid, proc.started, mention)


def live(run_dir: str | os.PathLike[str]) -> list[RunProcess]:
    """The run's processes that still run, supervisor first; a process recorded twice (the child
    that is rank 0 of a one-process run) once, by its rank."""
    found = [p for p in recorded(run_dir) if alive(run_dir, p)]
    ranked = {p.pid for p in found if p.role.startswith("rank")}
    return [p for p in found if not (p.role == "child" and p.pid in ranked)]


def trainers(procs: list[RunProcess]) -> list[RunProcess]:
    """The training processes among ``procs`` (everything but the supervisor)."""
    return [p for p in procs if p.role != "supervisor"]


def holders_text(procs: list[RunProcess]) -> str:
    """'training process pid 123 (rank 0), ...' for a message."""
    return ", ".join(p.describe() for p in procs)


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # gone already: nothing below it to find
        return []


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def kill_all(run_dir: str | os.PathLike[str]) -> list[int]:
    """SIGKILL every live process of the run, what they started, and their process groups.

    Groups are frozen first (SIGSTOP), so a launcher cannot start a rank after the list is
    taken (accelerate starts each rank in a session of its own, which a group kill misses). A
    group is signalled only through a process verified as the run's (a dead supervisor's pid may
    name someone else's group by now), and never the caller's own group. Returns the pids signalled.
    """
    procs = live(run_dir)
    own = os.getpgrp()
    groups = {g for g in (_group_of(p.pid) for p in procs) if g and g != own and g > 1}
    for g in groups:
        try:
            os.killpg(g, signal.SIGSTOP)
        except (ProcessLookupError, PermissionError):
            pass
    pids: list[int] = []
    for p in procs:
        pids += [p.pid, *_descendants(p.pid)]
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in dict.fromkeys(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return list(dict.fromkeys(pids))


def summary_of(procs: list[RunProcess]) -> dict[str, Any]:
    """What ``status`` tells about live processes: which they are, and whether the supervisor is one."""
    return {"processes": [{"role": p.role, "pid": p.pid} for p in procs],
            "supervisor_alive": any(p.role == "supervisor" for p in procs)}
