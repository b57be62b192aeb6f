"""bench/logcorpus_batches.py: per-batch held-out scores, and the thread-cause rescoring."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("logcorpus_batches", BENCH / "logcorpus_batches.py")
assert spec and spec.loader
batches = importlib.util.module_from_spec(spec)
spec.loader.exec_module(batches)


def _man(batch: str, expected: str, acceptable: list[str], thread: str | None = None) -> dict:
    m = {"id": f"x_{batch}", "batch": batch, "split": "heldout", "expected_cause": expected,
         "acceptable_causes": acceptable}
    if thread:
        m["thread_cause"] = thread
    return m


def test_thread_causes_swaps_only_the_batchs_cut_excerpts() -> None:
    cut = _man("c9", "log_cut_in_traceback", ["cuda_oom_save", "cuda_oom"], thread="cuda_oom_save")
    other = _man("c8", "log_cut_in_traceback", ["hub_gated"], thread="hub_gated")
    plain = _man("c9", "cuda_oom", [])
    out = batches.thread_causes([(Path("a"), cut), (Path("b"), other), (Path("c"), plain)], "c9")
    assert out[0][1]["expected_cause"] == "cuda_oom_save"
    assert out[0][1]["acceptable_causes"] == ["cuda_oom"]
    assert cut["expected_cause"] == "log_cut_in_traceback"  # the caller's manifests are not changed
    assert out[1][1] is other and out[2][1] is plain


def test_every_heldout_batch_is_scored(capsys) -> None:
    assert batches.main() == 0
    out = capsys.readouterr().out
    held = {m.get("batch") for _p, m in batches.corpus_bench.load_corpus() if m["split"] == "heldout"}
    for batch in held:
        assert f"batch {batch}, as audited" in out and f"batch {batch}, thread causes" in out
    assert "x_" not in out and "c5_" not in out  # aggregates only: no held-out log is named
