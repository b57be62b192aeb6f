"""How fast fmllm-tui puts its first frame on screen, measured as a person sees it.

Starts the real ``fmllm-tui`` binary in a pseudo-terminal (80x24, like an SSH session), and
times, from the moment the process is spawned:

* ``first_frame``: the navigation bar ("1 Checks") has been written to the terminal;
* ``first_result``: the first check row has a status glyph (results streaming in);
* ``checks_done``: the summary line says how many checks ran ("N checks ·").

With each wall time it records ``first_frame_cpu``: the CPU seconds (user + system, from
/proc/PID/stat) the TUI process had used when its first frame arrived. Other work on the
machine stretches wall times; the CPU time says what the TUI itself costs.

Then it presses ``q`` and waits for exit. Usage:

    python bench/bench_tui_startup.py [--config config.yaml] [--repeat 7] [--json]

Target: first_frame under 1 s on a 2-core machine (the checks fill in after).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import struct
import sys
import termios
import time
from pathlib import Path

ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]|\x1b\][^\x07]*\x07")
MARKS = {
    "first_frame": re.compile(r"1 Checks"),
    "first_result": re.compile(r"[✓✗!☠] "),
    "checks_done": re.compile(r"\d+ checks ·"),
}


def _binary() -> list[str]:
    exe = shutil.which("fmllm-tui") or str(Path(sys.executable).with_name("fmllm-tui"))
    if Path(exe).exists():
        return [exe]
    return [sys.executable, "-m", "fmllm_tui.cli_tui"]


def _cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(config: str, timeout: float = 60.0) -> dict[str, float | None]:
    """Spawn fmllm-tui in a pty and time the marks; quit it with q."""
    argv = _binary() + ["--config", config, "--offline"]  # never the Hub: catalogue and cache only
    t0 = time.perf_counter()
    pid, fd = os.forkpty()
    if pid == 0:  # child: a 80x24 terminal with colours, like ssh -t
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24", "HF_HUB_OFFLINE": "1"}
        env.pop("NO_COLOR", None)
        os.execvpe(argv[0], argv, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    seen: dict[str, float | None] = {k: None for k in MARKS}
    seen["first_frame_cpu"] = None
    buf = b""
    deadline = t0 + timeout
    try:
        while time.perf_counter() < deadline and any(seen[k] is None for k in MARKS):
            r, _, _ = select.select([fd], [], [], 0.05)
            if not r:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            now = time.perf_counter() - t0
            buf += chunk
            text = ANSI.sub(b"", buf[-200_000:]).decode("utf-8", "replace")
            for k, pat in MARKS.items():
                if seen[k] is None and pat.search(text):
                    seen[k] = now
                    if k == "first_frame":
                        seen["first_frame_cpu"] = _cpu_s(pid)
        os.write(fd, b"q")
        end = time.perf_counter() + 10
        while time.perf_counter() < end:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                try:
                    os.read(fd, 65536)
                except OSError:
                    pass
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "config.yaml"))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()
    one_run(args.config)  # warm the OS file cache and __pycache__ once; not counted
    runs = [one_run(args.config) for _ in range(args.repeat)]
    summary: dict[str, dict[str, float | int | None]] = {}
    for k in [*MARKS, "first_frame_cpu"]:
        vals = [v for r in runs if (v := r[k]) is not None]
        summary[k] = {
            "n": len(vals),
            "min_s": round(min(vals), 3) if vals else None,
            "median_s": round(statistics.median(vals), 3) if vals else None,
            "max_s": round(max(vals), 3) if vals else None,
        }
    doc = {
        "bench": "tui_startup",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "repeat": args.repeat,
        "load_average_before": [round(x, 2) for x in load],
        "results": summary,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"fmllm-tui start-up, {args.repeat} runs, {doc['machine']}, load average {doc['load_average_before']}")
        for k, s in summary.items():
            print(f"  {k:13} median {s['median_s']} s  (min {s['min_s']}, max {s['max_s']}, n={s['n']})")
    ok = summary["first_frame"]["median_s"] is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
