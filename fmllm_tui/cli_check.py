"""fmllm-check: the headless doctor. Runs the checks, prints findings, applies fixes.

Exit codes: 0 nothing failed (warnings allowed), 1 a check failed, 2 usage error (an --only that
matches no check included) or unreadable config, 3 a check crashed or could not run, 130
interrupted (Ctrl-C: the report of the checks that completed, marked partial).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO

from fmllm_tui import __version__
from fmllm_tui.checkrun import ChecksNotRun, OnlyMatchesNothing, sigint_ignored
from fmllm_tui.exitcodes import ExitCode
from fmllm_tui.findings import GLYPHS, Change, CheckResult, summarize
from fmllm_tui.redact import mask_text

ASCII = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP", "crash": "CRASH"}
COLORS = {"pass": "32", "warn": "33", "fail": "31", "skip": "90", "crash": "35"}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 on its own; keep the one-line form
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(ExitCode.USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fmllm-check",
        description="Check that a QLoRA fine-tune will fit and run on your GPU, explain why not, and fix the config.",
        epilog="Exit codes: 0 ok (warnings allowed), 1 a check failed, 2 usage error (also an --only that "
        "matches no check) or unreadable config, 3 a check crashed or could not run, 130 interrupted "
        "(the report is partial). README: fmllm-check.",
    )
    p.add_argument("--version", action="version", version=f"fmllm {__version__}")
    p.add_argument("--config", "-c", metavar="PATH", help="config file (default: $FMLLM_CONFIG or ./config.yaml)")
    p.add_argument("--fix", action="store_true", help="apply the config fixes of failing and warning checks, then check again")
    p.add_argument("--dry-run", action="store_true", help="with --fix/--preset: print the diff, write nothing")
    p.add_argument("--undo", action="store_true", help="restore the config from its last backup and exit")
    p.add_argument("--test", action="store_true", help="also run the minimal fine-tuning test")
    p.add_argument("--only", nargs="+", metavar="ID", default=[], help="run only these checks (ids or prefixes, e.g. gpu)")
    p.add_argument("--list-checks", "--list", action="store_true", help="list every check (or those --only selects) and exit")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--junitxml", metavar="FILE", help="also write a JUnit XML report")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpu", metavar="NAME", help="plan for this GPU instead of this machine's (e.g. 'RTX 3080')")
    g.add_argument("--vram", metavar="SIZE", help="plan for this much GPU memory (e.g. 10GiB)")
    p.add_argument("--log", nargs="+", metavar="FILE", default=[], help="training logs to diagnose")
    p.add_argument("--offline", action="store_true", help="never use the network (the Hub cache and the catalogue only)")
    p.add_argument("--preset", metavar="NAME", help="apply a named profile (see --list-presets) before checking")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--recommend", action="store_true", help="which catalogue models fit this GPU, with which settings")
    p.add_argument("--report", metavar="FILE", help=argparse.SUPPRESS)  # JSON-lines stream for the TUI
    return p


def _use_ascii(stream: TextIO) -> bool:
    return bool(os.environ.get("NO_COLOR")) or not stream.isatty()


def _fmt_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v)


def format_change(c: Change) -> str:
    return f"{c.key}: {_fmt_value(c.from_) if c.from_ is not None else '(unset)'} -> {_fmt_value(c.to)}"


def warnings(n: int) -> str:
    """'1 warning', '3 warnings'."""
    return f"{n} warning" + ("" if n == 1 else "s")


def render_human(results: list[CheckResult], stream: TextIO, *, header: str = "",
                 fix_command: str = "fmllm-check --fix") -> None:
    """The text report; ``fix_command`` is the "apply with" hint (with the flags of this run)."""
    plain = _use_ascii(stream)
    w = stream.write
    if header:
        w(header + "\n")
    width = max((len(r.id) for r in results), default=10)
    for r in results:
        if plain:
            tag = f"[{ASCII[r.status]}]".ljust(8)
        else:
            tag = f"\x1b[{COLORS[r.status]}m{GLYPHS[r.status]}\x1b[0m"
        first = r.finding.splitlines()[0] if r.finding else ""
        w(f"{tag} {r.id.ljust(width)}  {r.title}\n")
        if r.status != "pass":
            for line in r.finding.splitlines() or [first]:
                w(f"      {line}\n")
            if r.fix and r.status in ("fail", "warn"):
                if r.fix.changes:
                    w(f"      fix ({r.fix.id}):\n")
                    for c in r.fix.changes:
                        w(f"        {format_change(c)}\n")
                    if r.fix.safe:
                        w(f"        apply with: {fix_command}\n")
                    else:  # --fix applies safe fixes only: never point at it for this one
                        w("        (not applied by --fix: make this change by hand)\n")
                if r.fix.shell:
                    w(f"      run: {r.fix.shell}\n")
                if r.fix.summary:
                    w(f"      ({r.fix.summary})\n")
        elif first:
            w(f"      {first}\n")
    s = summarize(results)
    w(
        f"\n{s['pass']} passed, {warnings(s['warn'])}, {s['fail']} failed, {s['skip']} skipped, "
        f"{s['crash']} crashed\n"
    )


def rerun_flags(args: argparse.Namespace, config_path: Path) -> list[str]:
    """The flags that shaped this run's findings, as argv words for a printed fmllm-check command:
    the config (unless it is the plain default), ``--gpu``/``--vram``, ``--offline``, ``--log`` and
    ``--only``. Not ``--test``: a fix command would train again for nothing."""
    words: list[str] = []
    from fmllm_tui.checkrun import finding_flags

    if os.environ.get("FMLLM_CONFIG") or Path(config_path) != Path("config.yaml"):
        words += ["-c", _path_word(str(config_path))]
    return words + finding_flags(gpu=args.gpu, vram=args.vram, offline=args.offline,
                                 logs=[_path_word(f) for f in args.log or []], only=args.only)


def _path_word(path: str) -> str:
    return f"./{path}" if path.startswith("-") else path  # never read back as a flag


def command_hint(*words: str) -> str:
    """An fmllm-check command line to print, each word shell-quoted: runs as printed."""
    return shlex.join(["fmllm-check", *words])


def interrupted_note(results: list[CheckResult], planned: list[str]) -> str:
    """One line saying the report is partial and which checks completed."""
    done = [r.id for r in results]
    of = f" of {len(planned)}" if planned else ""
    line = f"interrupted (Ctrl-C): partial report, {len(done)}{of} checks completed"
    line += f": {', '.join(done)}" if done else ""
    missing = [cid for cid in planned if cid not in set(done)]
    if missing:
        line += f"; not completed: {', '.join(missing)}"
    return line


def exit_code_for(results: list[CheckResult], config_ok: bool) -> ExitCode:
    s = summarize(results)
    if not config_ok:
        return ExitCode.USAGE
    if s["crash"]:
        return ExitCode.CRASHED
    if s["fail"]:
        return ExitCode.FAILED
    return ExitCode.OK


def environment_info(inventory_json: dict[str, Any] | None = None) -> dict[str, Any]:
    def ver(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    pkgs = ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "textual",
            "huggingface_hub", "ruamel.yaml", "nvidia-ml-py", "pytest", "liger-kernel", "flash-attn"]
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: ver(p) for p in pkgs},
        "hf_endpoint": os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
        "hf_token_set": bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "terminal": {"TERM": os.environ.get("TERM"), "COLORTERM": os.environ.get("COLORTERM"),
                     "NO_COLOR": bool(os.environ.get("NO_COLOR"))},
    }
    return env


def _config_ok(results: list[CheckResult]) -> bool:
    return not any(r.id == "config.valid" and r.status == "fail" for r in results)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main_env(argv)
    except KeyboardInterrupt:  # before the checks began (start-up): nothing completed
        if "--json" in (argv if argv is not None else sys.argv[1:]):
            print(json.dumps({"fmllm_version": __version__, "interrupted": True, "checks": [],
                              "completed": [], "exit_code": int(ExitCode.INTERRUPTED)}, indent=2))
        print("\nfmllm-check: interrupted before any check completed", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except OnlyMatchesNothing as e:
        print(f"fmllm-check: error: --only: {e}. `fmllm-check --list-checks` lists the ids.", file=sys.stderr)
        return ExitCode.USAGE
    except ChecksNotRun as e:  # pytest itself could not start: no check ran, nothing to report
        print(f"fmllm-check: error: {e}\nReinstall fmllm (pip install -e .) or run `pytest checks/` to see "
              "pytest's own message.", file=sys.stderr)
        return ExitCode.CRASHED
    except BrokenPipeError:  # `fmllm-check | head`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return ExitCode.OK


def _main_env(argv: list[str] | None) -> int:
    """--offline also reaches child processes (the minimal test) through HF_HUB_OFFLINE, for this
    call only: main() runs in-process in the TUI and in tests, so the variable is restored."""
    offline = "--offline" in (argv if argv is not None else sys.argv[1:])
    old = os.environ.get("HF_HUB_OFFLINE")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return _main(argv)
    finally:
        if offline:
            if old is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old


def _main(argv: list[str] | None) -> int:
    """Parse the flags and run the one mode they ask for (the modes' table, in precedence order);
    with none of them, check (after --preset's change, unless --dry-run stops there)."""
    from fmllm_tui.config import default_config_path

    args = build_parser().parse_args(argv)
    config_path = Path(args.config) if args.config else default_config_path()
    problem = _usage_problem(args)
    if problem:
        print(f"fmllm-check: error: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    for flag, mode in _MODES:
        if getattr(args, flag):
            return mode(args, config_path)
    if args.preset:
        code = _apply_preset(args, config_path)
        if code is not None:
            return code
    return _check(args, config_path)


def _usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags' values (argparse checks only their form), or None."""
    from fmllm_tui.config import parse_size

    if args.dry_run and not (args.fix or args.preset):
        return "--dry-run goes with --fix or --preset"
    if args.vram:
        try:
            parse_size(args.vram)
        except ValueError as e:
            return f"--vram: {e}"
    if args.gpu:
        from fmllm_tui import gpudb

        try:
            gpudb.lookup(args.gpu)
        except LookupError as e:
            return f"--gpu: {e}"
    for log in args.log:
        if Path(log).is_dir():
            return f"--log {log}: a folder; give the log file (e.g. {Path(log) / 'train.log'})"
        if not Path(log).is_file():
            return f"--log {log}: no such file"
    if args.gpu is not None and not args.gpu.strip():
        return "--gpu: empty; name a card, e.g. --gpu 'RTX 3090'"
    if args.junitxml and Path(args.junitxml).is_dir():
        return f"--junitxml {args.junitxml}: a folder; give a file name (e.g. {Path(args.junitxml) / 'fmllm.xml'})"
    return None


def _list_presets(args: argparse.Namespace, config_path: Path) -> int:
    from fmllm_tui.fixes import list_presets

    print(list_presets())
    return ExitCode.OK


def _undo(args: argparse.Namespace, config_path: Path) -> int:
    from fmllm_tui.fixes import FixError, undo

    try:
        used = undo(config_path)
    except FixError as e:
        print(e.render() if hasattr(e, "render") else str(e), file=sys.stderr)
        return ExitCode.USAGE
    print(f"restored {config_path} from {used}")
    return ExitCode.OK


def _run_options(args: argparse.Namespace, config_path: Path) -> Any:
    """The checkrun.RunOptions of these flags."""
    from fmllm_tui.checkrun import RunOptions

    return RunOptions(
        config=str(config_path), gpu=args.gpu, vram=args.vram, logs=list(args.log), offline=args.offline,
        run_test=args.test, only=list(args.only), junitxml=args.junitxml, report_stream=args.report,
    )


def _list_checks(args: argparse.Namespace, config_path: Path) -> int:
    from fmllm_tui.checkrun import list_checks

    metas = list_checks(_run_options(args, config_path))
    if args.json:
        print(json.dumps(metas, indent=2))
    else:
        for m in metas:
            print(f"{m['id']:28} {m['category']:8} {m['severity']:8} {m['title']}")
    return ExitCode.OK


def _write_changes(config_path: Path, changes_for: Callable[[Any], list[Change]], dry_run: bool) -> Any:
    """Load the config and write the changes ``changes_for`` picks for it (``dry_run``: only the
    diff). Returns fixes' result, or the exit code after printing why the config or the write
    failed."""
    from fmllm_tui.config import ConfigError, load_config
    from fmllm_tui.fixes import FixError, apply_changes

    try:
        loaded = load_config(config_path)
        return apply_changes(config_path, changes_for(loaded), dry_run=dry_run, expected_raw=loaded.raw)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
    except FixError as e:
        print(e.render() if hasattr(e, "render") else str(e), file=sys.stderr)
    return ExitCode.USAGE


def _apply_preset(args: argparse.Namespace, config_path: Path) -> int | None:
    """Write (or with --dry-run show) --preset's changes. Returns the exit code when the run ends
    here (an error, or --dry-run), None when the checks follow."""
    from fmllm_tui.fixes import PRESETS, preset_changes

    if args.preset not in PRESETS:
        print(f"fmllm-check: error: --preset: unknown preset {args.preset!r}; choose from: "
              f"{', '.join(PRESETS)}", file=sys.stderr)
        return ExitCode.USAGE
    res = _write_changes(config_path, lambda loaded: preset_changes(loaded, args.preset), args.dry_run)
    if isinstance(res, int):
        return res
    out = sys.stderr if args.json else sys.stdout
    print(mask_text(res.diff) or f"preset {args.preset}: the config already matches", file=out)
    if res.backup_path:
        print(f"backup: {res.backup_path} (undo with "
              f"{command_hint('--undo', *_config_words(rerun_flags(args, config_path)))})", file=out)
    return ExitCode.OK if args.dry_run else None


def _check(args: argparse.Namespace, config_path: Path) -> int:
    """Run the checks (with --fix: fix, then check again) and report them."""
    hint_flags = rerun_flags(args, config_path)
    undo_hint = command_hint("--undo", *_config_words(hint_flags))
    # What a Ctrl-C leaves to report, filled in as the run goes.
    state: dict[str, Any] = {"results": [], "before": None, "fix": None, "planned": [], "interrupted": False}
    try:
        error = _run(args, _run_options(args, config_path), config_path, state, undo_hint)
    except KeyboardInterrupt:  # outside a check (between runs, while writing the fix)
        error, state["interrupted"] = None, True
    if error is not None:
        return error
    with sigint_ignored():  # one whole report, also when Ctrl-C comes as it is printed
        return _report(args, config_path, state, hint_flags, interrupted=state["interrupted"])


def _run(args: argparse.Namespace, opts: Any, config_path: Path, state: dict[str, Any], undo_hint: str) -> int | None:
    """The checks, and with --fix the fix and the checks again, filling ``state`` (its
    ``interrupted`` is set when a Ctrl-C cut the checks short). Returns an exit code for an error
    it has already printed, else None."""
    from fmllm_tui.checkrun import run_checks

    outcome = run_checks(opts)
    state.update(results=outcome.results, planned=[m["id"] for m in outcome.collected])
    if outcome.interrupted:
        if args.fix:
            state["fix"] = {"applied": [], "shell": [], "diff": "", "backup": None}
        state["interrupted"] = True
        return None
    if args.fix:
        return _fix_and_recheck(args, opts, config_path, state, undo_hint)
    return None


def _fix_and_recheck(args: argparse.Namespace, opts: Any, config_path: Path, state: dict[str, Any],
                     undo_hint: str) -> int | None:
    """--fix: write the safe fixes of the checks in ``state`` (or with --dry-run show them), then
    check again; ``state`` as in _run."""
    from fmllm_tui.checkrun import run_checks
    from fmllm_tui.fixes import safe_changes

    state["before"] = state["results"]
    chosen = safe_changes(state["results"])
    fix_report: dict[str, Any] = {"applied": [], "shell": chosen.shells, "diff": "", "backup": None}
    state["fix"] = fix_report
    out = sys.stderr if args.json else sys.stdout
    if chosen.changes:
        res = _write_changes(config_path, lambda _loaded: chosen.changes, args.dry_run)
        if isinstance(res, int):
            return res
        fix_report.update(applied=chosen.fixer_ids, diff=res.diff,
                          backup=str(res.backup_path) if res.backup_path else None)
        if args.dry_run:
            print("--dry-run: these changes would be made (nothing written):", file=out)
        print(mask_text(res.diff), file=out)
        if res.backup_path:
            print(f"backup: {res.backup_path} (undo with {undo_hint})", file=out)
        if not args.dry_run:
            state.update(results=[], planned=[])  # the check after the fix has not run yet
            outcome = run_checks(opts)
            state.update(results=outcome.results, planned=[m["id"] for m in outcome.collected])
            if outcome.interrupted:
                state["interrupted"] = True
                return None
    for cmd in chosen.shells:
        print(f"not a config change; run: {cmd}", file=out)
    return None


def _config_words(flags: list[str]) -> list[str]:
    return flags[:2] if flags[:1] == ["-c"] else []


def _report(args: argparse.Namespace, config_path: Path, state: dict[str, Any], hint_flags: list[str], *,
            interrupted: bool) -> int:
    """Print the report (human or JSON) and return the exit code. ``interrupted``: a Ctrl-C ended
    the run; the report holds the checks that completed, says it is partial, and exits 130."""
    results: list[CheckResult] = state["results"]
    before: list[CheckResult] | None = state["before"]
    fix_report: dict[str, Any] | None = state["fix"]
    config_ok = _config_ok(results)
    code = ExitCode.INTERRUPTED if interrupted else exit_code_for(results, config_ok)
    if args.json:
        doc: dict[str, Any] = {
            "fmllm_version": __version__,
            "config": str(config_path),
            "environment": environment_info(),
            "checks": [r.to_json() for r in results],
            "summary": summarize(results),
            "interrupted": interrupted,
            "exit_code": int(code),
        }
        if interrupted:
            doc["completed"] = [r.id for r in results]
            doc["not_completed"] = [cid for cid in state["planned"] if cid not in set(doc["completed"])]
        if fix_report is not None:
            doc["fix"] = fix_report
            doc["before"] = {"summary": summarize(before or [])}
        print(json.dumps(doc, indent=2, default=str))
    else:
        header = f"fmllm-check {__version__} · {config_path}"
        if args.gpu or args.vram:
            header += f" · planning for {args.gpu or args.vram}"
            if args.gpu:
                header += _card_words(args.gpu)
        if fix_report is not None and before is not None and not args.dry_run and fix_report["applied"]:
            sb, sa = summarize(before), summarize(results)
            after = "after (partial)" if interrupted else "after"
            header += (f"\nbefore --fix: {sb['fail']} failed, {warnings(sb['warn'])}; "
                       f"{after}: {sa['fail']} failed, {warnings(sa['warn'])}")
        render_human(results, sys.stdout, header=header, fix_command=command_hint("--fix", *hint_flags))
        if interrupted:
            print(interrupted_note(results, state["planned"]), file=sys.stdout)
        elif not config_ok:
            bad = next(r for r in results if r.id == "config.valid")
            print(bad.finding, file=sys.stderr)
    if interrupted:
        print("fmllm-check: interrupted (Ctrl-C); the report is partial"
              + (" (a minimal test's training process was stopped)" if args.test else ""), file=sys.stderr)
    return int(code)


def _card_words(name: str) -> str:
    """" (which card, and why)" for the report's header when the name could mean several."""
    from fmllm_tui import gpudb

    try:
        card = gpudb.lookup(name)
    except LookupError:
        return ""
    return f" ({card.note})" if card.note else ""


def _recommend(args: argparse.Namespace, config_path: Path) -> int:
    from fmllm_tui.config import ConfigError, load_config, parse_size

    try:
        loaded = load_config(config_path)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return ExitCode.USAGE
    from fmllm_tui import fitsearch, gpu, gpudb

    card = None
    # The checks' planning target (checks/conftest.py): the flags, then the config's target.
    gpu_name = args.gpu or loaded.view.fmllm.target_gpu
    vram = args.vram or loaded.view.fmllm.vram
    try:
        if gpu_name:
            card = gpudb.lookup(gpu_name)
            budget, name = (parse_size(vram) if vram else card.usable_bytes), card.name
        elif vram:
            budget, name = parse_size(vram), vram
    except (LookupError, ValueError) as e:
        src = "--gpu/--vram" if (args.gpu or args.vram) else "fmllm.target_gpu/fmllm.vram"
        print(f"fmllm-check: error: {src}: {e}", file=sys.stderr)
        return ExitCode.USAGE
    if not (gpu_name or vram):
        inv = gpu.probe()
        if not inv.ok or not inv.devices:
            print("fmllm-check: error: --recommend needs a GPU here, or --gpu NAME / --vram SIZE (or fmllm.target_gpu / "
                  "fmllm.vram in the config)", file=sys.stderr)
            return ExitCode.USAGE
        budget, name = inv.devices[0].free_bytes, inv.devices[0].name
        card = gpudb.match_nvml(inv.devices[0].name, inv.devices[0].total_bytes)
    from fmllm_tui.datafile import example_lengths

    recs = fitsearch.recommend(budget, loaded.view, gpu=card, example_lengths=example_lengths(loaded.view))
    if args.json:
        print(json.dumps({"gpu": name, "budget_bytes": budget, "recommendations": [r.to_json() for r in recs]},
                         indent=2, default=str))
        return ExitCode.OK
    print(f"Models of fmllm's catalogue on {name} ({budget / 2**30:.1f} GiB):")
    for r in recs:
        print(r.describe())
    if not recs:
        print("  none fits: no catalogue model's predicted range fits this budget with any settings fmllm tries")
    return ExitCode.OK


#: The modes that run instead of the checks: (the flag's argparse name, its command), the first
#: flag given wins. Each command takes the parsed flags and the config path and returns the exit code.
_MODES: tuple[tuple[str, Callable[[argparse.Namespace, Path], int]], ...] = (
    ("list_presets", _list_presets),
    ("undo", _undo),
    ("list_checks", _list_checks),
    ("recommend", _recommend),
)


if __name__ == "__main__":
    sys.exit(main())
