"""The runner's moments between two processes: an exit record written while its supervisor is
still going, a stop signal in each phase of the training process, a kill while a launcher starts
ranks in sessions of their own, pid files read while they are written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fmllm_tui.runner import kill, status, stop
from fmllm_tui.runner import rundir as rd


def _fake_supervisor(run_dir: Path, code: str = "import time; time.sleep(60)") -> subprocess.Popen[bytes]:
    """A live process in a session of its own with the run folder on its command line, as
    fmllm's supervisor is; its pid goes into the run's pid file."""
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], start_new_session=True)
    rd.write_text_atomic(run_dir / rd.PID, f"{proc.pid}\n")
    return proc


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rd.write_json_atomic(run_dir / rd.RUN, {"kind": "train", "argv": ["true"], "attempts": [{"started": time.time()}]})
    return run_dir


def test_exit_record_wins_over_a_supervisor_still_exiting(tmp_path: Path) -> None:
    """The supervisor writes exit.json as its last act; a follower polling in the moment before the
    process ends must see the run ended (the TUI stopped following on such a "running" snapshot
    with its exit set, and showed "running" for good)."""
    run_dir = _run_dir(tmp_path)
    proc = _fake_supervisor(run_dir)
    try:
        deadline = time.monotonic() + 20
        while status(run_dir)["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status(run_dir)["state"] == "running"
        rd.write_json_atomic(run_dir / rd.EXIT, {"status": "stopped", "message": "stopped at step 3"})
        st = status(run_dir)
        assert st["state"] == "stopped" and st["exit"]["message"] == "stopped at step 3"
        assert kill(run_dir) is False  # not running any more: nothing is killed
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_stop_never_signals_the_supervisor(tmp_path: Path) -> None:
    """A supervisor that has not yet set its SIGTERM handler would die of a signal and leave no exit
    record ("lost"): before the child is up, stop() only writes stop.requested."""
    run_dir = _run_dir(tmp_path)
    proc = _fake_supervisor(run_dir)  # default SIGTERM action: a supervisor still importing
    try:
        deadline = time.monotonic() + 20
        while status(run_dir)["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stop(run_dir) is True
        time.sleep(0.5)
        assert proc.poll() is None, "stop() signalled the supervisor"
        assert (run_dir / rd.STOP_REQUEST).exists()
        assert "before the training process started" in (run_dir / rd.LOG).read_text()
    finally:
        proc.kill()
        proc.wait()


def test_kill_leaves_no_rank_a_launcher_starts_meanwhile(tmp_path: Path) -> None:
    """A launcher that keeps starting children in sessions of their own (accelerate's ranks):
    kill() freezes the group before it lists them, so none survives."""
    run_dir = _run_dir(tmp_path)
    marker = f"fmllm-race-{time.time_ns()}"
    launcher = (
        "import subprocess, sys, time\n"
        "while True:\n"
        f"    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],"
        " start_new_session=True)\n"
        "    time.sleep(0.01)\n"
    )
    proc = _fake_supervisor(run_dir, launcher)

    def marked() -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if marker in (p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.Error:
                pass
        return out

    try:
        deadline = time.monotonic() + 30
        while len(marked()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(marked()) >= 3, "the launcher started no children"
        assert kill(run_dir) is True
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while marked() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked() == [], "a child started during the kill survived it"
        assert rd.read_json(run_dir / rd.EXIT)["status"] == "killed"
    finally:
        for p in marked():
            p.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def train_signals(monkeypatch: pytest.MonkeyPatch):
    from fmllm_tui.runner import train

    monkeypatch.setitem(train._signals, "count", 0)
    monkeypatch.setitem(train._signals, "phase", "loading")
    return train


def test_stop_while_loading_ends_at_once(train_signals) -> None:
    with pytest.raises(train_signals.StopRequested) as ei:
        train_signals._on_signal(signal.SIGTERM, None)
    assert ei.value.describe() == "SIGTERM before training started; nothing to save"


def test_first_stop_in_training_waits_for_the_step_second_ends_at_once(train_signals, capsys) -> None:
    train_signals._signals["phase"] = "training"
    train_signals._on_signal(signal.SIGTERM, None)
    assert "stopping after this step" in capsys.readouterr().out
    with pytest.raises(train_signals.StopRequested) as ei:
        train_signals._on_signal(signal.SIGINT, None)
    assert "a second SIGINT during training" in ei.value.describe()
    assert "resume" in ei.value.describe()


def test_first_stop_after_training_lets_the_save_finish(train_signals, capsys) -> None:
    """A stop in the moment between the last step and the saved adapter used to abort the save and
    be recorded as "before training started"."""
    train_signals._signals["phase"] = "after"
    train_signals._on_signal(signal.SIGTERM, None)  # no exception: the save goes on
    assert "the adapter save finishes first" in capsys.readouterr().out
    with pytest.raises(train_signals.StopRequested) as ei:
        train_signals._on_signal(signal.SIGTERM, None)
    assert "after training" in ei.value.describe() and "may not have been saved" in ei.value.describe()


def test_pid_files_are_replaced_whole(tmp_path: Path) -> None:
    p = tmp_path / rd.PID
    rd.write_text_atomic(p, "123\n")
    rd.write_text_atomic(p, "4567\n")
    assert p.read_text() == "4567\n"
    assert [f.name for f in tmp_path.iterdir()] == [rd.PID]  # no temporary file left behind
