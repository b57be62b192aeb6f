"""Steady-state training speed, apart from the warm-up (compile, autotuning, allocator growth).

A run's first optimizer steps pay one-off costs: the compiled decoder layers are traced and
compiled on the first step (13-18 s on a 7B, bench/RESULTS.md), a new sequence length may cost
another compile, and the allocator grows its pool. Dividing all tokens by all seconds mixes those
costs into the speed: the minimal test's ten short steps reported 358 tokens/s on a run whose
steady steps ran at ~4,000. :func:`steady_state` separates the two from the per-step times and
token counts the training process records, so a report can say "compile 14 s, then 4,070 tokens/s".

Torch-free: read by the training process, the bench scripts and the faces alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

# A leading step counts as warm-up while its seconds per token exceed the steady median by this
# factor: a compile or an autotune costs several steady steps, run-to-run noise costs ~10-30%.
WARMUP_FACTOR = 1.5


@dataclass(frozen=True)
class Speed:
    """Steady-state tokens/s and what the warm-up steps cost on top of it."""

    tokens_per_s: float | None  # steady steps' tokens / their seconds (None without timed steps)
    warmup_s: float  # the warm-up steps' seconds beyond what their tokens take at the steady rate
    warmup_steps: int  # how many leading steps were warm-up
    steady_steps: int  # how many steps the steady rate is measured over

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (the run's summary and result carry them)."""
        return asdict(self)


def steady_state(step_times: Sequence[float], step_tokens: Sequence[int]) -> Speed:
    """Split a run's steps into the leading warm-up and the steady steps that follow.

    The steady pace is the median seconds per token over the later half of the steps (never a
    warm-up there in practice); the warm-up is the longest run of leading steps slower than
    :data:`WARMUP_FACTOR` times that pace. A slow step later in the run (an allocator event, a
    checkpoint) stays in the steady average: it is a cost every run pays, not a one-off.
    """
    units = _units(step_times, step_tokens)
    timed = [u for u in units if u[1] > 0 and u[0] > 0]
    if not timed:
        return Speed(tokens_per_s=None, warmup_s=0.0, warmup_steps=0, steady_steps=0)
    pace = median(t / n for t, n, _ in timed[len(timed) // 2:])
    warm = 0
    while warm < len(units) - 1 and units[warm][1] > 0 and units[warm][0] / units[warm][1] > WARMUP_FACTOR * pace:
        warm += 1
    steady = units[warm:]
    rate = sum(n for _, n, _ in steady) / sum(t for t, _, _ in steady)
    extra = sum(t - n / rate for t, n, _ in units[:warm])
    return Speed(tokens_per_s=rate, warmup_s=max(0.0, extra), warmup_steps=sum(c for _, _, c in units[:warm]),
                 steady_steps=sum(c for _, _, c in steady))


def _units(step_times: Sequence[float], step_tokens: Sequence[int]) -> list[tuple[float, int, int]]:
    """(seconds, tokens, steps) per step, a step that counted no tokens joined to the one before.

    The training process counts a batch's tokens when the loader collates it, and the loader
    collates one batch ahead: at an epoch's end a step can count none (its tokens went to the step
    before), yet its seconds are part of the speed.
    """
    units: list[tuple[float, int, int]] = []
    for t, n in zip(step_times, step_tokens, strict=False):
        if units and (int(n) <= 0 or units[-1][1] <= 0):
            pt, pn, pc = units[-1]
            units[-1] = (pt + max(0.0, float(t)), pn + max(0, int(n)), pc + 1)
        else:
            units.append((max(0.0, float(t)), max(0, int(n)), 1))
    return units


def describe(speed: Speed, *, compiled: bool = True) -> str:
    """One line for a person: 'compile 14 s, then 4,070 tokens/s' ('warm-up 2 s, then ...' when
    nothing was compiled; '4,070 tokens/s' without a warm-up)."""
    if speed.tokens_per_s is None:
        return "no timed steps"
    rate = f"{speed.tokens_per_s:,.0f} tokens/s"
    if speed.warmup_steps == 0:
        return rate
    return f"{'compile' if compiled else 'warm-up'} {speed.warmup_s:.0f} s, then {rate}"


def describe_record(record: dict[str, Any]) -> str | None:
    """The speed line of a run's result or summary (runner/train.py writes ``speed`` and
    ``recipe.compile_layers``); a record from before ``speed`` shows its tokens/s alone."""
    fields = record.get("speed")
    if isinstance(fields, dict) and fields.get("tokens_per_s"):
        compiled = bool((record.get("recipe") or {}).get("compile_layers"))
        return describe(Speed(**{k: fields[k] for k in Speed.__dataclass_fields__}), compiled=compiled)
    tps = record.get("tokens_per_s")
    return f"{tps:,.0f} tokens/s" if tps else None
