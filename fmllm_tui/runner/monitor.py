"""Watching a run: reading its metrics stream as it grows, and sampling GPU memory through NVML.

No torch here; ``pynvml`` (nvidia-ml-py) is imported only when a sampler starts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from fmllm_tui.gpu import (
    visible_device,  # the one CUDA_VISIBLE_DEVICES parser (re-exported for the runner)
)
from fmllm_tui.units import format_duration  # re-exported: fmllm-run reads it here


class JsonlFollower:
    """Reads the complete lines appended to a JSONL file since the last call.

    A line still being written (no newline yet) is left for the next call; a line that is not
    valid JSON is skipped and counted, never raised.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.offset = 0
        self.bad_lines = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        """The records appended since the last call (possibly none)."""
        try:
            with self.path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < self.offset:  # the file was replaced: start over
                    self.offset, self._partial = 0, b""
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out: list[dict[str, Any]] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete record of a JSONL file (empty when it does not exist)."""
    return JsonlFollower(path).read_new()


def _nvml() -> Any:
    from fmllm_tui.gpu import nvml_session  # deferred: most callers never sample

    return nvml_session()


class NvmlSampler:
    """Samples one GPU's used memory every ``interval`` seconds in a thread.

    ``baseline_bytes`` is the device's use when the sampler started (before the process took
    anything, if started early); ``process_peak_bytes`` is the peak less that baseline: the
    memory the process took, CUDA context included — what decides whether a run fits a card.
    Per-process figures from NVML are used when the driver reports our pid (not in every
    container), the device delta otherwise (``method`` says which).
    """

    def __init__(self, *, index: int | None = None, uuid: str | None = None, pid: int | None = None,
                 interval: float = 0.02):
        self.index, self.uuid, self.pid = index, uuid, pid or os.getpid()
        self.interval = interval
        self.baseline_bytes: int | None = None
        self.peak_used_bytes: int | None = None
        self.peak_process_bytes: int | None = None
        self.last_used_bytes: int | None = None
        self.total_bytes: int | None = None
        self.samples = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nv: Any = None
        self._handle: Any = None

    def start(self) -> NvmlSampler:
        """Start sampling; on any NVML failure ``error`` says why and nothing is sampled."""
        try:
            nv = _nvml()
            if self.uuid:
                handle = nv.nvmlDeviceGetHandleByUUID(self.uuid)
            else:
                index = self.index
                if index is None:
                    index = _first_visible_index()
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            info = nv.nvmlDeviceGetMemoryInfo(handle)
        except Exception as e:  # no driver, no device, no library: all mean "cannot sample"
            self.error = f"NVML unavailable: {e}"
            return self
        self._nv, self._handle = nv, handle
        self.baseline_bytes = int(info.used)
        self.total_bytes = int(info.total)
        self.peak_used_bytes = int(info.used)
        self._thread = threading.Thread(target=self._run, name="fmllm-nvml", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        nv, h = self._nv, self._handle
        used = int(nv.nvmlDeviceGetMemoryInfo(h).used)
        self.last_used_bytes = used
        self.samples += 1
        if self.peak_used_bytes is None or used > self.peak_used_bytes:
            self.peak_used_bytes = used
        mine = None
        try:
            for p in nv.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid == self.pid and p.usedGpuMemory is not None:
                    mine = int(p.usedGpuMemory)
        except Exception:  # per-process queries are not supported everywhere
            mine = None
        if mine is not None and (self.peak_process_bytes is None or mine > self.peak_process_bytes):
            self.peak_process_bytes = mine
            self._per_process = True

    def used_now(self) -> int | None:
        """One reading of the device's used memory right now (None when NVML is unavailable)."""
        if self._nv is None:
            return None
        try:
            return int(self._nv.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception:  # the device went away
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as e:  # the device went away mid-run: stop quietly, keep what we have
                self.error = f"NVML sampling stopped: {e}"
                return
            self._stop.wait(self.interval)

    _per_process = False

    @property
    def method(self) -> str:
        return "nvml-process" if self._per_process else "nvml-device-delta"

    @property
    def process_peak_bytes(self) -> int | None:
        """Peak memory of the process (per-process NVML figure, else device peak less baseline)."""
        if self._per_process and self.peak_process_bytes is not None:
            return self.peak_process_bytes
        if self.peak_used_bytes is None or self.baseline_bytes is None:
            return None
        return max(0, self.peak_used_bytes - self.baseline_bytes)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            if self._nv is not None:
                self._sample()
        except Exception:  # a last sample is a nicety
            pass

    def to_json(self) -> dict[str, Any]:
        return {"baseline_bytes": self.baseline_bytes, "peak_used_bytes": self.peak_used_bytes,
                "process_peak_bytes": self.process_peak_bytes, "total_bytes": self.total_bytes,
                "samples": self.samples, "method": self.method, "error": self.error}


def _first_visible_index() -> int:
    index, _ = visible_device(0)
    return index or 0


def format_metrics(row: dict[str, Any]) -> str:
    """One line for a person following a run."""
    parts = []
    step, total = row.get("step"), row.get("max_steps")
    if step is not None:
        parts.append(f"step {step}" + (f"/{total}" if total else ""))
    for key, label, fmt in (("loss", "loss", "{:.4f}"), ("lr", "lr", "{:.2e}"), ("grad_norm", "grad", "{:.3f}"),
                            ("tokens_per_s", "tok/s", "{:,.0f}")):
        v = row.get(key)
        if isinstance(v, (int, float)):
            parts.append(f"{label} " + fmt.format(v))
    alloc, peak = row.get("allocated_bytes"), row.get("peak_bytes")
    if isinstance(peak, (int, float)):
        mem = f"mem {alloc / 2**30:.2f}/" if isinstance(alloc, (int, float)) else "mem "
        parts.append(mem + f"{peak / 2**30:.2f} GiB peak")
    eta = row.get("eta_s")
    if isinstance(eta, (int, float)) and eta > 0:
        parts.append("eta " + format_duration(eta))
    return "  ".join(parts)


def wait_for(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
