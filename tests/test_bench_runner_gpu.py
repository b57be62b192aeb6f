"""CPU-side parts of bench/bench_runner_gpu.py that decide what a GPU matrix records: the
allocator-history cases (issue 19 item 2) and the session script's part names.

Nothing here starts a training process or needs a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load() -> Any:
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_runner_gpu", REPO / "bench" / "bench_runner_gpu.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_snapshot_cases_are_kept_out_of_the_speed_fit() -> None:
    b = _load()
    snap = {"name": "x-snap", "model": "0.5b", "recipe": "plain", "overrides": {"memory_snapshot": True}}
    plain = {"name": "x", "model": "0.5b", "recipe": "plain"}
    assert "memory_snapshot" in b.measured_point(snap, {}, {})["speed_excluded"]
    assert "speed_excluded" not in b.measured_point(plain, {}, {})
    # the override reaches the runner, and the memory settings are those of the case without it
    assert b.run_spec(snap, Path("/m"), Path("/d"))["runner"]["overrides"] == {"memory_snapshot": True}
    assert b.case_point(snap)["settings"] == b.case_point(plain)["settings"]


def test_snapshot_summary_comes_back_with_the_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _load()
    out = tmp_path / "out"
    monkeypatch.setenv("OUT", str(out))
    assert b.snapshot_summary(tmp_path / "absent.pickle", "case") == {}
    gib = 1 << 30
    trace = [{"action": "segment_alloc", "size": gib, "stream": 0, "addr": 0},
             {"action": "alloc", "size": gib // 2, "stream": 0, "addr": 0},
             {"action": "free_completed", "size": gib // 2, "stream": 0, "addr": 0}]
    snap = tmp_path / "memory_snapshot.pickle"
    snap.write_bytes(pickle.dumps({"device_traces": [trace], "segments": []}))
    got = b.snapshot_summary(snap, "case")
    assert "peak allocated seen in the trace (from its start): 0.500 GiB" in got["snapshot_summary"]
    assert (out / "case.snapshot.txt").read_text() == got["snapshot_summary"]
    assert (out / "case.snapshot.pickle").read_bytes() == snap.read_bytes()


def test_the_snapshot_matrix_names_known_models_and_cases_not_yet_recorded() -> None:
    b = _load()
    cases = json.loads((REPO / "bench" / "gpu_runs" / "20261208_matrix_e.json").read_text())
    points = json.loads((REPO / "bench" / "memory_points.json").read_text())["points"]
    ids = {p["id"] for p in points}
    for c in cases:
        assert c["model"] in b.HUB_IDS or c["model"] in b.ARCHS
        assert c["overrides"]["memory_snapshot"] is True
        assert f"{c['model']}/{c['name']}" not in ids


@pytest.mark.parametrize("argv", [[], ["bogus"], ["matrix"]])
def test_gpu_session_refuses_a_missing_or_unknown_part(argv: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_session.sh"), *argv], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}, timeout=30)
    assert proc.returncode != 0
    assert "usage" in proc.stderr or "matrix needs a matrix file" in proc.stderr
    if argv != ["matrix"]:
        assert not (tmp_path / "out").exists()  # refused before touching anything
