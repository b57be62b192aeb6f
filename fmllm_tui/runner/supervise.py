"""The supervisor: ``python -m fmllm_tui.runner.supervise RUN_DIR``.

Started by :func:`fmllm_tui.runner.launch.start` in a new process session (so it outlives the
TUI, the terminal and the SSH connection), it starts the training process from the argv list in
``run.json`` (never through a shell), with stdout and stderr going to ``train.log``, waits for
it, and writes ``exit.json``: the status, the exit code or signal, the training process's own
outcome, and on failure the log diagnosis from ``fmllm_tui.logdiag``. For a run of several
processes (``accelerate launch``) a rank that failed on its own (``outcome.rank<N>.json``) is
the cause rank 0 may not know. No torch here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import procs
from . import rundir as rd


def _run_settings(run_dir: Path) -> Any:
    """What the run really ran (its typed config and plan from config.json), for advice that does
    not repeat what is already on; None when config.json cannot tell."""
    try:
        from fmllm_tui.config import FineTuneConfig
        from fmllm_tui.logadvice import RunSettings
        from fmllm_tui.plan import RunPlan

        spec = rd.read_json(run_dir / rd.CONFIG)
        if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
            return None
        view = FineTuneConfig.model_validate(spec["config"])
        plan = RunPlan.from_json(spec["plan"]) if isinstance(spec.get("plan"), dict) else None
        return RunSettings.from_config(view, plan)
    except Exception:  # advice without the settings is still advice: never lose the exit record over it
        return None


def diagnose(log_path: Path) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The log diagnosis (logdiag hits as JSON, reading the run's settings beside the log), or
    (None, why it is unavailable)."""
    try:
        from fmllm_tui.logdiag import scan_file
    except ImportError as e:
        return None, f"log diagnosis unavailable: {e}"
    try:
        return [h.to_json() for h in scan_file(log_path, settings=_run_settings(log_path.parent))], None
    except Exception as e:  # a diagnosis failure must never lose the exit record
        return None, f"log diagnosis failed: {type(e).__name__}: {e}"


def decide_status(returncode: int, outcome: dict[str, Any] | None, stop_requested: bool,
                  diagnosis: list[dict[str, Any]] | None) -> str:
    """ok | failed | killed | stopped | oom from what the run left behind."""
    if outcome and outcome.get("status") in rd.STATUSES:
        status = str(outcome["status"])
        if status == "ok" and returncode != 0:
            return "failed"
        return status
    if returncode == 0:
        return "stopped" if stop_requested else "ok"
    if returncode < 0 and stop_requested:
        return "stopped" if -returncode in (signal.SIGTERM, signal.SIGINT) else "killed"
    for hit in diagnosis or []:
        # logdiag's GPU memory patterns: cuda_oom, cuda_oom_eval, cuda_oom_loading, ... (host_oom is RAM).
        oom = str(hit.get("pattern", "")).startswith(("cuda_oom", "mps_oom")) or hit.get("pattern") == "model_too_big_per_card"
        if oom and hit.get("severity") not in ("warning", "info"):
            return "oom"
    if stop_requested:
        return "stopped"
    if -returncode in _KILL_SIGNALS or returncode == 137:
        return "killed"  # from outside, nobody asked fmllm (often the host's OOM killer): the diagnosis says more
    return "failed"


# Signals that end a process from outside; a crash's own signals (SIGSEGV, SIGABRT, SIGBUS) are failures.
_KILL_SIGNALS = {int(signal.SIGKILL), int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGHUP), int(signal.SIGQUIT)}


