#!/usr/bin/env python3
"""GPU bench of fmllm's FSDP + QLoRA path over 2 GPUs, against one GPU with the same data and seed.

Run on 2 H100s on 2026-11-26 (bench/RESULTS.md). Run it from the repository root on a host with 2 NVIDIA GPUs (H100/H200)
that has torch (CUDA build with NCCL), transformers, peft, accelerate, bitsandbytes, datasets and
nvidia-ml-py; no internet, no Hub. On the device machine (wheels in .whl/, see
shared/device/fetch-wheels.sh):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 && \\
    PYTHONUNBUFFERED=1 python3 bench/bench_fsdp_gpu.py          # 14B: FSDP over 2 GPUs vs 1 GPU, 20 steps
    python3 bench/bench_fsdp_gpu.py --offload                    # also FSDP with parameters in CPU RAM
    python3 bench/bench_fsdp_gpu.py --model 7b --ddp             # also DDP over the 2 GPUs (7B fits one;
                                                                 # written 2026-11-26 night, not yet run on GPUs)
    python3 bench/bench_fsdp_gpu.py --dry-run                    # anywhere: configs, accelerate.yaml,
                                                                 # argv and predictions; launches nothing

It

1. turns NVLink multicast off for everything it starts (NCCL_NVLS_ENABLE=0,
   TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1 in its own environment, which the
   model builder, fmllm's supervisor, accelerate's launcher and every rank inherit),
2. prints a time plan and keeps the whole invocation inside ``--budget-s`` (default 500 s): each
   run's timeout is what is left less what the later steps need,
3. builds random-weight Qwen2.5-14B-architecture weights (bench/bench_runner_gpu.py's builder:
   bf16 on GPU 0, ``save_pretrained`` to ``--model-dir``; reused when already there, ~30 GB),
4. writes one config per run and starts it through fmllm's own path,
   :func:`fmllm_tui.runner.launch.start`: the FSDP run gets ``fmllm.distributed.mode: fsdp``,
   ``num_processes: 2`` (fmllm writes ``accelerate.yaml`` into the run folder and starts
   ``accelerate launch``), the single run ``mode: single`` with ``CUDA_VISIBLE_DEVICES=0``,
5. keeps the data of every optimizer step the same: the FSDP run has 2 ranks x batch 1 x
   accumulation 2, the single run batch 1 x accumulation 4 (accelerate hands rank r every other
   batch of the seeded sampler order, so each optimizer step sees the same four examples: checked
   on the CPU to 1e-6 by tests/test_fsdp_cpu.py), every example full length (``--seq`` tokens),
   LoRA r8 on q/k/v/o, adamw_torch, bf16, constant LR, ``--steps`` optimizer steps, enough
   examples that no run reaches a second epoch,
6. samples every GPU's used memory through NVML every 20 ms from before the launch to the end,
   per phase of the run (state.json: load = up to training, train, save = after training): the
   process peak is the peak less the idle baseline (CUDA context and NCCL buffers included); each
   GPU's peak is compared with fmllm's per-GPU prediction (``memory.predict(..., mode="fsdp",
   n_gpus=2)`` on the view the FSDP runner trains) as the signed error (measured - predicted) /
   measured in % against the prediction's point value (the issue's bar: within 5%), and the single
   GPU's with ``mode="single"``,
7. compares the loss curves step by step and the two saved adapters (tensor count),
8. prints a table and writes ``$OUT/bench_fsdp_gpu.json`` (default ./bench_out) after each run.

The run folders (train.log, metrics.jsonl with every rank's memory, summary.json, accelerate.yaml)
stay under ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

GiB = 1024**3
# The host's GPUs are shared: NVLink multicast must stay off in NCCL, PyTorch and NVSHMEM.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# Nothing may reach the Hub (the host has no network: offline also saves the retries).
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# Runner overrides for both runs: the same kernels on both sides (torch.compile would run on the
# single GPU only, FSDP's flat parameters cannot be compiled per layer) and the path memory.py plans.
OVERRIDES = {"compile": "off"}
MEMORY_BAR_PCT = 5.0  # the bar: each GPU's measured peak within 5% of the prediction
# Loss curves agree when no step differs by more than this (absolute): bf16 and another reduction
# order keep them close, not equal; fmllm vs plain on one GPU differed by <= 0.005 over 8 steps.
LOSS_MAX_ABS_DIFF = 0.02
# Seconds each part is planned to take (14B on H100s: a build took ~50 s, one 8-step single run
# 41 s wall); the timeouts come from what is left of the budget, not from these.
PLAN_S = {"setup": 25, "build": 120, "fsdp": 230, "fsdp-mb2": 200, "single": 110, "fsdp-offload": 260,
          "ddp": 150, "report": 10}


def log(msg: str) -> None:
    print(f"[bench-fsdp {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def out_dir() -> Path:
    p = Path(os.environ.get("OUT") or "bench_out")
    p.mkdir(parents=True, exist_ok=True)
    return p


class GpuSampler:
    """Every listed GPU's used memory (NVML) every 20 ms in a thread: the idle baseline, the peak
    and the peak per phase of the run (read from the run folder's state.json once it is known)."""

    PHASES = ("load", "train", "save")

    def __init__(self, indices: list[int]):
        import pynvml

        pynvml.nvmlInit()
        self.nv = pynvml
        self.handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
        self.idle = {i: self.used(i) for i in indices}
        self.peak = dict(self.idle)
        self.phase_peak: dict[str, dict[int, int]] = {p: dict(self.idle) for p in self.PHASES}
        self.util_peak = {i: 0 for i in indices}
        self.run_dir: Path | None = None
        self.phase = "load"
        self.phase_times: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self, i: int) -> int:
        return int(self.nv.nvmlDeviceGetMemoryInfo(self.handles[i]).used)

    def _read_phase(self) -> None:
        if self.run_dir is None:
            return
        try:
            name = json.loads((self.run_dir / "state.json").read_text()).get("phase")
        except (OSError, ValueError):
            return
        if name == "training":
            phase = "train"
        elif self.phase != "load" or name in ("saving adapter", "done", "stopped"):
            phase = "save"  # everything after training (a stop before training reads as save too)
        else:
            phase = "load"
        if phase != self.phase:
            self.phase_times[phase] = time.time()
            self.phase = phase

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            if n % 5 == 0:  # state.json every 0.1 s
                self._read_phase()
            n += 1
            for i in self.handles:
                u = self.used(i)
                self.peak[i] = max(self.peak[i], u)
                self.phase_peak[self.phase][i] = max(self.phase_peak[self.phase][i], u)
                try:
                    self.util_peak[i] = max(self.util_peak[i], int(self.nv.nvmlDeviceGetUtilizationRates(self.handles[i]).gpu))
                except self.nv.NVMLError:
                    pass
            time.sleep(0.02)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def process_peaks(self) -> dict[int, int]:
        return {i: max(0, self.peak[i] - self.idle[i]) for i in self.handles}

    def phase_process_peaks(self) -> dict[str, dict[int, int]]:
        return {p: {i: max(0, v - self.idle[i]) for i, v in peaks.items()} for p, peaks in self.phase_peak.items()}


