"""What the check details dialog says, as plain lines (no Textual): the plan a finding was made
with and why, the predictions and the values it read or measured, in human units and words.

A finding's ``values`` are the check's own JSON (``fmllm-check --json``); this module only names
and formats them. Predictions are said to be predictions ("Predicted"), never "Measured": the
memory model's numbers are not what a GPU reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fmllm_tui.findings import plural
from fmllm_tui.units import GiB, human_bytes  # noqa: F401  (one byte formatter; re-exported)

#: Keys that describe the plan a finding was made with (the resolved target, mode, length, recipe).
PLAN_KEYS = ("gpu", "target", "budget_bytes", "budget_source", "mode", "n_gpus", "gpus_available",
             "planning", "cpu_offload", "planned_seq_len", "planned_tokens_per_example", "recipe", "loss",
             "architecture_source", "margin_bytes")
#: Keys holding the memory model's predictions.
PREDICTION_KEYS = ("predicted_peak_bytes", "predicted_range_bytes", "predicted_peak_allocated_bytes",
                   "single_gpu_peak_bytes", "breakdown", "fit", "alternatives")

SOURCES = {"catalogue": "fmllm's catalogue", "hub": "the Hub", "cache": "the Hugging Face cache",
           "local": "the local folder"}


def value_text(key: str, value: Any) -> str:
    """One value for reading: bytes in GiB, shares in %, nothing shown as ``None`` or raw JSON."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("bytes"):
        if isinstance(value, (int, float)):
            return human_bytes(value)
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            lo, hi = human_bytes(value[0]), human_bytes(value[1])
            return f"{lo.split()[0]}–{hi}" if lo.split()[1:] == hi.split()[1:] else f"{lo}–{hi}"
    if key.startswith("share") or key.endswith("_share"):
        if isinstance(value, (int, float)):
            return f"{value * 100:.1f}%"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"  # 7,615,616,512 parameters, readable
    if isinstance(value, list):
        if all(isinstance(v, (str, int, float)) for v in value):
            return ", ".join(str(v) for v in value) if value else "none"
        return json.dumps(value, default=str)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def _label(key: str) -> str:
    """``free_bytes`` -> "free"; an environment variable's name stays as it is spelt."""
    if key.isupper():
        return key
    return key.removesuffix("_bytes").replace("_", " ")


