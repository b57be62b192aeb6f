"""fmllm-run: launch, follow, stop and resume fine-tuning runs from a shell (headless).

    fmllm-run start  [--config PATH] [--run-dir DIR] [--vram SIZE] [--device auto|cuda|cpu] [--steps N] [--detach] [--json]
    fmllm-run test   [--config PATH] [--run-dir DIR] [--vram SIZE] [--device ...] [--steps N] [--detach] [--json]
    fmllm-run follow [--config PATH | --run-dir DIR] [--json]
    fmllm-run status [--config PATH | --run-dir DIR] [--json]
    fmllm-run stop   [--config PATH | --run-dir DIR]
    fmllm-run kill   [--config PATH | --run-dir DIR]
    fmllm-run resume [--config PATH | --run-dir DIR] [--detach] [--json]

Without ``--run-dir``, follow/status/stop/kill/resume act on the config's latest run. Runs are
detached: ``start`` follows the run until it ends, but Ctrl-C only stops following.

Exit codes (README, "Running: fmllm-run", has every case):
  0    the followed run ended ok, a foreground test passed, a --detach launch, status, stop/kill of a live run
  1    the followed run ended failed/oom/lost, a foreground test did not pass, stop/kill of a run not running
  2    usage error, bad config or input, no runs yet, a --run-dir that is not a run folder
  130  the followed run ended stopped or killed, or Ctrl-C while following (the run goes on)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, TextIO

from fmllm_tui import __version__
from fmllm_tui.exitcodes import ExitCode
from fmllm_tui.redact import mask_data, mask_text

COMMANDS = ("start", "test", "follow", "status", "stop", "kill", "resume")
STATUS_EXIT = {"ok": ExitCode.OK, "failed": ExitCode.FAILED, "oom": ExitCode.FAILED, "lost": ExitCode.FAILED,
               "stopped": ExitCode.INTERRUPTED, "killed": ExitCode.INTERRUPTED, "timeout": ExitCode.FAILED}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line and exit 2, like fmllm-check
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fmllm-run", description="Launch and watch fmllm fine-tuning runs (detached; they survive "
                "the terminal closing).",
                epilog="Exit codes: 0 ok (also status, a --detach launch); 1 the run failed/oom/lost, a test did "
                       "not pass, stop/kill of a run not running; 2 usage or bad config/input; 130 the followed "
                       "run was stopped or killed, or Ctrl-C while following. README: every case.")
    p.add_argument("--version", action="version", version=f"fmllm {__version__}")
    p.add_argument("command", choices=COMMANDS, help="what to do")
    p.add_argument("--config", "-c", metavar="PATH", help="config file (default: $FMLLM_CONFIG or ./config.yaml)")
    p.add_argument("--run-dir", metavar="DIR", help="the run folder (start/test: a new folder to use; "
                   "others: default the config's latest run)")
    p.add_argument("--vram", metavar="SIZE", help="cap the run's GPU memory, e.g. 10GiB, to prove a fit for a smaller card")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default=None, help="where to train (default auto)")
    p.add_argument("--steps", type=int, metavar="N", help="test: steps (default fmllm.minimal_test_steps); "
                   "start: stop after N optimizer steps")
    p.add_argument("--detach", action="store_true", help="start/test/resume: return at once, leave the run going")
    p.add_argument("--json", action="store_true", help="JSON output (one object per line when following)")
    p.add_argument("--timeout", type=float, metavar="S", help="test: kill the minimal test after S seconds "
                   "(default 1800)")
    return p


def _err(text: str) -> None:
    print(mask_text(text), file=sys.stderr)


def _load(args: argparse.Namespace) -> Any:
    from fmllm_tui.config import ConfigError, default_config_path, load_config

    path = Path(args.config) if args.config else default_config_path()
    try:
        return load_config(path)
    except ConfigError as e:
        _err(e.render())
        raise SystemExit(ExitCode.USAGE) from None


def _target(args: argparse.Namespace) -> Path:
    """The run folder a follow/status/stop/kill/resume acts on."""
    from fmllm_tui.runner import latest_run

    if args.run_dir:
        p = Path(args.run_dir).expanduser().resolve()
        if not (p / "run.json").is_file():
            _err(f"fmllm-run: {p} is not an fmllm run folder (no run.json)")
            raise SystemExit(ExitCode.USAGE)
        return p
    loaded = _load(args)
    found = latest_run(loaded)
    if found is None:
        _err(f"fmllm-run: no runs yet for {loaded.path}; start one with: fmllm-run start --config {loaded.path}")
        raise SystemExit(ExitCode.USAGE)
    return found


def _gib(n: Any) -> str:
    from fmllm_tui.units import gib

    return gib(n) if isinstance(n, (int, float)) else "?"


def _print_event(ev: dict[str, Any], as_json: bool, out: TextIO) -> None:
    from fmllm_tui.runner.monitor import format_duration, format_metrics

    if as_json:
        out.write(json.dumps(mask_data(ev), default=str) + "\n")
        out.flush()
        return
    kind = ev.get("type")
    if kind == "metrics":
        # A step the Trainer runs again after a resume: it replaces the earlier row of that step.
        again = f" (replayed after resume from {ev.get('resumed_from')})" if ev.get("replayed") else ""
        out.write(format_metrics(ev) + again + "\n")
    elif kind == "state":
        extra = {k: v for k, v in ev.items() if k not in ("type", "phase", "ts", "pid")}
        out.write(f"[{ev.get('phase')}]" + (" " + json.dumps(extra, default=str) if extra else "") + "\n")
    elif kind == "exit":
        line = f"finished: {ev.get('status')}"
        if ev.get("message"):
            line += f" — {mask_text(str(ev['message']))}"
        if isinstance(ev.get("wall_s"), (int, float)):
            line += f" ({format_duration(ev['wall_s'])})"
        out.write(line + "\n")
        for hit in ev.get("diagnosis") or []:
            fix = (hit.get("fix") or {}).get("summary") if isinstance(hit.get("fix"), dict) else None
            out.write(f"  diagnosis ({hit.get('file')}:{hit.get('line')}): {hit.get('cause') or hit.get('pattern')}\n")
            if fix:
                out.write(f"    fix: {fix}\n")
    elif kind == "gpu":
        parts = [f"GPU {g.get('index')}: {_gib(g.get('used'))}/{_gib(g.get('total'))} util {g.get('util_pct')}%"
                 for g in ev.get("gpus") or [ev]]
        out.write("[gpu] " + " | ".join(parts) + "\n")
    elif kind == "timeout":
        out.write("stopped following (timeout); the run goes on\n")
    out.flush()


def _print_log_lines(tail: Any, out: TextIO) -> None:
    """New train.log lines that matter, as ``[log] ...`` (lognoise's rule: noise is left out)."""
    for ln in tail.read_new():
        if ln.matters:
            out.write(f"[log] {mask_text(ln.text)}\n")


def _follow(run_dir: Path, as_json: bool, out: TextIO, skip_existing: bool = False) -> int:
    from fmllm_tui.lognoise import LogTail
    from fmllm_tui.runner import follow
    from fmllm_tui.runner import rundir as rd

    if not as_json:
        out.write(f"run: {run_dir}\nlog: {run_dir / rd.LOG}\n")
    status = "lost"
    # The log lines that matter (errors, warnings, [fmllm]) between events; library noise left
    # out by the TUI's rule (fmllm_tui.lognoise); train.log keeps every line.
    tail = None if as_json else LogTail(str(run_dir / rd.LOG), start_at_end=skip_existing)
    try:
        # Every GPU's memory and utilisation every 10 s between metric lines (multi-GPU runs too).
        for ev in follow(run_dir, gpu_every=10.0, skip_existing=skip_existing):
            if tail is not None:
                _print_log_lines(tail, out)
            _print_event(ev, as_json, out)
            if ev.get("type") == "exit":
                status = str(ev.get("status"))
    except KeyboardInterrupt:
        out.write(f"\nstopped following; the run goes on. Watch again: fmllm-run follow --run-dir {run_dir}; "
                  f"stop it: fmllm-run stop --run-dir {run_dir}\n")
        return ExitCode.INTERRUPTED
    if not as_json:
        _print_summary(run_dir, out)
    return STATUS_EXIT.get(status, ExitCode.FAILED)


def _print_processes(st: dict[str, Any], out: TextIO) -> None:
    """The processes that hold a run, and a note when its supervisor is gone (killed from outside)."""
    live = st.get("processes") or []
    trainers = [p for p in live if p.get("role") != "supervisor"]
    if not trainers:
        return
    names = ", ".join(f"pid {p['pid']} ({'rank ' + p['role'][4:] if p['role'].startswith('rank') else 'training command'})"
                      for p in trainers)
    out.write(f"processes: {names}\n")
    if not st.get("supervisor_alive"):
        out.write("note: its supervisor is gone (killed from outside): no exit code or log diagnosis will be "
                  "recorded; stop or kill still reach the training processes\n")


def _print_summary(run_dir: Path, out: TextIO) -> None:
    from fmllm_tui.runner import rundir as rd
    from fmllm_tui.runner.monitor import format_duration
    from fmllm_tui.runner.speed import describe_record

    s = rd.read_json(run_dir / rd.SUMMARY)
    if not isinstance(s, dict):
        return
    speed = describe_record(s)
    out.write(f"final loss {s.get('final_loss')}, " + (f"{speed}, " if speed else "")
              + f"peak {_gib(s.get('peak_bytes'))} ({s.get('peak_method')}), "
              + f"wall {format_duration(s.get('wall_s') or 0)}\n")
    if s.get("adapter_dir"):
        out.write(f"adapter: {s['adapter_dir']}\n")
    for sample in s.get("samples") or []:
        out.write(f"sample: {json.dumps(sample.get('generation'))[:200]}\n")


def _print_test_report(r: dict[str, Any], out: TextIO) -> None:
    from fmllm_tui.runner.speed import describe_record

    # fmllm-check's verdict on the same report: a test that ran but found problems is a warning.
    verdict = ("ok, with warnings (problems below)" if r.get("problems") else "ok") if r.get("ok") else "FAILED"
    out.write(f"minimal test: {verdict} (status {r.get('status')}, device {r.get('device_name') or r.get('device') or 'not chosen yet'}, "
              f"{r.get('steps')} steps)\n")
    if r.get("run_dir"):
        out.write(f"  run dir      {r['run_dir']}\n")
    for note in r.get("notes") or []:
        out.write(f"  note         {note}\n")
    if r.get("load_s") is not None:
        out.write(f"  model loads  yes ({r['load_s']:.1f} s)\n")
    if r.get("peak_bytes") is not None:
        line = f"  peak memory  {_gib(r['peak_bytes'])} ({r.get('peak_method')})"
        if r.get("predicted_peak_bytes"):
            line += f", predicted {_gib(r['predicted_peak_bytes'])}"
        out.write(line + "\n")
    speed = describe_record(r)  # 'compile 14 s, then 4,070 tokens/s'
    if speed:
        out.write(f"  speed        {speed}\n")
    losses = r.get("losses") or []
    if losses:
        state = ("finite" if r.get("loss_finite") else "NOT finite") + (", falling" if r.get("loss_falling") else ", not falling")
        out.write(f"  loss         {losses[0]:.4f} -> {losses[-1]:.4f} ({state})\n")
    if r.get("adapter_reloaded") is not None:
        out.write(f"  adapter      {'saved and reloaded' if r['adapter_reloaded'] else 'NOT reloaded'}: "
                  f"{r.get('reload_message')}\n")
    if r.get("generation") is not None:
        out.write(f"  generation   {json.dumps(r['generation'])[:300]}\n")
    for p in r.get("problems") or []:
        out.write(f"  problem      {mask_text(p)}\n")
    for hit in r.get("diagnosis") or []:
        out.write(f"  diagnosis    {hit.get('cause') or hit.get('pattern')} ({hit.get('file')}:{hit.get('line')})\n")


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``fmllm-run``."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    from fmllm_tui.runner import RunError

    try:
        return _dispatch(args, out)
    except RunError as e:
        _err(f"fmllm-run: {e}")
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except SystemExit as e:  # a usage problem found after parsing (bad config, no runs)
        return int(e.code) if isinstance(e.code, int) else ExitCode.USAGE


def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    from fmllm_tui import runner

    cmd = args.command
    if args.steps is not None and args.steps < 1:
        _err("fmllm-run: --steps must be 1 or more")
        return ExitCode.USAGE
    timeout = getattr(args, "timeout", None)
    if timeout is not None and not (timeout > 0 and timeout != float("inf")):
        _err(f"fmllm-run: --timeout must be a number of seconds above 0 (got {timeout:g})")
        return ExitCode.USAGE
    if cmd == "test" and not args.detach:
        loaded = _load(args)
        report = runner.run_minimal_test(loaded, steps=args.steps, device=args.device, run_dir=args.run_dir,
                                         vram=args.vram, timeout=args.timeout)
        if args.json:
            out.write(json.dumps(report, default=str) + "\n")
        else:
            _print_test_report(report, out)
        if report.get("status") == "not-started" or report.get("problem") == "config":
            return ExitCode.USAGE  # never started, or refused before training (a bad config or flag)
        return ExitCode.OK if report.get("ok") else ExitCode.FAILED
    if cmd in ("start", "test"):
        loaded = _load(args)
        run_dir = runner.start(loaded, "train" if cmd == "start" else "test", run_dir=args.run_dir,
                               steps=args.steps, vram=args.vram, device=args.device)
        return _after_launch(run_dir, args, out)
    run_dir = _target(args)
    if cmd == "follow":
        return _follow(run_dir, args.json, out)
    if cmd == "status":
        st = runner.status(run_dir)
        if args.json:
            out.write(json.dumps(mask_data(st), default=str) + "\n")
        else:
            out.write(f"run: {run_dir}\nstate: {st['state']}" + (f" ({st['phase']})" if st.get("phase") else "") + "\n")
            _print_processes(st, out)
            if st.get("last_metrics"):
                from fmllm_tui.runner.monitor import format_metrics

                out.write("last logged: " + format_metrics(st["last_metrics"]) + "\n")
            if isinstance(st.get("exit"), dict) and st["exit"].get("message"):
                out.write(f"message: {mask_text(str(st['exit']['message']))}\n")
        return ExitCode.OK
    if cmd == "stop":
        from fmllm_tui.runner import rundir as rd

        phase = runner.status(run_dir).get("phase")
        custom = (rd.read_json(run_dir / rd.RUN) or {}).get("custom_command")
        if runner.stop(run_dir):
            what = ("gets SIGTERM (your train_command decides what to save)" if custom else
                    "saves a checkpoint after this step and exits" if phase == "training" else
                    "ends before training (nothing to save yet)" if phase in (None, "loading") else
                    "finishes saving and exits")
            out.write(f"stop requested: {run_dir} {what} "
                      "(fmllm-run follow to watch, fmllm-run kill to end it at once)\n")
            return ExitCode.OK
        out.write(f"not running: {run_dir} ({runner.status(run_dir)['state']})\n")
        return ExitCode.FAILED
    if cmd == "kill":
        if runner.kill(run_dir):
            from fmllm_tui.runner import rundir as rd
            from fmllm_tui.runner.launch import after_kill

            kind = (rd.read_json(run_dir / rd.RUN) or {}).get("kind")
            out.write(f"killed: {run_dir} ({after_kill(kind)})\n")
            return ExitCode.OK
        out.write(f"not running: {run_dir} ({runner.status(run_dir)['state']})\n")
        return ExitCode.FAILED
    if cmd == "resume":
        size = (run_dir / "metrics.jsonl").stat().st_size if (run_dir / "metrics.jsonl").exists() else 0
        runner.resume(run_dir)
        return _after_launch(run_dir, args, out, skip_bytes=size)
    return ExitCode.USAGE


def _after_launch(run_dir: Path, args: argparse.Namespace, out: TextIO, skip_bytes: int = 0) -> int:
    from fmllm_tui.runner import status

    if args.detach:
        time.sleep(0.2)
        st = status(run_dir)
        if args.json:
            out.write(json.dumps({"run_dir": str(run_dir), "pid": st.get("pid"), "state": st["state"]}) + "\n")
        else:
            out.write(f"started: {run_dir} (pid {st.get('pid')})\nfollow it: fmllm-run follow --run-dir {run_dir}\n")
        return ExitCode.OK
    return _follow(run_dir, args.json, out, skip_existing=skip_bytes > 0)


if __name__ == "__main__":
    sys.exit(main())