def write_config(work: Path, model: Path, data: Path, *, mode: str, steps: int, seq: int, ga: int,
                 offload: bool, lr: float, mb: int = 1) -> Path:
    """The person's config.yaml for one run (nested layout, as shipped)."""
    work.mkdir(parents=True, exist_ok=True)
    dist = {"single": "{mode: single}", "fsdp": f"{{mode: fsdp, num_processes: 2, cpu_offload: {str(offload).lower()}}}",
            "ddp": "{mode: ddp, num_processes: 2}"}
    text = textwrap.dedent(f"""\
        paths:
          output_dir: {work / 'out'}
          ft_combined_data_file: {data}
        fine_tuning:
          base_model_name: {model}
          data_format: prompt_completion
          lora: {{r: 8, alpha: 8, dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, o_proj]}}
          quantization: {{use_4bit: true, bnb_4bit_compute_dtype: bfloat16, bnb_4bit_quant_type: nf4, use_nested_quant: true}}
          training:
            per_device_train_batch_size: {mb}
            gradient_accumulation_steps: {ga}
            gradient_checkpointing: true
            learning_rate: {lr}
            lr_scheduler_type: constant
            warmup_ratio: 0.0
            max_grad_norm: 0.3
            optim: adamw_torch
            max_steps: {steps}
            logging_steps: 1
            save_steps: 100000
            max_seq_length: {seq}
            seed: 42
            bf16: true
        fmllm:
          response_only_loss: false
          offload_embeddings: "off"
          distributed: {dist[mode]}
        """)
    path = work / "config.yaml"
    path.write_text(text)
    return path


