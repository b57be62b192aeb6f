"""Run ``fmllm-check`` in a child process and follow its JSON-lines report (no Textual here).

The TUI never runs pytest in its own process: pytest's fd-level capture would fight the screen,
and a re-run after a fix must see the edited file with fresh imports. The child writes
``collected`` / ``start`` / ``result`` events to a report file, which :meth:`CheckRun.events`
tails line by line until the child has exited and the file is drained.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmllm_tui.findings import CheckResult


@dataclass(frozen=True)
class CheckRunSpec:
    """What the child ``fmllm-check`` is asked to check (the TUI's own flags, passed through)."""

    config: str
    gpu: str | None = None
    vram: str | None = None
    offline: bool = False
    logs: tuple[str, ...] = ()  # training logs the checks scan too (a failed run's train.log)

    def argv(self, report: Path) -> list[str]:
        """The child's command line, writing its event stream to ``report``."""
        from fmllm_tui.checkrun import finding_flags

        return [sys.executable, "-m", "fmllm_tui.cli_check", "--config", self.config, "--report", str(report),
                "--json", *finding_flags(gpu=self.gpu, vram=self.vram, offline=self.offline, logs=self.logs)]


def child_env() -> dict[str, str]:
    """This environment, with the folder holding this very fmllm_tui first on PYTHONPATH so the
    child runs the same checks, fixers and config loader as the TUI that shows them."""
    root = str(Path(__file__).resolve().parents[2])
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        parts.insert(0, root)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(parts), "PYTHONUNBUFFERED": "1"}


def result_from_event(d: dict[str, Any]) -> CheckResult:
    """A ``result`` event's payload as a CheckResult, keeping ``safe`` when the stream has it."""
    res = CheckResult.from_json(d)
    fx = d.get("fix")
    if res.fix is not None and isinstance(fx, dict) and "safe" in fx:
        res.fix.safe = bool(fx["safe"])
    return res


class CheckRun:
    """One run of the suite in a child process, in its own session so it can be stopped whole."""

    def __init__(self, spec: CheckRunSpec, workdir: Path, serial: int = 0):
        self.spec = spec
        self.serial = serial
        workdir.mkdir(parents=True, exist_ok=True)
        self.report = workdir / f"checks-{serial}.jsonl"
        self.stderr_path = workdir / f"checks-{serial}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the child; the report file exists (empty) before it does."""
        self.report.write_text("")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.spec.argv(self.report),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the --json document repeats what the stream said
                stderr=err,
                start_new_session=True,  # a stop reaches the bitsandbytes probe it may start too
                env=child_env(),
            )

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def events(self, should_stop: Callable[[], bool] = lambda: False,
               poll_s: float = 0.05) -> Iterator[dict[str, Any]]:
        """Yield each event as the child writes it; end when it has exited and all is read."""
        buf = b""
        with open(self.report, "rb") as f:
            while not should_stop():
                chunk = f.read()
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        ev = _parse(line)
                        if ev is not None:
                            yield ev
                    continue
                if self.returncode is not None:
                    # one last read: the child may have written between read() and poll()
                    rest = buf + f.read()
                    for line in rest.split(b"\n"):
                        ev = _parse(line)
                        if ev is not None:
                            yield ev
                    return
                time.sleep(poll_s)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child to exit; its exit code."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 2.0) -> None:
        """End the child and anything it started (SIGTERM, then SIGKILL after ``grace_s``)."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def stderr_tail(self, lines: int = 20) -> str:
        """The end of what the child printed on stderr (why a run produced no results)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def _parse(line: bytes) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        ev = json.loads(line)
    except ValueError:
        return None  # not an event (stray output): skip it rather than stop following
    return ev if isinstance(ev, dict) and "event" in ev else None
