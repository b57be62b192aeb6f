#!/usr/bin/env python3
"""Exact resume on the GPU (issue 22): the steps after a kill and resume reproduce the run without it.

Self-contained, on a bare H100/H200 with the runner's wheels (see bench_runner_gpu.py). It builds a
random-weight architecture (default Qwen2.5-0.5B: tied embedding, q/k/v biases; ``--model`` takes
any bench_runner_gpu name), then drives fmllm's own run API — the product path (launch, supervisor,
training process, checkpoints) on CUDA, 4-bit NF4, compiled layers as planned — four times on one
config that makes every kind of state matter (LoRA dropout, gradient accumulation, a cosine
schedule with warmup, length-grouped batches, paged AdamW, a metrics row every 4 steps, a
checkpoint every 5):

    A  uninterrupted, 12 steps                       (the reference)
    B  uninterrupted again                           (the noise floor: CUDA kernels are not bitwise
                                                      deterministic, so A and B differ a little)
    C  SIGKILL of every process of the run as soon as step 8's row is written (fmllm's own
       ``kill``), then ``resume`` from checkpoint-5   (the issue's case: step 8 comes again)
    D  A's folder, once its rows are read, taken back to checkpoint-5 (the later ones removed),
       then ``resume``

For C and D it compares each replayed row (steps 8 and 12) with A's: loss, grad norm, learning rate,
tokens; the rows must be marked ``replayed`` with ``resumed_from``. The verdict: exact when every
replayed loss is within the A-vs-B noise floor (or 1e-3 relative, whichever is larger). Prints a
table and writes ``$OUT/bench_resume.json``.

    python3 -P bench/bench_resume_gpu.py [--model 0.5b] [--budget-s 240]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench_runner_gpu import ensure_model, env_report, log, out_dir  # noqa: E402
from runconfig import write_run_config  # noqa: E402

STEPS, SAVE, LOG_EVERY = 12, 5, 4
KEYS = ("loss", "grad_norm", "lr", "tokens")


def write_config(work: Path, model: Path) -> Path:
    """The config of every run (like tests/test_resume.py's, on the GPU and at a real length)."""
    return write_run_config(
        work, model, data_format="instruction", qlora=True,
        lora={"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        training={"gradient_accumulation_steps": 2, "learning_rate": 0.001, "lr_scheduler_type": "cosine",
                  "warmup_ratio": 0.1, "max_seq_length": 512, "group_by_length": True, "seed": 11,
                  "max_steps": STEPS, "save_steps": SAVE, "logging_steps": LOG_EVERY})



def rows_of(run_dir: Path) -> list[dict[str, Any]]:
    from fmllm_tui.runner import rundir as rd
    from fmllm_tui.runner.monitor import read_jsonl

    return [r for r in read_jsonl(run_dir / rd.METRICS) if "loss" in r]


def finish(run_dir: Path, timeout: float) -> dict[str, Any]:
    from fmllm_tui.runner import rundir as rd
    from fmllm_tui.runner import wait

    rec = wait(run_dir, timeout=timeout)
    if not rec or rec.get("status") != "ok":
        tail = (run_dir / rd.LOG).read_text()[-3000:] if (run_dir / rd.LOG).exists() else ""
        raise RuntimeError(f"run {run_dir.name} did not end ok: {rec}\n{tail}")
    return rec


def uninterrupted(cfg: Path, timeout: float) -> tuple[Path, dict[int, dict[str, Any]]]:
    from fmllm_tui.config import load_config
    from fmllm_tui.runner import start

    run_dir = start(load_config(cfg), "train")
    finish(run_dir, timeout)
    return run_dir, {r["step"]: r for r in rows_of(run_dir)}


def killed_then_resumed(cfg: Path, timeout: float) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    """Case C: kill every process as soon as step 8's row is written (checkpoint-5 is the newest:
    checkpoint-10 comes two steps later), then resume: step 8 is replayed from checkpoint-5."""
    from fmllm_tui.config import load_config
    from fmllm_tui.runner import kill, resume, start, status
    from fmllm_tui.runner import rundir as rd

    run_dir = start(load_config(cfg), "train")
    end = time.monotonic() + timeout
    while time.monotonic() < end and not any(r["step"] >= 8 for r in rows_of(run_dir)):
        if (run_dir / rd.EXIT).exists():
            raise RuntimeError(f"run ended before step 8: {(run_dir / rd.LOG).read_text()[-2000:]}")
        time.sleep(0.02)
    first = rows_of(run_dir)
    killed = kill(run_dir)
    st = status(run_dir)
    info = {"killed": killed, "state_after_kill": st.get("state"), "rows_before_kill": [r["step"] for r in first],
            "checkpoints_at_kill": sorted(p.name for p in (run_dir / rd.CHECKPOINTS).glob("checkpoint-*"))}
    resume(run_dir)
    finish(run_dir, timeout)
    rows = rows_of(run_dir)
    return run_dir, rows[len(first):], info


def rolled_back_then_resumed(a_dir: Path, timeout: float) -> tuple[Path, list[dict[str, Any]]]:
    """Case D: A's own folder (its rows already read) taken back to checkpoint-5, resumed."""
    from fmllm_tui.runner import resume
    from fmllm_tui.runner import rundir as rd

    d = a_dir
    n_first = len(rows_of(d))
    # What a kill right after checkpoint-5 leaves (fmllm-run resume refuses a finished run): no
    # later checkpoint (10 and the final 12), no adapter or summary, an exit record of a kill.
    for ck in (d / rd.CHECKPOINTS).glob("checkpoint-*"):
        if ck.name.split("-")[-1].isdigit() and int(ck.name.split("-")[-1]) > SAVE:
            shutil.rmtree(ck, ignore_errors=True)
    shutil.rmtree(d / rd.ADAPTER, ignore_errors=True)
    (d / rd.SUMMARY).unlink(missing_ok=True)
    rec = json.loads((d / rd.EXIT).read_text())
    rec.update(status="killed", exit_code=None, signal="SIGKILL", outcome=None, message="rolled back by the bench")
    rd.write_json_atomic(d / rd.EXIT, rec)
    resume(d)
    finish(d, timeout)
    return d, rows_of(d)[n_first:]


def compare(ref: dict[int, dict[str, Any]], again: list[dict[str, Any]], floor: float,
            written_before: set[int]) -> dict[str, Any]:
    """Each row the resumed run wrote against the reference row of its step; a step whose row was
    written before the interruption must come again marked ``replayed`` (and only such a step)."""
    out: dict[str, Any] = {"rows": [], "exact": True}
    tol = max(floor, 1e-3)
    for r in again:
        base = ref.get(r["step"], {})
        diffs = {k: (r.get(k), base.get(k)) for k in KEYS}
        rel = abs(r["loss"] - base["loss"]) / abs(base["loss"]) if base.get("loss") else None
        marked = bool(r.get("replayed")) == (r["step"] in written_before)
        ok = rel is not None and rel <= tol and r.get("tokens") == base.get("tokens") and marked
        out["rows"].append({"step": r["step"], "replayed": r.get("replayed"), "resumed_from": r.get("resumed_from"),
                            "loss_rel_diff": rel, "values": diffs, "ok": ok})
        out["exact"] = out["exact"] and ok
    out["exact"] = out["exact"] and bool(again)
    return out


def noise_floor(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]]) -> float:
    return max((abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"]) for s in a if s in b and a[s]["loss"]),
               default=0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="0.5b")
    ap.add_argument("--model-dir", default="/tmp/fmllm-bench-models")
    ap.add_argument("--model-path", help="an already built model folder (no build; e.g. the tests' tiny model on a CPU)")
    ap.add_argument("--work", default="/tmp/fmllm-bench-resume")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per run")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    t0 = time.time()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "env": env_report(), "model": a.model}
    model = Path(a.model_path) if a.model_path else ensure_model(a.model, Path(a.model_dir), [a.model])
    cfg = write_config(Path(a.work), model)
    try:
        a_dir, ref = uninterrupted(cfg, a.timeout)
        log(f"A: {[(s, round(r['loss'], 5)) for s, r in sorted(ref.items())]}")
        _, ref_b = uninterrupted(cfg, a.timeout)
        floor = noise_floor(ref, ref_b)
        report["noise_floor_rel"] = floor
        log(f"B: noise floor (A vs B, largest relative loss difference) {floor:.2e}")
        c_dir, again_c, info = killed_then_resumed(cfg, a.timeout)
        report["killed"] = {**info, **compare(ref, again_c, floor, set(info["rows_before_kill"]))}
        log(f"C: {json.dumps(report['killed'], default=str)[:1500]}")
        _, again_d = rolled_back_then_resumed(a_dir, a.timeout)
        report["rolled_back"] = compare(ref, again_d, floor, set(ref))
        log(f"D: {json.dumps(report['rolled_back'], default=str)[:1500]}")
        report["reference"] = {s: {k: r.get(k) for k in KEYS} for s, r in sorted(ref.items())}
        report["again_b"] = {s: {k: r.get(k) for k in KEYS} for s, r in sorted(ref_b.items())}
    except Exception as e:  # keep what was measured
        report["error"] = f"{type(e).__name__}: {e}"
        log(report["error"])
    report["wall_s"] = time.time() - t0
    (out_dir() / "bench_resume.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"{'case':12} {'step':>4} {'loss':>10} {'reference':>10} {'rel diff':>9} {'replayed':>8} ok")
    for case in ("killed", "rolled_back"):
        for row in (report.get(case) or {}).get("rows", []):
            v = row["values"]["loss"]
            print(f"{case:12} {row['step']:4} {v[0]:10.5f} {v[1]:10.5f} {row['loss_rel_diff']:9.2e} "
                  f"{str(row['replayed']):>8} {row['ok']}")
    print(f"noise floor {report.get('noise_floor_rel')}; exact: killed {(report.get('killed') or {}).get('exact')}, "
          f"rolled back {(report.get('rolled_back') or {}).get('exact')}")
    return 0 if (report.get("killed") or {}).get("exact") and (report.get("rolled_back") or {}).get("exact") else 1


if __name__ == "__main__":
    sys.exit(main())