def predicted(config: Path, arch: dict[str, Any], mode: str) -> dict[str, Any]:
    """fmllm's prediction for one GPU of the run, and (FSDP) for contrast this bench's estimate of
    loading the whole 4-bit model onto each GPU before sharding (what fmllm's FSDP launch did
    before it loaded into CPU RAM; 2026-11-26 morning)."""
    from fmllm_tui import memory
    from fmllm_tui.config import load_config
    from fmllm_tui.runner.distributed import fsdp_view

    view = load_config(config).view
    if mode == "fsdp":
        p = memory.predict(fsdp_view(view), arch, mode="fsdp", n_gpus=2)
    elif mode == "ddp":
        p = memory.predict(view, arch, mode="ddp", n_gpus=2)
    else:
        p = memory.predict(view, arch, mode="single")
    out: dict[str, Any] = {"peak_bytes": p.peak_process_bytes, "low_bytes": p.low_bytes, "high_bytes": p.high_bytes,
                           "peak_allocated_bytes": p.peak_allocated_bytes, "peak_phase": p.peak_phase,
                           "breakdown": p.breakdown, "notes": p.notes, "phase_peaks": dict(p.phase_peaks)}
    if mode == "fsdp":
        # Not fmllm's model: the bench's own estimate, printed beside the measurement to tell a
        # load-phase peak from a training-phase one (weights as one GPU holds them, unsharded,
        # plus the adapters and the per-process overheads the single-GPU model counts).
        whole = memory.predict(fsdp_view(view), arch, mode="single").breakdown
        keys = ("weights_4bit", "quant_constants", "weights_16bit", "lora_weights", "runtime_misc")
        out["load_estimate_bytes"] = sum(int(whole.get(k, 0)) for k in keys) + int(
            p.peak_process_bytes - p.peak_allocated_bytes)
    return out


def adapter_tensors(run_dir: Path) -> int | None:
    """How many tensors the run's adapter/adapter_model.safetensors holds (its JSON header)."""
    f = run_dir / "adapter" / "adapter_model.safetensors"
    try:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error):
        return None
    return len([k for k in header if k != "__metadata__"])


