#!/usr/bin/env python3
"""GPU bench of fmllm's FSDP + QLoRA path over 2 GPUs, against one GPU with the same data and seed.

NOT RUN YET: written in a session without a GPU machine. Run it from the repository root on a
host with 2 NVIDIA GPUs (H100/H200 or two 24 GB+ cards) that has torch (CUDA build with NCCL),
transformers, peft, accelerate, bitsandbytes, datasets and nvidia-ml-py; no internet, no Hub:

    python bench/bench_fsdp_gpu.py                      # 14B FSDP over 2 GPUs vs 1 GPU, 20 steps
    python bench/bench_fsdp_gpu.py --offload            # also FSDP with parameters in CPU RAM
    python bench/bench_fsdp_gpu.py --model 7b --steps 10

It

1. builds random-weight Qwen2.5-14B-architecture weights (bench/bench_runner_gpu.py's builder:
   bf16 on GPU 0, ``save_pretrained`` to ``--model-dir``; reused when already there, ~30 GB),
2. writes one config per run and starts it through fmllm's own path,
   :func:`fmllm_tui.runner.launch.start`: the FSDP run gets ``fmllm.distributed.mode: fsdp``,
   ``num_processes: 2`` (so fmllm writes ``accelerate.yaml`` into the run folder and starts
   ``accelerate launch``), the single run ``mode: single`` with ``CUDA_VISIBLE_DEVICES=0``,
3. keeps the data per optimizer step the same: the FSDP run has 2 ranks x batch 1 x
   accumulation 2, the single run batch 1 x accumulation 4 (accelerate hands rank r every
   other batch of the same seeded sampler order, so each optimizer step sees the same four
   examples), every example full length (``--seq`` tokens), LoRA r8 on q/k/v/o, adamw_torch,
   bf16, constant LR, ``--steps`` optimizer steps,
4. samples every GPU's used memory through NVML every 20 ms from before the launch to the end
   (peak less the idle baseline: the process peak, CUDA context and NCCL buffers included) and
   compares each GPU's peak with fmllm's per-GPU prediction
   (``memory.predict(..., mode="fsdp", n_gpus=2)`` on the view the FSDP runner trains), and the
   single GPU's with ``mode="single"``,
5. compares the two loss curves step by step (max and mean |difference|),
6. prints a table and writes ``$OUT/bench_fsdp_gpu.json`` (default ./bench_out) after each run.

Verdicts (printed, also in the JSON): each GPU's measured peak inside the prediction's range
(``low_bytes``-``high_bytes``); loss curves agree when the mean |difference| is below 2% of the
first loss (bf16 and a different reduction order make them close, not equal). The run folders
(train.log, metrics.jsonl with every rank's memory, summary.json, accelerate.yaml) stay under
``--runs-dir`` for reading afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
LOSS_AGREEMENT = 0.02  # mean |difference| below this share of the first loss


def log(msg: str) -> None:
    print(f"[bench-fsdp {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def out_dir() -> Path:
    p = Path(os.environ.get("OUT") or "bench_out")
    p.mkdir(parents=True, exist_ok=True)
    return p


class GpuSampler:
    """Every listed GPU's used memory (NVML) every 20 ms in a thread: idle baseline and peak."""

    def __init__(self, indices: list[int]):
        import pynvml

        pynvml.nvmlInit()
        self.nv = pynvml
        self.handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
        self.idle = {i: self.used(i) for i in indices}
        self.peak = dict(self.idle)
        self.util_peak = {i: 0 for i in indices}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def used(self, i: int) -> int:
        return int(self.nv.nvmlDeviceGetMemoryInfo(self.handles[i]).used)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i in self.handles:
                self.peak[i] = max(self.peak[i], self.used(i))
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


def write_config(work: Path, model: Path, data: Path, *, mode: str, steps: int, seq: int, ga: int,
                 offload: bool) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    dist = {"single": "{mode: single}", "fsdp": f"{{mode: fsdp, num_processes: 2, cpu_offload: {str(offload).lower()}}}"}
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
            per_device_train_batch_size: 1
            gradient_accumulation_steps: {ga}
            gradient_checkpointing: true
            learning_rate: 0.0002
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
    from fmllm_tui import memory
    from fmllm_tui.config import load_config
    from fmllm_tui.runner.distributed import fsdp_view

    view = load_config(config).view
    if mode == "fsdp":
        p = memory.predict(fsdp_view(view), arch, mode="fsdp", n_gpus=2)
    else:
        p = memory.predict(view, arch, mode="single")
    return {"peak_bytes": p.peak_process_bytes, "low_bytes": p.low_bytes, "high_bytes": p.high_bytes,
            "breakdown": p.breakdown, "notes": p.notes}


