"""The run directory: its file names and safe ways to write them. No torch here.

Layout of ``<output_dir>/runs/<YYYYmmdd-HHMMSS>-<kind>/`` (created mode 0700)::

    config.json     the resolved config (secrets masked) and the runner's own settings
    run.json        the launch record: kind, argv of the training process, config path, times
    pid             the supervisor's pid (= the run's process group id) and start time, one line
    child.pid       the pid and start time of what the supervisor started (trainer or launcher)
    trainer.rank<N>.pid  each training process's pid and start time, written by itself
    supervisor.lock one supervisor at a time: it holds an exclusive lock on this file while it lives
    train.log       stdout + stderr of the training process, plus fmllm's own lines ("[fmllm] ...")
    state.json      the phase now (loading, tokenizing, training, saving, generating, done) and step
    metrics.jsonl   one JSON object per logged step
    checkpoints/    Trainer checkpoints (checkpoint-<step>/), every save_steps; resume reads these
    adapter/        the final adapter; complete only when adapter/fmllm-complete.json exists
    summary.json    full run: final loss, tokens/s, peak memory, wall time, sample generations
    result.json     minimal test: the report run_minimal_test returns
    outcome.json    the training process's own last word (status, message)
    oom.txt         torch.cuda.memory_summary() at the moment of a CUDA out-of-memory error
    stop.requested  written by `stop` so the exit is recorded as "stopped"
    exit.json       the exit record: status ok|failed|killed|stopped|oom, exit code, diagnosis
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CONFIG = "config.json"
RUN = "run.json"
PID = "pid"
CHILD_PID = "child.pid"
TRAINER_PID_GLOB = "trainer.rank*.pid"
SUPERVISOR_LOCK = "supervisor.lock"
LOG = "train.log"
STATE = "state.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
COMPLETE_MARKER = "fmllm-complete.json"
SUMMARY = "summary.json"
RESULT = "result.json"
OUTCOME = "outcome.json"
OOM = "oom.txt"
STOP_REQUEST = "stop.requested"
EXIT = "exit.json"

STATUSES = ("ok", "failed", "killed", "stopped", "oom")


def trainer_pid(rank: int) -> str:
    """The file a training process of ``rank`` records its pid and start time in."""
    return f"trainer.rank{int(rank)}.pid"


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` so a reader sees the old file or the new one, never half of one."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record as one line (a single write, so followers never see half a line)."""
    line = json.dumps(record, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


def log_line(run_dir: str | os.PathLike[str], text: str) -> None:
    """Append one of fmllm's own lines to the run's log."""
    with open(Path(run_dir) / LOG, "a", encoding="utf-8") as fh:
        fh.write(f"[fmllm] {text}\n")


def adapter_complete(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an adapter folder whose save finished (its marker was written last)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def open_private_append(path: Path, buffering: int = -1) -> Any:
    """``path`` opened for appending bytes, created 0600 (a run's files are the user's alone)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file keeps its mode otherwise
    except OSError:
        pass
    return os.fdopen(fd, "ab", buffering=buffering)


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not whole (its header names every tensor's byte range: the file
    must be exactly as long as the last one ends), or None. Reads the header only."""
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"truncated: its header says {n} bytes of metadata, the file has {size}"
            meta = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"
    if not isinstance(meta, dict):
        return "its header is not a JSON object"
    ends = [int(v["data_offsets"][1]) for k, v in meta.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)]
    want = 8 + n + max(ends, default=0)
    if size != want:
        return f"truncated: {size} bytes where its header needs {want}" if size < want else \
            f"{size} bytes where its header needs {want}"
    return None


def checkpoint_dirs(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """The Trainer's ``checkpoint-<step>`` folders in ``folder``, newest first (set-aside
    ``*.incomplete`` / ``*.damaged`` ones are not listed)."""
    base = Path(folder)
    if not base.is_dir():
        return []
    found = [(int(p.name[len("checkpoint-"):]), p) for p in base.iterdir()
             if p.name.startswith("checkpoint-") and p.name[len("checkpoint-"):].isdigit() and p.is_dir()]
    return sorted(found, reverse=True)


def checkpoint_saved(ckpt: Path) -> bool:
    """Whether the checkpoint's save finished: the trainer state and the adapter are there (an
    FSDP checkpoint's sharded model and optimizer are written before fmllm's adapter, so its
    presence means the rest is there)."""
    model_saved = any(ckpt.glob("adapter_model.*")) and (
        not any(ckpt.glob("pytorch_model_fsdp*")) or any(ckpt.glob("optimizer*")))
    return (ckpt / "trainer_state.json").is_file() and model_saved


def checkpoint_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from, naming the file, or None. Cheap
    (headers and zip directories only): a truncated adapter, optimizer, scheduler or RNG state
    (a disk that filled, a copy cut short) is found before the Trainer fails on it unnamed."""
    import zipfile

    d = Path(folder)
    for f in sorted(d.iterdir()) if d.is_dir() else []:
        if not f.is_file():
            continue
        why = None
        if f.suffix == ".safetensors":
            why = _safetensors_problem(f)
        elif f.suffix in (".pt", ".pth", ".bin"):
            # torch.save writes a zip archive: its directory is at the end, so a cut file has none.
            if not zipfile.is_zipfile(f):
                why = "truncated or not a torch archive (no zip directory at its end)"
        elif f.suffix == ".json" and read_json(f) is None:
            why = "not valid JSON (cut short?)"
        if why:
            return f"{f}: {why}"
    return None


def _same_attempt(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a.get("resumed_from")) and a.get("resumed_from") == b.get("resumed_from")


def current_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metrics rows as the run stands: after a resume the Trainer replays the steps since its
    checkpoint (rows marked ``replayed``, and ``resumed_from`` the checkpoint), so a row replaces
    every earlier row of its step or a later one. Readers that plot or sum rows use this, so no
    step is counted twice."""
    out: list[dict[str, Any]] = []
    for row in rows:
        step = row.get("step")
        # Only a row of a later attempt replaces: one attempt may log a step twice (the Trainer's
        # epoch-end row repeats the last logged step), and both rows stay.
        later_attempt = bool(row.get("replayed") or row.get("resumed_from"))
        while (later_attempt and isinstance(step, int) and out and isinstance(out[-1].get("step"), int)
               and out[-1]["step"] >= step and not _same_attempt(out[-1], row)):
            out.pop()
        out.append(row)
    return out
