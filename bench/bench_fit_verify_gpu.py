#!/usr/bin/env python3
"""GPU verification of the fit search (issue 5): the config it picks runs inside the budget, faster.

For each budget (default 10, 16 and 24 GiB) this script takes the shipped ``config.yaml``
(the Qwen2.5-7B recipe), asks fmllm's own fit search for the change set exactly as the
``config.fit`` check does under ``fmllm-check --vram SIZE``, applies it to a copy with fmllm's own
``memory.fit`` fixer and edit engine, and runs that copy through fmllm's training process with
the process capped to the budget (the runner's ``--vram``: ``torch.cuda.set_per_process_memory_fraction``).
The shipped recipe itself runs at the largest budget as the speed baseline. Then it reports, per
budget: the changes, the predicted peak, the measured process peak (NVML device peak less the idle
baseline, sampled every 20 ms), torch's max allocated/reserved, OOM or not, the steps done,
tokens/s and the ratio to the baseline, with the verdicts of the issue: no OOM, peak <= budget,
and tokens/s at the largest budget >= 2x the shipped recipe's. A markdown table for
``bench/RESULTS.md`` is printed and written to ``$OUT``.

What is fixed for every run, and why:

* The model is the random-weight Qwen2.5-7B of ``bench_runner_gpu.py`` (built once, reused).
* The data is synthetic instruction rows of 1,400 words each, so every example is cut at
  max_seq_length (1024): tokens/s is measured at full length, and the search plans for it
  (the check's data lengths say every example is longer than max_seq_length).
* The compute dtype is bfloat16 for all runs: the shipped file says float16, and on an H100
  ``fmllm-check --fix`` rewrites it (check ``gpu.bf16``, fixer ``dtype.compute``). The dtype does
  not enter the fit search (the script checks that the change sets are the same with float16).
* The effective batch stays the shipped 8 (micro-batch x accumulation) in every run: the search
  keeps it, and so does the bench. The chosen configs run the issue's 30 optimizer steps; the
  baseline runs 10 by default (its tokens/s over steps 3-10, 64 micro-batches, is a steady-state
  figure; 30 baseline steps would cost about 75 s more than the time budget comfortably allows).
* No sample generations after training (the runner's default is 3): they are not measured.
* Order: the baseline, then the budgets largest first, except that a budget whose change set
  equals a smaller budget's runs last. If time runs out before it, the smaller budget's run (the
  same config under a tighter cap) stands for it, and the report says so.
* Every run has a timeout and the whole invocation a wall budget (``--budget-s``, 500 s): a run
  that would not finish in what is left is skipped and recorded, never counted as a pass.

Usage (repository root, GPU host):
    python bench/bench_fit_verify_gpu.py                   # build/reuse the model, plan, run, report
    python bench/bench_fit_verify_gpu.py --dry-run         # plan only (no GPU): search + apply + plan
    python bench/bench_fit_verify_gpu.py --baseline-steps 30 --budget-s 560

The dry run plans as the GPU host will (liger-kernel installed, compute capability 9.0) unless
``--liger here`` is given; it also checks that the bench's change set equals what
``fmllm-check --only config.fit --vram SIZE`` proposes for this machine's liger-kernel state.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_runner_gpu as brg  # noqa: E402  (models, data words, the NVML sampler: shared, not copied)

GiB = 2**30
MODEL = "7b"
DEFAULT_BUDGETS = "10GiB,16GiB,24GiB"
SPEED_TARGET = 2.0
# bench/RESULTS.md, "Runner" table: the 7B fmllm recipe at 1024 x 1 on the H100 ran 2,232 tokens/s.
ANCHOR_TOKENS_PER_S = 2200.0
# Per run besides the steps: process start, imports, 4-bit load, tokenizing, adapter save
# (bench_runner_gpu's 7B runs: wall 27-31 s for 8 steps of about 0.9 s).
RUN_OVERHEAD_S = 25.0
# Building and saving the random 7B when it is not there yet: not measured so far, a guess.
BUILD_GUESS_S = 150.0
# Words per synthetic example: ~1,400 words are well over 1,024 tokens with the bench tokenizer.
WORDS_PER_EXAMPLE = 1400
# The GPU host of this bench: an H100 (compute capability 9.0) with liger-kernel installed.
HOST_CC = (9, 0)


def log(msg: str) -> None:
    print(f"[fit-verify {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def gib(n: Any, nd: int = 2) -> str:
    return f"{n / GiB:.{nd}f}" if isinstance(n, (int, float)) and not isinstance(n, bool) else "n/a"


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def parse_budgets(text: str) -> list[tuple[str, int]]:
    """``"10GiB,16GiB,24"`` -> [(label, bytes)], sorted largest first; ValueError naming the bad one.

    A bare number is read as GiB (the issue's unit)."""
    from fmllm_tui.config import parse_size

    out: list[tuple[str, int]] = []
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValueError("--budgets is empty: give sizes like 10GiB,16GiB,24GiB")
    for part in parts:
        if not part:
            raise ValueError(f"--budgets {text!r} has an empty entry: give sizes like 10GiB,16GiB,24GiB")
        spec = f"{part}GiB" if part.replace(".", "", 1).isdigit() else part
        try:
            size = parse_size(spec)
        except ValueError as e:
            raise ValueError(f"--budgets: {part!r} is not a memory size ({e}); use e.g. 10GiB") from None
        if size < GiB:
            raise ValueError(f"--budgets: {part!r} is below 1 GiB; a 7B QLoRA run needs several GiB")
        out.append((f"{size / GiB:g}GiB", int(size)))
    if len({b for _, b in out}) != len(out):
        raise ValueError(f"--budgets {text!r} names the same size twice")
    return sorted(out, key=lambda x: -x[1])


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` runner overrides (bench knobs, the same for every run); VALUE is JSON or text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--override {item!r}: expected KEY=VALUE, e.g. compile=off")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def write_instruction_data(path: Path, n: int, words: int = WORDS_PER_EXAMPLE) -> Path:
    """Instruction rows (the shipped config's data_format) whose outputs are cut at max_seq_length."""
    rows = [{"instruction": f"Example {i}: continue the list.", "input": "", "output": text}
            for i, text in enumerate(brg.synthetic_texts(n, words, seed=1))]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return path


def stub_model_dir(dest: Path) -> Path:
    """Dry run only: a folder with just the 7B's config.json, so the planning path (the check's
    architecture lookup of a local model) is the one the GPU run takes with the real folder."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(brg.ARCHS[MODEL], indent=1))
    return dest


@contextlib.contextmanager
def liger_assumption(mode: str) -> Iterator[bool]:
    """Plan with liger-kernel in the planned GPU install (``on``, fmllm's default on any machine),
    without it (``off``), or as this machine has it (``here``): fmllm_tui.recipe's
    PLANNED_GPU_HAS_LIGER, patched for the search when asked."""
    from unittest import mock

    from fmllm_tui import recipe

    want = {"on": True, "off": False}.get(mode, recipe.liger_installed())
    with mock.patch.object(recipe, "PLANNED_GPU_HAS_LIGER", want):
        yield want


# ------------------------------------------------------------------------------------------------
# Search and apply
# ------------------------------------------------------------------------------------------------


@dataclass
class BudgetPlan:
    """One budget: the fit search's result, and the config file with its changes applied."""

    label: str
    budget_bytes: int
    config_path: Path | None
    fits: bool
    changes: list[dict[str, Any]]  # the search's, canonical keys
    file_changes: list[dict[str, Any]]  # what the memory.fit fixer wrote: file keys
    predicted_before_bytes: int
    predicted_after_bytes: int
    predicted_range_bytes: tuple[int, int]
    predicted_speedup: float
    margin_bytes: int
    message: str
    notes: list[str] = field(default_factory=list)
    same_with_float16: bool | None = None


@dataclass
class Prepared:
    """Everything the runs need: the base config, the plans, the data, the assumptions."""

    work: Path
    model_path: Path
    data_path: Path
    shipped_path: Path
    base_path: Path
    arch: dict[str, Any]
    lengths: list[int]
    liger: bool
    compute_capability: tuple[int, int]
    setup_changes: list[dict[str, Any]]
    plans: list[BudgetPlan]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (lists are leaves)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def config_differences(a_path: Path, b_path: Path) -> dict[str, tuple[Any, Any]]:
    """Dotted file keys whose values differ between two config files: key -> (a, b)."""
    from fmllm_tui.config import load_config, to_plain

    fa, fb = _flat(to_plain(load_config(a_path).doc)), _flat(to_plain(load_config(b_path).doc))
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def _write_changed(loaded: Any, changes: list[Any], dest: Path) -> Any:
    """Render ``changes`` with fmllm's edit engine (comments kept, result validated) into ``dest``."""
    from fmllm_tui.fixes.engine import encode, render_loaded

    from fmllm_tui.config import load_config

    text, _applied, _new = render_loaded(loaded, changes)
    dest.write_bytes(encode(loaded, text))
    return load_config(dest)


def write_base_config(shipped: Path, dest: Path, model_path: Path, data_path: Path, out_dir: Path,
                      compute_capability: tuple[int, int]) -> tuple[Any, list[dict[str, Any]]]:
    """The shipped config pointed at the local model, the synthetic data and a scratch output
    folder, with the compute dtype the ``dtype.compute`` fixer picks for this GPU."""
    from fmllm_tui.fixes import plan_fix
    from fmllm_tui.fixes.fixers import change

    from fmllm_tui.config import load_config

    loaded = load_config(shipped)
    setup = (change(loaded, "base_model_name", str(model_path), "the bench's random-weight 7B")
             + change(loaded, "paths.ft_combined_data_file", str(data_path), "synthetic rows cut at max_seq_length")
             + change(loaded, "paths.output_dir", str(out_dir), "scratch"))
    setup += plan_fix(loaded, "dtype.compute", {"compute_capability": list(compute_capability)})
    base = _write_changed(loaded, setup, dest)
    return base, [{"key": c.key, "from": c.from_, "to": c.to, "why": c.comment} for c in setup]


def example_lengths(loaded: Any) -> list[int]:
    """Token lengths of the data as the ``config.fit`` check sees them (checks/conftest.py)."""
    from fmllm_tui.datafile import inspect_data

    rep = inspect_data(loaded.view.data_file, loaded.view.data_format, model=loaded.view.base_model_name)
    return list(rep.lengths) if rep.rows else []


def search(loaded: Any, arch: dict[str, Any], budget: int, lengths: list[int] | None) -> Any:
    """fmllm's fit search, called as checks/test_fit.py does under ``fmllm-check --vram``: no
    card (a bare size), one GPU, the data's example lengths."""
    from fmllm_tui import fitsearch

    return fitsearch.fit(loaded.view, arch, budget, example_lengths=lengths or None, gpu=None,
                         mode="single", n_gpus=1)


def plan_budget(base: Any, arch: dict[str, Any], label: str, budget: int, lengths: list[int],
                dest: Path, float16: Any = None) -> BudgetPlan:
    """Search one budget and write the config with the ``memory.fit`` fix applied to ``dest``."""
    from fmllm_tui.fixes import plan_fix

    res = search(base, arch, budget, lengths)
    same16 = None
    if float16 is not None:
        other = search(float16, arch, budget, lengths)
        same16 = [(c.key, c.to) for c in other.changes] == [(c.key, c.to) for c in res.changes]
    after = res.prediction_after
    plan = BudgetPlan(label, budget, None, res.fits, [c.to_json() for c in res.changes], [], res.prediction_before.peak_process_bytes,
                      after.peak_process_bytes, (after.low_bytes, after.high_bytes), res.speedup, res.margin_bytes,
                      res.message, list(res.notes), same16)
    if not res.fits:
        return plan
    file_changes = plan_fix(base, "memory.fit", {"changes": res.changes}) if res.changes else []
    _write_changed(base, file_changes, dest)
    plan.config_path = dest
    plan.file_changes = [{"key": c.key, "from": c.from_, "to": c.to} for c in file_changes]
    return plan


def prepare(work: Path, budgets: list[tuple[str, int]], *, model_path: Path | None, liger: str,
            compute_capability: tuple[int, int], data_rows: int, shipped: Path | None = None) -> Prepared:
    """Write the data, the base config and one config per budget; no GPU needed.

    ``model_path`` None: a stub model folder (config.json only) stands in for the 7B (dry run)."""
    from fmllm_tui.config import load_config

    work.mkdir(parents=True, exist_ok=True)
    shipped = shipped or REPO / "config.yaml"
    if model_path is None:
        model_path = stub_model_dir(work / "stub-qwen2.5-7b")
    arch = json.loads((model_path / "config.json").read_text())
    data = write_instruction_data(work / "data.jsonl", data_rows)
    base, setup = write_base_config(shipped, work / "base.yaml", model_path, data, work / "outputs",
                                    compute_capability)
    f16 = None
    if base.view.compute_dtype != "float16":
        from fmllm_tui.fixes.fixers import change

        f16 = _write_changed(base, change(base, "quantization.bnb_4bit_compute_dtype", "float16", "dtype check"),
                             work / "base-float16.yaml")
    lengths = example_lengths(base)
    plans = []
    with liger_assumption(liger) as liger_on:
        for label, size in budgets:
            plans.append(plan_budget(base, arch, label, size, lengths, work / f"fit-{label}.yaml", f16))
    _ = load_config(work / "base.yaml")  # the base itself stays a valid config
    return Prepared(work, model_path, data, shipped, work / "base.yaml", arch, lengths, liger_on,
                    compute_capability, setup, plans)


def cross_check(cfg_path: Path, label: str, arch: dict[str, Any], lengths: list[int], timeout: float = 120) -> dict[str, Any]:
    """``fmllm-check --only config.fit --vram LABEL`` on ``cfg_path`` vs the bench's own search
    (planned with this machine's liger-kernel state, as the check's process does)."""
    from fmllm_tui.config import load_config, parse_size

    loaded = load_config(cfg_path)
    with liger_assumption("here"):
        mine = [(c.key, c.to) for c in search(loaded, arch, parse_size(label), lengths).changes]
    cmd = [sys.executable, "-m", "fmllm_tui.cli_check", "-c", str(cfg_path), "--only", "config.fit",
           "--vram", label, "--offline", "--json"]
    env = {**os.environ, "PYTHONPATH": brg._pythonpath()}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO), env=env)
    except subprocess.TimeoutExpired:
        return {"budget": label, "status": "crashed", "message": f"fmllm-check took over {timeout:.0f}s"}
    try:
        doc = json.loads(p.stdout)
        res = next(c for c in doc["checks"] if c["id"] == "config.fit")
    except (ValueError, KeyError, StopIteration):
        return {"budget": label, "status": "crashed", "message": f"rc {p.returncode}: {(p.stderr or p.stdout)[-400:]}"}
    theirs = [(c["key"], c["to"]) for c in (res.get("values", {}).get("fit") or {}).get("changes", [])]
    if res["status"] == "skip":
        return {"budget": label, "status": "skipped", "message": res.get("finding")}
    return {"budget": label, "status": "agree" if theirs == mine else "differ", "check_status": res["status"],
            "check_changes": theirs, "bench_changes": mine}


def fill_check(tokenizer: Any, data_path: Path, data_format: str, max_len: int, limit: int = 32) -> dict[str, Any]:
    """Encode the first rows as the runner does: how many reach max_seq_length tokens."""
    from fmllm_tui.runner.data import EncodeStats, encode_record, ensure_chat_template, read_records

    ensure_chat_template(tokenizer)
    stats = EncodeStats()
    lens = []
    for rec in read_records(str(data_path), data_format)[:limit]:
        ex = encode_record(tokenizer, rec, data_format, max_len, True, stats)
        lens.append(len(ex["input_ids"]) if ex else 0)
    return {"examples": len(lens), "full_length": sum(1 for x in lens if x >= max_len), "min_tokens": min(lens),
            "max_seq_length": max_len}


# ------------------------------------------------------------------------------------------------
# The run plan
# ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One run: a config file, a cap, a step count, and its time estimates."""

    name: str
    label: str
    budget_bytes: int
    config_path: Path
    steps: int
    micro_batch: int
    grad_accum: int
    seq: int
    speedup: float  # predicted, over the shipped recipe
    predicted_peak_bytes: int
    est_s: float = 0.0
    est_pessimistic_s: float = 0.0
    timeout_s: float = 0.0
    plan: BudgetPlan | None = None

    @property
    def tokens(self) -> int:
        return self.steps * self.micro_batch * self.grad_accum * self.seq


def make_cases(prep: Prepared, steps: int, baseline_steps: int) -> list[Case]:
    """The baseline (shipped recipe at the largest budget) first, then the budgets, largest first,
    except that a budget whose change set equals a smaller budget's goes last: the smaller budget's
    run (the same config under a tighter cap) already covers it if time runs out."""
    from fmllm_tui.config import load_config

    def case(name: str, label: str, size: int, path: Path, n: int, speedup: float, peak: int,
             plan: BudgetPlan | None) -> Case:
        t = load_config(path).view.training
        c = Case(name, label, size, path, n, t.per_device_train_batch_size, t.gradient_accumulation_steps,
                 int(t.max_seq_length or 1024), speedup, peak, plan=plan)
        c.est_s = RUN_OVERHEAD_S + c.tokens / (ANCHOR_TOKENS_PER_S * max(speedup, 0.1))
        c.est_pessimistic_s = RUN_OVERHEAD_S + c.tokens / ANCHOR_TOKENS_PER_S
        c.timeout_s = max(120.0, 1.5 * c.est_pessimistic_s + 30)
        return c

    top = prep.plans[0]
    cases = [case("baseline-shipped", top.label, top.budget_bytes, prep.base_path, baseline_steps, 1.0,
                  top.predicted_before_bytes, None)]
    first, last = [], []
    for p in prep.plans:
        if p.config_path is not None:
            c = case(f"fit-{p.label}", p.label, p.budget_bytes, p.config_path, steps, p.predicted_speedup,
                     p.predicted_after_bytes, p)
            (last if covering_plan(p, prep.plans) else first).append(c)
    return cases + first + last


def _key(plan: BudgetPlan) -> list[tuple[str, Any]]:
    return [(c["key"], c["to"]) for c in plan.changes]


def covering_plan(plan: BudgetPlan, plans: list[BudgetPlan]) -> BudgetPlan | None:
    """The largest smaller budget whose search chose the very same changes (same config file content
    but for nothing), or None."""
    same = [p for p in plans if p.budget_bytes < plan.budget_bytes and p.fits and plan.fits and _key(p) == _key(plan)]
    return max(same, key=lambda p: p.budget_bytes, default=None)


def describe_changes(plan: BudgetPlan | None) -> str:
    if plan is None:
        return "shipped recipe (no change)"
    if not plan.fits:
        return f"nothing fits ({plan.message})"
    if not plan.changes:
        return "no change (the shipped recipe is the fastest that fits)"
    return ", ".join(f"{c['key'].split('.', 1)[1]} {c['from']}->{c['to']}" for c in plan.changes)


def print_plan(prep: Prepared, cases: list[Case], build: tuple[str, float], budget_s: float) -> dict[str, Any]:
    """Print what will run and how long it should take; return the same as data."""
    lines = [f"plan: Qwen2.5-7B (random weights) from {prep.shipped_path.name}; liger-kernel "
             f"{'assumed installed' if prep.liger else 'not installed'} for planning; compute capability "
             f"{prep.compute_capability[0]}.{prep.compute_capability[1]}; data: {len(prep.lengths)} rows, "
             f"shortest {min(prep.lengths) if prep.lengths else 'n/a'} tokens (check's estimate)"]
    for ch in prep.setup_changes:
        lines.append(f"  setup edit: {ch['key']}: {ch['from']!r} -> {ch['to']!r}  ({ch['why']})")
    for p in prep.plans:
        lines.append(f"  {p.label:>6}: {describe_changes(p) if p.fits else 'NOTHING FITS'}; predicted peak "
                     f"{gib(p.predicted_before_bytes)} -> {gib(p.predicted_after_bytes)} GiB (range "
                     f"{gib(p.predicted_range_bytes[0])}-{gib(p.predicted_range_bytes[1])}), limit "
                     f"{gib(p.budget_bytes - p.margin_bytes)} GiB after the margin, predicted x{p.predicted_speedup:.2f}"
                     + ("" if p.same_with_float16 in (None, True) else "  [DIFFERS with float16 compute dtype]"))
    lines.append(f"runs (estimates: {ANCHOR_TOKENS_PER_S:,.0f} tokens/s for the shipped recipe, from RESULTS.md, "
                 f"x the predicted speedup; {RUN_OVERHEAD_S:.0f} s per run to start, load and save):")
    build_note, build_s = build
    lines.append(f"  the random 7B: {build_note}")
    total, pess = build_s, build_s
    for c in cases:
        total += c.est_s
        pess += c.est_pessimistic_s
        lines.append(f"  {c.name:18} cap {c.label:>6}: {c.steps} steps x {c.micro_batch} x GA {c.grad_accum} x {c.seq} "
                     f"= {c.tokens:,} tokens; est {c.est_s:4.0f} s (no speedup: {c.est_pessimistic_s:4.0f} s), "
                     f"timeout {c.timeout_s:.0f} s")
    lines.append(f"  total est {total:.0f} s (no speedup at all: {pess:.0f} s); wall budget {budget_s:.0f} s: "
                 "runs that cannot finish in what is left are skipped and recorded")
    print("\n".join(lines), flush=True)
    return {"estimated_s": total, "estimated_pessimistic_s": pess, "budget_s": budget_s, "lines": lines}


# ------------------------------------------------------------------------------------------------
# One measured run
# ------------------------------------------------------------------------------------------------


def _metrics_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    except OSError:
        pass
    return rows


def _row_max(rows: list[dict[str, Any]], key: str) -> int | None:
    """The largest value of ``key`` over the metrics rows (a killed run has no summary), or None."""
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return int(max(vals)) if vals else None


def _steady_tps(times: list[float], toks: list[int]) -> float | None:
    """Tokens/s over steps 3.. (as the runner: the first two pay for allocation and kernel choice)."""
    skip = 2 if len(times) > 3 else 0
    t = sum(times[skip:])
    return sum(toks[skip:]) / t if t > 0 else None


def run_case(case: Case, runs: Path, timeout: float, overrides: dict[str, Any]) -> dict[str, Any]:
    """Run one config through fmllm's training process, capped to its budget; its measurements."""
    from fmllm_tui.config import load_config
    from fmllm_tui.runner.launch import build_spec, child_env

    rdir = runs / case.name
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    loaded = load_config(case.config_path)
    # What `fmllm-run start --vram LABEL --steps N` writes, less the sample generations (not measured).
    spec = build_spec(loaded, "train", steps=case.steps, vram_bytes=case.budget_bytes, overrides=overrides)
    spec["runner"]["sample_generations"] = 0
    (rdir / "config.json").write_text(json.dumps(spec, indent=2))
    env = {**os.environ, **child_env({"PYTHONPATH": brg._pythonpath()})}
    time.sleep(1.0)  # let the previous process's memory leave NVML's view before the idle reading
    sampler = brg.DeviceSampler()
    idle = sampler.used()
    t0 = time.time()
    rc: int | None = None
    with sampler, open(rdir / "train.log", "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "fmllm_tui.runner.train", "--run-dir", str(rdir)],
                                stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group of the process this script started
            proc.wait()
    wall = time.time() - t0
    summary = brg._read(rdir / "summary.json") or {}
    outcome = brg._read(rdir / "outcome.json") or {}
    status = outcome.get("status") or ("timeout" if rc is None else "failed")
    rows = _metrics_rows(rdir / "metrics.jsonl")
    times, toks = summary.get("step_times_s") or [], summary.get("step_tokens") or []
    steps_done = summary.get("steps")
    if steps_done is None and rows:
        steps_done = max(int(r.get("step") or 0) for r in rows)
    tps = _steady_tps(times, toks) if times else None
    if tps is None and len(rows) >= 2:  # killed or failed mid-run: the logged rows after the first
        tps = sum(r.get("tokens_per_s") or 0 for r in rows[1:]) / (len(rows) - 1)
    log_text = (rdir / "train.log").read_text(errors="replace")
    cap_line = next((ln for ln in log_text.splitlines() if "--vram" in ln and "capped torch" in ln), None)
    out: dict[str, Any] = {
        "name": case.name, "budget": case.label, "budget_bytes": case.budget_bytes, "config": str(case.config_path),
        "steps_asked": case.steps, "micro_batch": case.micro_batch, "grad_accum": case.grad_accum, "seq": case.seq,
        "status": status, "rc": rc, "wall_s": wall, "timeout_s": timeout, "message": outcome.get("message"),
        "oom": status == "oom", "steps_done": steps_done,
        "idle_used_bytes": idle, "device_peak_bytes": sampler.peak, "process_peak_bytes": max(0, sampler.peak - idle),
        "runner_process_peak_bytes": summary.get("peak_process_bytes") or _row_max(rows, "process_peak_bytes"),
        "torch_max_allocated_bytes": summary.get("peak_allocated_bytes") or _row_max(rows, "peak_allocated_bytes"),
        "torch_max_reserved_bytes": summary.get("peak_reserved_bytes") or _row_max(rows, "peak_bytes"),
        "cuda_context_bytes": summary.get("cuda_context_bytes"), "cap_line": cap_line,
        "tokens_per_s": tps, "runner_tokens_per_s": summary.get("tokens_per_s"),
        "tokens_per_step": sorted(toks)[len(toks) // 2] if toks else None,
        "full_length_steps": (sorted(toks)[len(toks) // 2] == case.micro_batch * case.grad_accum * case.seq) if toks else None,
        "losses": summary.get("losses") or [r.get("loss") for r in rows if r.get("loss") is not None],
        "step_times_s": times, "load_s": summary.get("load_s"), "recipe": summary.get("recipe"),
        "versions": summary.get("versions"), "device_name": summary.get("device_name"),
        "predicted_peak_bytes": case.predicted_peak_bytes, "predicted_speedup": case.speedup,
    }
    if status == "oom":
        out["oom_memory"] = outcome.get("memory")
    if status != "ok":
        out["log_tail"] = log_text[-3000:]
    return out


# ------------------------------------------------------------------------------------------------
# Verdicts and the table
# ------------------------------------------------------------------------------------------------


def verdicts(results: list[dict[str, Any]], plans: list[BudgetPlan], steps: int) -> dict[str, Any]:
    """The issue's three verdicts per budget: True, False, or None (not measured, never a pass)."""
    by = {r["name"]: r for r in results}
    base = by.get("baseline-shipped")
    base_tps = base.get("tokens_per_s") if base and base.get("status") == "ok" else None
    out: dict[str, Any] = {"baseline_tokens_per_s": base_tps, "budgets": {}}
    top = plans[0].label if plans else None
    def usable(r: dict[str, Any] | None) -> bool:
        return r is not None and r.get("status") not in ("skipped", "crashed", "timeout")

    for p in plans:
        r = by.get(f"fit-{p.label}")
        v: dict[str, Any] = {"fits_predicted": p.fits, "measured_run": f"fit-{p.label}", "measured_by": None}
        cover = covering_plan(p, plans)
        if not usable(r) and cover is not None and usable(by.get(f"fit-{cover.label}")):
            # The same config ran under the tighter cap: it proves this budget too (if anything slower).
            r = by[f"fit-{cover.label}"]
            v["measured_run"] = f"fit-{cover.label}"
            v["measured_by"] = f"the same config's run under the tighter {cover.label} cap"
        if not usable(r):
            v.update(no_oom=None, peak_within_budget=None, ratio=None, why=(r or {}).get("message") or (r or {}).get("status") or "not run")
        else:
            assert r is not None
            v["completed"] = r.get("status") == "ok" and (r.get("steps_done") or 0) >= steps
            # An OOM is a fail; all steps done is a pass; another failure proves neither.
            v["no_oom"] = False if r.get("oom") else (True if v["completed"] else None)
            peak = r.get("process_peak_bytes")
            ok_peak = isinstance(peak, int) and peak > 0 and v["completed"]
            v["peak_within_budget"] = (peak <= p.budget_bytes) if ok_peak else None
            tps = r.get("tokens_per_s")
            v["ratio"] = tps / base_tps if (tps and base_tps and v["completed"]) else None
        if p.label == top:
            v["speed_target_met"] = (v["ratio"] >= SPEED_TARGET) if v.get("ratio") is not None else None
        out["budgets"][p.label] = v
    return out


def _mark(v: bool | None) -> str:
    return "✓" if v is True else ("✗" if v is False else "not measured")


def markdown(results: list[dict[str, Any]], prep: Prepared, verdict: dict[str, Any], steps: int,
             baseline_steps: int, device: str | None) -> str:
    """The table for bench/RESULTS.md."""
    from fmllm_tui.config import load_config

    by = {r["name"]: r for r in results}
    t = load_config(prep.base_path).view
    head = (f"`bench/bench_fit_verify_gpu.py` on {device or 'the GPU'}: the shipped Qwen2.5-7B recipe "
            f"(random weights, {t.compute_dtype}, sequence {t.training.max_seq_length}, every example full "
            f"length, effective batch {t.effective_batch}) and the "
            f"config fmllm's fit search picks for each `--vram` budget, run by fmllm's training process with "
            f"torch capped to the budget less the CUDA context. Chosen configs: {steps} optimizer steps; "
            f"baseline (shipped recipe, capped at {prep.plans[0].label}): {baseline_steps} steps. Process peak = "
            f"NVML device peak (every 20 ms) less the idle baseline; tokens/s over steps 3 onward.\n\n")
    rows = ["| budget | config | predicted peak GiB | process peak GiB | torch max alloc / reserved GiB | OOM | steps | tokens/s | × shipped | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|"]

    def row(label: str, r: dict[str, Any] | None, desc: str, pred: int | None, ratio: float | None, verdict_text: str) -> str:
        if r is None:
            return f"| {label} | {desc} | {gib(pred)} | – | – | – | – | – | – | {verdict_text} |"
        tps = r.get("tokens_per_s")
        oom = "yes" if r.get("oom") else ("no" if r.get("status") == "ok" else r.get("status"))
        return (f"| {label} | {desc} | {gib(pred)} | {gib(r.get('process_peak_bytes'))} | "
                f"{gib(r.get('torch_max_allocated_bytes'))} / {gib(r.get('torch_max_reserved_bytes'))} | {oom} | "
                f"{r.get('steps_done') if r.get('steps_done') is not None else '–'} | {f'{tps:,.0f}' if tps else '–'} | "
                f"{f'{ratio:.2f}' if ratio else '–'} | {verdict_text} |")

    b = by.get("baseline-shipped")
    rows.append(row(f"{prep.plans[0].label} (baseline)", b, "shipped: micro-batch 1 × GA 8, checkpointing",
                    prep.plans[0].predicted_before_bytes, 1.0 if b and b.get("tokens_per_s") else None, "speed reference"))
    for p in prep.plans:
        v = verdict["budgets"][p.label]
        text = f"no OOM {_mark(v.get('no_oom'))}, peak ≤ {p.label} {_mark(v.get('peak_within_budget'))}"
        if "speed_target_met" in v:
            text += f", ≥ {SPEED_TARGET:g}× {_mark(v['speed_target_met'])}"
        if v.get("measured_by"):
            text += f" (measured by {v['measured_by']})"
        rows.append(row(p.label, by.get(v["measured_run"]), describe_changes(p), p.predicted_after_bytes,
                        v.get("ratio"), text))
    return head + "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def out_dir() -> Path:
    p = Path(os.environ.get("OUT") or "bench_out")
    p.mkdir(parents=True, exist_ok=True)
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench_fit_verify_gpu.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default=DEFAULT_BUDGETS, help="--vram budgets, comma-separated (default %(default)s)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps of each chosen config (default 30)")
    ap.add_argument("--baseline-steps", type=int, default=10, help="optimizer steps of the shipped recipe (default 10)")
    ap.add_argument("--budget-s", type=float, default=500, help="wall-clock budget of the whole invocation")
    ap.add_argument("--liger", choices=("here", "on", "off"), default=None,
                    help="liger-kernel assumption of the plan (default: here on a GPU run, on for --dry-run)")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="runner override for every run alike (e.g. compile=off)")
    ap.add_argument("--dry-run", action="store_true", help="search, apply and print the plan; no GPU")
    ap.add_argument("--no-cross-check", action="store_true", help="skip comparing with fmllm-check --only config.fit")
    ap.add_argument("--model-dir", default="/tmp/fmllm-bench-models", help="random models (shared with bench_runner_gpu)")
    ap.add_argument("--work-dir", default="/tmp/fmllm-fit-verify", help="configs, data and run folders")
    return ap


def _usage_error(msg: str) -> int:
    print(f"bench_fit_verify_gpu.py: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Plan (and unless --dry-run, run and report); 0 when it ran, 2 for bad flags, 1 on a crash."""
    a = build_parser().parse_args(argv)
    try:
        budgets = parse_budgets(a.budgets)
        overrides = parse_overrides(a.override)
    except ValueError as e:
        return _usage_error(str(e))
    for flag, n in (("--steps", a.steps), ("--baseline-steps", a.baseline_steps)):
        if n < 4:
            return _usage_error(f"{flag} {n}: give at least 4 (tokens/s is measured from step 3 on)")
    if a.budget_s <= 0:
        return _usage_error(f"--budget-s {a.budget_s:g}: give a positive number of seconds")
    t_start = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only; nothing may reach the Hub
    work = Path(a.work_dir).resolve()
    liger = a.liger or ("on" if a.dry_run else "here")
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": a.dry_run, "steps": a.steps,
                              "baseline_steps": a.baseline_steps, "overrides": overrides, "results": []}
    out = None if a.dry_run else out_dir()
    result_file = out / "bench_fit_verify.json" if out else None

    def save() -> None:
        if result_file is not None:
            result_file.write_text(json.dumps(report, indent=2, default=str))

    model_path: Path | None = None
    cc = HOST_CC
    build: tuple[str, float] = (f"built on the GPU host unless cached there: ~{BUILD_GUESS_S:.0f} s if built "
                                "(a guess: not measured yet)", BUILD_GUESS_S)
    device = None
    if not a.dry_run:
        from fmllm_tui import gpu

        inv = gpu.probe()  # NVML only: this process never creates a CUDA context
        if not (inv.ok and inv.devices):
            return _usage_error("no NVIDIA GPU visible (NVML); use --dry-run on a machine without one")
        cc, device = tuple(inv.devices[0].compute_capability), inv.devices[0].name
        report["gpu"] = {"name": device, "total_bytes": inv.devices[0].total_bytes, "compute_capability": cc}
        model_dir = Path(a.model_dir)
        cached = (model_dir / f"qwen2.5-{MODEL}-random" / "fmllm-bench-complete").is_file()
        if not cached:
            log(f"the random 7B is not in {model_dir}: building it (a guess: ~{BUILD_GUESS_S:.0f} s)")
        t0 = time.time()
        try:
            model_path = brg.ensure_model(MODEL, model_dir, [MODEL])
        except Exception as e:  # no model, nothing to measure: say why
            report["build"] = {"status": "crashed", "message": f"{type(e).__name__}: {e}"}
            save()
            log(f"building the 7B failed: {e}")
            return 1
        report["build"] = {"status": "cached" if cached else "built", "wall_s": time.time() - t0}
        build = (f"{report['build']['status']} in {report['build']['wall_s']:.0f} s (done)", report["build"]["wall_s"])
    rows = max(256, a.steps * 8, a.baseline_steps * 8)  # one epoch covers every run (effective batch 8)
    try:
        prep = prepare(work, budgets, model_path=model_path, liger=liger, compute_capability=cc, data_rows=rows)
    except Exception as e:  # the search or the edit failed: that is the finding, said plainly
        report["prepare"] = {"status": "crashed", "message": f"{type(e).__name__}: {e}"}
        save()
        log(f"planning crashed: {type(e).__name__}: {e}")
        return 1
    report["plans"] = [{**p.__dict__, "config_path": str(p.config_path) if p.config_path else None} for p in prep.plans]
    report["setup_changes"] = prep.setup_changes
    report["liger_planned"] = prep.liger
    cases = make_cases(prep, a.steps, a.baseline_steps)
    report["plan"] = print_plan(prep, cases, build, a.budget_s)
    for p in prep.plans:
        if p.same_with_float16 is False:
            log(f"note: at {p.label} the search picks differently with the shipped float16 compute dtype")
    # The data fills max_seq_length with the tokenizer the runs use (the dry run: the same recipe).
    try:
        from fmllm_tui.config import load_config

        seq = int(load_config(prep.base_path).view.training.max_seq_length or 1024)
        if model_path is not None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(model_path))
        else:
            from fmllm_tui.runner.smoke import train_tokenizer

            tok = train_tokenizer(brg.synthetic_texts(200), vocab_size=512)  # build_model's recipe
        report["fill"] = fill_check(tok, prep.data_path, "instruction", seq)
        f = report["fill"]
        log(f"data: {f['full_length']}/{f['examples']} examples reach {seq} tokens (shortest {f['min_tokens']})")
    except Exception as e:  # informative only; the runs' tokens per step say it too
        report["fill"] = {"status": "crashed", "message": f"{type(e).__name__}: {e}"}
        log(f"data length check crashed: {e}")
    if not a.no_cross_check:
        # fmllm-check's process plans with this machine's liger-kernel state; so does the comparison.
        if prep.liger != _liger_here():
            log("cross-check: planned with this machine's liger-kernel state, not the GPU host's assumption")
        report["cross_check"] = [cross_check(prep.base_path, p.label, prep.arch, prep.lengths) for p in prep.plans]
        for c in report["cross_check"]:
            log(f"fmllm-check --vram {c['budget']}: {c['status']}"
                + (f" (check {c.get('check_changes')}, bench {c.get('bench_changes')})" if c["status"] == "differ" else "")
                + (f": {c.get('message')}" if c.get("message") else ""))
    if a.dry_run:
        from fmllm_tui.fixes.engine import diff

        from fmllm_tui.config import load_config

        base = load_config(prep.base_path)
        for p in prep.plans:
            if p.config_path is not None:
                print(f"--- {p.label}: {p.config_path}")
                print(diff(base, p.config_path.read_text()), end="")
        print(f"dry run: configs in {work}; nothing was run (wall {time.time() - t_start:.1f} s)")
        return 0

    assert out is not None
    (out / "configs").mkdir(exist_ok=True)
    for p in [prep.base_path] + [c.config_path for c in cases]:
        shutil.copy(p, out / "configs" / p.name)
    save()
    runs = work / "runs"
    for case in cases:
        left = a.budget_s - (time.time() - t_start)
        if left < case.est_s + 15:
            res = {"name": case.name, "budget": case.label, "status": "skipped",
                   "message": f"time budget: {left:.0f} s left, the run needs about {case.est_s:.0f} s"}
            log(f"skip {case.name}: {res['message']}")
        else:
            timeout = min(case.timeout_s, left - 10)
            log(f"run {case.name}: {case.config_path.name}, cap {case.label}, {case.steps} steps, timeout {timeout:.0f} s")
            try:
                res = run_case(case, runs, timeout, overrides)
            except Exception as e:  # keep the other runs' results
                res = {"name": case.name, "budget": case.label, "status": "crashed", "message": f"{type(e).__name__}: {e}"}
            log(f"{case.name}: {res.get('status')} steps {res.get('steps_done')} peak {gib(res.get('process_peak_bytes'))} "
                f"GiB tokens/s {res.get('tokens_per_s') or '-'} {res.get('message') or ''}")
            logs = out / "logs"
            logs.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(runs / case.name / "train.log", logs / f"{case.name}.train.log")
        report["results"].append(res)
        report["verdicts"] = verdicts(report["results"], prep.plans, a.steps)
        report["markdown"] = markdown(report["results"], prep, report["verdicts"], a.steps, a.baseline_steps, device)
        report["wall_s"] = time.time() - t_start
        save()  # after every run: a later failure or a killed invocation keeps what was measured
        (out / "fit_verify_table.md").write_text(report["markdown"])
    print(report["markdown"])
    print(json.dumps(report["verdicts"], indent=1))
    return 0


def _liger_here() -> bool:
    from fmllm_tui import recipe

    return recipe.liger_installed()


if __name__ == "__main__":
    sys.exit(main())
