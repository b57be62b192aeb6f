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
