"""Steady-state speed apart from the warm-up (fmllm_tui/runner/speed.py), and how a person reads it."""

from __future__ import annotations

import io

import pytest

from fmllm_tui.runner.speed import Speed, describe, describe_record, steady_state


def test_a_compile_in_the_first_step_is_warm_up_not_speed() -> None:
    sp = steady_state([15.0] + [0.5] * 9, [1024] * 10)
    assert sp.tokens_per_s == pytest.approx(2048.0)
    assert (sp.warmup_steps, sp.steady_steps) == (1, 9)
    assert sp.warmup_s == pytest.approx(14.5)
    assert describe(sp) == "compile 14 s, then 2,048 tokens/s"


def test_every_leading_slow_step_is_warm_up() -> None:
    """A compile, a recompile for the next shape and an autotune: three slow steps, which the old
    rule (tokens/s from step 3 on) counted one of as speed."""
    times, toks = [15.0, 10.0, 8.0] + [0.5] * 7, [1024] * 10
    sp = steady_state(times, toks)
    assert sp.warmup_steps == 3 and sp.tokens_per_s == pytest.approx(2048.0)
    old = sum(toks[2:]) / sum(times[2:])
    assert old < 0.6 * sp.tokens_per_s


def test_a_slow_step_later_in_the_run_stays_in_the_steady_rate() -> None:
    times = [0.5, 0.5, 0.5, 0.5, 0.95, 0.5, 0.5, 0.5]
    sp = steady_state(times, [1024] * 8)
    assert sp.warmup_steps == 0 and sp.steady_steps == 8
    assert sp.tokens_per_s == pytest.approx(8 * 1024 / sum(times))
    assert describe(sp) == f"{8 * 1024 / sum(times):,.0f} tokens/s"


def test_steps_of_different_lengths_compare_by_seconds_per_token() -> None:
    """The minimal test trains on the longest examples: steps differ in tokens, not in pace."""
    toks = [900, 1000, 600, 1024, 512, 800]
    times = [20.0] + [n / 2000 for n in toks[1:]]
    sp = steady_state(times, toks)
    assert sp.warmup_steps == 1 and sp.tokens_per_s == pytest.approx(2000.0)
    assert sp.warmup_s == pytest.approx(20.0 - 900 / 2000)


def test_a_step_that_counted_no_tokens_keeps_its_seconds_in_the_speed() -> None:
    """Tokens are counted when the loader collates a batch, one batch ahead: at an epoch's end a
    step counts none (the step before counted two). Its time is still part of the speed."""
    times = [15.0] + [0.5] * 7
    toks = [2048, 1024, 1024, 2048, 0, 1024, 2048, 0]
    sp = steady_state(times, toks)
    assert (sp.warmup_steps, sp.steady_steps) == (1, 7)
    assert sp.tokens_per_s == pytest.approx(sum(toks[1:]) / sum(times[1:]))


def test_no_timed_steps_and_a_single_step() -> None:
    assert steady_state([], []) == Speed(tokens_per_s=None, warmup_s=0.0, warmup_steps=0, steady_steps=0)
    assert steady_state([0.0, 1.0], [0, 0]).tokens_per_s is None  # nothing measured
    assert describe(steady_state([], [])) == "no timed steps"
    one = steady_state([3.0], [300])
    assert (one.tokens_per_s, one.warmup_steps) == (pytest.approx(100.0), 0)


def test_a_record_says_compile_only_when_layers_were_compiled() -> None:
    sp = steady_state([15.0] + [0.5] * 9, [1024] * 10).to_json()
    assert describe_record({"speed": sp, "tokens_per_s": sp["tokens_per_s"],
                            "recipe": {"compile_layers": True}}) == "compile 14 s, then 2,048 tokens/s"
    assert describe_record({"speed": sp, "recipe": {"compile_layers": False}}) == "warm-up 14 s, then 2,048 tokens/s"
    assert describe_record({"tokens_per_s": 3101.6}) == "3,102 tokens/s"  # a run recorded before 'speed'
    assert describe_record({"tokens_per_s": None}) is None


def test_fmllm_run_test_prints_the_compile_apart_from_the_speed() -> None:
    from fmllm_tui.cli_run import _print_test_report

    sp = steady_state([14.2] + [0.5] * 9, [1024] * 10).to_json()
    out = io.StringIO()
    _print_test_report({"ok": True, "status": "ok", "steps": 10, "tokens_per_s": sp["tokens_per_s"], "speed": sp,
                        "recipe": {"compile_layers": True}}, out)
    assert "  speed        compile 14 s, then 2,048 tokens/s\n" in out.getvalue()


def test_fmllm_run_test_says_warnings_where_fmllm_check_warns() -> None:
    """A test that ran but found problems (the loss did not fall): fmllm-check reports WARN, and
    fmllm-run printed a bare "minimal test: ok" above the problem."""
    from fmllm_tui.cli_run import _print_test_report

    out = io.StringIO()
    _print_test_report({"ok": True, "status": "ok", "steps": 2, "problems": ["the loss did not fall over 2 steps"]}, out)
    assert out.getvalue().startswith("minimal test: ok, with warnings (problems below)")
    out = io.StringIO()
    _print_test_report({"ok": True, "status": "ok", "steps": 10, "problems": []}, out)
    assert out.getvalue().startswith("minimal test: ok (")
