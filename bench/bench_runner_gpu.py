#!/usr/bin/env python3
"""GPU bench of fmllm's runner: the fmllm recipe against the plain recipe, side by side.

Self-contained: run it from the repository root on a bare H100/H200 with torch, transformers,
peft, accelerate and nvidia-ml-py present and bitsandbytes, datasets and liger-kernel installed
(no internet, no Hub). It

1. builds random-weight Qwen2.5-7B / 14B architectures from the explicit config dicts below
   (bf16 on the GPU, ``save_pretrained`` to ``--model-dir``; reused when already there),
2. runs each (model, recipe) through the real training process
   (``python -m fmllm_tui.runner.train``) in a fresh subprocess: 4-bit NF4, LoRA r8 on q/k/v/o,
   batch 1 × sequence 1024 (every example full length), 8 optimizer steps of 2 micro-batches,
   paged_adamw_32bit, bf16, loss on every token,
3. measures the process peak (device memory sampled through NVML every 20 ms, less the idle
   baseline: the CUDA context included), torch's max allocated/reserved, tokens/s over steps
   3–8 and the loss of every step,
4. prints a table and writes JSON to ``$OUT`` (default ./bench_out) after every run, so one
   failing configuration never loses the others.

Modes:
    python bench/bench_runner_gpu.py                       # 7B and 14B, fmllm vs plain
    python bench/bench_runner_gpu.py --models 7b --recipes fmllm,plain,fmllm-noliger,fmllm-fused
    python bench/bench_runner_gpu.py --matrix cal.json     # calibration: a JSON list of configurations
    python bench/bench_runner_gpu.py --matrix cal.json --predict-out pred.json   # CPU: predictions first
    python bench/bench_runner_gpu.py --matrix cal.json --predicted pred.json     # GPU: run, error table

A matrix case: model (7b, 14b, 0.5b or a catalogue short name: llama8b, mistral7b, qwen3-8b,
qwen3-4b, qwen2.5-3b, gemma2-2b, phi4, ...), recipe, seq, batch, ga, r, targets, gc, optim, steps,
alloc_conf (PYTORCH_CUDA_ALLOC_CONF for that run), overrides (runner bench knobs), heldout. With
--matrix the measured runs are written as points of bench/memory_points.json to $OUT/points.json
and the table compares them with the predictions written before (--predicted) and with memory.py now.
    python bench/bench_runner_gpu.py --vram 8GiB,5GiB      # fit proof with a capped allocator
    python bench/bench_runner_gpu.py --minimal-test        # fmllm-run test on the 7B (the product path)
    python bench/bench_runner_gpu.py --recipes '' --minimal-test 7b --minimal-repeats 2
                                                           # twice: the second start uses the compile cache

Each invocation watches ``--budget-s`` (default 540 s) and skips what would not finish in it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The exact shapes of Qwen/Qwen2.5-7B-Instruct, -14B-Instruct and -0.5B-Instruct (config.json).
ARCHS: dict[str, dict[str, Any]] = {
    "7b": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
           "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
           "use_sliding_window": False},
    "14b": {"model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
            "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
            "use_sliding_window": False},
    "0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
             "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
             "use_sliding_window": False},
}
# Catalogue families (issue 19): short name -> the Hub id whose config.json (fmllm's catalogue)
# is built with random weights. The three above keep their explicit dicts (earlier results).
CATALOGUE_MODELS: dict[str, str] = {
    "llama8b": "meta-llama/Llama-3.1-8B-Instruct", "mistral7b": "mistralai/Mistral-7B-Instruct-v0.3",
    "qwen3-8b": "Qwen/Qwen3-8B", "qwen3-4b": "Qwen/Qwen3-4B", "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen2.5-3b": "Qwen/Qwen2.5-3B-Instruct", "llama3b": "meta-llama/Llama-3.2-3B-Instruct",
    "gemma2-2b": "google/gemma-2-2b-it", "gemma2-9b": "google/gemma-2-9b-it", "phi4": "microsoft/phi-4",
}
HUB_IDS: dict[str, str] = {"7b": "Qwen/Qwen2.5-7B-Instruct", "14b": "Qwen/Qwen2.5-14B-Instruct",
                           "0.5b": "Qwen/Qwen2.5-0.5B-Instruct", **CATALOGUE_MODELS}
# config.json keys that name files, dtypes or token ids of the real tokenizer (the bench trains its own).
_DROP_KEYS = ("architectures", "torch_dtype", "bos_token_id", "eos_token_id", "pad_token_id")


def arch_config(name: str) -> dict[str, Any]:
    """The config dict (with model_type) the bench builds for a short model name."""
    if name in ARCHS:
        return dict(ARCHS[name])
    from fmllm_tui import catalogue

    arch = catalogue.get_architecture(HUB_IDS[name])
    if arch is None:
        raise KeyError(f"{name}: {HUB_IDS[name]} is not in fmllm's catalogue")
    return {k: v for k, v in arch.items() if k not in _DROP_KEYS}


def approx_bytes(name: str) -> float:
    """bf16 checkpoint size of the architecture (disk needed to build it)."""
    from fmllm_tui import memory

    return 2.0 * memory.param_count(arch_config(name))


# Recipes: fmllm.memory_recipe plus runner overrides (bench knobs, not config settings).
RECIPES: dict[str, dict[str, Any]] = {
    "fmllm": {"memory_recipe": "fmllm"},
    "plain": {"memory_recipe": "plain"},
    "fmllm-noliger": {"memory_recipe": "fmllm", "liger_kernels": "off"},
    "fmllm-chunked": {"memory_recipe": "fmllm", "loss": "chunked"},
    "fmllm-fused": {"memory_recipe": "fmllm", "optim": "adamw_torch_fused"},
    "fmllm-nooffload": {"memory_recipe": "fmllm", "offload_embeddings": "off"},
    "plain-fused": {"memory_recipe": "plain", "optim": "adamw_torch_fused"},
    "fmllm-prof": {"memory_recipe": "fmllm", "optim": "adamw_torch_fused", "profile": True},
    "fmllm-reentrant": {"memory_recipe": "fmllm", "gradient_checkpointing_kwargs": {"use_reentrant": True}},
    "fmllm-compile": {"memory_recipe": "fmllm", "compile": "on"},
    "fmllm-nocompile": {"memory_recipe": "fmllm", "compile": "off"},
    "fmllm-eager": {"memory_recipe": "fmllm", "compile": "off"},
    "fmllm-compile-prof": {"memory_recipe": "fmllm", "compile": "on", "profile": True},
    "fmllm-compile-noliger": {"memory_recipe": "fmllm", "compile": "on", "liger_kernels": "off"},
}
WORDS = ("alpha beta gamma delta epsilon zeta theta lambda sigma omega river stone cloud paper signal "
         "matrix vector tensor kernel memory adapter quantize gradient loss token window layer norm "
         "north south east west seven eleven thirty ninety green amber violet silver").split()


def out_dir() -> Path:
    p = Path(os.environ.get("OUT") or "bench_out")
    p.mkdir(parents=True, exist_ok=True)
    return p


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# Models and data
# ------------------------------------------------------------------------------------------------


def build_model(name: str, dest: Path) -> None:
    """Random bf16 weights of the architecture, built on the GPU, saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from fmllm_tui.runner.smoke import train_tokenizer

    tok = train_tokenizer(synthetic_texts(200), vocab_size=512)
    cfg = arch_config(name)
    model_type = cfg.pop("model_type")
    cfg.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = AutoConfig.for_model(model_type, **cfg)
    torch.manual_seed(0)
    t0 = time.time()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="5GB")
    tok.save_pretrained(tmp)
    (tmp / "fmllm-bench-complete").write_text(json.dumps({"arch": arch_config(name), "built_s": time.time() - t0}))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def model_path(name: str, model_dir: Path) -> Path:
    return model_dir / f"{name}-random"


