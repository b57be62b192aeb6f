"""The minimal fine-tuning test (``fmllm-check --test``, the TUI's ``t``, ``fmllm-run test``).

N steps (``fmllm.minimal_test_steps``, default 10) on a sample of the configured data, in a
training process of its own (this process never imports torch). The report says: the model
loads, the peak memory (against the memory model's prediction when given), tokens/s, whether
the loss is finite and falling, whether the adapter saves and reloads, and one generation.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from . import rundir as rd
from .launch import RunError, kill, start, wait

DEFAULT_TIMEOUT_S = 1800.0


def run_minimal_test(loaded: Any, *, steps: int | None = None, device: str | None = None,
                     run_dir: str | os.PathLike[str] | None = None, timeout: float | None = None,
                     vram: str | int | None = None, predicted_peak_bytes: int | None = None,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the minimal test and return its report.

    Keys: ``ok`` (bool), ``problems`` (plain-words findings; empty when all is well), ``steps``,
    ``losses``, ``peak_bytes`` (NVML process peak on a GPU, else torch's reserved peak; the
    process RSS peak on the CPU), ``tokens_per_s`` (steady state), ``speed`` (its warm-up apart:
    runner/speed.py), ``device`` (cuda | cpu), ``model``,
    ``run_dir``, ``generation``, ``status`` (ok | failed | oom | stopped | killed | timeout |
    not-started), plus ``loss_finite``, ``loss_falling``, ``adapter_reloaded``, ``notes``,
    ``predicted_peak_bytes`` and ``peak_vs_prediction`` (ratio) when a prediction was given,
    ``exit`` (the exit record) and ``diagnosis`` (log diagnosis of a failed run).
    """
    n = int(steps) if steps is not None else int(loaded.view.fmllm.minimal_test_steps)
    report: dict[str, Any] = {
        "ok": False, "problems": [], "steps": 0, "losses": [], "peak_bytes": None, "tokens_per_s": None,
        "device": None, "model": loaded.view.base_model_name, "run_dir": None, "generation": None,
        "status": "not-started", "notes": [], "requested_steps": n,
    }
    try:
        rdir = start(loaded, "test", run_dir=run_dir, steps=n, vram=vram, device=device, overrides=overrides)
    except RunError as e:
        report["problems"].append(str(e))
        return report
    report["run_dir"] = str(rdir)
    rec = wait(rdir, timeout=timeout if timeout is not None else DEFAULT_TIMEOUT_S)
    if rec is None:
        kill(rdir)
        report["status"] = "timeout"
        report["problems"].append(f"the minimal test did not finish within {timeout or DEFAULT_TIMEOUT_S:.0f} s "
                                  f"and was killed; its log is {rdir / rd.LOG}")
        rec = rd.read_json(rdir / rd.EXIT) or {}
    report["exit"] = rec
    if predicted_peak_bytes is None:
        predicted_peak_bytes, why = _predict(loaded)
        if why:
            report["notes"].append(why)
    return _fill(report, rdir, rec, predicted_peak_bytes)


def _predict(loaded: Any) -> tuple[int | None, str | None]:
    """fmllm's memory model's process peak for this config (no torch, no network)."""
    try:
        from fmllm_tui.memory import predict
        from fmllm_tui.runner.smoke import local_model_config

        arch, where = local_model_config(loaded.view.base_model_name, revision=loaded.view.fmllm.revision)
        if arch is None:
            return None, f"no memory prediction: {where}"
        return int(predict(loaded.view, arch).peak_process_bytes), None
    except Exception as e:  # the prediction is a comparison point, never a reason to fail the test
        return None, f"no memory prediction: {type(e).__name__}: {e}"


def _fill(report: dict[str, Any], rdir: Path, rec: dict[str, Any], predicted: int | None) -> dict[str, Any]:
    result = rd.read_json(rdir / rd.RESULT)
    status = rec.get("status", "failed") if report["status"] != "timeout" else "timeout"
    report["status"] = status
    if rec.get("diagnosis"):
        report["diagnosis"] = rec["diagnosis"]
    outcome = rd.read_json(rdir / rd.OUTCOME)
    if isinstance(outcome, dict) and outcome.get("problem") == "config":
        report["problem"] = "config"  # the training process refused the config or a flag (RecipeError)
    if not isinstance(result, dict):
        msg = rec.get("message") or "the training process ended without a result"
        if status == "oom":
            report["problems"].append(f"out of GPU memory: {msg}")
        elif status != "timeout":
            report["problems"].append(msg)
        report["log"] = str(rdir / rd.LOG)
        return report
    notes_before = list(report.get("notes") or [])
    for key in ("steps", "losses", "peak_bytes", "tokens_per_s", "speed", "device", "device_name", "generation",
                "loss_finite", "loss_falling", "adapter_reloaded", "reload_message", "notes", "recipe",
                "model_note", "peak_allocated_bytes", "peak_reserved_bytes", "peak_process_bytes",
                "peak_method", "load_s", "train_s", "wall_s", "trainable_params", "adapter_dir", "data",
                "versions", "vram_cap_bytes"):
        if key in result:
            report[key] = result[key]
    report["notes"] = list(report.get("notes") or []) + [n for n in notes_before if n not in (report.get("notes") or [])]
    problems: list[str] = report["problems"]
    if status == "stopped":
        problems.append("the minimal test was stopped before it finished")
    losses = [x for x in report.get("losses") or [] if isinstance(x, (int, float))]
    if not losses:
        problems.append("no loss was logged")
    elif not all(math.isfinite(x) for x in losses):
        problems.append("the loss is not finite (nan or inf): try bf16 instead of fp16, or a lower learning rate")
    elif not report.get("loss_falling"):
        problems.append(f"the loss did not fall over {len(losses)} steps ({losses[0]:.3f} -> {losses[-1]:.3f}); "
                        "a few steps may be too few, but check the learning rate and the data")
    if status == "ok" and not report.get("adapter_reloaded"):
        problems.append(f"the adapter did not reload: {report.get('reload_message')}")
    if status == "ok" and not (report.get("generation") or "").strip():
        problems.append("the generation from the adapter is empty")
    if predicted:
        report["predicted_peak_bytes"] = predicted
        peak = report.get("peak_bytes")
        if isinstance(peak, (int, float)) and report.get("device") == "cuda":
            ratio = peak / predicted
            report["peak_vs_prediction"] = ratio
            if ratio > 1.10:
                problems.append(f"peak memory {peak / 2**30:.2f} GiB is {100 * (ratio - 1):.0f}% above the "
                                f"predicted {predicted / 2**30:.2f} GiB")
            longest = (report.get("data") or {}).get("longest")
            if longest:
                report["notes"].append(f"the test's longest example has {longest} tokens; the prediction is for "
                                       "max_seq_length, so a shorter sample peaks lower")
    hard = status != "ok" or not losses or not all(math.isfinite(x) for x in losses) \
        or not report.get("adapter_reloaded")
    report["ok"] = not hard
    return report
