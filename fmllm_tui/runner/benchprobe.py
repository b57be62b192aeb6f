"""Bench-only instrumentation of the training process: a Trainer callback added only when a bench
asks for it through config.json's runner overrides (``profile``, ``memory_snapshot``: see
bench/bench_runner_gpu.py, bench/bench_fsdp_gpu.py, bench/bench_fit_verify_gpu.py ``--override``).

* ``profile``: a torch.profiler table of steps 4-5 (after allocation and kernel selection
  settle) in ``profile.txt``.
* ``memory_snapshot`` (CUDA): rank 0 records torch's allocator history over the first
  ``SNAPSHOT_STEPS`` steps into ``memory_snapshot.pickle`` (pytorch.org/memory_viz reads it);
  every rank writes its allocator segments by stream when training starts under FSDP
  (``memory_segments.train_begin.rank<r>.json``), after steps 1-3 (``step<n>_end``; the cache is
  handed back after step 1, ``step1_end_released``, to see whether the reserve comes back), after
  each checkpoint (``saved<step>``) and at the end of training (``memory_segments.rank<r>.json``).

It goes into the Trainer's callbacks after FSDP's train-begin callback (its ``train_begin``
segments are those after the load cache is handed back) and before fmllm's own callback (its
``saved<step>`` segments come before the FSDP adapter gather, and a step's time includes it).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from transformers import TrainerCallback

from .runfiles import RunFiles, _rank

# The memory_snapshot override records torch's allocator history over the first steps (a 14B
# under FSDP makes ~70,000 allocator events a step).
SNAPSHOT_STEPS = 2
SNAPSHOT_MAX_ENTRIES = 600_000
# The profiler runs from the start of step 4 to the end of step 5 (global_step 3 to 5).
PROFILE_STEPS = (3, 5)


def allocator_segments() -> dict[str, Any]:
    """torch's caching allocator on this GPU right now, by stream: reserved and allocated bytes,
    segment count and the largest blocks (what holds the gap between reserved and allocated)."""
    streams: dict[str, dict[str, Any]] = {}
    blocks: list[dict[str, Any]] = []
    # .get: torch's snapshot is a list of plain dicts whose keys vary across torch versions.
    for seg in torch.cuda.memory_snapshot():
        st = streams.setdefault(str(seg.get("stream")), {"reserved": 0, "allocated": 0, "segments": 0})
        st["reserved"] += int(seg.get("total_size", 0))
        st["allocated"] += int(seg.get("allocated_size", 0))
        st["segments"] += 1
        for b in seg.get("blocks", []):
            blocks.append({"stream": str(seg.get("stream")), "size": int(b.get("size", 0)), "state": b.get("state")})
    blocks.sort(key=lambda b: -b["size"])
    return {"reserved_bytes": int(torch.cuda.memory_reserved()), "allocated_bytes": int(torch.cuda.memory_allocated()),
            "max_reserved_bytes": int(torch.cuda.max_memory_reserved()),
            "max_allocated_bytes": int(torch.cuda.max_memory_allocated()), "streams": streams, "largest_blocks": blocks[:40]}


class BenchProbe(TrainerCallback):  # type: ignore[misc]
    """The bench's profile and allocator records (see the module docstring)."""

    def __init__(self, files: RunFiles, device: str, *, profile: bool, memory_snapshot: bool, fsdp: bool):
        self.files, self.device, self.fsdp = files, device, fsdp
        self.profile_steps = PROFILE_STEPS if profile else None
        # The allocator records need CUDA; on the CPU this knob records nothing.
        self.snapshot = memory_snapshot and device == "cuda"
        self.prof: Any = None

    def _segments(self, label: str) -> None:
        (self.files.dir / f"memory_segments.{label}.rank{_rank()}.json").write_text(
            json.dumps(allocator_segments(), indent=1))

    def _dump_history(self) -> None:
        torch.cuda.memory._dump_snapshot(str(self.files.dir / "memory_snapshot.pickle"))
        torch.cuda.memory._record_memory_history(enabled=None)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.snapshot and self.fsdp:
            self._segments("train_begin")

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.snapshot and self.files.main and state.global_step == 0:
            torch.cuda.memory._record_memory_history(max_entries=SNAPSHOT_MAX_ENTRIES, stacks="python")
        if self.profile_steps and state.global_step == self.profile_steps[0] and self.prof is None:
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                           if self.device == "cuda" else [])
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()

    def _end_profile(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        ka = self.prof.key_averages()
        text = ka.table(sort_by="self_cpu_time_total", row_limit=40)
        if self.device == "cuda":
            text += "\n\n" + ka.table(sort_by="self_cuda_time_total", row_limit=25)
        if self.files.main:
            (self.files.dir / "profile.txt").write_text(text)
        self.prof = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.snapshot and self.files.main and state.global_step == SNAPSHOT_STEPS:
            self._dump_history()
        if self.snapshot and 1 <= state.global_step <= 3:
            # Is the reserve above the training's allocations made again every step? Hand the
            # cache back after step 1 and look at it after steps 2 and 3.
            self._segments(f"step{state.global_step}_end")
            if state.global_step == 1:
                torch.cuda.empty_cache()
                self._segments("step1_end_released")
        if self.prof is not None and self.profile_steps and state.global_step >= self.profile_steps[1]:
            self._end_profile()

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.snapshot and self.files.main and state.global_step < SNAPSHOT_STEPS:
            self._dump_history()  # a run shorter than SNAPSHOT_STEPS: dump what was recorded
        if self.snapshot:
            (self.files.dir / f"memory_segments.rank{_rank()}.json").write_text(
                json.dumps(allocator_segments(), indent=1))

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.snapshot:
            self._segments(f"saved{state.global_step}")


def bench_probe(files: RunFiles, device: str, overrides: dict[str, Any], *, fsdp: bool) -> BenchProbe | None:
    """The probe when a bench's runner overrides ask for one (``profile``, ``memory_snapshot``),
    else None: an ordinary run carries no bench instrumentation."""
    profile, snapshot = bool(overrides.get("profile")), bool(overrides.get("memory_snapshot"))
    if not (profile or snapshot):
        return None
    return BenchProbe(files, device, profile=profile, memory_snapshot=snapshot, fsdp=fsdp)
