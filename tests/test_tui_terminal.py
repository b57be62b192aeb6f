"""The real ``fmllm-tui`` binary as people run it: in tmux over an (imagined) SSH session, with
NO_COLOR, when the terminal goes away, and behind ``textual serve``'s web driver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tui_support import fake_gpu, quiet_env, scaled, write_config

TUI = Path(sys.executable).with_name("fmllm-tui")


def tui_argv(*args: str) -> list[str]:
    if TUI.exists():
        return [str(TUI), *args]
    return [sys.executable, "-m", "fmllm_tui.cli_tui", *args]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Tmux:
    """A private tmux server (own socket), so the test never touches a person's sessions."""

    def __init__(self) -> None:
        self.socket = f"fmllm-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def start(self, name: str, argv: list[str], env: dict[str, str], size: tuple[int, int] = (80, 24)) -> int:
        cmd = ["env", *[f"{k}={v}" for k, v in env.items()], *argv]
        self("new-session", "-d", "-s", name, "-x", str(size[0]), "-y", str(size[1]), *cmd)
        self("set-option", "-t", name, "remain-on-exit", "on")
        return int(self("display-message", "-p", "-t", name, "#{pane_pid}").strip())

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", name)

    def wait_for(self, name: str, text: str, timeout: float = 60.0) -> str:
        """Wait for ``text`` on the pane (``timeout`` is scaled: the app and its checks import
        torch on a loaded machine)."""
        timeout = scaled(timeout)
        end = time.monotonic() + timeout
        shown = ""
        while time.monotonic() < end:
            shown = self.screen(name)
            if text in shown:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{text!r} did not appear within {timeout:.0f} s; the screen was:\n{shown}")

    def wait_checks_done(self, name: str, timeout: float = 90.0) -> str:
        """Wait for the Checks screen's summary line to give its verdict (results in, none running)."""
        timeout = scaled(timeout)
        end = time.monotonic() + timeout
        shown = ""
        while time.monotonic() < end:
            shown = self.screen(name)
            if "passed" in shown and "Checking…" not in shown and "Starting the checks" not in shown:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"the checks did not finish within {timeout:.0f} s; the screen was:\n{shown}")

    def wait_gone(self, name: str, text: str, timeout: float = 10.0) -> str:
        """Wait for ``text`` to leave the pane (``timeout`` scaled)."""
        timeout = scaled(timeout)
        end = time.monotonic() + timeout
        shown = ""
        while time.monotonic() < end:
            shown = self.screen(name)
            if text not in shown:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{text!r} still shown after {timeout:.0f} s; the screen was:\n{shown}")

    def pane_dead(self, name: str) -> bool:
        out = self("display-message", "-p", "-t", name, "#{pane_dead}", check=False).strip()
        return out in ("1", "")

    def kill_server(self) -> None:
        self("kill-server", check=False)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux): the terminal test needs it")
    t = Tmux()
    yield t
    t.kill_server()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    quiet_env(monkeypatch, tmp_path, fake_gpu(tmp_path))
    cfg = write_config(tmp_path / "proj")
    keep = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "PYTORCH_CUDA_ALLOC_CONF", "FMLLM_FAKE_NVML", "PYTHONPATH",
            "PATH", "HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["TERM"] = "xterm-256color"
    return cfg, env


def test_in_tmux_like_over_ssh(tmux: Tmux, project: tuple[Path, dict[str, str]]) -> None:
    cfg, env = project
    pid = tmux.start("main", tui_argv("--config", str(cfg), "--vram", "24GiB"), env)
    tmux.wait_for("main", "1 Checks", 20)  # the first frame
    shown = tmux.wait_checks_done("main")  # the results streamed in
    assert "config.valid" in shown and "q Quit" in shown  # the id column at 80 columns
    tmux("send-keys", "-t", "main", "2")
    tmux.wait_for("main", "predicted peak", 30)
    tmux("send-keys", "-t", "main", "?")
    tmux.wait_for("main", "Everywhere", 10)
    tmux("send-keys", "-t", "main", "Escape")
    # Escape must arrive alone (followed at once by "1" it reads as alt+1): send the next keys
    # only once the help it closes has gone
    tmux.wait_gone("main", "Everywhere", 10)
    tmux("send-keys", "-t", "main", "1", "q")
    end = time.monotonic() + scaled(20)
    while time.monotonic() < end and _pid_alive(pid):
        time.sleep(0.1)
    assert not _pid_alive(pid), "fmllm-tui did not exit on q"
    assert "Traceback" not in tmux.screen("main")


def test_terminal_gone_ends_the_tui(tmux: Tmux, project: tuple[Path, dict[str, str]]) -> None:
    cfg, env = project
    pid = tmux.start("drop", tui_argv("--config", str(cfg), "--vram", "24GiB"), env)
    tmux.wait_for("drop", "1 Checks", 20)
    tmux("kill-session", "-t", "drop")  # what a dropped SSH connection does to the pane
    # It must end, not end fast: on a loaded 2-core CI machine it once took longer than 15 s.
    end = time.monotonic() + scaled(60)
    while time.monotonic() < end and _pid_alive(pid):
        time.sleep(0.1)
    assert not _pid_alive(pid), "fmllm-tui kept running on a dead terminal"


def test_no_color_and_narrow_terminal(tmux: Tmux, project: tuple[Path, dict[str, str]]) -> None:
    cfg, env = project
    pid = tmux.start("mono", tui_argv("--config", str(cfg), "--vram", "24GiB"), {**env, "NO_COLOR": "1"},
                     size=(80, 24))
    shown = tmux.wait_checks_done("mono")
    assert "✓" in shown  # the glyphs carry the status without colour
    colours = tmux("capture-pane", "-p", "-e", "-t", "mono")
    assert _hues(colours) == [], "NO_COLOR output still uses colours (only greys are allowed)"
    tmux("send-keys", "-t", "mono", "q")
    end = time.monotonic() + scaled(20)
    while time.monotonic() < end and _pid_alive(pid):
        time.sleep(0.1)
    assert not _pid_alive(pid)


