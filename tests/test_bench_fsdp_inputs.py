"""Bad forms of the FSDP bench's inputs: its --tag flag and the allocator history that
bench/memory_trace_summary.py reads (no GPU: both fail before anything runs)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("tag", ["../escape", "a b", "x" * 41])
def test_fsdp_bench_refuses_a_tag_that_is_not_a_file_name_part(tag: str, tmp_path: Path) -> None:
    r = _run("bench/bench_fsdp_gpu.py", "--dry-run", "--tag", tag)
    assert r.returncode == 2 and "--tag" in r.stderr and "names the result file" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_trace_summary_bad_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "none.pickle"
    r = _run("bench/memory_trace_summary.py", str(missing))
    assert r.returncode == 2 and "none.pickle: cannot be read" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.pickle"
    junk.write_bytes(b"not a pickle at all")
    r = _run("bench/memory_trace_summary.py", str(junk))
    assert r.returncode == 2 and "junk.pickle: not a pickle" in r.stderr and "Traceback" not in r.stderr
    other = tmp_path / "other.pickle"
    other.write_bytes(pickle.dumps({"segments": []}))
    r = _run("bench/memory_trace_summary.py", str(other))
    assert r.returncode == 2 and "not a torch allocator history" in r.stderr


def test_trace_summary_reports_large_allocations_and_growth(tmp_path: Path) -> None:
    gib = 1 << 30
    snap = {"segments": [], "device_traces": [[
        {"action": "segment_map", "addr": 0, "size": 2 * gib, "stream": 0},
        {"action": "alloc", "addr": 1, "size": gib, "stream": 0,
         "frames": [{"filename": "/x/y/torch/distributed/fsdp/_flat_param.py", "line": 1287, "name": "init"}]},
        {"action": "free_completed", "addr": 1, "size": gib, "stream": 0},
        {"action": "alloc", "addr": 2, "size": 1024, "stream": 7, "frames": []},
    ]]}
    path = tmp_path / "memory_snapshot.pickle"
    path.write_bytes(pickle.dumps(snap))
    r = _run("bench/memory_trace_summary.py", str(path), "--min-gib", "0.5")
    assert r.returncode == 0, r.stderr
    assert "segment_map +2.000 GiB stream 0" in r.stdout and "alloc 1.000 GiB stream 0" in r.stdout
    assert "fsdp/_flat_param.py:1287 init" in r.stdout and "alloc 0.000" not in r.stdout
    assert "peak allocated seen in the trace (from its start): 1.000 GiB" in r.stdout
    # The reserve-growth table: the 2 GiB map on stream 0, with no frames to name.
    assert "+2.000 GiB stream 0\n      (no frames)" in r.stdout
    for flag, bad, why in (("--top", "0", "below 1"), ("--by-frames", "two", "not a whole number"),
                           ("--frames", "-3", "below 1")):
        r = _run("bench/memory_trace_summary.py", str(path), flag, bad)
        assert r.returncode == 2 and flag in r.stderr and why in r.stderr, r.stderr


def test_fsdp_bench_dry_run_plans_ddp_with_the_fsdp_runs_data(tmp_path: Path) -> None:
    """--ddp --dry-run: fmllm's own accelerate config for DDP (no FSDP section), 2 processes, and
    the DDP per-GPU prediction, which counts the whole model on each GPU (more than FSDP's share
    of the weights, more than one GPU's run by the DDP terms)."""
    import json
    import os

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "bench/bench_fsdp_gpu.py", "--model", "7b", "--ddp", "--dry-run",
                        "--runs-dir", str(tmp_path / "runs")], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OUT": str(out)})
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "bench_fsdp_gpu.dry-run.json").read_text())
    runs = report["runs"]
    assert list(runs) == ["fsdp", "ddp", "single"]
    ddp, fsdp, single = runs["ddp"], runs["fsdp"], runs["single"]
    assert "MULTI_GPU" in ddp["accelerate_yaml"] and "fsdp_config" not in ddp["accelerate_yaml"]
    assert "FSDP" in fsdp["accelerate_yaml"]
    assert "--num_processes" in ddp["argv"] and ddp["argv"][ddp["argv"].index("--num_processes") + 1] == "2"
    p_ddp, p_single = ddp["prediction"], single["prediction"]
    assert "ddp_grad_buckets" in p_ddp["breakdown"]
    assert p_ddp["peak_bytes"] > p_single["peak_bytes"]
    assert p_ddp["breakdown"]["weights_4bit"] == p_single["breakdown"]["weights_4bit"]
    assert p_ddp["breakdown"]["weights_4bit"] > fsdp["prediction"]["breakdown"]["weights_4bit"]