def run_one(name: str, config: Path, gpus: list[int], timeout: float, env: dict[str, str]) -> dict[str, Any]:
    from fmllm_tui.config import load_config
    from fmllm_tui.runner import kill, start, wait
    from fmllm_tui.runner import rundir as rd
    from fmllm_tui.runner.monitor import read_jsonl

    loaded = load_config(config)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the supervisor and the ranks inherit these
    try:
        with GpuSampler(gpus) as sampler:
            t0 = time.time()
            run_dir = start(loaded, "train")
            log(f"{name}: {run_dir}")
            rec = wait(run_dir, timeout=timeout)
            if rec is None:
                kill(run_dir)
                rec = {"status": "timeout"}
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
        "gpu_util_peak_pct": sampler.util_peak, "losses": summary.get("losses") or [r.get("loss") for r in rows],
        "tokens_per_s": summary.get("tokens_per_s"), "recipe": summary.get("recipe"), "ranks": summary.get("ranks"),
        "load_s": summary.get("load_s"), "versions": summary.get("versions"),
        "accelerate_yaml": (run_dir / "accelerate.yaml").read_text() if (run_dir / "accelerate.yaml").is_file() else None,
    }
    if rec.get("status") != "ok":
        out["log_tail"] = (run_dir / rd.LOG).read_text(errors="replace")[-4000:]
        out["diagnosis"] = rec.get("diagnosis")
    return out


def verdicts(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, res in results.items():
        if not isinstance(res, dict) or "gpu_process_peak_bytes" not in res:
            continue
        pred = res.get("prediction") or {}
        for i, peak in sorted(res["gpu_process_peak_bytes"].items()):
            lo, hi = pred.get("low_bytes"), pred.get("high_bytes")
            inside = lo is not None and lo <= peak <= hi
            lines.append(f"{name} GPU {i}: measured {peak / GiB:.2f} GiB, predicted {pred.get('peak_bytes', 0) / GiB:.2f} "
                         f"(range {(lo or 0) / GiB:.2f}-{(hi or 0) / GiB:.2f}) -> {'inside' if inside else 'OUTSIDE'}")
    one, two = results.get("single"), results.get("fsdp")
    if isinstance(one, dict) and isinstance(two, dict) and one.get("losses") and two.get("losses"):
        a, b = one["losses"], two["losses"]
        diffs = [abs(x - y) for x, y in zip(a, b, strict=False)]
        mean, worst = sum(diffs) / len(diffs), max(diffs)
        agree = mean < LOSS_AGREEMENT * abs(a[0])
        lines.append(f"loss curves over {len(diffs)} steps: mean |diff| {mean:.4f}, max {worst:.4f}, first loss "
                     f"{a[0]:.4f} -> {'agree' if agree else 'DIFFER'}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="14b", choices=["7b", "14b"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--offload", action="store_true", help="also run FSDP with fsdp_offload_params")
    ap.add_argument("--model-dir", default="/tmp/fmllm-bench-models")
    ap.add_argument("--runs-dir", default="/tmp/fmllm-bench-fsdp")
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()

    import pynvml

    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as e:
        print(f"this bench needs 2 NVIDIA GPUs; NVML is not available here: {e}", file=sys.stderr)
        return 2
    if count < 2:
        print(f"this bench needs 2 GPUs; NVML sees {count}", file=sys.stderr)
        return 2
    from bench_runner_gpu import ARCHS, ensure_model, env_report, write_data

    from fmllm_tui.runner.distributed import nccl_probe

    out = out_dir()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "env": env_report(), "nccl": nccl_probe(),
                              "args": vars(a), "results": {}}
    result_file = out / "bench_fsdp_gpu.json"
    log(json.dumps({"env": report["env"], "nccl": report["nccl"]}))
    model_dir = Path(a.model_dir)
    model = ensure_model(a.model, model_dir, [a.model])
    data = write_data(model_dir / "bench-data.jsonl")
    runs = Path(a.runs_dir)
    shutil.rmtree(runs, ignore_errors=True)
    arch = dict(ARCHS[a.model])
    plan = [("fsdp", "fsdp", 2, False, [0, 1], {}), ("single", "single", 4, False, [0], {"CUDA_VISIBLE_DEVICES": "0"})]
    if a.offload:
        plan.insert(1, ("fsdp-offload", "fsdp", 2, True, [0, 1], {}))
    for name, mode, ga, offload, gpus, env in plan:
        config = write_config(runs / name, model, data, mode=mode, steps=a.steps, seq=a.seq, ga=ga, offload=offload)
        try:
            res = run_one(name, config, gpus, a.timeout, env)
        except Exception as e:  # keep the other runs' results
            res = {"name": name, "status": "crashed", "message": f"{type(e).__name__}: {e}"}
        res["prediction"] = predicted(config, arch, mode)
        report["results"][name] = res
        result_file.write_text(json.dumps(report, indent=2, default=str))
        log(f"{name}: {res.get('status')} peaks {json.dumps({k: round(v / GiB, 2) for k, v in (res.get('gpu_process_peak_bytes') or {}).items()})} GiB, "
            f"predicted {res['prediction']['peak_bytes'] / GiB:.2f} GiB per GPU; {res.get('message') or ''}")
    report["verdicts"] = verdicts(report["results"])
    result_file.write_text(json.dumps(report, indent=2, default=str))
    for line in report["verdicts"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
