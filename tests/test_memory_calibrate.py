"""Leave-one-out cross-validation of the speed model (bench/memory_calibrate.py --speed --loo)."""

from __future__ import annotations

import copy
import importlib.util
import statistics
from pathlib import Path

import pytest

from fmllm_tui import memory

_SPEC = importlib.util.spec_from_file_location(
    "memory_calibrate", Path(__file__).resolve().parent.parent / "bench" / "memory_calibrate.py")
cal = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cal)


def test_leave_one_out_fits_on_the_others_only() -> None:
    """A mean model: each left-out value is predicted by the mean of the others, so the LOO errors
    are known exactly, and differ from the in-sample ones (the mean of all four)."""
    seen: list[list[float]] = []

    def fit(xs: list[float]) -> float:
        seen.append(xs)
        return statistics.mean(xs)

    errs = cal.leave_one_out([1.0, 2.0, 3.0, 6.0], fit, lambda mean, x: mean - x)
    assert errs == pytest.approx([11 / 3 - 1, 10 / 3 - 2, 3 - 3, 2 - 6])
    assert seen == [[2.0, 3.0, 6.0], [1.0, 3.0, 6.0], [1.0, 2.0, 6.0], [1.0, 2.0, 3.0]]


def test_loo_speed_error_of_a_point_the_fit_never_saw() -> None:
    """Synthetic runner points measured at exactly the model's prediction, one of them 25% faster:
    the fit on the others keeps memory.py's constants (their error is already zero), so the odd
    point's LOO error is exactly 1/1.25 - 1 = -20%; an in-sample fit would have moved the constants
    toward it and predicted it better."""
    points, archs = memory.load_points()
    runner = [p for p in cal.speed_points(points) if not p.get("heldout")][:4]
    synth = []
    for i, p in enumerate(copy.deepcopy(runner)):
        p["heldout"] = i == 3  # LOO uses held-out points too
        p["measured"]["tokens_per_second"] = memory.predict_inputs(
            cal._speed_inputs(p), archs[p["model"]]).tokens_per_second * (1.25 if i == 3 else 1.0)
        synth.append(p)
    res = cal.loo_speed(synth, archs)
    assert [p["id"] for p, _e in res] == [p["id"] for p in synth]
    assert res[3][1] == pytest.approx(1 / 1.25 - 1, abs=1e-9)
    # The three others: each fit sees the odd point and moves the constants toward it, so their
    # errors are not zero; the odd point's own error is the largest.
    assert all(abs(e) < abs(res[3][1]) for _p, e in res[:3])


_, _ARCHS = memory.load_points()
_LLAMA8 = memory.ArchSpec.from_config(_ARCHS["meta-llama/Llama-3.1-8B-Instruct"])


def _tps(arch: memory.ArchSpec, **fields) -> float:
    inp = memory.PlanInputs(**{"compiled": False, "tflops": 989.0, "bandwidth_gbs": 3350.0, **fields})
    return memory.predict_inputs(inp, arch).tokens_per_second


def test_extra_norms_cost_eager_layers_time() -> None:
    """Qwen3's q/k norms and Gemma-2's two more norms per layer are kernels the host launches in eager
    layers (the old model gave a Qwen3-like layer the speed of the same layer without them: +25% on
    Qwen3-4B plain); compiled layers fuse them."""
    from dataclasses import replace

    qk = replace(_LLAMA8, qk_norm=True)
    four = replace(_LLAMA8, norms_per_layer=4)
    base = _tps(_LLAMA8, recipe="plain")
    assert _tps(qk, recipe="plain") < 0.97 * base and _tps(four, recipe="plain") < 0.97 * base
    assert _tps(qk, recipe="fmllm", compiled=True) == pytest.approx(_tps(_LLAMA8, recipe="fmllm", compiled=True))


def test_eager_attention_costs_the_full_square_and_its_scores() -> None:
    """Eager attention computes every seq x seq score (SDPA skips the masked half) and moves them
    through an fp32 soft-max: at 4096 tokens it is clearly slower than SDPA, GPU-bound."""
    sdpa = _tps(_LLAMA8, recipe="fmllm", compiled=True, seq_len=4096, micro_batch=2)
    eager = _tps(_LLAMA8, recipe="fmllm", compiled=True, seq_len=4096, micro_batch=2, attn="eager")
    assert eager < 0.9 * sdpa


def test_the_plain_loss_moves_the_logits() -> None:
    """The plain loss's element-wise traffic over T x vocab: a larger vocabulary costs GPU time even
    when the lm_head FLOPs are set aside (the old model counted only FLOPs)."""
    from dataclasses import replace

    big = replace(_LLAMA8, vocab=4 * _LLAMA8.vocab)
    kw = {"recipe": "plain", "seq_len": 4096, "micro_batch": 4, "gradient_checkpointing": False, "bandwidth_gbs": 300.0}
    with cal._with(MATMUL_EFFICIENCY=1e9):  # matmuls free: only traffic (on a slow card) and host time remain
        t_small, t_big = _tps(_LLAMA8, **kw), _tps(big, **kw)
    assert t_big < 0.9 * t_small