def ensure_model(name: str, model_dir: Path, others: list[str]) -> Path:
    """Build the random-weight model once; remove the other bench models when disk is short."""
    dest = model_path(name, model_dir)
    if (dest / "fmllm-bench-complete").is_file():
        return dest
    model_dir.mkdir(parents=True, exist_ok=True)
    need = approx_bytes(name) * 1.1 + 2e9
    free = shutil.disk_usage(model_dir).free
    if free < need:
        for other in others:
            if other != name:
                victim = model_path(other, model_dir)
                if victim.exists():
                    log(f"disk: {free / 1e9:.1f} GB free, removing {victim.name} to make room")
                    shutil.rmtree(victim, ignore_errors=True)
        free = shutil.disk_usage(model_dir).free
        if free < need:
            raise RuntimeError(f"not enough disk for the {name} model: {free / 1e9:.1f} GB free, need {need / 1e9:.1f}")
    log(f"building random {name} (bf16 on the GPU, save_pretrained to {dest})")
    t0 = time.time()
    subprocess.run([sys.executable, __file__, "--build", name, "--model-dir", str(model_dir)], check=True)
    log(f"built {name} in {time.time() - t0:.0f}s")
    return dest


def synthetic_texts(n: int, words: int = 60, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def write_data(path: Path, n: int = 64, words: int = 1400) -> Path:
    """prompt/completion examples long enough that every one is cut at the sequence length."""
    if path.is_file():
        return path
    rows = []
    for i, text in enumerate(synthetic_texts(n, words, seed=1)):
        rows.append({"prompt": f"Example {i}: continue the list. ", "completion": text})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------------
# One measured run
# ------------------------------------------------------------------------------------------------


class DeviceSampler:
    """NVML device 'used' memory every 20 ms in a thread (the device peak)."""

    def __init__(self, index: int = 0):
        import pynvml

        pynvml.nvmlInit()
        self.nv = pynvml
        self.h = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.peak = 0
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def used(self) -> int:
        return int(self.nv.nvmlDeviceGetMemoryInfo(self.h).used)

    def _run(self) -> None:
        while not self.stop_ev.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(0.02)

    def __enter__(self) -> DeviceSampler:
        self.t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_ev.set()
        self.t.join(timeout=2)


def sampled_run(argv: list[str], env: dict[str, str], log_path: Path, timeout: float) -> dict[str, Any]:
    """Run one process to its end (killed after ``timeout`` s) with the device's memory sampled:
    rc (None when killed), wall_s, the idle baseline, the device peak and the process peak
    (device peak less the idle baseline: the process's CUDA context included)."""
    sampler = DeviceSampler()
    idle = sampler.used()
    t0 = time.time()
    rc: int | None = None
    with sampler, open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"rc": rc, "wall_s": time.time() - t0, "idle_used_bytes": idle, "device_peak_bytes": sampler.peak,
            "process_peak_bytes": max(0, sampler.peak - idle)}


