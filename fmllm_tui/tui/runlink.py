"""The Run screen's link to the runner: find this config's run, follow it, summarise it (no Textual).

Launching, stopping, killing and diagnosing are the runner's (:mod:`fmllm_tui.runner`); this
module only reads what a run folder says (metrics.jsonl, state.json, exit.json, train.log) into
snapshots the screen draws, and remembers which finished runs the TUI has already shown.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmllm_tui.lognoise import LogLine, classify
from fmllm_tui.redact import mask_text

SEEN_MARKER = ".fmllm-tui-seen"  # in a run folder: the TUI has shown how this run ended
LOG_TAIL_LINES = 200
MAX_POINTS = 20_000  # metrics rows kept for the curve (a long run logs far fewer)
FAILED = ("failed", "oom", "killed", "lost")


def find_latest(config_path: str | os.PathLike[str]) -> Path | None:
    """The newest run of this config, or None (also when the config cannot be read)."""
    from fmllm_tui import runner
    from fmllm_tui.config import ConfigError, load_config

    try:
        loaded = load_config(config_path)
    except ConfigError:
        return None
    try:
        return runner.latest_run(loaded)
    except OSError:
        return None


def worth_showing(run_dir: Path) -> bool:
    """Alive, or ended without the TUI having shown its end yet: reattach to it at start-up."""
    from fmllm_tui import runner

    st = runner.status(run_dir)
    if st.get("state") == "running":
        return True
    return not (run_dir / SEEN_MARKER).exists()


def mark_seen(run_dir: Path) -> None:
    """Remember that the TUI has shown how this run ended (no reattach to it next time)."""
    try:
        (run_dir / SEEN_MARKER).write_text(f"{time.time()}\n")
    except OSError:
        pass  # a read-only run folder: the run is shown again next time, which is harmless


@dataclass
class RunSnapshot:
    """Everything the Run screen draws about one run, at one moment."""

    run_dir: Path
    kind: str | None
    state: str  # running | ok | failed | killed | stopped | oom | lost | unknown
    phase: str | None
    metrics: list[dict[str, Any]]
    log_tail: list[LogLine]  # classified by fmllm_tui.lognoise (noise, lines that matter)
    exit: dict[str, Any] | None
    pid: int | None
    max_steps: int | None = None
    warnings: list[str] = field(default_factory=list)
    final_step: int | None = None  # the steps the training process says it did (its result file)

    @property
    def last(self) -> dict[str, Any] | None:
        return self.metrics[-1] if self.metrics else None

    @property
    def step(self) -> int | None:
        """The step the run is at, or ended at: after a stop the process's own count (it may be
        past the last logged row: the stopping step is not always logged)."""
        last = self.last or {}
        logged = last.get("step") if isinstance(last.get("step"), int) else None
        if self.exit is not None and isinstance(self.final_step, int):
            return max(self.final_step, logged or 0)
        return logged

    @property
    def tokens_per_s(self) -> float | None:
        """The newest measured speed: a row with 0 tokens/s (the extra log the Trainer writes at an
        epoch's end, with no step in between) says nothing about the speed, so it is skipped."""
        for row in reversed(self.metrics):
            tps = row.get("tokens_per_s")
            if isinstance(tps, (int, float)) and not isinstance(tps, bool) and tps > 0:
                return float(tps)
        return None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def failed(self) -> bool:
        return self.state in FAILED


class RunFollower:
    """Reads a run folder incrementally: new metrics rows, the log's tail, state and exit."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        from fmllm_tui.runner import rundir as rd
        from fmllm_tui.runner.monitor import JsonlFollower

        self.run_dir = Path(run_dir)
        self._rd = rd
        self._metrics = JsonlFollower(self.run_dir / rd.METRICS)
        self.rows: list[dict[str, Any]] = []
        self._log_off = 0
        self._log_partial = b""
        self._log: list[LogLine] = []
        spec = rd.read_json(self.run_dir / rd.RUN) or {}
        self.kind: str | None = spec.get("kind")
        self.warnings: list[str] = list(spec.get("warnings") or [])
        cfg = rd.read_json(self.run_dir / rd.CONFIG) or {}
        self.planned_steps = (cfg.get("runner") or {}).get("steps")
        self._status: dict[str, Any] = {}
        self._status_at = 0.0

    def _run_status(self) -> dict[str, Any]:
        """runner.status, at most once a second (it re-reads the whole metrics file)."""
        from fmllm_tui import runner

        now = time.monotonic()
        if not self._status or now - self._status_at >= 1.0:
            self._status = runner.status(self.run_dir)
            self._status_at = now
        return self._status

    def _read_log(self) -> None:
        path = self.run_dir / self._rd.LOG
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._log_off:  # replaced: read again from the top
                    self._log_off, self._log_partial, self._log = 0, b"", []
                if size - self._log_off > 1 << 20:  # far behind (reattach to a long run): tail only
                    self._log_off = size - (1 << 20)
                    self._log_partial = b""
                f.seek(self._log_off)
                data = f.read()
        except FileNotFoundError:
            return
        self._log_off += len(data)
        lines = (self._log_partial + data).split(b"\n")
        self._log_partial = lines.pop()
        # only the lines the tail keeps are decoded and classified (a reattach reads up to 1 MiB);
        # the line before the first kept one decides whether a warning's source line is noise
        keep = lines[-(LOG_TAIL_LINES + 1):]
        prev_noise = bool(self._log) and self._log[-1].kind == "noise"
        for i, raw in enumerate(keep):
            # progress bars redraw with \r: keep the last frame of each line
            text = mask_text(raw.decode("utf-8", "replace").rsplit("\r", 1)[-1])
            kind = classify(text, prev_noise)  # once per line, off the UI thread
            prev_noise = kind == "noise"
            if i or len(keep) <= LOG_TAIL_LINES:
                self._log.append(LogLine(text, kind))
        del self._log[:-LOG_TAIL_LINES]

    def poll(self) -> RunSnapshot:
        """Read what is new and return the run as it stands."""
        new = self._metrics.read_new()
        # a resumed run replays the steps since its checkpoint: keep the newest row of each step
        self.rows = self._rd.current_rows(self.rows + new)[-MAX_POINTS:]
        self._read_log()
        st = self._run_status()
        exit_rec = st.get("exit") if isinstance(st.get("exit"), dict) else None
        if exit_rec is not None:
            self.rows = self._rd.current_rows(self.rows + self._metrics.read_new())[-MAX_POINTS:]  # rows just before the exit record
        final_step = self._final_step() if exit_rec is not None else None
        max_steps = None
        if self.rows and isinstance(self.rows[-1].get("max_steps"), int):
            max_steps = self.rows[-1]["max_steps"]
        elif isinstance(self.planned_steps, int):
            max_steps = self.planned_steps
        return RunSnapshot(
            run_dir=self.run_dir, kind=self.kind or st.get("kind"), state=str(st.get("state")),
            phase=st.get("phase"), metrics=list(self.rows), log_tail=list(self._log), exit=exit_rec,
            pid=st.get("pid"), max_steps=max_steps, warnings=self.warnings, final_step=final_step,
        )

    def _final_step(self) -> int | None:
        """Steps done, from the training process's result (summary.json or result.json)."""
        for name in (self._rd.SUMMARY, self._rd.RESULT):
            rec = self._rd.read_json(self.run_dir / name)
            if isinstance(rec, dict) and isinstance(rec.get("steps"), int) and not isinstance(rec["steps"], bool):
                return int(rec["steps"])
        return None


def diagnosis_lines(exit_rec: dict[str, Any] | None, limit: int = 3) -> list[str]:
    """How a run ended, in a few lines: the message, then the log diagnosis (cause and fix)."""
    if not exit_rec:
        return []
    out = []
    msg = exit_rec.get("message")
    if msg:
        out.append(mask_text(str(msg)))
    hits = [h for h in exit_rec.get("diagnosis") or [] if isinstance(h, dict)]
    # root causes first (the diagnosis's order); an info note never reads as the failure
    hits = [h for h in hits if h.get("severity") != "info"] + [h for h in hits if h.get("severity") == "info"]
    for hit in hits[:limit]:
        note = "note: " if hit.get("severity") == "info" else ""
        phase = f" (during {hit['phase'].replace('_', ' ')})" if hit.get("phase") else ""
        line = f"{note}{hit.get('file', 'train.log')}:{hit.get('line', '?')}: {hit.get('cause', '')}{phase}".strip()
        out.append(mask_text(line))
        fx = hit.get("fix")
        if isinstance(fx, dict) and fx.get("summary"):
            out.append(f"  fix: {fx['summary']}")
        if isinstance(fx, dict) and fx.get("shell"):
            out.append(f"  run: {fx['shell']}")
    if exit_rec.get("diagnosis_note"):
        out.append(str(exit_rec["diagnosis_note"]))
    return out


def diagnosis_fix_ids(exit_rec: dict[str, Any] | None) -> list[str]:
    """The fixer ids the log diagnosis points at, most important first."""
    ids: list[str] = []
    for hit in (exit_rec or {}).get("diagnosis") or []:
        fx = hit.get("fix") if isinstance(hit, dict) else None
        if isinstance(fx, dict) and fx.get("id") and fx["id"] not in ids:
            ids.append(str(fx["id"]))
    return ids


def pick_fix(results: dict[str, Any], exit_rec: dict[str, Any] | None) -> Any:
    """The check result whose exact fix answers this failure: the log check's (``logs.scan``,
    which reads the latest run's train.log), else a failing check whose fixer the diagnosis names
    (``config.fit`` carries the exact ``memory.fit`` changes). None when no check has one."""
    wanted = diagnosis_fix_ids(exit_rec)
    usable = [r for r in results.values()
              if r.status in ("fail", "warn") and r.fix is not None and r.fix.changes]
    for r in usable:
        if r.category in ("log", "logs") or r.id.startswith(("log.", "logs.")):
            return r
    for fid in wanted:
        for r in usable:
            if r.fix.id == fid:
                return r
    return None