def orphan_exit(run_dir: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The exit record of an attempt whose supervisor was gone before its training process ended
    (killed from outside): built from the process's own ``outcome.json`` (no exit code is known
    then), or None when this attempt left none."""
    outcome = rd.read_json(run_dir / rd.OUTCOME)
    if not isinstance(outcome, dict) or outcome.get("status") not in rd.STATUSES:
        return None
    attempts = record.get("attempts") or [{}]
    started = float(attempts[-1].get("started") or 0)
    ended = float(outcome.get("ts") or 0)
    if ended < started - 1:
        return None  # left by an earlier attempt
    return {"status": outcome["status"], "exit_code": outcome.get("exit_code"), "signal": None,
            "kind": record.get("kind"), "started": started, "ended": ended, "wall_s": max(0.0, ended - started),
            "message": outcome.get("message"), "outcome": outcome, "diagnosis": None,
            "recorded_by": "training process (its supervisor was gone: no exit code or log diagnosis)"}


def rank_outcomes(run_dir: Path, started: float) -> list[dict[str, Any]]:
    """The outcomes non-zero ranks left in this attempt (``outcome.rank<N>.json``), by rank."""
    out = []
    for f in sorted(run_dir.glob("outcome.rank*.json")):
        rec = rd.read_json(f)
        if isinstance(rec, dict) and float(rec.get("ts") or 0) >= started - 1:
            out.append(rec)
    return sorted(out, key=lambda r: int(r.get("rank") or 0))


def merge_outcomes(main: dict[str, Any] | None, ranks: list[dict[str, Any]],
                   stop_requested: bool) -> dict[str, Any] | None:
    """The outcome that explains the run: rank 0's, unless another rank failed and rank 0 only
    saw the consequence (its peers vanishing, or the launcher's SIGTERM read as a stop)."""
    failed = [r for r in ranks if r.get("status") in ("failed", "oom")]
    if not failed:
        return main
    oom = [r for r in failed if r.get("status") == "oom"]
    cause = dict(oom[0] if oom else failed[0])
    main_status = (main or {}).get("status")
    if main_status == "oom" or (main_status == "stopped" and stop_requested):
        return main
    if main_status in (None, "stopped", "ok") or (oom and main_status == "failed"):
        cause["message"] = f"rank {cause.get('rank')}: {cause.get('message')}"
        if main is not None:
            cause["rank0_outcome"] = main
        return cause
    return main


def masked_launch(argv: list[str], env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What run.json may hold of a launch (argv and env with known token formats and the values of
    secret-named flags masked, and ``secrets_handed_over`` when anything was), and the real values
    to hand to the supervisor on its stdin (None when nothing was masked): the run folder never
    holds a token, and the training command still gets it."""
    from fmllm_tui.redact import mask_argv, mask_text

    shown_argv = mask_argv(argv)
    shown_env = {k: mask_text(str(v)) for k, v in env.items()}
    masked = shown_argv != list(argv) or shown_env != env
    shown: dict[str, Any] = {"argv": shown_argv, "env": shown_env, "secrets_handed_over": masked}
    return shown, ({"argv": list(argv), "env": dict(env)} if masked else None)


def handed_over(spec: dict[str, Any], stream: Any) -> tuple[list[str], dict[str, str]]:
    """The argv and env to start: run.json's, or when it holds masked secrets, the real ones the
    launching process wrote to this process's stdin. Raises FileNotFoundError without them."""
    argv = [str(a) for a in spec.get("argv") or []]
    env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    if not spec.get("secrets_handed_over"):
        return argv, env
    import json

    try:
        real = json.loads(stream.read() or "null")
    except (OSError, ValueError):
        real = None
    if not isinstance(real, dict) or not isinstance(real.get("argv"), list):
        raise FileNotFoundError("run.json's training command holds masked secrets and the launching process "
                                "handed over none: start the run again with fmllm-run start")
    return [str(a) for a in real["argv"]], {str(k): str(v) for k, v in (real.get("env") or {}).items()}


class _StoppedBeforeStart(Exception):
    """stop.requested was there before the training process was started."""


class _HeldByAnother(Exception):
    """A training process of this run still lives: starting another would put two in one folder."""

    def __init__(self, holders: list[procs.RunProcess]):
        super().__init__(procs.holders_text(holders))
        self.holders = holders


def _default_signals() -> None:
    """In the child, before exec: undo the supervisor's ignored signals (ignoring is inherited)."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def take_lock(run_dir: Path, wait_s: float = 15.0) -> int | None:
    """An exclusive lock on the run's ``supervisor.lock`` (the fd; the kernel drops it when this
    process ends, however it ends), or None when another supervisor still holds it after
    ``wait_s`` (a previous one writing its exit record gets that long to go)."""
    import fcntl

    fd = os.open(run_dir / rd.SUPERVISOR_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.1)


def supervise(run_dir: Path) -> int:
    """Run the training process of ``run_dir`` to its end and record how it ended."""
    os.umask(0o077)  # the run's files are private, like its folder
    lock = take_lock(run_dir)
    if lock is None:
        # Two resumes at once: the other supervisor has the run; this one must not start a trainer.
        rd.log_line(run_dir, f"another supervisor holds {run_dir / rd.SUPERVISOR_LOCK}: this one (pid "
                             f"{os.getpid()}) starts nothing")
        return 1
    try:
        return _supervise_locked(run_dir)
    finally:
        os.close(lock)


def _supervise_locked(run_dir: Path) -> int:
    """One attempt of the run under the supervisor's lock: start the training process, wait for
    it, write exit.json. 1 when another training process of this run still lives (no record)."""
    spec = rd.read_json(run_dir / rd.RUN) or {}
    try:
        argv, spec_env = handed_over(spec, sys.stdin)
        handover_error = None
    except FileNotFoundError as e:
        argv, spec_env, handover_error = [], {}, e
    env = dict(os.environ)
    env.update(spec_env)
    started = time.time()
    attempt = _Attempt(run_dir, rd.open_private_append(run_dir / rd.LOG, buffering=0))
    attempt.install_signals()
    try:
        returncode = attempt.run(argv, env, spec.get("cwd") or None, handover_error)
    except _HeldByAnother as e:
        # No exit record: the run is the live trainer's, and its end is its own to record.
        attempt.log.write(f"[fmllm] not starting a second training process: {procs.holders_text(e.holders)} still "
                          f"holds {run_dir}; follow it with fmllm-run follow, or end it with fmllm-run kill, then "
                          "resume\n".encode())
        attempt.log.close()
        return 1
    ended = time.time()
    attempt.log_exit(returncode)
    record = exit_record(run_dir, spec, returncode, started, ended)
    from fmllm_tui.redact import mask_data

    # A message or a diagnosed log line may quote the training command or what it printed.
    rd.write_json_atomic(run_dir / rd.EXIT, mask_data(record))
    return 0


class _Attempt:
    """The training process one supervisor starts, the stop it forwards, and its lines in train.log."""

    def __init__(self, run_dir: Path, log: Any):
        self.run_dir, self.log = run_dir, log
        self.stop_path = run_dir / rd.STOP_REQUEST
        self.child: subprocess.Popen[bytes] | None = None

    def forward(self, signum: int, frame: Any) -> None:
        """A stop for the whole run (system shutdown, a signal to the group): let the trainer checkpoint."""
        try:
            self.stop_path.write_text(f"{signal.Signals(signum).name} {time.time()}\n")
        except OSError:
            pass
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def install_signals(self) -> None:
        """SIGTERM becomes a stop forwarded to the trainer; SIGINT and SIGHUP (the terminal) are ignored."""
        signal.signal(signal.SIGTERM, self.forward)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def run(self, argv: list[str], env: dict[str, str], cwd: str | None, handover_error: OSError | None) -> int:
        """The training process's return code; 0 for a stop that came first, 127 when it could not
        start (both with the outcome.json the process would have written). Raises _HeldByAnother."""
        try:
            if handover_error is not None:
                raise handover_error
            if not argv:
                raise FileNotFoundError("run.json has no argv")
            if self.stop_path.exists():
                # fmllm-run stop came before the training process started: do not start it.
                raise _StoppedBeforeStart
            return self._start_and_wait(argv, env, cwd)
        except _StoppedBeforeStart:
            self.log.write(b"[fmllm] stop requested before the training process started: not starting it\n")
            rd.write_json_atomic(self.run_dir / rd.OUTCOME, {"status": "stopped", "ts": time.time(),
                                                             "message": "stopped before the training process started"})
            return 0
        except OSError as e:
            from fmllm_tui.redact import mask_text

            self.log.write(mask_text(f"[fmllm] could not start the training process: {e}\n").encode())
            outcome_msg = mask_text(f"could not start {argv[0] if argv else 'the training process'}: {e.strerror or e}")
            rd.write_json_atomic(self.run_dir / rd.OUTCOME, {"status": "failed", "exit_code": 127,
                                                             "message": outcome_msg})
            return 127

    def _start_and_wait(self, argv: list[str], env: dict[str, str], cwd: str | None) -> int:
        from fmllm_tui.redact import mask_argv

        holders = procs.trainers(procs.live(self.run_dir))
        if holders:
            # Never two trainers in one folder (a resume raced another, or a supervisor was killed
            # and its trainer lives on): both would write the same checkpoints and metrics.
            raise _HeldByAnother(holders)
        self.log.write(f"[fmllm] starting: {' '.join(mask_argv(argv))}\n".encode())  # a token in train_command
        child = self.child = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                              preexec_fn=_default_signals)
        procs.write_pid_record(self.run_dir / rd.CHILD_PID, child.pid)  # pid and start time: safe from pid reuse
        # launch.stop() writes stop.requested, then reads child.pid; this writes child.pid, then reads
        # stop.requested: one of the two sees the other, so a stop in this window reaches the child.
        if self.stop_path.exists():
            self.forward(signal.SIGTERM, None)
        while True:
            try:
                return child.wait()
            except InterruptedError:
                continue

    def log_exit(self, returncode: int) -> None:
        """How the training process ended, as train.log's last line; closes the log."""
        if returncode < 0:
            self.log.write(f"[fmllm] training process ended by signal {_signal_name(returncode)} "
                           f"(exitcode: {returncode})\n".encode())
        else:
            self.log.write(f"[fmllm] training process exited with code {returncode}\n".encode())
        self.log.close()


def _signal_name(returncode: int) -> str:
    """SIGKILL for -9; the number for a signal Python does not name."""
    known = -returncode in signal.Signals._value2member_map_
    return signal.Signals(-returncode).name if known else str(-returncode)


def exit_record(run_dir: Path, spec: dict[str, Any], returncode: int, started: float, ended: float) -> dict[str, Any]:
    """exit.json's record of an attempt: the status from the process's outcome (merged with a
    failed rank's), its return code and, for a failure, the log diagnosis."""
    outcome = rd.read_json(run_dir / rd.OUTCOME)
    if isinstance(outcome, dict) and outcome.get("ts", started) < started - 1:
        outcome = None  # left by an earlier attempt of this run (before a resume)
    stop_requested = (run_dir / rd.STOP_REQUEST).exists()
    outcome = merge_outcomes(outcome if isinstance(outcome, dict) else None, rank_outcomes(run_dir, started),
                             stop_requested)
    diagnosis, diag_note = (None, None)
    pre_status = decide_status(returncode, outcome, stop_requested, None)
    if pre_status in ("failed", "oom") or (returncode != 0 and pre_status != "stopped"):
        diagnosis, diag_note = diagnose(run_dir / rd.LOG)
    status = decide_status(returncode, outcome, stop_requested, diagnosis)
    sig = _signal_name(returncode) if returncode < 0 and -returncode in signal.Signals._value2member_map_ else None
    record = {
        "status": status,
        "exit_code": returncode if returncode >= 0 else None,
        "signal": sig,
        "kind": spec.get("kind"),
        "started": started, "ended": ended, "wall_s": ended - started,
        "message": outcome.get("message") if outcome is not None else None,
        "outcome": outcome,
        "diagnosis": diagnosis,
        "diagnosis_note": diag_note,
        "recorded_by": "supervisor",
    }
    if record["message"] is None:
        record["message"] = (f"the training command exited with code {returncode}" if returncode >= 0
                             else f"the training command was ended by {record['signal']}")
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m fmllm_tui.runner.supervise RUN_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fmllm_tui.runner.supervise RUN_DIR", file=sys.stderr)
        return 2
    return supervise(Path(args[0]).resolve())


if __name__ == "__main__":
    sys.exit(main())