GREYS = {0, 7, 8, 15, 16, 231, *range(232, 256)}  # xterm-256 entries without a hue


def _hues(screen: str) -> list[str]:
    """The SGR colour codes on screen that are not a grey."""
    import re

    bad = []
    for params in re.findall(r"\x1b\[([0-9;]*)m", screen):
        p = [int(x) for x in params.split(";") if x]
        i = 0
        while i < len(p):
            if p[i] in (38, 48) and p[i + 1:i + 2] == [5] and i + 2 < len(p):
                if p[i + 2] not in GREYS:
                    bad.append(params)
                i += 3
            elif p[i] in (38, 48) and p[i + 1:i + 2] == [2]:
                r, g, b = p[i + 2:i + 5]
                if not (r == g == b):
                    bad.append(params)
                i += 5
            elif 30 <= p[i] <= 37 or 40 <= p[i] <= 47 or 90 <= p[i] <= 97 or 100 <= p[i] <= 107:
                if p[i] % 10 not in (0, 7):  # black and white are fine
                    bad.append(params)
                i += 1
            else:
                i += 1
    return bad


def _packet(kind: bytes, payload: bytes) -> bytes:
    return kind + len(payload).to_bytes(4, "big") + payload


def test_web_driver_as_textual_serve_runs_it(project: tuple[Path, dict[str, str]]) -> None:
    """``textual serve "fmllm-tui"`` starts the app with Textual's web driver and talks this
    packet protocol over stdin/stdout; the app must work there (no suspend, no TTY watchdog)."""
    cfg, env = project
    proc = subprocess.Popen(tui_argv("--config", str(cfg), "--vram", "24GiB"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env, "TEXTUAL_DRIVER": "textual.drivers.web_driver:WebDriver",
                                 "TEXTUAL_COLOR_SYSTEM": "truecolor"})
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen = b""

    def read_until(needle: bytes, timeout: float) -> None:
        nonlocal seen
        timeout = scaled(timeout)  # the app and its checks import torch on a loaded machine
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in seen:
                return
            for _key, _ev in sel.select(0.2):
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"the app exited early: {stderr.read().decode()[-2000:]}")
                seen += chunk
        raise AssertionError(f"{needle!r} not sent within {timeout:.0f} s")

    try:
        proc.stdin.write(_packet(b"M", json.dumps({"type": "resize", "width": 100, "height": 30}).encode()))
        proc.stdin.flush()
        read_until(b"Checks", 20)
        read_until(b"passed", 90)  # "... · N passed": results arrived, the app kept running
        time.sleep(3.5)  # longer than the TTY watchdog's period: stdin is a pipe here, not a terminal
        assert proc.poll() is None, "the app quit under the web driver"
        proc.stdin.write(_packet(b"D", b"2"))
        proc.stdin.flush()
        read_until(b"predicted peak", 30)
        proc.stdin.write(_packet(b"M", json.dumps({"type": "quit"}).encode()))
        proc.stdin.flush()
        assert proc.wait(scaled(20)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_long_diff_dialog_apply_and_undo_at_80x24(tmux: Tmux, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23: at 80x24 the apply-all dialog's diff runs past the dialog; its buttons stay
    visible, End scrolls the diff to its last change, y applies it and u (confirmed) undoes it."""
    quiet_env(monkeypatch, tmp_path, fake_gpu(tmp_path))
    cfg = write_config(tmp_path / "proj", attn="eager")  # attn.sdpa and memory.fit: two hunks
    before = cfg.read_text()
    keep = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "PYTORCH_CUDA_ALLOC_CONF", "FMLLM_FAKE_NVML", "PYTHONPATH",
            "PATH", "HOME")
    env = {**{k: os.environ[k] for k in keep if k in os.environ}, "TERM": "xterm-256color"}
    tmux.start("diff", tui_argv("--config", str(cfg), "--vram", "24GiB"), env, size=(80, 24))
    tmux.wait_for("diff", "a applies 2 safe fixes", 90)  # the summary line once the checks are done
    tmux("send-keys", "-t", "diff", "a")
    tmux.wait_for("diff", "Apply (y)", 20)
    shown = tmux.wait_for("diff", "y Apply", 10)  # the footer: the dialog's keys, not the list's
    assert "Cancel (n)" in shown and "PgDn" in shown and "f Fix" not in shown
    assert "+  attn_implementation: sdpa" not in shown  # the last change is below the fold
    tmux("send-keys", "-t", "diff", "End")
    shown = tmux.wait_for("diff", "+  attn_implementation: sdpa", 10)
    assert "Apply (y)" in shown and "Cancel (n)" in shown  # still there with the diff scrolled
    tmux("send-keys", "-t", "diff", "y")
    end = time.monotonic() + scaled(20)
    while time.monotonic() < end and "attn_implementation: sdpa" not in cfg.read_text():
        time.sleep(0.2)
    assert "attn_implementation: sdpa" in cfg.read_text()
    assert (cfg.parent / "config.yaml.bak").read_text() == before
    tmux.wait_gone("diff", "Checking…", 90)  # the re-run after the write
    tmux("send-keys", "-t", "diff", "u")
    tmux.wait_for("diff", "Undo the last fix?", 20)
    tmux("send-keys", "-t", "diff", "y")
    end = time.monotonic() + scaled(20)
    while time.monotonic() < end and cfg.read_text() != before:
        time.sleep(0.2)
    assert cfg.read_text() == before
    assert "Traceback" not in tmux.screen("diff")
