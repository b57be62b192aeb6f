"""bench/bench_fit_verify_gpu.py without a GPU: the search + apply step of its dry run, its
agreement with ``fmllm-check --only config.fit``, its verdicts, and its bad flags."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fmllm_tui.config import load_config

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_fit_verify_gpu", BENCH / "bench_fit_verify_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_fit_verify_gpu", mod)
    spec.loader.exec_module(mod)
    return mod


fv = _load_bench()
GiB = 2**30


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("fit-verify")
    return fv.prepare(work, fv.parse_budgets("10GiB,16GiB,24GiB"), model_path=None, liger="on",
                      compute_capability=(9, 0), data_rows=16)


def test_each_budget_config_is_valid_and_differs_only_where_the_search_said(prepared) -> None:
    assert [p.label for p in prepared.plans] == ["24GiB", "16GiB", "10GiB"]
    for p in prepared.plans:
        assert p.fits and p.changes, p.message
        loaded = load_config(p.config_path)  # a valid config
        diffs = fv.config_differences(prepared.base_path, p.config_path)
        want = {loaded.file_key(c["key"]): c["to"] for c in p.changes}
        assert set(diffs) == set(want), (p.label, diffs)
        assert {k: new for k, (_old, new) in diffs.items()} == want
        t = loaded.view.training
        assert t.per_device_train_batch_size * t.gradient_accumulation_steps == 8  # effective batch kept
        assert p.predicted_after_bytes <= p.budget_bytes - p.margin_bytes
        assert p.same_with_float16 is True


def test_base_differs_from_the_shipped_config_only_in_the_setup_edits(prepared) -> None:
    diffs = fv.config_differences(prepared.shipped_path, prepared.base_path)
    assert set(diffs) == {c["key"] for c in prepared.setup_changes} == {
        "fine_tuning.base_model_name", "paths.ft_combined_data_file", "paths.output_dir",
        "fine_tuning.quantization.bnb_4bit_compute_dtype"}
    assert diffs["fine_tuning.quantization.bnb_4bit_compute_dtype"] == ("float16", "bfloat16")
    # Every example is longer than max_seq_length, as the check estimates it: runs at full length.
    assert min(prepared.lengths) > load_config(prepared.base_path).view.training.max_seq_length


def test_bench_search_is_what_fmllm_check_proposes(prepared) -> None:
    res = fv.cross_check(prepared.base_path, "24GiB", prepared.arch, prepared.lengths)
    assert res["status"] == "agree", res


def _plan(label: str, size: int, changes: list[tuple[str, object]]):
    return fv.BudgetPlan(label, size * GiB, Path(f"/x/{label}.yaml"), True,
                         [{"key": k, "from": None, "to": v} for k, v in changes], [], 6 * GiB, 9 * GiB,
                         (8 * GiB, 10 * GiB), 2.5, GiB // 2, "")


def test_verdicts_pass_only_on_measurements() -> None:
    same = [("training.per_device_train_batch_size", 2)]
    plans = [_plan("24GiB", 24, same), _plan("16GiB", 16, same),
             _plan("10GiB", 10, [("training.per_device_train_batch_size", 8)])]
    ok = {"status": "ok", "steps_done": 30, "process_peak_bytes": 15 * GiB, "tokens_per_s": 5000.0}
    results = [
        {"name": "baseline-shipped", "status": "ok", "tokens_per_s": 2000.0},
        {"name": "fit-24GiB", "status": "skipped", "message": "time budget"},
        {"name": "fit-16GiB", **ok},
        {"name": "fit-10GiB", "status": "oom", "oom": True, "steps_done": 0, "process_peak_bytes": 9 * GiB},
    ]
    v = fv.verdicts(results, plans, 30)["budgets"]
    # 24 GiB was skipped, but the very same config completed under the tighter 16 GiB cap.
    assert v["24GiB"]["measured_run"] == "fit-16GiB" and v["24GiB"]["speed_target_met"] is True
    assert v["16GiB"]["no_oom"] is True and v["16GiB"]["peak_within_budget"] is True
    assert v["10GiB"]["no_oom"] is False and v["10GiB"]["peak_within_budget"] is None
    # Peak over the budget, a timeout, a too-slow run, a missing baseline: never a pass.
    results[2] = {"name": "fit-16GiB", **ok, "process_peak_bytes": 17 * GiB, "tokens_per_s": 3000.0}
    v = fv.verdicts(results, plans, 30)["budgets"]
    assert v["16GiB"]["peak_within_budget"] is False and v["24GiB"]["speed_target_met"] is False
    results[2] = {"name": "fit-16GiB", "status": "timeout", "steps_done": 12, "process_peak_bytes": GiB}
    v = fv.verdicts(results, plans, 30)["budgets"]
    assert v["16GiB"]["no_oom"] is None and v["24GiB"]["speed_target_met"] is None
    v = fv.verdicts([{"name": "fit-16GiB", **ok}], plans, 30)["budgets"]
    assert v["16GiB"]["ratio"] is None and v["24GiB"]["speed_target_met"] is None


@pytest.mark.parametrize("argv, words", [
    (["--budgets", "lots"], "--budgets: 'lots' is not a memory size"),
    (["--budgets", "10GiB,,24GiB"], "empty entry"),
    (["--budgets", "512MiB"], "below 1 GiB"),
    (["--budgets", "16,16GiB"], "same size twice"),
    (["--steps", "2"], "--steps 2: give at least 4"),
    (["--baseline-steps", "0"], "--baseline-steps 0"),
    (["--budget-s", "-5"], "--budget-s -5"),
    (["--override", "compile"], "expected KEY=VALUE"),
])
def test_bad_flags_are_named_without_a_traceback(argv, words, capsys, tmp_path) -> None:
    assert fv.main(["--dry-run", "--work-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