def run_spec(case: dict[str, Any], model_path: Path, data: Path) -> dict[str, Any]:
    """The run folder's config.json for a case: the config and the runner's settings."""
    recipe = dict(RECIPES[case.get("recipe", "fmllm")])
    recipe.update(case.get("overrides") or {})
    cfg: dict[str, Any] = {
        "base_model_name": str(model_path), "data_format": "prompt_completion", "use_adapter": True,
        "lora": {"r": case.get("r", 8), "alpha": case.get("alpha", 8), "dropout": case.get("dropout", 0.1),
                 "target_modules": case.get("targets", ["q_proj", "k_proj", "v_proj", "o_proj"])},
        "quantization": {"use_4bit": True, "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_type": "nf4",
                         "use_nested_quant": True},
        "training": {"per_device_train_batch_size": case.get("batch", 1),
                     "gradient_accumulation_steps": case.get("ga", 2), "gradient_checkpointing": case.get("gc", True),
                     "learning_rate": 2e-4, "max_grad_norm": 0.3, "weight_decay": 0.001,
                     "optim": case.get("optim", "paged_adamw_32bit"), "lr_scheduler_type": "constant",
                     "warmup_ratio": 0.0, "max_steps": case.get("steps", 8), "logging_steps": 1,
                     "save_steps": 100000, "max_seq_length": case.get("seq", 1024), "packing": False,
                     "seed": 42, "report_to": "none"},
        "fmllm": {"memory_recipe": recipe.pop("memory_recipe"), "loss": "auto", "offload_embeddings": "auto",
                  "response_only_loss": False, "attn_implementation": "sdpa"},
        "data_file": str(data),
    }
    if case.get("extra_args"):  # TrainingArguments the config passes through (e.g. a sequential sampler)
        cfg["training"]["extra_args"] = dict(case["extra_args"])
    if "gradient_checkpointing_kwargs" in recipe:  # a config setting, not a runner override
        cfg["training"]["gradient_checkpointing_kwargs"] = recipe.pop("gradient_checkpointing_kwargs")
    spec = {"config": cfg, "runner": {"kind": case.get("kind", "train"), "steps": case.get("steps", 8),
                                      "vram_bytes": case.get("vram_bytes"), "overrides": recipe,
                                      "sample_generations": 0, "max_new_tokens": 16}}
    return spec


