"""Log checks: known fine-tuning failures in training logs, each with its cause and fix."""

from __future__ import annotations

import os
from dataclasses import replace

from fmllm_tui.checks._plugin import check

from fmllm_tui.findings import Change, Fix, plural


def _logs_to_scan(options, loaded) -> list[tuple[str, str]]:
    """(path, where it came from): every --log FILE, plus the latest fmllm run of this config."""
    out = [(p, "--log") for p in options.logs]
    try:
        from fmllm_tui.runner import latest_run

        latest = latest_run(loaded)
    except Exception:  # no run yet, or an unreadable runs folder: nothing to add
        latest = None
    if latest is not None:
        log = os.path.join(str(latest), "train.log")
        if os.path.isfile(log) and log not in [p for p, _ in out]:
            out.append((log, "latest run"))
    return out


def _settings_for(loaded, log: str):
    """What the run that wrote ``log`` did: its plan when fmllm-run wrote it (config.json beside
    train.log), else the config's recipe as planned for a CUDA card."""
    import json

    from fmllm_tui.logdiag import RunSettings
    from fmllm_tui.plan import PlanError, RunPlan, Target, resolve_recipe

    spec = os.path.join(os.path.dirname(log), "config.json")
    try:
        with open(spec, encoding="utf-8") as f:
            plan = json.load(f).get("plan")
        if plan is not None:
            return RunSettings.from_config(loaded.view, RunPlan.from_json(plan))
    except (OSError, ValueError, AttributeError, TypeError, PlanError):
        pass  # not an fmllm run folder, or an older fmllm's: the config's plan below
    try:
        return RunSettings.from_config(loaded.view, recipe=resolve_recipe(loaded.view, Target.planned()))
    except PlanError:
        return RunSettings.from_config(loaded.view)


def _fix_for(hit, loaded) -> Fix | None:
    fx: Fix | None = hit.fix
    if fx is None:
        return None
    fid = fx.id
    changes: list[Change] = []
    concrete = all(c.to not in ("halve", "double") and not str(c.to).startswith(("a ", "an ", "match"))
                   for c in fx.changes)
    if fid and (fid != "memory.fit" or (fx.changes and concrete)):
        # memory.fit from a log is planned only with concrete values (read from the config); else
        # config.fit carries the fit search's exact changes
        try:
            from fmllm_tui.fixes import plan_fix

            # the finding's summary is each change's reason (the comment written beside it)
            values = {"hit": hit.values, "changes": [replace(c, comment=fx.summary) for c in fx.changes]}
            changes = plan_fix(loaded, fid, values)
        except Exception:  # a fixer that cannot plan from a log alone: keep the advice
            changes = []
    # a shorter max_seq_length read from a log may cut examples: offered, never applied by --fix
    cuts = any(c.key.endswith("max_seq_length") and isinstance(c.to, int) and isinstance(c.from_, int) and c.to < c.from_
               for c in changes)
    summary = fx.summary + (" (a shorter max_seq_length truncates examples: --fix leaves it to you)" if cuts else "")
    return Fix(id=fid or "log.command", changes=changes, shell=fx.shell, summary=summary, safe=not cuts)


#: Notes that say a run stopped on an error the text does not hold: the check warns (pass the whole log).
STOPPED_WITHOUT_ERROR = frozenset({"log_cut_in_traceback"})


@check("logs.scan", "Training logs show no known failure", "logs")
def test_logs(report, options, loaded, architecture):
    from fmllm_tui.logdiag import scan_file

    logs = _logs_to_scan(options, loaded)
    report.set(files=[p for p, _ in logs], hits=[])
    if not logs:
        report.skip("no training log to scan: pass --log FILE, or run fmllm-run first")
    arch, _ = architecture
    vocab = int(arch["vocab_size"]) if arch and arch.get("vocab_size") else None
    hits = []
    for path, _src in logs:
        hits.extend(scan_file(path, vocab_size=vocab, settings=_settings_for(loaded, path)))
    report.set(hits=[h.to_json() for h in hits])
    errors = [h for h in hits if h.severity == "error"]
    notes = [h for h in hits if h.severity == "info"]
    hits = [h for h in hits if h.severity != "info"]  # information (deprecations) is not a failure
    cut = [h for h in notes if h.pattern in STOPPED_WITHOUT_ERROR]
    if not hits and cut:
        # a run stopped there, but the error is not in the text: not "no known failure"
        h = cut[0]
        report.warn(f"{h.file}:{h.line}: [{h.pattern}] {h.cause}", _fix_for(h, loaded))
    if not hits:
        extra = f"; {plural(len(notes), 'note')}: " + "; ".join(f"[{h.pattern}] {h.cause}" for h in notes[:3]) if notes else ""
        report.ok(f"no known failure in {plural(len(logs), 'log')}{extra}")
    top = (errors or hits)[0]
    # each line names the phase the failure happened in (load, first step, training, eval, ...): the fix depends on it
    lines = [f"{h.file}:{h.line}: [{h.pattern}] {h.phase.replace('_', ' ')}: {h.cause}" + (f" (x{h.count})" if h.count > 1 else "")
             for h in hits[:5]]
    text = f"{plural(len(hits), 'known problem')} in the logs:\n" + "\n".join(lines)
    fix = _fix_for(top, loaded)
    if errors:
        report.fail(text, fix)
    report.warn(text, fix)
