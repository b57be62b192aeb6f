"""The runner's moments between two processes: an exit record written while its supervisor is
still going, a stop signal in each phase of the training process, a kill while a launcher starts
ranks in sessions of their own, pid files read while they are written."""

from __future__ import annotations

import os
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
    """The training process's signal handling (fmllm_tui.runner.runfiles), reset to a fresh process."""
    from fmllm_tui.runner import runfiles

    monkeypatch.setitem(runfiles._signals, "count", 0)
    monkeypatch.setitem(runfiles._signals, "phase", "loading")
    return runfiles


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


# ------------------------------------------------------------------------------------------------
# A run is alive while any of its processes is (issue 22, item 1)
# ------------------------------------------------------------------------------------------------


def _supervised(tmp_path: Path, code: str) -> tuple[Path, int]:
    """A run folder whose real supervisor runs ``python -c code RUN_DIR`` as its training command;
    returns the folder and the training process's pid once the supervisor has recorded it."""
    from fmllm_tui.runner import procs
    from fmllm_tui.runner.launch import _spawn_supervisor

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rd.write_json_atomic(run_dir / rd.RUN, {
        "kind": "train", "argv": [sys.executable, "-c", code, str(run_dir)], "custom_command": True,
        "env": {}, "cwd": str(run_dir), "attempts": [{"started": time.time(), "resume": False}]})
    _spawn_supervisor(run_dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid, started = procs.read_pid_record(run_dir / rd.CHILD_PID)
        if pid and started:
            return run_dir, pid
        time.sleep(0.05)
    raise AssertionError(f"the supervisor started no training process: {(run_dir / rd.LOG).read_text()}")


def _sigkill_supervisor(run_dir: Path) -> None:
    sup = int((run_dir / rd.PID).read_text().split()[0])
    os.kill(sup, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(sup) and psutil.Process(sup).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.05)


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


SLEEPER = "import time; time.sleep(120)"


def test_a_trainer_outliving_its_killed_supervisor_holds_the_run(tmp_path: Path) -> None:
    """The supervisor SIGKILLed, its training process alive: status said 'lost' and resume started a
    second trainer in the same folder. Now the run is running, resume refuses naming the pid that
    holds the run, and stop reaches the training process."""
    from fmllm_tui.cli_run import main as cli
    from fmllm_tui.runner import RunError, resume

    run_dir, child = _supervised(tmp_path, SLEEPER)
    try:
        _sigkill_supervisor(run_dir)
        st = status(run_dir)
        assert st["state"] == "running", st
        assert st["supervisor_alive"] is False and {"role": "child", "pid": child} in st["processes"]
        with pytest.raises(RunError) as ei:
            resume(run_dir)
        assert f"pid {child}" in str(ei.value) and "supervisor is gone" in str(ei.value)
        assert int((run_dir / rd.CHILD_PID).read_text().split()[0]) == child  # no second trainer started
        import io

        buf = io.StringIO()
        assert cli(["status", "--run-dir", str(run_dir)], out=buf) == 0
        assert "state: running" in buf.getvalue() and f"pid {child}" in buf.getvalue()
        assert cli(["resume", "--run-dir", str(run_dir), "--detach"], out=io.StringIO()) == 2
        assert stop(run_dir) is True
        assert _gone(child), "stop did not reach the training process without its supervisor"
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_ends_every_rank_left_without_supervisor_and_launcher(tmp_path: Path) -> None:
    """Supervisor and launcher killed from outside (the host's OOM killer, say); a rank in a session of
    its own lives on, reparented to init. Only its own record finds it: kill() ends it."""
    launcher = (
        "import subprocess, sys, time\n"
        "from pathlib import Path\n"
        "from fmllm_tui.runner import procs\n"
        "run_dir = Path(sys.argv[1])\n"
        "rank = ('import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: open(sys.argv[1] + \"/sigterm\", \"w\"));'"
        " ' time.sleep(120); time.sleep(120)')\n"
        "p = subprocess.Popen([sys.executable, '-c', rank, str(run_dir)], start_new_session=True)\n"
        "procs.write_pid_record(run_dir / 'trainer.rank1.pid', p.pid)\n"
        "time.sleep(120)\n"
    )
    run_dir, child = _supervised(tmp_path, launcher)
    deadline = time.monotonic() + 30
    while not (run_dir / "trainer.rank1.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    rank = int((run_dir / "trainer.rank1.pid").read_text().split()[0])
    try:
        _sigkill_supervisor(run_dir)
        os.kill(child, signal.SIGKILL)
        assert _gone(child)
        st = status(run_dir)
        assert st["state"] == "running" and st["processes"] == [{"role": "rank1", "pid": rank}], st
        # It notes SIGTERM and goes on (a rank still loading its model may take long to act on it):
        # stop() only asks, kill() must end it.
        assert stop(run_dir) is True and "stop requested (SIGTERM)" in (run_dir / rd.LOG).read_text()
        deadline = time.monotonic() + 10
        while not (run_dir / "sigterm").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (run_dir / "sigterm").exists(), "stop did not reach the rank left without its launcher"
        assert kill(run_dir) is True
        assert _gone(rank), "kill left a rank running"
        assert status(run_dir)["state"] == "killed"
    finally:
        for pid in (rank, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_reused_pid_is_not_the_run(tmp_path: Path) -> None:
    """A pid file outlives its process, and the kernel hands the number to someone else: a pid whose
    start time differs from the recorded one is not the run's (status 'lost', kill signals nothing)."""
    from fmllm_tui.runner import procs

    run_dir = _run_dir(tmp_path)
    stranger = subprocess.Popen([sys.executable, "-c", SLEEPER, str(run_dir)], start_new_session=True)
    try:
        started = procs.start_time(stranger.pid)
        assert started is not None
        (run_dir / rd.trainer_pid(0)).write_text(f"{stranger.pid} {started - 1000:.3f}\n")
        (run_dir / rd.CHILD_PID).write_text(f"{stranger.pid} {started - 1000:.3f}\n")
        assert procs.live(run_dir) == []
        assert status(run_dir)["state"] == "lost"
        assert kill(run_dir) is False and stranger.poll() is None
        (run_dir / rd.trainer_pid(0)).write_text(f"{stranger.pid} {started:.3f}\n")
        assert [p.role for p in procs.live(run_dir)] == ["rank0"]
    finally:
        stranger.kill()
        stranger.wait()


def test_supervisor_starts_no_second_trainer(tmp_path: Path) -> None:
    """A supervisor that finds a live training process of its run (a resume that raced a kill) or a
    live supervisor (two resumes at once) starts nothing and writes no exit record."""
    from fmllm_tui.runner import procs
    from fmllm_tui.runner.supervise import supervise, take_lock

    run_dir = _run_dir(tmp_path)
    rd.write_json_atomic(run_dir / rd.RUN, {"kind": "train", "argv": [sys.executable, "-c", "pass"],
                                            "attempts": [{"started": time.time()}]})
    holder = subprocess.Popen([sys.executable, "-c", SLEEPER, str(run_dir)], start_new_session=True)
    try:
        procs.write_pid_record(run_dir / rd.trainer_pid(0), holder.pid)
        assert supervise(run_dir) == 1
        assert not (run_dir / rd.EXIT).exists() and not (run_dir / rd.CHILD_PID).exists()
        assert f"training process pid {holder.pid} (rank 0) still holds" in (run_dir / rd.LOG).read_text()
    finally:
        holder.kill()
        holder.wait()
    fd = take_lock(run_dir, wait_s=0)
    assert fd is not None
    try:
        assert take_lock(run_dir, wait_s=0.2) is None  # a second supervisor of the same run
    finally:
        os.close(fd)
    assert supervise(run_dir) == 0 and rd.read_json(run_dir / rd.EXIT)["status"] == "ok"


def test_an_exit_record_beside_a_live_trainer_does_not_end_the_run(tmp_path: Path) -> None:
    """An exit record wins over a supervisor in its last moment, not over a training process that
    lives on (a second supervisor's record while the first one's trainer ran said 'ok (done)')."""
    from fmllm_tui.runner import procs

    run_dir = _run_dir(tmp_path)
    trainer = subprocess.Popen([sys.executable, "-c", SLEEPER, str(run_dir)], start_new_session=True)
    try:
        procs.write_pid_record(run_dir / rd.trainer_pid(0), trainer.pid)
        rd.write_json_atomic(run_dir / rd.EXIT, {"status": "ok", "message": "done"})
        assert status(run_dir)["state"] == "running"
        assert kill(run_dir) is True
        assert trainer.wait(timeout=10) == -signal.SIGKILL
        assert status(run_dir)["state"] == "killed"
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