def run_config(case: dict[str, Any], model_path: Path, data: Path, runs: Path, timeout: float) -> dict[str, Any]:
    """Run one configuration through the training process; return its measurements."""
    name = case["name"]
    rdir = runs / name
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    spec = run_spec(case, model_path, data)
    (rdir / "config.json").write_text(json.dumps(spec, indent=2))
    from fmllm_tui.runner.launch import child_env

    env = {**os.environ, **child_env({"PYTHONPATH": _pythonpath()})}
    if case.get("alloc_conf") is not None:  # e.g. the plain recipe without expandable segments
        env["PYTORCH_CUDA_ALLOC_CONF"] = case["alloc_conf"]
    alloc_conf = env.get("PYTORCH_CUDA_ALLOC_CONF", "")
    m = sampled_run([sys.executable, "-m", "fmllm_tui.runner.train", "--run-dir", str(rdir)], env,
                    rdir / "train.log", timeout)
    res = _read(rdir / "summary.json") or _read(rdir / "result.json") or {}
    outcome = _read(rdir / "outcome.json") or {}
    out: dict[str, Any] = {
        "name": name, "case": case, **m,
        "status": outcome.get("status") or ("timeout" if m["rc"] is None else "failed"), "message": outcome.get("message"),
        "torch_max_allocated_bytes": res.get("peak_allocated_bytes"),
        "torch_max_reserved_bytes": res.get("peak_reserved_bytes"),
        "inproc_process_peak_bytes": res.get("peak_process_bytes"), "cuda_context_bytes": res.get("cuda_context_bytes"),
        "load_allocated_bytes": res.get("load_allocated_bytes"),
        "losses": res.get("losses"), "step_times_s": res.get("step_times_s"), "step_tokens": res.get("step_tokens"),
        "recipe": res.get("recipe"), "load_s": res.get("load_s"), "versions": res.get("versions"),
        "device_name": res.get("device_name"), "alloc_conf": alloc_conf,
    }
    times, toks = res.get("step_times_s") or [], res.get("step_tokens") or []
    # Tokens/s from step 3 on (as in the anchor measurements): the first two include warm-up
    # (and the compile). The first step's excess over a steady step is the start-up cost the
    # time-before-launch estimate adds (compile, autotuning, allocator growth).
    if len(times) >= 4:
        out["tokens_per_s"] = sum(toks[2:]) / sum(times[2:])
        steady = sorted(times[2:])[len(times[2:]) // 2]
        out["first_step_extra_s"] = times[0] - steady
    elif times:
        out["tokens_per_s"] = sum(toks) / sum(times)
    if toks:
        out["tokens_per_micro_batch"] = toks[-1] / max(1, case.get("ga", 2))
    seg = _read(rdir / "memory_segments.step1_end.rank0.json")
    if seg:  # the allocator after the first step, before the cache is handed back (fragmentation)
        out["segments_step1"] = {k: seg.get(k) for k in ("reserved_bytes", "allocated_bytes", "max_reserved_bytes",
                                                         "max_allocated_bytes", "streams")}
        out["segments_step1"]["largest_blocks"] = (seg.get("largest_blocks") or [])[:12]
    if outcome.get("status") == "oom":
        out["oom"] = outcome.get("memory")
    prof = rdir / "profile.txt"
    if prof.is_file():
        out["profile_head"] = prof.read_text()[:6000]
    out.update(snapshot_summary(rdir / "memory_snapshot.pickle", name))
    if out["status"] != "ok":
        out["log_tail"] = (rdir / "train.log").read_text(errors="replace")[-3000:]
    return out


#: Largest allocator history copied back whole (the device returns what lies in $OUT).
SNAPSHOT_COPY_MAX_BYTES = 48 << 20


def snapshot_summary(snap: Path, name: str) -> dict[str, Any]:
    """When a case asked for ``memory_snapshot``: the allocator history's summary
    (bench/memory_trace_summary.py: the large allocations, where the reserve grew and what held it
    at its peak), and the pickle itself in $OUT when small enough to bring back."""
    if not snap.is_file():
        return {}
    tool = Path(__file__).resolve().parent / "memory_trace_summary.py"
    try:
        proc = subprocess.run([sys.executable, str(tool), str(snap), "--min-gib", "0.25"],
                              capture_output=True, text=True, timeout=180)
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        text = "memory_trace_summary.py: timed out after 180 s"
    (out_dir() / f"{name}.snapshot.txt").write_text(text)
    if snap.stat().st_size <= SNAPSHOT_COPY_MAX_BYTES:
        shutil.copy(snap, out_dir() / f"{name}.snapshot.pickle")
    return {"snapshot_summary": text[-8000:]}


# ------------------------------------------------------------------------------------------------
# Predicted, then measured (issue 19): every case as a point of bench/memory_points.json
# ------------------------------------------------------------------------------------------------

H100_NVML_NAME = "NVIDIA H100 80GB HBM3"


def case_point(case: dict[str, Any], gpu_name: str = H100_NVML_NAME) -> dict[str, Any]:
    """The case as a point of bench/memory_points.json (schema 1), settings as the config sets
    them (the memory model applies the runner's decisions: optimizer swap, loss, compile)."""
    recipe = dict(RECIPES[case.get("recipe", "fmllm")])
    recipe.update(case.get("overrides") or {})
    mem_recipe = recipe["memory_recipe"]
    compiled = mem_recipe == "fmllm" and recipe.get("compile", "auto") != "off"
    settings = {
        "max_seq_length": case.get("seq", 1024), "micro_batch": case.get("batch", 1),
        "gradient_accumulation_steps": case.get("ga", 2), "gradient_checkpointing": case.get("gc", True),
        "use_4bit": True, "quant_type": "nf4", "nested_quant": True, "compute_dtype": "bfloat16",
        "use_adapter": True, "lora_r": case.get("r", 8), "lora_alpha": case.get("alpha", 8),
        "lora_dropout": case.get("dropout", 0.1),
        "target_modules": case.get("targets", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        "optim": recipe.get("optim") or case.get("optim", "paged_adamw_32bit"), "attn_implementation": "sdpa",
        "loss": recipe.get("loss", "auto"), "offload_embeddings": recipe.get("offload_embeddings", "auto"),
        "padded": False, "mode": "single", "n_gpus": 1, "compiled": compiled,
    }
    if recipe.get("liger_kernels") == "off":
        settings["liger_layers"] = False
    alloc = case.get("alloc_conf")
    return {"id": f"{case.get('model', '7b')}/{case['name']}", "model": HUB_IDS[case.get("model", "7b")],
            "recipe": mem_recipe, "scenario": f"runner-{case.get('recipe', 'fmllm')}", "settings": settings,
            "env": {"gpu": gpu_name, "alloc_conf": "expandable_segments:True" if alloc is None else alloc},
            "harness": "runner", "heldout": bool(case.get("heldout"))}


def predict_point(point: dict[str, Any]) -> dict[str, Any]:
    """The memory model's prediction (and time estimate) for a point on its GPU, torch-free."""
    from dataclasses import replace as _replace

    from fmllm_tui import gpudb, memory

    card = gpudb.match_nvml(str(point["env"].get("gpu") or "")) or gpudb.lookup("h100")
    inp = _replace(memory.point_inputs(point), tflops=card.tflops16, bandwidth_gbs=card.bandwidth_gbs)
    pr = memory.predict_inputs(inp, arch_config(_short(point["model"])))
    out = {"process_peak_bytes": pr.peak_process_bytes, "low_bytes": pr.low_bytes, "high_bytes": pr.high_bytes,
           "peak_allocated_bytes": pr.peak_allocated_bytes, "peak_reserved_bytes": pr.peak_reserved_bytes,
           "tokens_per_s": pr.tokens_per_second, "peak_phase": pr.peak_phase, "loss": pr.loss}
    est = getattr(memory, "estimate_time", None)
    if est is not None:  # the time-before-launch estimate (memory.estimate_time), when present
        t = est(inp, arch_config(_short(point["model"])), steps=8, gpu=card)
        out.update(tokens_per_s=t.tokens_per_second, first_step_extra_s=t.startup_s)
    return out


def _short(hub_id: str) -> str:
    return next(k for k, v in HUB_IDS.items() if v == hub_id)


def measured_point(case: dict[str, Any], res: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """The point as it ran: the runner's own decisions (optimizer, loss, compile, offload) and what was measured."""
    pt = case_point(case, env.get("gpu") or H100_NVML_NAME)
    rec = res.get("recipe") or {}
    st = pt["settings"]
    if rec:
        st.update(optim=rec.get("optim", st["optim"]), loss=rec.get("loss", st["loss"]),
                  compiled=bool(rec.get("compile_layers")), liger_layers=bool(rec.get("liger_kernels")),
                  offload_embeddings="on" if rec.get("offload_embeddings") else "off")
    pt["env"].update({k: env.get(k) for k in ("driver", "cuda", "torch", "transformers", "peft", "accelerate",
                                              "bitsandbytes", "liger-kernel")})
    pt["env"].update(alloc_conf=res.get("alloc_conf") or "", date=time.strftime("%Y-%m-%d"))
    pt["measured"] = {
        "peak_allocated_bytes": res.get("torch_max_allocated_bytes"), "peak_reserved_bytes": res.get("torch_max_reserved_bytes"),
        "nvml_device_peak_bytes": res.get("device_peak_bytes"), "idle_baseline_bytes": res.get("idle_used_bytes"),
        "process_peak_bytes": res.get("process_peak_bytes"), "tokens_per_second": res.get("tokens_per_s"),
        "first_step_extra_s": res.get("first_step_extra_s"), "cuda_context_bytes": res.get("cuda_context_bytes"),
        "tokens_per_micro_batch": res.get("tokens_per_micro_batch"),
    }
    pt["precision_bytes"] = 1
    pt["source"] = "bench/bench_runner_gpu.py --matrix (issue 19): fmllm's runner, random weights of the exact config"
    if (case.get("overrides") or {}).get("memory_snapshot"):
        pt["speed_excluded"] = "the allocator history was recorded (memory_snapshot): its steps are slower"
    return pt


def error_table(points: list[dict[str, Any]], predicted: dict[str, dict[str, Any]]) -> str:
    """Predicted (before the run, from --predicted) and now (this memory.py on the settings that
    really ran) against the measurement: process peak, range, torch allocated, tokens/s."""
    lines = [f"{'point':44} {'meas GiB':>8} {'before':>7} {'err':>6} {'now':>7} {'err':>6} {'in range':>8} "
             f"{'alloc err':>9} {'tok/s meas':>10} {'pred':>7} {'err':>5} {'1st+ s':>6}"]
    for pt in points:
        meas = pt["measured"]
        pm = meas.get("process_peak_bytes")
        if not pm:
            continue
        now = predict_point(pt)
        before = predicted.get(pt["id"], {})
        pb = before.get("process_peak_bytes")
        eb = f"{(pb - pm) / pm * 100:+5.1f}%" if pb else "    -"
        en = (now["process_peak_bytes"] - pm) / pm * 100
        inr = "yes" if now["low_bytes"] <= pm <= now["high_bytes"] else "NO"
        am = meas.get("peak_allocated_bytes") or 0
        ea = f"{(now['peak_allocated_bytes'] - am) / am * 100:+5.1f}%" if am else "-"
        tm, tp = meas.get("tokens_per_second"), now["tokens_per_s"]
        et = f"{(tp - tm) / tm * 100:+4.0f}%" if tm else "-"
        lines.append(f"{pt['id'][:44]:44} {pm / 2**30:8.2f} {(pb or 0) / 2**30:7.2f} {eb:>6} "
                     f"{now['process_peak_bytes'] / 2**30:7.2f} {en:+5.1f}% {inr:>8} {ea:>9} "
                     f"{(tm or 0):10,.0f} {tp:7,.0f} {et:>5} {(meas.get('first_step_extra_s') or 0):6.1f}")
    return "\n".join(lines)


def _pythonpath() -> str:
    """This repository first, then whatever PYTHONPATH holds (wheels installed with --target)."""
    return os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def _read(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def gib(n: Any) -> str:
    return f"{n / 2**30:6.2f}" if isinstance(n, (int, float)) else "   n/a"


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'config':34} {'status':8} {'proc GiB':>8} {'alloc':>7} {'resvd':>7} {'tok/s':>8} {'loss first->last':>18}"]
    for r in results:
        losses = r.get("losses") or []
        ls = f"{losses[0]:.3f}->{losses[-1]:.3f}" if losses else "-"
        tps = r.get("tokens_per_s")
        lines.append(f"{r['name']:34} {r['status']:8} {gib(r.get('process_peak_bytes')):>8} "
                     f"{gib(r.get('torch_max_allocated_bytes')):>7} {gib(r.get('torch_max_reserved_bytes')):>7} "
                     f"{(f'{tps:,.0f}' if tps else '-'):>8} {ls:>18}")
    return "\n".join(lines)


def compare(results: list[dict[str, Any]]) -> list[str]:
    """fmllm vs plain per model: memory, speed ratio, loss curve difference."""
    out = []
    by = {r["name"]: r for r in results}
    for model in ARCHS:
        f, p = by.get(f"{model}-fmllm"), by.get(f"{model}-plain")
        if not (f and p and f["status"] == "ok" and p["status"] == "ok"):
            continue
        ratio = (f.get("tokens_per_s") or 0) / (p.get("tokens_per_s") or float("inf"))
        lf, lp = f.get("losses") or [], p.get("losses") or []
        diff = max((abs(a - b) for a, b in zip(lf, lp, strict=False)), default=float("nan"))
        out.append(f"{model}: process peak {gib(f['process_peak_bytes']).strip()} vs plain {gib(p['process_peak_bytes']).strip()} GiB; "
                   f"tokens/s x{ratio:.2f}; max |loss diff| over {min(len(lf), len(lp))} steps {diff:.4f}")
    return out


def env_report() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
    from importlib import metadata

    for n in ("transformers", "peft", "accelerate", "bitsandbytes", "datasets", "liger-kernel", "nvidia-ml-py"):
        try:
            info[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            info[n] = None
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _cases(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The configurations of this invocation, in run order (a matrix's cases grouped by model)."""
    cases: list[dict[str, Any]] = []
    models = [m for m in a.models.split(",") if m]
    if a.matrix:
        for i, c in enumerate(json.loads(Path(a.matrix).read_text())):
            c.setdefault("name", f"cal{i}-{c.get('model', '7b')}-{c.get('recipe', 'fmllm')}-s{c.get('seq', 1024)}")
            cases.append(c)
        order = list(dict.fromkeys(c.get("model", "7b") for c in cases))
        cases.sort(key=lambda c: order.index(c.get("model", "7b")))  # stable: one model on disk at a time
    elif a.vram:
        from fmllm_tui.config import parse_size

        for m in models:
            for size in a.vram.split(","):
                cases.append({"name": f"{m}-fmllm-vram{size}", "model": m, "recipe": "fmllm", "steps": 4,
                              "vram_bytes": parse_size(size), "seq": a.seq})
    else:
        for m in models:
            for r in [r for r in a.recipes.split(",") if r]:
                cases.append({"name": f"{m}-{r}", "model": m, "recipe": r, "seq": a.seq, "steps": a.steps})
    if a.profile:
        for c in cases:
            c.setdefault("overrides", {})["profile"] = True
    return cases


def write_predictions(cases: list[dict[str, Any]], path: Path, card: str = H100_NVML_NAME) -> None:
    """The memory model's predictions for the matrix on ``card`` (an NVML name), written before it
    is measured (torch-free)."""
    import subprocess as sp

    points = [case_point(c, card) for c in cases]
    commit = sp.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    predictions = {pt["id"]: {**predict_point(pt), "heldout": pt["heldout"]} for pt in points}
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "memory_py_commit": commit, "card": card,
           "predictions": predictions}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    for pid, pr in predictions.items():
        print(f"{pid:48} {pr['process_peak_bytes'] / 2**30:6.2f} GiB ({pr['low_bytes'] / 2**30:.2f}-"
              f"{pr['high_bytes'] / 2**30:.2f}) alloc {pr['peak_allocated_bytes'] / 2**30:6.2f} "
              f"{pr['tokens_per_s']:8,.0f} tok/s")


def _run_cases(a: argparse.Namespace, cases: list[dict[str, Any]], report: dict[str, Any], t_start: float) -> None:
    """Build each model when its first case comes (removing the last one), run the cases, keep the results."""
    model_dir, runs, out = Path(a.model_dir), Path(a.runs_dir), out_dir()
    runs.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    longest = max([c.get("seq", 1024) for c in cases] + [1024])
    data = write_data(model_dir / f"bench-data-{longest}.jsonl", words=longest + 400)
    order = list(dict.fromkeys(c.get("model", "7b") for c in cases))
    paths: dict[str, Path] = {}
    report["points"] = []
    for case in cases:
        m, elapsed = case.get("model", "7b"), time.time() - t_start
        per_run = 30 + approx_bytes(m) / 1e9 * 2.5  # seconds: start-up, load, compile, steps
        need_build = m not in paths
        if elapsed + per_run * (1.8 if need_build else 0.8) > a.budget_s:
            report["results"].append({"name": case["name"], "status": "skipped", "message": "time budget"})
            log(f"budget: skipping {case['name']}")
            continue
        if need_build:
            try:
                paths[m] = ensure_model(m, model_dir, order)
            except Exception as e:  # one model failing to build must not lose the others
                report["results"].append({"name": case["name"], "status": "failed", "message": f"build: {e}"})
                log(f"build {m} failed: {e}")
                continue
        log(f"run {case['name']}")
        try:
            res = run_config(case, paths[m], data, runs, timeout=max(60.0, a.budget_s - elapsed))
        except Exception as e:  # keep the other configurations' results
            res = {"name": case["name"], "status": "crashed", "message": f"{type(e).__name__}: {e}"}
        report["results"].append(res)
        if res.get("status") == "ok" and a.matrix:
            report["points"].append(measured_point(case, res, report["env"]))
            (out / "points.json").write_text(json.dumps(report["points"], indent=1, default=str))
        (out / "bench_runner.json").write_text(json.dumps(report, indent=2, default=str))
        log(f"{case['name']}: {res.get('status')} peak {gib(res.get('process_peak_bytes'))} GiB "
            f"tok/s {res.get('tokens_per_s')}  {res.get('message') or ''}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="7b,14b")
    ap.add_argument("--recipes", default="fmllm,plain")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--model-dir", default="/tmp/fmllm-bench-models")
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--runs-dir", default="/tmp/fmllm-bench-runs", help="run folders (logs, metrics, adapters)")
    ap.add_argument("--matrix", metavar="FILE", help="JSON list of configurations (calibration)")
    ap.add_argument("--predict-out", metavar="FILE", help="with --matrix: write the predictions and stop (CPU)")
    ap.add_argument("--predicted", metavar="FILE", help="with --matrix: predictions written before the run")
    ap.add_argument("--card", default=H100_NVML_NAME, help="with --predict-out: the GPU's NVML name to predict for")
    ap.add_argument("--vram", metavar="SIZES", help="comma-separated caps for the fmllm recipe on --models")
    ap.add_argument("--minimal-test", nargs="?", const="7b", metavar="MODELS",
                    help="fmllm-run test with the shipped config on these models (comma-separated; default 7b): "
                         "checks the run folder's plan against what the training process ran")
    ap.add_argument("--minimal-repeats", type=int, default=1, metavar="N",
                    help="with --minimal-test: run it N times (2: the second start uses the compile cache)")
    ap.add_argument("--profile", action="store_true", help="also write a torch.profiler table of steps 4-5")
    ap.add_argument("--build", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.build:
        build_model(a.build, model_path(a.build, Path(a.model_dir)))
        return 0
    cases = _cases(a)
    if a.predict_out:
        write_predictions(cases, Path(a.predict_out), a.card)
        return 0
    t_start = time.time()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "env": env_report(), "results": []}
    log(json.dumps(report["env"]))
    _run_cases(a, cases, report, t_start)
    if a.minimal_test:
        names = a.minimal_test.split(",")
        report["minimal_test"] = {}
        for n in names:
            path = ensure_model(n, Path(a.model_dir), names)
            for i in range(a.minimal_repeats):  # the second start loads the compiled layers from the cache
                key = n if i == 0 else f"{n}#{i + 1}"
                report["minimal_test"][key] = minimal_test(path, Path(a.runs_dir) / key)
    report["comparison"] = compare(report["results"])
    report["wall_s"] = time.time() - t_start
    (out_dir() / "bench_runner.json").write_text(json.dumps(report, indent=2, default=str))
    print(table([r for r in report["results"] if "name" in r]))
    for line in report["comparison"]:
        print(line)
    if report.get("points"):
        predicted = json.loads(Path(a.predicted).read_text())["predictions"] if a.predicted else {}
        print(error_table(report["points"], predicted))
    return 0


def minimal_test(model_path: Path, out: Path) -> dict[str, Any]:
    """The product path on the GPU: the shipped config pointed at the random 7B, through fmllm-run test."""
    src = (REPO / "config.yaml").read_text()
    work = out / "mt"
    work.mkdir(parents=True, exist_ok=True)
    cfg = src.replace("base_model_name: Qwen/Qwen2.5-7B-Instruct", f"base_model_name: {model_path}")
    cfg = cfg.replace("bnb_4bit_compute_dtype: float16", "bnb_4bit_compute_dtype: bfloat16")
    cfg = cfg.replace("data_dir: data", f"data_dir: {REPO / 'data'}").replace("output_dir: outputs", f"output_dir: {work}")
    (work / "config.yaml").write_text(cfg)
    t0 = time.time()
    p = subprocess.run([sys.executable, "-P", "-m", "fmllm_tui.cli_run", "test", "--config", str(work / "config.yaml"),
                        "--json", "--timeout", "300"], capture_output=True, text=True, cwd=str(REPO),
                       env={**os.environ, "PYTHONPATH": _pythonpath()})
    log(f"minimal test rc={p.returncode} in {time.time() - t0:.0f}s")
    from fmllm_tui.runner.speed import describe_record
    try:
        rep = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        rep = {"stdout": p.stdout[-2000:], "stderr": p.stderr[-3000:]}
    rep["rc"] = p.returncode
    keep = {k: rep.get(k) for k in ("ok", "status", "problems", "steps", "losses", "peak_bytes", "peak_method",
                                    "tokens_per_s", "speed", "wall_s", "device_name", "generation", "adapter_reloaded", "notes",
                                    "recipe", "rc", "stdout", "stderr", "run_dir")}
    keep["plan_check"] = plan_check(Path(rep["run_dir"])) if rep.get("run_dir") else None
    keep["speed_line"] = describe_record(rep)
    log(f"minimal test {model_path.name}: {keep['speed_line']} (wall {time.time() - t0:.0f} s)")
    print(json.dumps(keep, indent=1, default=str)[:3000])
    return keep


def plan_check(run_dir: Path) -> dict[str, Any]:
    """The run folder's plan (written by the launch) against the recipe the training process
    reports it ran: the fields that differ, and the 'not as planned' notes that explain them."""
    spec = _read(run_dir / "config.json") or {}
    planned = (spec.get("plan") or {}).get("recipe") or {}
    ran = (_read(run_dir / "result.json") or {}).get("recipe") or {}
    differ = {k: [planned.get(k), ran.get(k)] for k in planned if k != "notes" and planned.get(k) != ran.get(k)}
    deviations = [n for n in ran.get("notes", []) if str(n).startswith("not as planned")]
    out = {"target": (spec.get("plan") or {}).get("target"), "planned": {k: v for k, v in planned.items() if k != "notes"},
           "differ": differ, "deviations": deviations,
           "predicted_peak_bytes": (spec.get("plan") or {}).get("predicted_peak_bytes")}
    log(f"plan check {run_dir.name}: differ {differ or 'nothing'}; deviations {deviations or 'none'}")
    return out


if __name__ == "__main__":
    sys.exit(main())