def run_one(name: str, config: Path, gpus: list[int], timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Start one run through fmllm's launcher, sample the GPUs until it ends, collect its files."""
    from fmllm_tui.config import load_config
    from fmllm_tui.runner import kill, start, wait
    from fmllm_tui.runner import rundir as rd
    from fmllm_tui.runner.monitor import read_jsonl

    loaded = load_config(config)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # plan_launch reads CUDA_VISIBLE_DEVICES here; the supervisor inherits it
    try:
        with GpuSampler(gpus) as sampler:
            t0 = time.time()
            run_dir = start(loaded, "train", env=dict(env), overrides=dict(OVERRIDES))
            sampler.run_dir = run_dir
            log(f"{name}: {run_dir} (timeout {timeout:.0f}s)")
            rec = wait(run_dir, timeout=timeout)
            if rec is None:
                kill(run_dir)
                rec = {"status": "timeout", "message": f"no exit after {timeout:.0f}s: killed"}
            wall = time.time() - t0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    summary = rd.read_json(run_dir / rd.SUMMARY) or {}
    rows = read_jsonl(run_dir / rd.METRICS)
    out: dict[str, Any] = {
        "name": name, "run_dir": str(run_dir), "status": rec.get("status"), "message": rec.get("message"),
        "wall_s": wall, "gpu_process_peak_bytes": sampler.process_peaks(), "gpu_idle_bytes": sampler.idle,
        "gpu_phase_peak_bytes": sampler.phase_process_peaks(),
        "phase_start_s": {k: v - t0 for k, v in sampler.phase_times.items()},
        "gpu_util_peak_pct": sampler.util_peak, "losses": summary.get("losses") or [r.get("loss") for r in rows],
        "tokens_per_s": summary.get("tokens_per_s"), "recipe": summary.get("recipe"), "ranks": summary.get("ranks"),
        "load_s": summary.get("load_s"), "train_s": summary.get("train_s"), "versions": summary.get("versions"),
        "notes": summary.get("notes"), "adapter_tensors": adapter_tensors(run_dir),
        "accelerate_yaml": (run_dir / "accelerate.yaml").read_text() if (run_dir / "accelerate.yaml").is_file() else None,
        "argv": (rd.read_json(run_dir / rd.RUN) or {}).get("argv"),
    }
    if rec.get("status") != "ok":
        out["log_tail"] = (run_dir / rd.LOG).read_text(errors="replace")[-6000:]
        out["diagnosis"] = rec.get("diagnosis")
    return out


def signed_pct(measured: int | float, predicted_bytes: int | float) -> float | None:
    """(measured - predicted) / measured in %: negative when fmllm predicted too much."""
    return 100.0 * (measured - predicted_bytes) / measured if measured else None


def verdicts(results: dict[str, Any]) -> list[str]:
    """One line per GPU of every run (signed error against the point prediction, the 5% bar, the
    range), then the loss-curve and adapter comparisons of the FSDP run against the single one."""
    lines = []
    for name, res in results.items():
        if not isinstance(res, dict) or not res.get("gpu_process_peak_bytes"):
            continue
        pred = res.get("prediction") or {}
        point, lo, hi = pred.get("peak_bytes"), pred.get("low_bytes"), pred.get("high_bytes")
        phases = res.get("gpu_phase_peak_bytes") or {}
        for i, peak in sorted(res["gpu_process_peak_bytes"].items()):
            err = signed_pct(peak, point) if point else None
            within = err is not None and abs(err) <= MEMORY_BAR_PCT
            inside = lo is not None and hi is not None and lo <= peak <= hi
            train = (phases.get("train") or {}).get(i)
            # Against the prediction's own training phase where it has one (FSDP: the wrap is
            # another phase; rank 1 may still be wrapping when rank 0's state says "training").
            train_point = (pred.get("phase_peaks") or {}).get("training") or point
            train_err = signed_pct(train, train_point) if (train and train_point) else None
            by_phase = ", ".join(f"{p} {(phases.get(p) or {}).get(i, 0) / GiB:.2f}" for p in GpuSampler.PHASES)
            errs = f"{err:+.1f}%" if err is not None else "n/a"
            lines.append(f"{name} GPU {i}: measured {peak / GiB:.2f} GiB, predicted {(point or 0) / GiB:.2f} -> "
                         f"signed error {errs} ({'within' if within else 'OUTSIDE'} {MEMORY_BAR_PCT:.0f}%); range "
                         f"{(lo or 0) / GiB:.2f}-{(hi or 0) / GiB:.2f} {'inside' if inside else 'outside'}; "
                         f"per phase GiB: {by_phase}"
                         + (f" (training phase {train / GiB:.2f} vs its prediction {train_point / GiB:.2f}: "
                            f"{train_err:+.1f}%)" if train_err is not None else ""))
        if pred.get("load_estimate_bytes"):
            counted = "counts it" if pred.get("peak_phase") == "load" else "does not count it"
            lines.append(f"{name}: for contrast, the whole 4-bit model on each GPU (the old GPU loading) "
                         f"{pred['load_estimate_bytes'] / GiB:.2f} GiB; fmllm's FSDP prediction {counted}")
    one = results.get("single")
    for name, two in results.items():
        if not name.startswith(("fsdp", "ddp")) or not isinstance(one, dict) or not isinstance(two, dict):
            continue
        if one.get("losses") and two.get("losses"):
            a, b = one["losses"], two["losses"]
            diffs = [abs(x - y) for x, y in zip(a, b, strict=False)]
            worst, mean = max(diffs), sum(diffs) / len(diffs)
            drop = a[0] - min(a)
            agree = len(a) == len(b) and worst <= LOSS_MAX_ABS_DIFF
            power = "" if drop > 2 * LOSS_MAX_ABS_DIFF else (
                f"; the single run's loss fell only {drop:.4f}: the comparison has little power")
            lines.append(f"{name} loss curve over {len(diffs)} steps (single {len(a)}, {name} {len(b)}): step 1 "
                         f"|diff| {diffs[0]:.4f}, max {worst:.4f}, mean {mean:.4f}; single fell {drop:.4f} from "
                         f"{a[0]:.4f} -> {'agree' if agree else 'DIFFER'} (bar {LOSS_MAX_ABS_DIFF}){power}")
        na, nb = one.get("adapter_tensors"), two.get("adapter_tensors")
        ok = bool(na) and na == nb
        lines.append(f"adapters: single {na} tensors, {name} {nb} -> {'same' if ok else 'MISMATCH (empty or missing)'}")
    return lines


def dry_run(a: argparse.Namespace, arch: dict[str, Any], plan: list[tuple[Any, ...]]) -> int:
    """Write each run's config and (FSDP) accelerate.yaml as fmllm would, print the launch argv
    and the predictions; starts no process, needs no GPU."""
    from fmllm_tui.config import load_config
    from fmllm_tui.runner import distributed as dist

    runs = Path(a.runs_dir) / "dry-run"
    shutil.rmtree(runs, ignore_errors=True)
    model = runs / "model"  # config.json only: what plan_launch reads for the decoder-layer class
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({**arch, "architectures": ["Qwen2ForCausalLM"]}))
    data = runs / "data.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0,1")  # plan_launch's count when NVML is absent
    report: dict[str, Any] = {"dry_run": True, "args": vars(a), "runs": {}}
    for name, mode, ga, offload, _gpus, env, mb in plan:
        config = write_config(runs / name, model, data, mode=mode, steps=a.steps, seq=a.seq, ga=ga, offload=offload,
                              lr=a.lr, mb=mb)
        entry: dict[str, Any] = {"config": str(config), "env": {**MULTICAST_OFF, **OFFLINE, **env},
                                 "runner_overrides": OVERRIDES}
        if mode in ("fsdp", "ddp"):
            launch = dist.plan_launch(load_config(config), kind="train")
            folder = runs / name / "run"
            folder.mkdir()
            acc = dist.write_accelerate_config(folder, launch["accelerate"])
            entry.update(accelerate_yaml=acc.read_text(), reason=launch["reason"], layer_cls=launch["layer_cls"],
                         argv=dist.launch_argv(folder, acc, launch["num_processes"]))
        else:
            entry["argv"] = [sys.executable, "-m", "fmllm_tui.runner.train", "--run-dir", str(runs / name / "run")]
        entry["prediction"] = predicted(config, arch, mode)
        report["runs"][name] = entry
        p = entry["prediction"]
        print(f"== {name}: {' '.join(entry['argv'])}")
        print(f"   env {json.dumps(entry['env'])}; runner overrides {json.dumps(OVERRIDES)}")
        if entry.get("accelerate_yaml"):
            print(textwrap.indent(entry["accelerate_yaml"], "   | "), end="")
        print(f"   predicted per-GPU peak {p['peak_bytes'] / GiB:.2f} GiB (range {p['low_bytes'] / GiB:.2f}-"
              f"{p['high_bytes'] / GiB:.2f}, phase {p['peak_phase']})"
              + (f"; load-phase estimate {p['load_estimate_bytes'] / GiB:.2f} GiB" if "load_estimate_bytes" in p else ""))
    (out_dir() / "bench_fsdp_gpu.dry-run.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


def _tag(value: str) -> str:
    """--tag: a file-name part (letters, digits, '.', '_', '-')."""
    import re

    if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,40}", value):
        raise argparse.ArgumentTypeError(f"{value!r}: use up to 40 letters, digits, '.', '_' or '-' (it names the "
                                         "result file)")
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="14b", choices=["7b", "14b"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--offload", action="store_true", help="also run FSDP with fsdp_offload_params")
    ap.add_argument("--mb2", action="store_true", help="also run FSDP with micro-batch 2 x accumulation 1 (the "
                                                      "same four examples a step: a second activation size)")
    ap.add_argument("--ddp", action="store_true", help="also run DDP over the 2 GPUs (2 ranks x micro-batch 1 x "
                                                      "accumulation 2: the FSDP run's data; every GPU holds the "
                                                      "whole 4-bit model)")
    ap.add_argument("--no-single", action="store_true", help="skip the one-GPU run (no loss comparison)")
    ap.add_argument("--memory-snapshot", action="store_true",
                    help="runner override memory_snapshot: rank 0's allocator history over steps 1-2 and every "
                         "rank's allocator segments by stream, copied to $OUT/<tag>-<run>/")
    ap.add_argument("--tag", default="", type=_tag, help="prefix of the result file (bench_fsdp_gpu[-TAG].json), to keep "
                                               "several invocations in one $OUT")
    ap.add_argument("--stop-on-failure", action="store_true", help="skip the later runs once one fails (saves "
                                                                  "device time when the first run shows a bug)")
    ap.add_argument("--model-dir", default="/tmp/fmllm-bench-models")
    ap.add_argument("--runs-dir", default="/tmp/fmllm-bench-fsdp")
    ap.add_argument("--budget-s", type=float, default=500, help="wall-clock budget of the whole invocation")
    ap.add_argument("--dry-run", action="store_true", help="write configs and accelerate.yaml, print argv and "
                                                           "predictions; launch nothing (no GPU needed)")
    a = ap.parse_args()
    if a.memory_snapshot:
        OVERRIDES["memory_snapshot"] = True
    t_start = time.time()
    os.environ.update({**MULTICAST_OFF, **OFFLINE})  # before anything starts a process: every child inherits it
    from bench_runner_gpu import ARCHS

    arch = dict(ARCHS[a.model])
    plan = [("fsdp", "fsdp", 2, False, [0, 1], {}, 1)]
    if a.mb2:
        plan.append(("fsdp-mb2", "fsdp", 1, False, [0, 1], {}, 2))
    if a.ddp:
        plan.append(("ddp", "ddp", 2, False, [0, 1], {}, 1))
    if a.offload:
        plan.append(("fsdp-offload", "fsdp", 2, True, [0, 1], {}, 1))
    if not a.no_single:
        plan.append(("single", "single", 4, False, [0], {"CUDA_VISIBLE_DEVICES": "0"}, 1))
    names = [p[0] for p in plan]
    steps_plan = ["setup", "build", *names, "report"]
    total = sum(PLAN_S[s] for s in steps_plan)
    log("time plan (s): " + ", ".join(f"{s} ~{PLAN_S[s]}" for s in steps_plan)
        + f"; total ~{total} of a {a.budget_s:.0f}s budget" + (" (OVER: drop --offload)" if total > a.budget_s else ""))
    if a.dry_run:
        return dry_run(a, arch, plan)

    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as e:  # no NVML library or no driver: nothing to measure here
        print(f"this bench needs 2 NVIDIA GPUs; NVML is not available here: {e}", file=sys.stderr)
        return 2
    if count < 2:
        print(f"this bench needs 2 GPUs; NVML sees {count}", file=sys.stderr)
        return 2
    from bench_runner_gpu import ensure_model, env_report, write_data

    from fmllm_tui.runner.distributed import nccl_probe

    out = out_dir()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "env": env_report(), "nccl": nccl_probe(),
                              "multicast_off": MULTICAST_OFF, "runner_overrides": OVERRIDES, "args": vars(a),
                              "results": {}}
    result_file = out / (f"bench_fsdp_gpu-{a.tag}.json" if a.tag else "bench_fsdp_gpu.json")
    log(json.dumps({"env": report["env"], "nccl": report["nccl"]}))
    model_dir = Path(a.model_dir)
    t0 = time.time()
    model = ensure_model(a.model, model_dir, [a.model])
    report["build_s"] = time.time() - t0
    # 4 examples an optimizer step and some spare: no run reaches a second epoch.
    data = write_data(model_dir / f"bench-fsdp-data-{4 * a.steps + 8}.jsonl", n=4 * a.steps + 8)
    runs = Path(a.runs_dir)
    shutil.rmtree(runs, ignore_errors=True)
    for i, (name, mode, ga, offload, gpus, env, mb) in enumerate(plan):
        later = sum(PLAN_S[n] for n in names[i + 1:]) * 0.6 + PLAN_S["report"]
        left = a.budget_s - (time.time() - t_start)
        timeout = left - later
        config = write_config(runs / name, model, data, mode=mode, steps=a.steps, seq=a.seq, ga=ga, offload=offload,
                              lr=a.lr, mb=mb)
        failed = [n for n, r in report["results"].items() if r.get("status") not in ("ok", "skipped")]
        if a.stop_on_failure and failed:
            res: dict[str, Any] = {"name": name, "status": "skipped", "message": f"--stop-on-failure: {failed[0]} failed"}
        elif timeout < 60:
            res = {"name": name, "status": "skipped",
                   "message": f"time budget: {left:.0f}s left, later runs need {later:.0f}s"}
        else:
            try:
                res = run_one(name, config, gpus, timeout, {**MULTICAST_OFF, **OFFLINE, **env})
            except Exception as e:  # keep the other runs' results
                res = {"name": name, "status": "crashed", "message": f"{type(e).__name__}: {e}"}
        res["prediction"] = predicted(config, arch, mode)
        report["results"][name] = res
        if a.memory_snapshot and res.get("run_dir"):
            keep = out / f"{a.tag + '-' if a.tag else ''}{name}"
            keep.mkdir(parents=True, exist_ok=True)
            for f in [*Path(res["run_dir"]).glob("memory_s*.json"), *Path(res["run_dir"]).glob("memory_snapshot.pickle")]:
                shutil.copy2(f, keep / f.name)
        result_file.write_text(json.dumps(report, indent=2, default=str))
        peaks = {k: round(v / GiB, 2) for k, v in (res.get("gpu_process_peak_bytes") or {}).items()}
        log(f"{name}: {res.get('status')} in {res.get('wall_s', 0):.0f}s; peaks {json.dumps(peaks)} GiB, predicted "
            f"{res['prediction']['peak_bytes'] / GiB:.2f} GiB per GPU; {res.get('message') or ''}")
        if res.get("status") != "ok" and res.get("log_tail"):
            print(res["log_tail"][-3000:], flush=True)
    report["verdicts"] = verdicts(report["results"])
    report["wall_s"] = time.time() - t_start
    result_file.write_text(json.dumps(report, indent=2, default=str))
    for line in report["verdicts"]:
        print(line)
    log(f"done in {report['wall_s']:.0f}s; {result_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