def plan_lines(values: Mapping[str, Any], context: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """What the finding was planned for and why: target and budget, mode and GPUs, the sequence
    length planned for (and why it is not max_seq_length), recipe and loss, where the model's
    architecture came from. ``context``: other checks' values by id (``data.lengths`` gives
    max_seq_length). Empty when the finding carries no plan."""
    v, ctx = values, context or {}
    out: list[str] = []
    gpu = v.get("gpu") or v.get("target")
    if gpu or v.get("budget_bytes"):
        where = f"{gpu}: " if gpu else ""
        src = f" (from {v['budget_source']})" if v.get("budget_source") else ""
        out.append(f"target      {where}{human_bytes(v.get('budget_bytes'))} usable{src}")
    if v.get("margin_bytes"):
        out.append(f"margin      {human_bytes(v['margin_bytes'])} kept free for fragmentation and spikes")
    mode, n = v.get("mode"), v.get("n_gpus")
    if mode:
        gpus = f", {plural(int(n), 'GPU')}" if isinstance(n, int) else ""
        avail = v.get("gpus_available")
        seen = f" ({plural(int(avail), 'GPU')} available)" if isinstance(avail, int) else ""
        resolved = ": planned per GPU count" if mode == "auto" else ""
        seen = seen.replace(" (", ", ").rstrip(")") if resolved else seen
        out.append(f"mode        {mode}{resolved}{gpus}{seen}")
    seq = v.get("planned_seq_len", v.get("planned_tokens_per_example"))
    if isinstance(seq, int):
        lengths = ctx.get("data.lengths") or {}
        msl = lengths.get("max_seq_length")
        if isinstance(msl, int) and seq < msl:
            why = f"the data's longest example (max_seq_length {msl})"
        elif isinstance(msl, int):
            why = "max_seq_length"
        else:
            why = "the longest example, up to max_seq_length"
        out.append(f"length      {seq} tokens: {why}")
    if v.get("recipe") or v.get("loss"):
        parts = [str(v["recipe"]) if v.get("recipe") else "", f"loss {v['loss']}" if v.get("loss") else ""]
        out.append("recipe      " + ", ".join(p for p in parts if p))
    if v.get("architecture_source"):
        src = str(v["architecture_source"])
        out.append(f"model       architecture from {SOURCES.get(src, src)}")
    return out


def prediction_lines(values: Mapping[str, Any], top: int = 6, *, with_changes: bool = True) -> list[str]:
    """The memory model's numbers: peak and range, allocated, the largest parts of the peak, and
    the fit search's result (its changes too unless ``with_changes`` is off: the fix shows them)."""
    v = values
    out: list[str] = []
    peak = v.get("predicted_peak_bytes", v.get("single_gpu_peak_bytes"))
    if isinstance(peak, (int, float)):
        rng = v.get("predicted_range_bytes")
        extra = f" (range {value_text('range_bytes', rng)})" if isinstance(rng, list) else ""
        label = "peak" if "predicted_peak_bytes" in v else "on one GPU"
        out.append(f"{label:<12}{human_bytes(peak)}{extra}")
        budget = v.get("budget_bytes")
        if isinstance(budget, (int, float)) and budget > 0:
            spare = budget - peak
            out.append(f"{'':<12}{human_bytes(abs(spare))} {'spare' if spare >= 0 else 'over'} "
                       f"of {human_bytes(budget)}")
    if isinstance(v.get("predicted_peak_allocated_bytes"), (int, float)):
        out.append(f"{'allocated':<12}{human_bytes(v['predicted_peak_allocated_bytes'])} by tensors at the peak")
    bd = v.get("breakdown")
    if isinstance(bd, dict) and bd:
        parts = sorted(((k, b) for k, b in bd.items() if isinstance(b, (int, float)) and b > 0),
                       key=lambda kb: -kb[1])
        out.append("largest parts of the peak:")
        for k, b in parts[:top]:
            out.append(f"  {_label(k):<24}{human_bytes(b):>9}")
        if len(parts) > top:
            rest = sum(b for _k, b in parts[top:])
            out.append(f"  {plural(len(parts) - top, 'other part'):<24}{human_bytes(rest):>9}")
    fit = v.get("fit")
    if isinstance(fit, dict):
        out.extend(_fit_lines(fit, with_changes))
    return out


def _fit_lines(fit: Mapping[str, Any], with_changes: bool) -> list[str]:
    out: list[str] = []
    changes = [c for c in fit.get("changes") or [] if isinstance(c, dict)]
    if not changes:
        return out
    head = "fit search: " + plural(len(changes), "change")
    after = fit.get("predicted_peak_after_bytes")
    if isinstance(after, (int, float)):
        head += f", peak {human_bytes(after)}"
    sp = fit.get("speedup")
    if isinstance(sp, (int, float)) and sp > 1.05:
        head += f", {sp:.1f}x the tokens/s"
    out.append(head + (":" if with_changes else " (the fix below)"))
    for c in changes if with_changes else []:
        out.append(f"  {c.get('key')}: {value_text('', c.get('from'))} → {value_text('', c.get('to'))}")
        if c.get("why"):
            out.append(f"    {c['why']}")
    share = fit.get("truncated_share")
    if isinstance(share, (int, float)) and share > 0:
        out.append(f"  it truncates {share * 100:.1f}% of the examples")
    return out


def other_lines(values: Mapping[str, Any]) -> list[str]:
    """Every value that is neither plan nor prediction: what the check read or measured."""
    out = []
    for k, val in values.items():
        if k in PLAN_KEYS or k in PREDICTION_KEYS:
            continue
        if isinstance(val, str) and val == "***":
            continue  # masked by the redactor: nothing to read
        out.append(f"{_label(k)}: {value_text(k, val)}")
    return out


def fix_lines(fix: Any, values: Mapping[str, Any]) -> list[str]:
    """The fix as changes (each with the fit search's reason when it has one), or its command."""
    out: list[str] = []
    why: dict[str, str] = {}
    fit = values.get("fit")
    for c in (fit.get("changes") if isinstance(fit, dict) else None) or []:
        if isinstance(c, dict) and c.get("key") and c.get("why"):
            why[str(c["key"])] = str(c["why"])
    for c in fix.changes:
        out.append(f"  {c.key}: {value_text('', c.from_)} → {value_text('', c.to)}")
        reason = next((w for k, w in why.items() if c.key == k or c.key.endswith("." + k)), None)
        if reason:
            out.append(f"    {reason}")
    if fix.summary and not fix.changes:
        out.append(f"  {fix.summary}")
    return out
