"""The training process's run-folder I/O, ranks and signals (:mod:`fmllm_tui.runner.train`).

Rank 0 alone writes the run folder's files and ``[fmllm]`` lines under several processes
(``accelerate launch``: DDP or FSDP); every rank reads the same signals, which stop the training
after its step (the first SIGTERM/SIGINT once training runs) or end the process at once (before
training starts, or a second one). The training process needs torch, so this module imports it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import rundir as rd


class StopRequested(Exception):
    """SIGTERM/SIGINT that ends the process at once: before training started (nothing to
    checkpoint yet), or a second one during or after training."""

    def __init__(self, signame: str, phase: str):
        super().__init__(signame)
        self.signame, self.phase = signame, phase

    def describe(self) -> str:
        """What the stop did, for the outcome's message."""
        if self.phase == "loading":
            return f"{self.signame} before training started; nothing to save"
        return (f"a second {self.signame} {'during' if self.phase == 'training' else 'after'} training: ended at "
                "once" + ("; fmllm-run resume continues from the last complete checkpoint"
                          if self.phase == "training" else "; the adapter may not have been saved"))


# phase: loading (a stop ends the process: nothing to save), training (the first stop ends the
# training after this step, with a checkpoint), after (the first stop lets the adapter save finish).
_signals: dict[str, Any] = {"count": 0, "phase": "loading"}


def _on_signal(signum: int, frame: Any) -> None:
    _signals["count"] += 1
    name, phase = signal.Signals(signum).name, _signals["phase"]
    if phase == "loading" or _signals["count"] > 1:
        raise StopRequested(name, phase)
    if phase == "training":
        print(f"[fmllm] {name}: stopping after this step (a checkpoint is saved first)", flush=True)
    else:
        print(f"[fmllm] {name} after training: the adapter save finishes first, sample generations are skipped",
              flush=True)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT go through :func:`_on_signal` (the phase decides what a stop does)."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def set_phase(phase: str) -> None:
    """loading | training | after: what the next stop does (see ``_signals``)."""
    _signals["phase"] = phase


def stop_signalled() -> bool:
    """Whether a SIGTERM/SIGINT has come (the first one during training only ends it after a step)."""
    return _signals["count"] > 0


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _dist_ready() -> bool:
    return _world() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_ranks(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (a collective: every rank must call it); [value]
    in a one-process run."""
    if not _dist_ready():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def say(message: str) -> None:
    """A ``[fmllm]`` line in train.log, from rank 0 only (the others would repeat it)."""
    if _rank() == 0:
        print(f"[fmllm] {message}", flush=True)


class RunFiles:
    """Writes the run directory's files (rank 0 only under several processes)."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.main = _rank() == 0

    def state(self, phase: str, **extra: Any) -> None:
        """state.json (the phase, when, which process) and its line in train.log."""
        if self.main:
            rd.write_json_atomic(self.dir / rd.STATE, {"phase": phase, "ts": time.time(), "pid": os.getpid(), **extra})
            print(f"[fmllm] phase: {phase}" + (f" {json.dumps(extra, default=str)}" if extra else ""), flush=True)

    def metrics(self, row: dict[str, Any]) -> None:
        """One row of metrics.jsonl."""
        if self.main:
            rd.append_jsonl(self.dir / rd.METRICS, row)

    def write(self, name: str, data: Any) -> None:
        """A JSON file of the run folder, written atomically."""
        if self.main:
            rd.write_json_atomic(self.dir / name, data)


@dataclass
class RunnerSettings:
    """config.json's ``runner`` section: how the launch asked this process to run (untyped JSON
    written by fmllm_tui.runner.launch.build_spec, or by a bench with fewer keys: the defaults
    here are launch's, read in this one place)."""

    kind: str = "train"
    device: str = "auto"
    steps: int | None = None
    vram_bytes: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    sample_generations: int = 3
    max_new_tokens: int = 64
    distributed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> RunnerSettings:
        """The settings from config.json's ``runner`` (a dict; anything else reads as the defaults)."""
        raw = data if isinstance(data, dict) else {}
        kind = str(raw.get("kind") or "train")
        tokens = raw.get("max_new_tokens")
        return cls(kind=kind, device=str(raw.get("device") or "auto"), steps=raw.get("steps"),
                   vram_bytes=raw.get("vram_bytes"), overrides=dict(raw.get("overrides") or {}),
                   sample_generations=int(raw.get("sample_generations", 3)),
                   # launch writes 32 for a minimal test, 64 for a full run
                   max_new_tokens=int(tokens if tokens is not None else (32 if kind == "test" else 64)),
                   distributed=dict(raw.get("distributed") or {}))

    def bench_asks(self, knob: str) -> bool:
        """Whether a bench's runner override (``profile``, ``memory_snapshot``) is on."""
        return bool(self.overrides.get(knob))


def distributed_mode(runner: RunnerSettings) -> str:
    """single | ddp | fsdp: what the launch set up (accelerate's own variable wins for FSDP)."""
    if _world() <= 1:
        return "single"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return "fsdp"
    mode = str(runner.distributed.get("mode") or "ddp")
    return mode if mode in ("ddp", "fsdp") else "ddp"


def memory_now(device: str) -> dict[str, int | None]:
    """Allocated, reserved and peak bytes (CUDA), or the process RSS and its peak (CPU)."""
    if device == "cuda":
        return {"allocated_bytes": int(torch.cuda.memory_allocated()),
                "reserved_bytes": int(torch.cuda.memory_reserved()),
                "peak_bytes": int(torch.cuda.max_memory_reserved()),
                "peak_allocated_bytes": int(torch.cuda.max_memory_allocated())}
    rss = None
    try:
        import psutil

        rss = int(psutil.Process().memory_info().rss)
    except Exception:  # psutil is a dependency, but memory figures are never worth a crash
        pass
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return {"allocated_bytes": rss, "reserved_bytes": rss, "peak_bytes": peak, "peak_allocated_bytes": peak}
