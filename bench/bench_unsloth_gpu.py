#!/usr/bin/env python3
"""Side by side on one GPU: fmllm's runner, the plain recipe and Unsloth (issue 20, item 1).

Each (model, seq, micro-batch) runs every recipe in its own subprocess on the same random-weight
build of the architecture (bench/bench_runner_gpu.py builds it offline from fmllm's catalogue),
the same data in the same order (a sequential sampler), 4-bit NF4 with nested quantisation, LoRA
r8 alpha 8 dropout 0 on q/k/v/o, bf16, gradient checkpointing, paged_adamw_32bit (fmllm's runner
may swap it as its plan says; the JSON records what each ran), lr 2e-4 constant, seed 42:

* fmllm: the real training process (``python -m fmllm_tui.runner.train``), fmllm's recipe;
* plain: the same process with ``memory_recipe: plain`` (Trainer + peft + prepare_model_for_kbit_training);
* unsloth: ``FastLanguageModel`` (``use_gradient_checkpointing="unsloth"``) and transformers'
  Trainer in this script's ``--worker`` mode, fed by fmllm's own tokenising and collator.

Reported per run: the process peak (NVML device memory sampled every 20 ms less the idle
baseline, CUDA context included), steady-state tokens/s and the warm-up before it
(fmllm_tui.runner.speed: leading steps slower than 1.5x the steady pace are warm-up: import-time
compile, autotuning), the max relative difference of the loss curve against the plain recipe's,
and MFU. MFU accounting (the standard LoRA accounting, recompute excluded): model FLOPs per token
= 4 x frozen matmul parameters (forward + input gradient; the lm_head included) + 6 x LoRA
parameters + causal attention 6 x layers x seq x q_dim (forward 2 x L x s x q_dim, backward
twice that), over the card's dense bf16 peak (fmllm's GPU table: 989 TFLOP/s on H100/H200 SXM).

Two Python stacks (unsloth 2026.10.9 caps transformers at 5.17, the GPU image's; fmllm pins
5.25): ``--install DIR`` splits the wheels of ../shared/device/unsloth-wheels.sh (.whl2/) into
two ``--target`` dirs: ``--fmllm-site`` (fmllm's stack: transformers 5.25, peft 0.22, ...) and
``--unsloth-site`` (Unsloth's stack over the image's transformers 5.17, huggingface_hub, peft
and accelerate); each recipe's subprocess gets its own PYTHONPATH (site, then this repository).

The device command (build .whl2/ here first: ``bash ../shared/device/unsloth-wheels.sh`` with
.whl/ from ../shared/device/fetch-wheels.sh; carry [".whl2"]):

    python3 bench/bench_unsloth_gpu.py --install .whl2 && PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD \\
      python3 bench/bench_unsloth_gpu.py --budget-s 540

Default: Llama-3.1-8B at seq 1024 and 4096, micro-batch 1, unsloth, fmllm, plain (~9 minutes on
an H100). Other slices: ``--models llama8b,mistral7b,7b,qwen3-8b,14b --seqs 1024,4096
--batches 1,fit24 --recipes unsloth,fmllm,plain``; ``fit24`` is the largest micro-batch (<= 16)
the memory model predicts fits 24 GiB for fmllm's recipe at that seq. ``--budget-s`` skips what
would not finish and kills a run at the budget; the table and $OUT/bench_unsloth.json hold what
was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_runner_gpu as brg  # noqa: E402  (the model builds, data, NVML sampling, fmllm's runs)

from fmllm_tui.runner.speed import Speed, steady_state  # noqa: E402

RECIPES = ("unsloth", "fmllm", "plain")
MODELS = {"llama8b": "Llama-3.1-8B", "mistral7b": "Mistral-7B-v0.3", "7b": "Qwen2.5-7B", "qwen3-8b": "Qwen3-8B",
          "14b": "Qwen2.5-14B"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
FIT_BYTES = 24 * 2**30
# Wheels only one side installs: Unsloth's own stack, and what fmllm's transformers 5.25 needs
# (Unsloth runs on the image's transformers 5.17 with its huggingface_hub, peft and accelerate).
UNSLOTH_ONLY = ("unsloth", "unsloth_zoo", "trl", "torchao", "cut_cross_entropy", "msgspec", "tyro",
                "docstring_parser", "typeguard", "json5", "nest_asyncio", "structlog")
FMLLM_ONLY = ("transformers", "huggingface_hub", "peft", "accelerate", "kernels", "httpx2", "httpcore2")
# Unsloth's start-up (imports ~30 s, its own compile ~30 s) on top of a run's load and steps.
UNSLOTH_EXTRA_S = 60.0


def wheel_project(filename: str) -> str:
    """The normalised project name of a wheel file ('unsloth_zoo-2026.10.9-py3-none-any.whl' -> 'unsloth_zoo')."""
    return filename.split("-", 1)[0].lower().replace(".", "_")


def split_wheels(files: list[str]) -> tuple[list[str], list[str]]:
    """The wheels for fmllm's site and for Unsloth's site (every other wheel goes to both)."""
    fm = [f for f in files if wheel_project(Path(f).name) not in UNSLOTH_ONLY]
    un = [f for f in files if wheel_project(Path(f).name) not in FMLLM_ONLY]
    return fm, un


def install(wheel_dir: Path, fmllm_site: str, unsloth_site: str) -> int:
    """pip-install the two stacks into their --target dirs (offline, no dependency resolution)."""
    fm, un = split_wheels(sorted(str(p) for p in wheel_dir.glob("*.whl")))
    for target, wheels in ((fmllm_site, fm), (unsloth_site, un)):
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", target, *wheels]
        rc = subprocess.run(cmd).returncode
        if rc:
            print(f"pip install into {target} failed (rc {rc})", flush=True)
            return rc
    return 0


# ------------------------------------------------------------------------------------------------
# Arithmetic: model FLOPs, MFU, loss agreement
# ------------------------------------------------------------------------------------------------


def lora_params(arch: dict[str, Any], r: int = 8, targets: list[str] | None = None) -> int:
    """Trainable LoRA parameters: r x (in + out) for each targeted projection of every layer."""
    from fmllm_tui.memory import ArchSpec

    a = ArchSpec.from_config(arch)
    shapes = {"q_proj": (a.hidden, a.q_dim), "k_proj": (a.hidden, a.kv_dim), "v_proj": (a.hidden, a.kv_dim),
              "o_proj": (a.q_dim, a.hidden), "gate_proj": (a.hidden, a.intermediate),
              "up_proj": (a.hidden, a.intermediate), "down_proj": (a.intermediate, a.hidden)}
    return a.layers * sum(r * sum(shapes[t]) for t in (targets or TARGETS))


def flops_per_token(arch: dict[str, Any], seq: int, r: int = 8, targets: list[str] | None = None) -> float:
    """Model FLOPs per trained token (the module docstring's LoRA accounting, recompute excluded)."""
    from fmllm_tui.memory import ArchSpec

    a = ArchSpec.from_config(arch)
    per_layer = a.hidden * (a.q_dim + 2 * a.kv_dim) + a.q_dim * a.hidden + 3 * a.hidden * a.intermediate
    frozen = a.layers * per_layer + a.vocab * a.hidden  # the output head is a frozen matmul too
    attention = 6 * a.layers * seq * a.q_dim
    return 4.0 * frozen + 6.0 * lora_params(arch, r, targets) + attention


def mfu(tokens_per_s: float | None, arch: dict[str, Any], seq: int, peak_tflops: float) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the card's dense bf16 peak."""
    if not tokens_per_s or peak_tflops <= 0:
        return None
    return tokens_per_s * flops_per_token(arch, seq) / (peak_tflops * 1e12)


def loss_rel_diff(losses: list[float] | None, reference: list[float] | None) -> float | None:
    """Max |a - b| / |b| over the steps both curves have (None when either is empty)."""
    pairs = [(a, b) for a, b in zip(losses or [], reference or [], strict=False) if b]
    return max(abs(a - b) / abs(b) for a, b in pairs) if pairs else None


# ------------------------------------------------------------------------------------------------
# The cases and each recipe's process
# ------------------------------------------------------------------------------------------------


def fit_batch(model: str, seq: int, limit: int = FIT_BYTES, most: int = 16) -> int:
    """The largest micro-batch (<= most) whose fmllm-recipe process peak the memory model
    predicts within ``limit`` (1 when none does): torch-free, milliseconds."""
    best = 1
    for b in range(1, most + 1):
        case = {"name": "fit", "model": model, "recipe": "fmllm", "seq": seq, "batch": b, "dropout": 0.0}
        if brg.predict_point(brg.case_point(case))["process_peak_bytes"] > limit:
            break
        best = b
    return best


def make_cases(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (model, seq, micro-batch, recipe) of this invocation, grouped so that a group's
    recipes run back to back (one model on disk at a time)."""
    cases: list[dict[str, Any]] = []
    for model in _csv(a.models):
        if model not in MODELS:
            raise SystemExit(f"--models: {model!r} is not one of {', '.join(MODELS)}")
        for seq in (int(s) for s in _csv(a.seqs)):
            batches = [fit_batch(model, seq) if b == "fit24" else int(b) for b in _csv(a.batches)]
            for batch in dict.fromkeys(batches):  # fit24 may equal a listed size
                for recipe in _csv(a.recipes):
                    if recipe not in RECIPES:
                        raise SystemExit(f"--recipes: {recipe!r} is not one of {', '.join(RECIPES)}")
                    cases.append({"name": f"{model}-s{seq}-b{batch}-{recipe}", "model": model, "recipe": recipe,
                                  "seq": seq, "batch": batch, "ga": a.ga, "steps": a.steps, "dropout": 0.0,
                                  "optim": a.optim,
                                  "extra_args": {"train_sampling_strategy": "sequential"}})
    return cases


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def estimate_s(case: dict[str, Any], build: bool = False) -> float:
    """Seconds a run takes end to end (start-up, 4-bit load, compile, steps; the model's build
    when ``build``): the budget's guess, on the light side (a run past the budget is killed)."""
    # From the 2026-12-07 H100 runs (bench/gpu_runs/20261207_a_*): an 8B built in 29 s, fmllm's
    # run 43-50 s (a 15 s compile), the plain recipe's 28-32 s, 8 steps of 2 x 2048 tokens.
    gb = brg.approx_bytes(case["model"]) / 1e9
    s = 15 + gb + case["steps"] * case["ga"] * case["batch"] * case["seq"] / 4000
    s += {"unsloth": UNSLOTH_EXTRA_S, "fmllm": 15.0}.get(case["recipe"], 0.0)
    return s + (gb * 2.0 if build else 0.0)


def unsloth_process(case: dict[str, Any], model_path: Path, data: Path, run_dir: Path,
                    unsloth_site: str) -> tuple[list[str], dict[str, str]]:
    """The Unsloth worker's argv and environment: Unsloth's site first, then this repository,
    and nothing of fmllm's stack (its transformers 5.25 would break Unsloth's import)."""
    from fmllm_tui.runner.launch import child_env

    spec = {"model_path": str(model_path), "data": str(data), "run_dir": str(run_dir), "seq": case["seq"],
            "batch": case["batch"], "ga": case["ga"], "steps": case["steps"], "r": 8, "alpha": 8,
            "dropout": case["dropout"], "optim": case["optim"], "seed": 42}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    env = {**os.environ, **child_env({"PYTHONPATH": os.pathsep.join([unsloth_site, str(REPO)]),
                                      "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                      "UNSLOTH_DISABLE_STATISTICS": "1",
                                      # its generated code goes to the run folder, not the repository
                                      "UNSLOTH_COMPILE_LOCATION": str(run_dir / "unsloth_compiled_cache")})}
    return [sys.executable, str(Path(__file__).resolve()), "--worker", str(run_dir / "spec.json")], env


def run_unsloth(case: dict[str, Any], model_path: Path, data: Path, runs: Path, timeout: float,
                unsloth_site: str) -> dict[str, Any]:
    """One Unsloth run in its own process, measured as fmllm's runs are (NVML process peak)."""
    rdir = runs / case["name"]
    shutil.rmtree(rdir, ignore_errors=True)  # an earlier run's result.json must not pass for this one's
    argv, env = unsloth_process(case, model_path, data, rdir, unsloth_site)
    m = brg.sampled_run(argv, env, rdir / "train.log", timeout)
    res = brg._read(rdir / "result.json") or {}
    out = {"name": case["name"], "case": case, **m, **res}
    out["status"] = res.get("status") or ("timeout" if m["rc"] is None else "failed")
    out["torch_max_allocated_bytes"] = res.get("peak_allocated_bytes")
    out["torch_max_reserved_bytes"] = res.get("peak_reserved_bytes")
    if out["status"] != "ok":
        out["log_tail"] = (rdir / "train.log").read_text(errors="replace")[-3000:]
    return out


def derive(res: dict[str, Any], peak_tflops: float) -> dict[str, Any]:
    """Steady-state speed, warm-up and MFU of a run from its per-step times and tokens."""
    case = res["case"]
    sp: Speed = steady_state(res.get("step_times_s") or [], res.get("step_tokens") or [])
    res["speed"] = sp.to_json()
    res["steady_tokens_per_s"] = sp.tokens_per_s
    res["mfu"] = mfu(sp.tokens_per_s, brg.arch_config(case["model"]), case["seq"], peak_tflops)
    return res


def compare_group(results: list[dict[str, Any]]) -> None:
    """Within one (model, seq, batch): each curve against the plain recipe's (fmllm's when plain
    did not run), tokens/s ratios to plain and to Unsloth."""
    ok = {r["case"]["recipe"]: r for r in results if r.get("status") == "ok"}
    ref = ok.get("plain") or ok.get("fmllm")
    for r in ok.values():
        r["loss_reference"] = ref["case"]["recipe"] if ref else None
        r["loss_max_rel_diff"] = loss_rel_diff(r.get("losses"), ref.get("losses")) if ref and ref is not r else None
        for other in ("plain", "unsloth"):
            o = ok.get(other)
            if o and o is not r and o.get("steady_tokens_per_s") and r.get("steady_tokens_per_s"):
                r[f"x_{other}"] = r["steady_tokens_per_s"] / o["steady_tokens_per_s"]


# ------------------------------------------------------------------------------------------------
# The Unsloth worker (runs in Unsloth's stack: --worker SPEC)
# ------------------------------------------------------------------------------------------------


def worker(spec_path: Path) -> int:
    """Train as the spec says with Unsloth; write result.json beside the spec (also on failure)."""
    spec = json.loads(spec_path.read_text())
    t0 = time.perf_counter()
    try:
        res = {**_unsloth_train(spec, t0), "status": "ok"}
    except Exception as e:  # the parent reports it: Unsloth failing is a result too
        import traceback

        res = {"status": "failed", "message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    (spec_path.parent / "result.json").write_text(json.dumps(res, indent=1, default=str))
    return 0 if res["status"] == "ok" else 1


def _unsloth_model(spec: dict[str, Any]) -> Any:
    """Unsloth's 4-bit model with its LoRA adapter (r, alpha, dropout and targets as fmllm's)."""
    import torch
    from unsloth import FastLanguageModel

    # fix_tokenizer off: the bench's 512-token tokenizer is not the model's (the runs share it, and
    # Unsloth's tokenizer repairs do not touch the training step).
    model, _ = FastLanguageModel.from_pretrained(model_name=spec["model_path"], max_seq_length=spec["seq"],
                                                 dtype=torch.bfloat16, load_in_4bit=True, fix_tokenizer=False)
    return FastLanguageModel.get_peft_model(
        model, r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"], target_modules=TARGETS,
        bias="none", use_gradient_checkpointing="unsloth", random_state=spec["seed"], max_seq_length=spec["seq"])


def _step_recorder(counted: dict[str, int]) -> Any:
    """A TrainerCallback that records step times end to end (as fmllm's callback: from the
    previous step's end, data loading included), the tokens of each step and the logged losses."""
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.losses: list[float] = []
            self._t, self._n = time.perf_counter(), 0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self._t, self._n = time.perf_counter(), counted["tokens"]

        def on_step_end(self, *a: Any, **k: Any) -> None:
            now = time.perf_counter()
            self.times.append(now - self._t)
            self.tokens.append(counted["tokens"] - self._n)
            self._t, self._n = now, counted["tokens"]

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **k: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return Steps()


def _unsloth_train(spec: dict[str, Any], t0: float) -> dict[str, Any]:
    import torch  # noqa: F401
    import unsloth  # noqa: F401  (before transformers: it patches transformers and peft on import)
    from transformers import set_seed

    import_s = time.perf_counter() - t0
    set_seed(spec["seed"])
    model = _unsloth_model(spec)
    load_s = time.perf_counter() - t0 - import_s
    return {**train_measured(model, spec), "import_s": import_s, "load_s": load_s}


def train_measured(model: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Train ``model`` (with its adapter) as the spec says, on fmllm's tokenising and collator,
    in the data's order, with the Trainer settings of fmllm's runs; what was measured."""
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    from fmllm_tui.runner.data import Collator, build_train_dataset, read_records
    from fmllm_tui.runner.lean import load_tokenizer

    tok = load_tokenizer(spec["model_path"], {}, local_only=True)  # the tokenizer fmllm's runs use
    dataset, _ = build_train_dataset(tok, read_records(spec["data"], "prompt_completion"), "prompt_completion",
                                     max_len=spec["seq"], response_only=False, packing=False)
    inner = Collator(tok, False)
    counted = {"tokens": 0}

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = inner(features)
        mask = batch.get("attention_mask")
        counted["tokens"] += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch

    class InOrder(Trainer):  # the same order as fmllm's runs (train_sampling_strategy=sequential)
        def _get_train_sampler(self, *a: Any, **k: Any) -> Any:
            return SequentialSampler(self.train_dataset)  # type: ignore[arg-type]

    cuda = torch.cuda.is_available()
    steps = _step_recorder(counted)
    args = TrainingArguments(
        output_dir=str(Path(spec["run_dir"]) / "checkpoints"), per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=spec["ga"], max_steps=spec["steps"], learning_rate=2e-4, weight_decay=0.001,
        max_grad_norm=0.3, lr_scheduler_type="constant", warmup_steps=0, optim=spec["optim"], logging_steps=1,
        logging_first_step=True, save_strategy="no", seed=spec["seed"], report_to="none", bf16=cuda,
        use_cpu=not cuda, remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = InOrder(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[steps])
    t_train = time.perf_counter()
    trainer.train()
    return {"losses": steps.losses, "step_times_s": steps.times, "step_tokens": steps.tokens,
            "train_s": time.perf_counter() - t_train,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "peak_allocated_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
            "peak_reserved_bytes": int(torch.cuda.max_memory_reserved()) if cuda else None,
            "device_name": torch.cuda.get_device_name(0) if cuda else "cpu", "optim": str(args.optim),
            "versions": _versions()}


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for n in ("unsloth", "unsloth_zoo", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl",
              "triton", "cut_cross_entropy"):
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


# ------------------------------------------------------------------------------------------------
# The table and the run
# ------------------------------------------------------------------------------------------------


def _num(v: float | None, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def table(results: list[dict[str, Any]]) -> str:
    """One line per run: the figures issue 20 asks for, compact enough for a device log."""
    head = (f"{'model':12} {'seq':>5} {'mb':>3} {'recipe':8} {'status':8} {'proc GiB':>8} {'tok/s':>7} "
            f"{'warm s':>6} {'MFU %':>5} {'loss rel':>8} {'x plain':>7} {'x unsl':>6}")
    lines = [head]
    for r in results:
        c = r["case"]
        peak = r.get("process_peak_bytes")
        lines.append(
            f"{MODELS[c['model']]:12} {c['seq']:5d} {c['batch']:3d} {c['recipe']:8} {r.get('status', '-'):8} "
            f"{_num(peak / 2**30 if peak else None, '.2f'):>8} {_num(r.get('steady_tokens_per_s'), ',.0f'):>7} "
            f"{_num((r.get('speed') or {}).get('warmup_s'), '.0f'):>6} "
            f"{_num(r['mfu'] * 100 if r.get('mfu') is not None else None, '.1f'):>5} "
            f"{_num(r.get('loss_max_rel_diff'), '.4f'):>8} {_num(r.get('x_plain'), '.2f'):>7} "
            f"{_num(r.get('x_unsloth'), '.2f'):>6}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's flags (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama8b", help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--seqs", default="1024,4096")
    ap.add_argument("--batches", default="1", help="comma-separated micro-batches; fit24 = largest predicted to fit 24 GiB")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    ap.add_argument("--ga", type=int, default=2, help="gradient accumulation (micro-batches per step)")
    ap.add_argument("--optim", default="paged_adamw_32bit",
                    help="the configured optimizer of every recipe (fmllm's plan may run a small adapter's "
                         "32-bit AdamW as torch's fused AdamW: the JSON's recipe says what ran)")
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--model-dir", default="/tmp/fmllm-bench-models")
    ap.add_argument("--runs-dir", default="/tmp/fmllm-bench-unsloth-runs")
    ap.add_argument("--fmllm-site", default="/tmp/site")
    ap.add_argument("--unsloth-site", default="/tmp/site-unsloth")
    ap.add_argument("--install", metavar="WHEEL_DIR", help="install the two stacks from these wheels and stop")
    ap.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run_all(a: argparse.Namespace, cases: list[dict[str, Any]], report: dict[str, Any], t_start: float) -> None:
    """Run the cases in order within the budget; write the JSON after every run."""
    from fmllm_tui import gpudb

    card = gpudb.match_nvml(str(report["env"].get("gpu") or ""))
    report["peak_tflops"] = peak = card.tflops16 if card else 989.0
    model_dir, runs = Path(a.model_dir), Path(a.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    data = brg.write_data(model_dir / f"bench-data-{max(c['seq'] for c in cases)}.jsonl",
                          words=max(c["seq"] for c in cases) + 400)
    order = list(dict.fromkeys(c["model"] for c in cases))
    paths: dict[str, Path] = {}
    group: list[dict[str, Any]] = []
    for case in cases:
        elapsed = time.time() - t_start
        need = estimate_s(case, build=case["model"] not in paths)
        if elapsed + need > a.budget_s:
            report["results"].append({"name": case["name"], "case": case, "status": "skipped", "message": "time budget"})
            brg.log(f"budget: skipping {case['name']} (needs ~{need:.0f} s, {a.budget_s - elapsed:.0f} s left)")
            continue
        try:
            if case["model"] not in paths:
                paths[case["model"]] = brg.ensure_model(case["model"], model_dir, order)
            brg.log(f"run {case['name']}")
            timeout = max(30.0, a.budget_s - (time.time() - t_start))
            if case["recipe"] == "unsloth":
                res = run_unsloth(case, paths[case["model"]], data, runs, timeout, a.unsloth_site)
            else:
                res = brg.run_config({**case, "recipe": case["recipe"]}, paths[case["model"]], data, runs, timeout)
        except Exception as e:  # one failing run must not lose the others
            res = {"name": case["name"], "case": case, "status": "crashed", "message": f"{type(e).__name__}: {e}"}
        res = derive(res, peak) if res.get("status") == "ok" else res
        group = [r for r in group if _key(r["case"]) == _key(case)] + [res]
        compare_group(group)
        report["results"].append(res)
        (brg.out_dir() / "bench_unsloth.json").write_text(json.dumps(report, indent=1, default=str))
        brg.log(f"{case['name']}: {res.get('status')} {res.get('message') or ''}")


def _key(case: dict[str, Any]) -> tuple[str, int, int]:
    return case["model"], case["seq"], case["batch"]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.worker:
        return worker(Path(a.worker))
    if a.install:
        return install(Path(a.install), a.fmllm_site, a.unsloth_site)
    cases = make_cases(a)
    t_start = time.time()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "env": brg.env_report(), "results": [],
                              "mfu_accounting": "4 x frozen matmul params + 6 x LoRA params + 6 x layers x seq x "
                                                "q_dim per token; recompute excluded; dense bf16 peak"}
    brg.log(json.dumps(report["env"]))
    run_all(a, cases, report, t_start)
    report["wall_s"] = time.time() - t_start
    (brg.out_dir() / "bench_unsloth.json").write_text(json.dumps(report, indent=1, default=str))
    print(table([r for r in report["results"] if "case" in r]), flush=True)
    for r in report["results"]:
        if r.get("status") not in ("ok", "skipped"):
            print(f"{r['name']}: {r.get('status')} {r.get('message') or ''}\n{(r.get('log_tail') or '')[-1200:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
