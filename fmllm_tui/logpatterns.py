"""The table of training-log failure patterns that :mod:`fmllm_tui.logdiag` scans for.

Each :class:`Pattern` names one failure: the regex that finds it on a (cleaned) log line, the
cause in plain words, its severity and its fix (a fixer id with config changes, or the exact
shell command when the remedy is not a config change). Patterns whose ``rx`` is ``None`` are
*derived*: the engine emits them from several lines or from another pattern's numbers (an OOM
in evaluation, NaN loss after N finite steps, loss flat at ln(vocab), …).

Wordings follow several library versions (torch 1.13-2.x OOM formats, transformers 4.3x-5.x,
bitsandbytes 0.39-0.50, huggingface_hub 0.x-1.x), taken from public issue threads (the real-log corpus in
tests/data/reallogs/ names each thread).
No torch/transformers imports here: this module is plain data and regexes.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fmllm_tui.findings import Change, Fix
from fmllm_tui.units import printed_size

# --------------------------------------------------------------------------------------------
# Fixes
# --------------------------------------------------------------------------------------------


def fix(
    fix_id: str | None,
    summary: str,
    changes: list[tuple[str, Any]] | None = None,
    shell: str | None = None,
) -> Fix:
    """A log finding's fix (:class:`fmllm_tui.findings.Fix`, the one shape every face reads): a fixer
    id (None: advice or a command only) with canonical config keys in ``changes``; a change's ``to``
    may be symbolic ("halve", "double") when the log alone cannot say the number."""
    return Fix(id=fix_id, changes=[Change(key=k, to=v) for k, v in (changes or [])], shell=shell, summary=summary)


FIX_MEMORY = fix(
    "memory.fit",
    "make the step fit: batch 1 with more gradient accumulation, gradient checkpointing on, "
    "then a shorter max_seq_length (fmllm-check plans the numbers)",
    [
        ("training.per_device_train_batch_size", "halve"),
        ("training.gradient_accumulation_steps", "double"),
        ("training.gradient_checkpointing", True),
    ],
)
FIX_MEMORY_LOAD = fix(
    "memory.fit",
    "the weights alone do not fit in GPU memory: load the model in 4-bit, pick a smaller model "
    "or a bigger GPU, and make sure nothing else holds the GPU",
    [("quantization.use_4bit", True)],
)
FIX_EVAL_BATCH = fix(
    "training.eval_batch",
    "evaluation ran out of memory, not training: lower the eval batch and leave the train batch alone",
    [("training.per_device_eval_batch_size", "halve")],
)
FIX_SEQ_LEN = fix(
    "training.max_seq_length",
    "it ran out of memory after many good steps: one long batch is the outlier, not the batch size; "
    "cap max_seq_length or drop the longest examples from the data",
    [("training.max_seq_length", "halve")],
)
FIX_ALLOC_CONF = fix(
    "env.alloc_conf",
    "the allocator's cache is fragmented: let PyTorch grow segments instead of splitting them",
    shell="export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
)
FIX_SAVE_OOM = fix(
    "env.alloc_conf",
    "saving needs GPU memory on top of the training state: set expandable segments; under FSDP "
    "save a sharded state dict; or save less often",
    shell="export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
)
FIX_OTHER_PROCESS = fix(
    None,
    "another process holds GPU memory: stop it (or pick another GPU with CUDA_VISIBLE_DEVICES)",
    shell="nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv",
)
FIX_DTYPE_BF16_OFF = fix(
    "dtype.compute",
    "this GPU has no bf16: train in fp16 with fp16 compute dtype (or fp32 on very old GPUs)",
    [("training.bf16", False), ("training.fp16", True), ("quantization.bnb_4bit_compute_dtype", "float16")],
)
FIX_DTYPE_FP16_OFF = fix(
    "dtype.compute",
    "fp16 overflows or keeps fp16 trainable weights: use bf16 if the GPU has it (Ampere or newer), else fp32 adapters",
    [("training.fp16", False), ("training.bf16", True), ("quantization.bnb_4bit_compute_dtype", "bfloat16")],
)
FIX_DTYPE_MATCH = fix(
    "dtype.compute",
    "make the compute dtype match the mixed-precision setting (bf16 with bfloat16, fp16 with float16)",
    [("quantization.bnb_4bit_compute_dtype", "match training precision")],
)
FIX_SDPA = fix(
    "attn.sdpa",
    "use PyTorch's built-in SDPA attention instead of flash-attn (nearly as fast, no extra wheel)",
    [("fmllm.attn_implementation", "sdpa")],
)
FIX_GC_REENTRANT = fix(
    "training.gc_reentrant",
    "use non-reentrant gradient checkpointing so gradients reach the LoRA adapters",
    [("training.gradient_checkpointing_kwargs", {"use_reentrant": False})],
)
FIX_GC_REENTRANT_TRUE = fix(
    "training.gc_reentrant",
    "QLoRA under ZeRO-3/FSDP needs reentrant checkpointing (TRL forces it for the same reason)",
    [("training.gradient_checkpointing_kwargs", {"use_reentrant": True})],
)
FIX_PAD = fix(
    "tokenizer.pad_token",
    "give the tokenizer a pad token that is already in its vocabulary (the eos token works)",
    [("fmllm.pad_token", "eos_token")],
)
FIX_LR = fix(
    "training.learning_rate",
    "lower the learning rate (and keep warmup and max_grad_norm on)",
    [("training.learning_rate", "halve")],
)
FIX_CUSTOM_MODEL_TYPE = fix(
    None, "load the checkpoint with the project's own code (its model class, or register its config and model "
    "with AutoConfig.register / AutoModelForCausalLM.register before from_pretrained); a checkpoint that ships its "
    "modeling code (auto_map in config.json) loads with trust_remote_code. Upgrading transformers does not help")
FIX_DS_AUTO = fix(
    None, "set the DeepSpeed config's values named in the message to \"auto\" (the Trainer fills them from its "
    "arguments and the number of processes), or make them equal; a fixed train_batch_size must be "
    "micro batch x gradient accumulation x number of GPUs")
FIX_MODEL_ID = fix(
    "model.id",
    "check base_model_name: a Hub id is owner/name exactly as on huggingface.co, or a local folder with config.json",
    [("base_model_name", "an existing model id or local path")],
)
FIX_ADAPTER = fix(
    "model.adapter",
    "a 4-bit model can't be trained directly: attach LoRA adapters",
    [("use_adapter", True)],
)
FIX_FSDP = fix(
    "distributed.fsdp_storage",
    "FSDP needs the 4-bit weights stored in the model dtype (bnb_4bit_quant_storage=bfloat16) and "
    "use_orig_params=false; bitsandbytes >= 0.43",
)
FIX_SAVE_LIMIT = fix(
    "training.save_total_limit",
    "the disk is full: keep fewer checkpoints, and check free space where the run writes",
    [("training.save_total_limit", 2)],
    shell="df -h .",
)
FIX_BNB = fix(None, "reinstall bitsandbytes for this CUDA and check it loads", shell="pip install -U bitsandbytes && python -m bitsandbytes")
FIX_LOGIN = fix(None, "accept the model's licence on its Hub page, then log in with a token that has access", shell="hf auth login")
FIX_NCCL = fix(
    None,
    "one rank is stuck or slow: find it with NCCL_DEBUG=INFO, tokenize the data before launch, "
    "raise ddp_timeout, and on PCIe consumer GPUs keep NCCL P2P to NVLink",
    shell="export NCCL_DEBUG=INFO NCCL_P2P_LEVEL=NVL",
)
#: A launcher's report of failed ranks names no cause: the first rank's own error does.
FIX_READ_FIRST_RANK = fix(None, "read the first failed rank's own error above this report: the others died because it did")
FIX_HOST_RAM = fix(
    None,
    "the machine ran out of RAM and the kernel killed the process: fewer dataloader/preprocessing "
    "workers, add swap, load with low_cpu_mem_usage/safetensors (check with: dmesg | grep -i 'killed process')",
    shell="free -h",
)
FIX_TORCH_CUDA = fix(
    None,
    "install a PyTorch build whose CUDA kernels cover this GPU (RTX 50-series needs CUDA 12.8 builds)",
    shell="pip install -U torch --index-url https://download.pytorch.org/whl/cu128",
)
FIX_CUDA_DEBUG = fix(
    None,
    "CUDA errors are reported late; rerun with synchronous launches to see the real failing call",
    shell="export CUDA_LAUNCH_BLOCKING=1",
)


# --------------------------------------------------------------------------------------------
# Sizes and small helpers used by extractors
# --------------------------------------------------------------------------------------------

SIZE = r"[\d.]+ ?(?:bytes|[KMGTP]i?B)"
# A size as torch/CUDA printed it, in bytes (fmllm_tui.units holds the one reader).
size_bytes = printed_size


def human(n: int | float | None) -> str:
    """Bytes as '1.50 GiB' (the way torch prints them)."""
    if n is None:
        return "?"
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


PIP_NAMES = {
    "flash_attn": "flash-attn", "flash_attn_2_cuda": "flash-attn", "sklearn": "scikit-learn",
    "PIL": "pillow", "yaml": "pyyaml", "cv2": "opencv-python", "google": "protobuf",
    "sentencepiece": "sentencepiece", "bitsandbytes": "bitsandbytes", "peft": "peft", "trl": "trl",
    "transformers": "transformers", "accelerate": "accelerate", "datasets": "datasets",
    "deepspeed": "deepspeed", "xformers": "xformers", "liger_kernel": "liger-kernel",
    "protobuf": "protobuf", "tiktoken": "tiktoken", "einops": "einops",
}


def pip_name(module: str) -> str:
    """The pip package that provides an importable top-level module."""
    top = module.split(".")[0]
    return PIP_NAMES.get(top, top.replace("_", "-"))


# --------------------------------------------------------------------------------------------
# The pattern type
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """One failure the scanner knows: how it reads in a log, why it happens and what fixes it."""

    id: str
    severity: str  # "error" | "warning"
    title: str
    cause: str
    fix: Fix | None
    rx: re.Pattern[str] | None = None  # None: derived by the engine from several lines
    needles: tuple[str, ...] = ()  # cheap substring test before the regex (any one must be present)
    extract: Callable[..., dict[str, Any] | None] | None = None
    span: int = 0  # following lines joined to the hit line before matching (messages split over lines)
    phase: str = ""  # the phase to name when the log gives no evidence ("": load, or what the log shows)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity, "title": self.title, "cause": self.cause,
                "fix": self.fix.to_json() if self.fix else None, "derived": self.rx is None}


def _p(id: str, severity: str, title: str, cause: str, fix_: Fix | None, rx: str | None,
       needles: tuple[str, ...] = (), extract: Callable[..., dict[str, Any] | None] | None = None,
       flags: int = 0, span: int = 0, phase: str = "") -> Pattern:
    return Pattern(id, severity, title, cause, fix_, re.compile(rx, flags) if rx else None, needles, extract, span, phase)


# --------------------------------------------------------------------------------------------
# Extractors for single-line patterns (the OOM extractor lives in logdiag: it needs run state)
# --------------------------------------------------------------------------------------------

_REPO_URL = re.compile(r"huggingface\.co/(?:api/models/)?([\w.-]+/[\w.-]+?)(?:/resolve/|/tree/|/revision/|[\s.'\"]*$|\.\s|[\s'\"])")
_REPO_NAMED = re.compile(r"(?:[Mm]odel|[Rr]epo(?:sitory)?)\s+[`'\"]?([\w.-]+/[\w.-]+?)[`'\"]?(?:\s+is|\.\s|[\s,:]|$)")


def _repo_id(ctx: Any) -> dict[str, Any]:
    """Hub repo id from the line or the lines after it (URLs or 'model X is restricted')."""
    for text in [ctx.line, *ctx.after[:8]]:
        for rx in (_REPO_URL, _REPO_NAMED):
            m = rx.search(text)
            if m and m.group(1) not in ("docs/huggingface_hub", "docs/transformers"):
                return {"repo_id": m.group(1)}
    m = re.search(r"^(?:OSError: )?([\w.-]+(?:/[\w.-]+)?) is not a local folder", ctx.line)
    if m:
        return {"repo_id": m.group(1)}
    return {}


def _x_repo(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    values = _repo_id(ctx)
    out: dict[str, Any] = {"values": values, "key": values.get("repo_id", "")}
    if values.get("repo_id"):
        out["cause_suffix"] = f" (repo: {values['repo_id']})"
    return out


_GATED_NEXT = re.compile(r"GatedRepoError|[Gg]ated repo|is restricted|awaiting a review")


def hub_401_is_gated(after: list[str]) -> bool:
    """Whether the exception a Hub 401 caused says the repo is gated (a 401 alone: missing or private)."""
    return any(_GATED_NEXT.search(t) for t in after[:12])


def _x_repo_or_401(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    """hub_not_found's values; a 401 whose chained exception says the repo is gated is hub_gated's."""
    if m.group(0).startswith("401") and hub_401_is_gated(ctx.after):
        return None
    return _x_repo(m, ctx)


def _x_gated(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    out = _x_repo(m, ctx)
    text = " ".join([ctx.line, *ctx.after[:8]])
    if re.search(r"awaiting a review|not in the authorized list|403", text):
        out["values"]["access"] = "pending or refused"
        out["cause"] = ("the model is gated and your access request is pending or was refused (403): "
                        "logging in again will not help until the owners approve it")
    elif re.search(r"401|must be authenticated|log ?in", text, re.I):
        out["values"]["access"] = "not authenticated"
    return out


def _x_missing_module(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    if re.search(r"Using `(?:bitsandbytes` \d-bit quantization|load_in_\dbit=True`) requires", ctx.line):
        return None  # quantization's gate names accelerate and bitsandbytes together: bnb_not_installed owns it
    mod = next(g for g in m.groups() if g)
    if not m.group(1) and not m.group(3):  # a library's display name ('DeepSpeed'), not an import path
        mod = mod.lower()
    pkg = pip_name(mod)
    f = fix(None, f"install the missing package '{pkg}'", shell=f"pip install {pkg}")
    cause = f"Python module '{mod}' is not installed in this environment (pip package '{pkg}')"
    if m.lastindex in (5, 6):  # a version gate: the package may be there, only older than required
        f = fix(None, f"install or upgrade '{pkg}' to the version the message names", shell=f"pip install -U {pkg}")
        cause = f"the code needs '{pkg}' at the version the message names: it is not installed here, or it is older"
    if mod.split(".")[0] in ("flash_attn", "flash_attn_2_cuda"):
        f = FIX_SDPA
    return {"values": {"module": mod, "package": pkg}, "key": mod, "fix": f, "cause": cause}


def _x_nccl(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    v: dict[str, Any] = {}
    text = ctx.line
    for name, rx in (("op", r"OpType=(\w+)"), ("timeout_ms", r"Timeout\(ms\)=(\d+)"),
                     ("ran_ms", r"ran for (\d+) milliseconds"), ("rank", r"\[Rank (\d+)\]"),
                     ("seq", r"SeqNum=(\d+)")):
        mm = re.search(rx, text)
        if mm:
            v[name] = int(mm.group(1)) if mm.group(1).isdigit() else mm.group(1)
    cause = "a collective operation (all-reduce/broadcast) waited past the NCCL timeout: one rank never joined"
    if "op" in v or "timeout_ms" in v:
        cause += f" ({v.get('op', 'op ?')}, timeout {int(v.get('timeout_ms', 0)) // 1000}s)"
    return {"values": v, "cause": cause, "key": ""}


def _x_device_mismatch(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    devs = re.findall(r"\b(cuda:\d+|cpu|meta|mps)\b", ctx.line)
    uniq = list(dict.fromkeys(devs))
    v = {"devices": uniq} if uniq else {}
    cause = "tensors of one operation sit on different devices"
    if uniq:
        cause += f" ({' and '.join(uniq)})"
    if "cpu" in uniq or "meta" in uniq:
        cause += ": part of the model was offloaded (device_map='auto' ran out of GPU memory) or a batch was not moved to the GPU"
    elif len(uniq) > 1:
        cause += ": the model was spread over several GPUs (device_map='auto') while running one process per GPU"
    return {"values": v, "cause": cause}


def _x_no_kernel(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    v: dict[str, Any] = {}
    mm = re.search(r"(?:^|:\s)([^:]+?) with CUDA capability (sm_\d+)", ctx.line)
    if mm:
        v = {"gpu": mm.group(1).strip(" :"), "arch": mm.group(2)}
    text = " ".join(ctx.after[:3])
    sup = re.search(r"supports CUDA capabilities ([\w ]+?)\.", text + " " + ctx.line)
    if sup:
        v["supported"] = sup.group(1).split()
    cause = "this PyTorch build has no CUDA kernels for the GPU"
    if v.get("arch"):
        cause += f" ({v.get('gpu', 'GPU')} is {v['arch']})"
    out: dict[str, Any] = {"values": v, "cause": cause}
    if re.search(r"CUDA capability", " ".join([ctx.line, text])):
        # torch says so when it first uses the GPU (moving the model there): the install is wrong before any step
        out["default_phase"] = "load"
    return out


def _x_flat_param(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    dts = re.findall(r"torch\.(\w+)", ctx.line)
    return {"values": {"dtypes": dts} if dts else {}}


def _x_target_modules(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    if "is not supported" in m.group(0):
        return {"cause": ("a name in lora.target_modules matches a module LoRA cannot wrap (a whole block or model, or "
                          "a custom layer), not the Linear layers inside it")}
    mods = re.findall(r"'([\w.]+)'", m.group(0) + ctx.line)
    return {"values": {"modules": sorted(set(mods))} if mods else {}}


def _x_seq_len(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    if m.group(1) is None:  # TRL's completion-only collator: the response was cut off at max_seq_length
        # the collator builds each training batch: it warns while training, not while loading
        return {"key": "collator", "default_phase": "training", "cause": (
            "the collator did not find the response template in an example (it was cut at max_seq_length), so every "
            "label of it is masked and it adds nothing to the loss (a loss of exactly 0 when it happens to all)"),
            "fix": fix("training.max_seq_length", "raise max_seq_length so the response survives truncation, or fix "
                       "the response template", [("training.max_seq_length", "double")])}
    return {"values": {"length": int(m.group(1)), "model_max": int(m.group(2))},
            "cause": f"an example tokenizes to {m.group(1)} tokens, more than the model's {m.group(2)}: it will be cut, or fail"}


def _x_disk(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    if "</torch_" in ctx.line or "/dev/shm" in ctx.line:
        return None  # shared memory, not the disk: shm_exhausted owns it
    path = None
    mm = re.search(r"No space left on device:? ['\"]?([^'\"\s]+)", ctx.line)
    if mm:
        path = mm.group(1)
    v = {"path": path} if path else {}
    if _x_cache_disk(ctx, " ".join([ctx.line, *ctx.after[:4]]) + (path or "")):
        return {"id": "cache_disk_full", "values": v}
    f = FIX_SAVE_LIMIT
    if path:
        import os.path as _osp

        d = path if path.endswith("/") else _osp.dirname(path) or "."
        f = replace(f, shell=f"df -h {d}")
        if ".cache/huggingface" in path:
            f = fix(None, "the Hugging Face cache filled the disk: move it to a bigger disk (HF_HOME) or remove old "
                    "models (`hf cache rm model/<id>`; `hf cache ls` lists them by size)", shell="hf cache ls")
    return {"values": v, "fix": f}


def _x_sigkill(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    text = m.group(0)
    if "DefaultCPUAllocator" in text or "MemoryError" in text:
        mm = re.search(r"allocate (\d+) bytes", ctx.line)
        v = {"tried_to_allocate_bytes": int(mm.group(1))} if mm else {}
        return {"values": v, "cause": "host RAM ran out: a CPU memory allocation failed"
                + (f" ({human(v['tried_to_allocate_bytes'])})" if v else "")}
    return {"values": {"signal": 9}}


def _x_signal(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    mm = re.search(r"got signal: (\d+)", ctx.line)
    sig = int(mm.group(1)) if mm else None
    names = {1: "SIGHUP: the terminal or SSH session that started it closed",
             15: "SIGTERM: something stopped it (a job scheduler, a time limit, or kill)",
             2: "SIGINT: Ctrl-C"}
    if sig is None:
        return {}
    return {"values": {"signal": sig}, "key": str(sig),
            "cause": f"the launcher got signal {sig} — " + names.get(sig, "an external signal stopped the run")}


def _x_data(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    v: dict[str, Any] = {}
    for text in [ctx.line, *ctx.after[:6]]:
        mm = re.search(r"in row (\d+)|line (\d+) column (\d+)", text)
        if mm:
            if mm.group(1):
                v["row"] = int(mm.group(1))
            else:
                v["line"], v["column"] = int(mm.group(2)), int(mm.group(3))
            break
    out: dict[str, Any] = {"values": v}
    if v:
        where = f"row {v['row']}" if "row" in v else f"line {v['line']}, column {v['column']}"
        out["cause_suffix"] = f" (parser stopped at {where})"
    return out


def _x_data_fields(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    """The data's records lack the fields (columns) the loader maps: a format mismatch, not a bad line."""
    if not m.group("fields"):
        return _x_data(m, ctx)
    return {"cause": "the data's records do not have the fields (columns) the loader expects: the file is in another "
                     "format than the one configured (the message names the expected and the present fields)",
            "fix": fix(None, "convert the records to the fields the loader names, or set data_format (or the column "
                             "mapping) to the data's own fields", [("data_format", "match the data")])}


#: the libraries whose classes a training script builds, by class name: an unexpected keyword argument
#: raised at the user's call has no library frame to name the package
API_OWNERS = (
    (re.compile(r"^PeftAdapterMixin$"), "transformers"),  # transformers' PEFT integration, not peft itself
    (re.compile(r"^(?:SFT|DPO|GRPO|PPO|ORPO|KTO|CPO|Reward|RLOO|Online\w*|Iterative\w*)(?:Trainer|Config)$"), "trl"),
    (re.compile(r"^(?:Lora|Prefix|Prompt|IA3|Loha|Lokr|Adalora)\w*Config$|^Peft\w*$"), "peft"),
    (re.compile(r"^SetFit\w*$"), "setfit"),
    (re.compile(r"^SentenceTransformer\w*$"), "sentence_transformers"),
    (re.compile(r"^(?:Trainer|Seq2SeqTrainer|TrainingArguments|Seq2SeqTrainingArguments|BitsAndBytesConfig|Auto\w+|"
                r"\w+For(?:CausalLM|ConditionalGeneration|SequenceClassification)|\w+Tokenizer(?:Fast)?)$"), "transformers"),
)
#: arguments renamed across versions of those libraries: the old name -> what the newer versions take
RENAMED_ARGS = {"tokenizer": "processing_class", "evaluation_strategy": "eval_strategy", "use_auth_token": "token",
                "max_seq_length": "max_length (in SFTConfig)", "dataset_text_field": "SFTConfig(dataset_text_field=...)",
                "packing": "SFTConfig(packing=...)", "dataset_num_proc": "SFTConfig(dataset_num_proc=...)",
                "dataset_kwargs": "SFTConfig(dataset_kwargs=...)", "load_in_4bit": "quantization_config=BitsAndBytesConfig(load_in_4bit=True)",
                "load_in_8bit": "quantization_config=BitsAndBytesConfig(load_in_8bit=True)"}
#: top-level modules whose missing names are an API change between versions (bitsandbytes' own are bnb_not_installed)
_API_MODULES = {"transformers", "trl", "peft", "accelerate", "datasets", "setfit", "sentence_transformers", "deepspeed",
                "huggingface_hub", "torch", "diffusers", "tokenizers", "unsloth", "safetensors", "optimum", "vllm"}


def api_owner(cls: str) -> str | None:
    """The library whose public class this is (None: not one fmllm knows)."""
    return next((pkg for rx, pkg in API_OWNERS if rx.match(cls)), None)


def _api_finding(values: dict[str, Any], key: str, cause: str, summary: str, shell: str | None = None) -> dict[str, Any]:
    return {"values": values, "key": key, "cause": cause, "fix": fix(None, summary, shell=shell)}


def _x_api_changed(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    """An argument, attribute or name one library version has and the installed one lacks. Only where the
    message or the frames name a library: 'NoneType' object has no attribute ... is a bug, not an API change."""
    lib = ctx.calling_library()  # the innermost library frame (past deprecation wrappers) called the changed API
    if m.group("arg"):
        return _api_argument(m.group("cls"), m.group("func"), m.group("arg"), lib)
    if m.group("attr"):
        obj, attr = m.group("obj"), m.group("attr")
        owner = api_owner(obj)
        if not owner:
            return None
        renamed = next((old for old, new in RENAMED_ARGS.items() if new == attr), None)
        hint = f" ('{attr}' is the newer name of '{renamed}')" if renamed else ""
        cause = (f"{obj} of the installed {owner} has no attribute '{attr}'{hint} that the code reading it expects: "
                 f"the two sides were written for different versions of {owner}")
        summary = (f"install the {owner} version the calling code was written for (pip show {pip_name(owner)}: older if "
                   f"'{attr}' came with a rename it predates, newer if it was added since), or upgrade the calling "
                   "library to one that follows the change")
        return _api_finding({"library": owner, "attribute": attr, "object": obj}, f"{obj}:{attr}", cause, summary)
    mod = m.group("mod") or m.group("frm")
    name = m.group("mattr") or m.group("name")
    top = mod.split(".")[0]
    if top not in _API_MODULES or "circular import" in ctx.line:
        return None
    return _api_skew(top, f"'{name}' missing from {mod}")


def _api_argument(cls: str | None, func: str, arg: str, lib: str | None) -> dict[str, Any] | None:
    """'X.f() got an unexpected keyword argument': whose call it was decides which side to move."""
    owner = api_owner(cls) if cls else None
    what = f"{cls}.{func}" if cls else func
    new = RENAMED_ARGS.get(arg)
    if owner and not lib:  # the script's own call: the installed library's class no longer (or not yet) takes it
        hint = f": newer {owner} takes {new} instead" if new else ""
        return _api_finding({"library": owner, "argument": arg, "callee": what}, f"{what}:{arg}",
                            f"{what} of the installed {owner} takes no argument '{arg}': the script was written for "
                            f"another {owner} version (the argument was renamed, removed, or is newer)",
                            f"{what} of the installed {owner} has no argument '{arg}'{hint}; write the call for the "
                            f"installed version (pip show {pip_name(owner)}), or install the {owner} version the script "
                            "was written for")
    if lib:  # raised inside a library calling another one: the caller is behind (or ahead of) the callee
        return _api_skew(lib, f"{what}() got an unexpected keyword argument '{arg}'" +
                         (f" (newer versions take {new})" if new else ""))
    if new:  # Python < 3.10 prints no class ('__init__() got ...'): the argument names the rename
        return _api_finding({"argument": arg}, f"{func}:{arg}",
                            f"the call passes '{arg}', an argument the installed library version does not take "
                            f"(newer versions take {new}; older ones may not have it yet)",
                            f"write the call for the installed version ({new} in newer ones), or install the version "
                            "the script was written for")
    return None


def _api_skew(pkg: str, what: str) -> dict[str, Any]:
    return _api_finding({"library": pkg}, f"{pkg}:{what}",
                        f"{what}: {pkg} and the code calling it are at versions that do not match (an API renamed, "
                        "removed or added between them)",
                        f"{pkg} and the libraries calling it are at versions that don't match; upgrade them together "
                        "(or pin the versions the calling code names)", shell=f"pip install -U {pip_name(pkg)}")


#: model_type names of architectures transformers has released: a floor for when transformers is not
#: installed where the log is read (the installed package's model folders add the rest). A type in
#: neither is a project's own (tinyllava, llava_pythia, openvla …), which no transformers upgrade loads.
_RELEASED_MODEL_TYPES = frozenset("""
    albert bart bert bloom chameleon cohere cohere2 dbrx deepseek_v2 deepseek_v3 ernie4_5 exaone4 falcon falcon_h1
    gemma gemma2 gemma3 gemma3_text gemma3n glm glm4 glm4_moe gpt2 gpt_bigcode gpt_neo gpt_neox gpt_oss gptj granite
    granitemoe hunyuan_v1_dense hunyuan_v1_moe idefics2 idefics3 jamba llama llama4 llava llava_next llava_onevision
    mamba mamba2 mistral mistral3 mixtral mllama mpt mt5 olmo olmo2 olmoe opt paligemma persimmon phi phi3 phimoe
    qwen2 qwen2_5_vl qwen2_moe qwen2_vl qwen3 qwen3_moe qwen3_next qwen3_vl roberta smollm3 stablelm starcoder2 t5
    zamba zamba2""".split())

#: transformers' refusal naming the checkpoint's model type (AutoConfig; its start alone, as a terminal may
#: wrap the rest), and the shorter wordings of
#: other loaders ("model type 'x' not recognized", "Unrecognized model type: x")
_MODEL_TYPE_RX = (r"The checkpoint you are trying to load has model type `(?P<mtype>[\w.-]+)`"
                  r"|[Mm]odel type [`'\"](?P<mtype2>[\w.-]+)[`'\"] (?:is )?not recognized|Unrecognized model type:? [`'\"]?(?P<mtype3>[\w.-]+)")


@functools.lru_cache(maxsize=1)
def released_model_types() -> frozenset[str]:
    """model_type names transformers releases know: the fixed floor plus the installed transformers'
    model folders (found with importlib's finder and a directory listing: transformers, and torch with
    it, is never imported by a log scan)."""
    names = set(_RELEASED_MODEL_TYPES)
    try:
        spec = importlib.util.find_spec("transformers")
        if spec is not None and spec.origin:
            models = Path(spec.origin).parent / "models"
            names |= {d.name for d in models.iterdir() if d.is_dir() and not d.name.startswith("_")}
    except (ImportError, OSError, ValueError):
        pass  # no transformers here: the floor alone
    return frozenset(names)


def _named_model_type(m: re.Match[str]) -> str:
    """The model type a refusal names ('' when the paste cut it), spelt as transformers' folders are."""
    t = m.groupdict().get("mtype") or m.groupdict().get("mtype2") or m.groupdict().get("mtype3") or ""
    return t.lower().replace("-", "_")


def _x_custom_model_type(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    """A model type no release knows is the project's own; a released one is transformers_too_old's."""
    mtype = _named_model_type(m)
    if not mtype or mtype in released_model_types():
        return None
    return {"values": {"model_type": mtype}, "key": mtype,
            "cause_suffix": f" (model_type '{mtype}' is not a transformers architecture)"}


def _x_too_old(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    """Upgrading helps only for a released architecture: a type no release knows is a project's own."""
    found = re.search(_MODEL_TYPE_RX, ctx.line)
    mtype = _named_model_type(found) if found else ""
    if mtype and mtype not in released_model_types():
        return None  # custom_model_type_unregistered owns it
    return {"values": {"model_type": mtype}, "key": mtype} if mtype else {}


_DS_MISMATCH_LINE = re.compile(r"^\s*-\s*ds\s+([\w.]+)=(\S+)\s+vs\s+hf\s+(.+?)=(\S+)\s*$")


def _x_ds_mismatch(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    """The DeepSpeed keys transformers lists under its refusal ('- ds X=a vs hf Y=b'): the ones to set to auto."""
    keys = [d.group(1) for d in (_DS_MISMATCH_LINE.match(a) for a in ctx.after[:12]) if d]
    if not keys:
        return {}
    return {"values": {"ds_keys": keys}, "key": ",".join(keys), "cause_suffix": f" ({', '.join(keys)})",
            "fix": fix(None, f"set {', '.join(keys)} to \"auto\" in the DeepSpeed config (the Trainer fills them "
                             "from its arguments and the number of processes), or make them equal to the Trainer's")}


def _x_fsdp_layer(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    """The layer class FSDP looked for, when the message names it (accelerate and newer transformers do)."""
    layer = m.groupdict().get("layer")
    return {"values": {"layer_class": layer}, "key": layer, "cause_suffix": f" (looked for {layer})"} if layer else {}


def _x_hub_auth(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    """No token, or a token that may not write: pushing needs a write token for that namespace."""
    text = " ".join([ctx.line, *ctx.after[:6]])
    if re.search(r"Token must be specified|Token is required|LocalTokenNotFoundError|no token found", text):
        return {"cause": "the Hub needs a token here (pushing, or a private repo) and none was given or found",
                "fix": fix(None, "log in with a write token, or pass it to the command (--token / HF_TOKEN)",
                           shell="hf auth login")}
    if re.search(r"403|don't have the rights", text):
        return {"cause": "the Hub refused to create or write the repo (403): the token is read-only, fine-grained "
                         "without write access there, or the namespace is another user's or an organisation's",
                "fix": fix(None, "use a token with write access to that namespace (or push under your own)",
                           shell="hf auth login")}
    return {}


def _x_precision(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    if "tf32" not in m.group(0):
        return {}
    return {"cause": "TF32 was requested but this GPU is older than Ampere (or CUDA/torch too old): it has no TF32",
            "fix": fix(None, "turn tf32 off (and bf16 with it on a pre-Ampere GPU: fp16 instead)",
                       [("training.tf32", False)]), "values": {"flag": "tf32"}}


def _x_pad(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    if "not set yet" not in m.group(0):
        return {}
    # transformers logs this when code reads tokenizer.pad_token while it is None: harmless when the script sets
    # one right after, the cause when batching fails next; a warning, so an error the run ended on ranks first
    return {"severity": "warning",
            "cause": "the tokenizer had no pad token when the code asked for one: batches that need padding fail "
                     "unless the script sets one (harmless if it does right after)"}


def _x_cuda_error(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    msg = m.group(1).strip()
    low = msg.lower()
    if "out of memory" in low or "no kernel image" in low or "device-side assert" in low:
        return None  # owned by cuda_oom / no_kernel_image / token_id_out_of_range
    v: dict[str, Any] = {"cuda_error": msg}
    out: dict[str, Any] = {"values": v, "key": msg[:60]}
    culprit = ctx.culprit()
    if culprit.get("package") in ("bitsandbytes", "flash_attn", "xformers", "triton", "deepspeed", "liger_kernel"):
        pkg = culprit["package"]
        v["package"] = pkg
        out["cause"] = (f"a CUDA kernel from {pkg} failed ({msg}); the last frame is in {pkg}: "
                        f"a build that doesn't match this GPU/CUDA, or a bug in that version")
        out["fix"] = fix(None, f"reinstall {pip_name(pkg)} built for this torch/CUDA", shell=f"pip install -U --force-reinstall {pip_name(pkg)}")
        if pkg == "flash_attn":
            out["fix"] = FIX_SDPA
    return out


def _x_token_range(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    if "device-side assert" in m.group(0):
        return {"cause": "a CUDA kernel assertion failed: almost always a token or label id outside the vocabulary "
                         "(a new pad token without resized embeddings, or labels out of range); rerun with "
                         "CUDA_LAUNCH_BLOCKING=1 to see the exact call"}
    return {}


def _x_path(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    path = next((g for g in m.groups() if g), None)
    if not path:
        return {}
    out: dict[str, Any] = {"values": {"path": path}, "key": path, "cause_suffix": f": {path}"}
    if _RESUME_STATE.search(path):
        out["id"] = "resume_checkpoint_missing"  # resuming reads these; a checkpoint without them is incomplete
    return out


# the files a resume reads from a checkpoint-N folder besides the weights
_RESUME_STATE = re.compile(r"checkpoint-\d+[/\\](?:trainer_state\.json|optimizer\.pt|scheduler\.pt|rng_state\w*\.pth)$")


def _child_report(lines: list[str]) -> tuple[list[dict[str, Any]], int | None]:
    """The failures (rank, exitcode, signal, section) of an elastic failure report and its root-cause rank."""
    failures: list[dict[str, Any]] = []
    root: int | None = None
    section = None
    cur: dict[str, Any] | None = None
    for raw in lines:
        s = raw.strip()
        if s.startswith("Failures:"):
            section = "failures"
            continue
        if s.startswith("Root Cause"):
            section = "root"
            continue
        if re.match(r"^\[\d+\]:", s):
            cur = {"section": section}
            failures.append(cur)
            continue
        if cur is None:
            continue
        mm = re.match(r"^rank\s*:\s*(\d+)", s)
        if mm:
            cur["rank"] = int(mm.group(1))
            if section == "root":
                root = cur["rank"]
        mm = re.match(r"^exitcode\s*:\s*(-?\d+)", s)
        if mm:
            cur["exitcode"] = int(mm.group(1))
        mm = re.search(r"Signal (\d+) \((\w+)\)", s)
        if mm:
            cur["signal"] = mm.group(2)
        if s.startswith("=====") and cur is not None and section == "root":
            break
    return failures, root


def _x_child_failed(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    """torch.distributed.elastic's failure report: which ranks died, how, and which went first."""
    failures, root = _child_report(ctx.after[:120])
    ranks = sorted({f["rank"] for f in failures if "rank" in f})
    codes = {f["rank"]: f.get("exitcode") for f in failures if "rank" in f}
    v: dict[str, Any] = {"ranks": ranks, "exitcodes": codes}
    if root is not None:
        v["first_failed_rank"] = root
    root_code = codes.get(root) if root is not None else None
    root_fail = next((f for f in failures if f.get("rank") == root and f.get("section") == "root"), None)
    sigs = [root_fail["signal"]] if root_fail and root_fail.get("signal") else (
        [] if root_fail else [f.get("signal") for f in failures if f.get("signal")])
    n = len(ranks)
    cause = f"{n} rank{'s' if n != 1 else ''} of the distributed run died" if n else "the distributed launcher reports failed ranks"
    if ranks:
        cause += f" (ranks {', '.join(map(str, ranks))})"
    if root is not None:
        cause += f"; rank {root} failed first"
        if root_code is not None:
            cause += f" with exit code {root_code}"
    fx: Fix | None = FIX_READ_FIRST_RANK
    extra: list[tuple[str, dict[str, Any]]] = []
    if root_code == -9 or "SIGKILL" in sigs:
        cause += ": SIGKILL, almost always the Linux OOM killer (host RAM ran out)"
        fx = FIX_HOST_RAM
        killed = [r for r, c in codes.items() if c == -9]
        extra.append(("host_oom", {"values": {"signal": 9, "ranks": killed},
                                   "cause": f"rank{'s' if len(killed) != 1 else ''} {', '.join(map(str, killed))} "
                                            "got SIGKILL: the Linux OOM killer, because host RAM ran out"}))
    elif root_code == -6 or "SIGABRT" in sigs:
        cause += ": SIGABRT, typically the NCCL watchdog tearing the process down after a timeout"
        fx = FIX_NCCL
    exc = ctx.rank_exception(root) if root is not None else None
    if exc:
        v["first_error"] = exc
        cause += f"; its error: {exc}"
    return {"values": v, "cause": cause, "fix": fx, "extra": extra}


def _frames_packages(ctx: Any) -> set[str]:
    """Top-level packages of the traceback's frames (site-packages/<pkg>/...)."""
    out = set()
    for fr in getattr(ctx, "frames", []) or []:
        mm = re.search(r"(?:site|dist)-packages[/\\]([A-Za-z_]\w*)", fr.file)
        if mm:
            out.add(mm.group(1))
    return out


_CACHE_PATH = re.compile(r"\.cache[/\\]huggingface|huggingface[/\\](?:datasets|hub)|hf_datasets|HF_DATASETS_CACHE|[/\\]datasets[/\\]"
                         r"|CAS service error|hf_xet")  # hf_xet downloads into the Hub cache


def _x_cache_disk(ctx: Any, text: str) -> bool:
    """Whether a disk-full failure happened inside the datasets/Hub cache (not a checkpoint write)."""
    if "Not enough disk space. Needed" in text or _CACHE_PATH.search(text):
        return True
    pk = _frames_packages(ctx)
    return bool(pk & {"datasets", "huggingface_hub", "pyarrow"}) and not pk & {"safetensors"} and \
        not any(f.func in ("save_pretrained", "_save_checkpoint", "save_model", "_save") for f in getattr(ctx, "frames", []) or [])


# DeepSpeed's optimizer ops (fused_adam, cpu_adam, fused_lamb …) are JIT-built and loaded when the
# optimizer is built, at the start of training: with nothing else to place it, a failure naming one
# is the first step's, not loading's
_OPTIMIZER_OP = re.compile(r"^(?:fused|cpu)_(?:adam|adamw|adagrad|lamb|lion)$")


_JIT_OP = re.compile(r"torch_extensions[/\\][^/\\\s]+[/\\](\w+)[/\\]|(?:Building|Loading) extension module (\w+)"
                     r"|Error building extension '(\w+)'")


def _op_phase(op: str) -> str | None:
    """The phase a failing JIT-built op places a failure in when nothing else does (None: the pattern's own)."""
    return "first_step" if _OPTIMIZER_OP.match(op) else None


def _x_shared_lib(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    text = " ".join([ctx.line, *ctx.after[:2]])
    if "bitsandbytes" in text or "libbitsandbytes" in text or re.search(r"CUDA[ _]SETUP", ctx.line):
        return None  # bitsandbytes' own set-up patterns own it
    if re.search(r"NCCL INFO|Searching in backup paths|No plugin found", text):
        return None  # NCCL looks for optional plugins and says so at INFO level: harmless
    lib = next((g for g in m.groups() if g), "")
    if not lib:  # WinError 126 alone: the DLL's name may follow on the line
        dll = re.search(r"([^\s\"'\\/]+\.dll)", " ".join([ctx.line, *ctx.after[:2]]))
        lib = dll.group(1) if dll else "a DLL"
    name = lib.replace("\\", "/").rsplit("/", 1)[-1]
    v: dict[str, Any] = {"library": name, "path": lib}
    if name.endswith(".dll") or name == "a DLL":
        return {"values": v, "key": name,
                "cause": (f"Windows cannot load {name} or a DLL it depends on: most often the Microsoft Visual C++ "
                          "Redistributable is missing, or the wheel was built for another CUDA"),
                "fix": fix(None, "install the latest Microsoft Visual C++ Redistributable (x64), then reinstall the package "
                                 "that ships the DLL (torch's from the PyTorch index for your CUDA)")}
    if "torch_extensions" in lib:
        op = name.split(".")[0]
        v["extension"] = op
        return {"values": v, "key": name, "default_phase": _op_phase(op),
                "cause": (f"the JIT-compiled extension {op} was never built ({lib} is missing): its build failed "
                          "earlier (no CUDA toolkit / compiler) or was interrupted"),
                "fix": fix(None, f"delete the cached {op} build and let it rebuild with the CUDA toolkit and a C++ compiler "
                                 "on PATH (or pre-build it: DS_BUILD_OPS=1 pip install deepspeed)",
                           shell="rm -rf ~/.cache/torch_extensions")}
    cause = f"the shared library {name} cannot be opened: it is not installed, or not on the loader's path"
    fx = fix(None, f"install the package that provides {name} for this CUDA, or add its folder to LD_LIBRARY_PATH; "
                   "a wheel built for another CUDA major version asks for a library this machine does not have",
             shell=f"ldconfig -p | grep {name.split('.so')[0]}")
    mm = re.match(r"lib(cudart|cublas\w*|cudnn\w*|nccl|nvrtc|cusparse\w*|cufft\w*|curand\w*)\.so\.(\d+)", name)
    if mm:
        cause = (f"{name} (CUDA {mm.group(2)}'s {mm.group(1)}) cannot be opened: a package here was built for CUDA "
                 f"{mm.group(2)} while this environment has another CUDA runtime")
        fx = fix(None, "install the build of that package made for this torch's CUDA (python -c 'import torch; "
                       "print(torch.version.cuda)'), or the matching CUDA runtime", shell="pip list 2>/dev/null | grep -i -E 'cuda|torch|flash|xformers|deepspeed'")
    return {"values": v, "key": name, "cause": cause, "fix": fx}


def _flash_attn_own(text: str) -> bool:
    """Whether an ABI failure is the flash-attn package's own (xformers bundles flash_attn builds of its own)."""
    return "flash_attn" in text and not re.search(r"xformers[/\\]", text)


def _x_flash_abi(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    return {} if "undefined symbol" not in ctx.line or _flash_attn_own(ctx.line) else None


def _x_extension_abi(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    text = " ".join([ctx.line, *ctx.after[:3]])
    if _flash_attn_own(text):
        return None  # flash_attn_abi owns it
    if re.search(r"NumPy 1\.x|version of numpy is", m.group(0)):
        return {"values": {"extension": "numpy"}, "key": "numpy",
                "cause": "a compiled module was built against NumPy 1.x and this environment has NumPy 2 (their C ABI differs)",
                "fix": fix(None, "install NumPy 1.x for now, or upgrade the module that was built against it "
                                 "(the traceback above names it)", shell="pip install 'numpy<2'")}
    mm = re.search(r"([\w.-]+?)(?:\.cpython[^/\s:]*)?\.(?:so|pyd)\b", ctx.line) or re.search(r"(xformers|xFormers)", ctx.line)
    ext = (mm.group(1) if mm else "a compiled extension").lower()
    site = re.search(r"(?:site|dist)-packages[/\\]([A-Za-z]\w*)[/\\]", ctx.line)  # the package the binary ships in
    pkg = "deepspeed" if "torch_extensions" in ctx.line else pip_name(site.group(1)) if site else \
        pip_name(ext.split(".")[0]) if mm else None
    cause = (f"{ext} was compiled against another torch/CUDA/Python than this one (its C++ symbols do not match): "
             "the binary and torch must come from matching builds")
    v: dict[str, Any] = {"extension": ext}
    shell = f"pip install --force-reinstall --no-build-isolation {pkg}" if pkg else None
    if "torch_extensions" in ctx.line:
        shell = "rm -rf ~/.cache/torch_extensions"
        cause += "; a stale JIT build in ~/.cache/torch_extensions from another torch"
    return {"values": v, "key": ext, "cause": cause, "default_phase": _op_phase(ext),
            "fix": fix(None, f"install a {pkg or ext} wheel built for this torch (or rebuild it against it); another "
                             "attention backend or optimizer only hides the broken install", shell=shell)}


def _x_hub_404(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    text = " ".join([ctx.line, *ctx.after[:3]])
    if re.search(r"Repository Not Found|Revision Not Found|RepositoryNotFoundError|RevisionNotFoundError", ctx.line):
        return None  # hub_not_found / hub_revision_not_found own them
    # huggingface.co or a mirror serving the same paths (hf-mirror.com, HF_ENDPOINT)
    url = re.search(r"(https?://[\w.:-]+)/(\S+?)['\"]?\.?(?:\s|$)", text)  # a sentence's last '.' is not the file's
    v: dict[str, Any] = {"url": f"{url.group(1)}/{url.group(2)}"} if url else {}
    path = url.group(2) if url else ""
    if url and "huggingface.co" not in url.group(1):
        v["endpoint"] = url.group(1)
    api = re.match(r"api/models/([\w.-]+(?:/(?!(?:revision|tree)/)[\w.-]+)?)(?:/(revision|tree)/([^/?\s]+)/?([^?\s]*))?", path)
    res = re.match(r"(?:datasets/)?([\w.-]+/[\w.-]+)/resolve/([^/\s]+)/(\S+)", path)
    if api and api.group(2) == "tree" and api.group(4):
        v.update(repo_id=api.group(1), file=api.group(4))
        return {"values": v, "key": path,
                "cause": (f"the Hub answered 404 for '{api.group(4)}' in {api.group(1)}: the library asks for an optional "
                          "file that this version of huggingface_hub treats as required (transformers and "
                          "huggingface_hub at versions that do not match)"),
                "fix": fix(None, "upgrade transformers and huggingface_hub together", shell="pip install -U transformers huggingface_hub")}
    if res:
        v.update(repo_id=res.group(1), revision=res.group(2), file=res.group(3))
        return {"values": v, "key": path,
                "cause": (f"the Hub has no file '{res.group(3)}' in {res.group(1)} at {res.group(2)} (404): the code asks "
                          "for a file name (or revision) this repo does not have"),
                "fix": fix(None, f"check which files {res.group(1)} has (its Files tab) and use the library version or "
                                 "revision that matches them", shell=f"hf download {res.group(1)} --dry-run")}
    # no owner and no config.json (which every model has, old owner-less ids like gpt2 too): a local
    # path that does not exist, looked up on the Hub instead
    one = re.match(r"([\w.-]+)/resolve/[^/\s]+/(config\.json)$", path)
    if one and not res:
        v.update(repo_id=one.group(1), file=one.group(2))
        return {"values": v, "key": path,
                "cause": (f"'{one.group(1)}' is not a folder here, so it was looked up as a Hub id, and the Hub has no "
                          "such model (404 for its config.json): the local path is wrong, relative to another directory, "
                          "or the model was never saved there"),
                "fix": fix("model.id", "point base_model_name at the folder that holds config.json (an absolute path), "
                                       "or at a Hub id owner/name", [("base_model_name", "an existing model id or local path")])}
    if api:
        v["repo_id"] = api.group(1)
        return {"values": v, "key": path, "cause": f"the Hub has no model '{api.group(1)}' (404): the id is wrong (a typo, "
                "a lost '/'), or the repo is private and no token was sent", "fix": FIX_MODEL_ID}
    return {"values": v, "key": path}


def _x_loss_nan_printed(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    """A NaN loss in a bar's postfix or a final metrics block: nothing says when it started, so both usual
    causes are named (fp16 overflow first: a bar or a metrics block rarely comes with the steps before it)."""
    phase = "eval" if "eval" in m.group(0) else ""
    out: dict[str, Any] = {
        "cause": ("the printed loss is NaN: fp16 overflowed (models pretrained in bf16 often do) or training diverged "
                  "(learning rate too high)"),
        "fix": fix("dtype.compute", "train in bf16 (or fp32) instead of fp16; if it already is, lower the learning rate",
                   [("training.fp16", False), ("training.bf16", True)])}
    if phase:
        out["phase"] = phase
    return out


def _x_labels_masked(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    if "-100" not in m.group(0) and "will be" not in m.group(0):
        return {}  # a final metrics block (the Trainer's, TrainOutput, wandb's summary): the pattern's own words
    return {"severity": "error", "default_phase": "first_step",
            "cause": ("every label of the dataset is -100 (masked), so the loss would be 0 and nothing is learnt: the "
                      "instruction/response markers given to the response-only masking (train_on_responses_only, a "
                      "completion-only collator) do not occur in the formatted text"),
            "fix": fix(None, "print one formatted example and pass the markers exactly as the chat template writes them "
                             "(or train on the whole text)")}


def _x_no_cuda(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    if "False" in m.group(0) or "is_available()" not in m.group(0):
        return {}
    # a REPL's check: its answer is the next line ('False', IPython's 'Out[3]: False')
    nxt = next((a.strip() for a in ctx.after[:2] if a.strip()), "")
    if not re.fullmatch(r"(?:Out\[\d*\]:\s*)?False", nxt):
        return None
    return {"values": {"cuda_available": False},
            "cause": "torch.cuda.is_available() is False: this torch sees no GPU (a CPU-only torch wheel, "
                     "or no working NVIDIA driver)",
            "fix": fix(None, "install a CUDA build of torch (pip's default on Windows is CPU-only) from the PyTorch "
                             "index for your CUDA, and check the driver with nvidia-smi",
                       shell="pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu121")}


def _x_nccl_error(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    if "P2P or IB" not in m.group(0):
        return {}
    return {"values": {"p2p": False},
            "cause": ("these consumer GPUs (RTX 40xx) have no peer-to-peer or InfiniBand transport, so accelerate "
                      "refuses to start NCCL with them on"),
            "fix": fix(None, "turn both off in the environment of the training process itself (or start it with "
                             "accelerate launch, which sets them); with one GPU, hide the others",
                       shell="export NCCL_P2P_DISABLE=1 NCCL_IB_DISABLE=1")}


def _x_deprecation(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    if re.match(r"\s*(?:[\w.]+\.)?\w*(?:Error|Exception)\b", ctx.line):
        return None  # an exception that says a name is deprecated stopped the run: not a note
    # one note per notice (torch's checkpoint default and a trainer's renamed argument are two things to read), the
    # same notice repeated counted on the first: keyed by its words, without the printing file's path and numbers
    words = re.sub(r"\d+", "#", ctx.line.split("Warning: ", 1)[-1].strip())[:80]
    return {"key": words}


_TIED_HEADS = re.compile(r"^(?:lm_head|cls\.predictions\.decoder|output_projection|embed_out)\.weight$")


def _x_new_weights(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    names = re.findall(r"'([\w.]+)'", " ".join([ctx.line, *ctx.after[:2]]).split(m.group(0), 1)[-1])
    if names and all(_TIED_HEADS.match(n) for n in names):
        # the output head shares the input embeddings' weight (tie_word_embeddings): tied after loading
        return {"severity": "info", "values": {"weights": names},
                "cause": (f"only the output head ({', '.join(names)}) is reported: in models that tie it to the input "
                          "embeddings (GPT-2 and most small LMs) it is set from them after loading: harmless"),
                "fix": fix(None, "nothing to change when the model ties its embeddings (config.tie_word_embeddings); "
                                 "if it does not, the checkpoint lacks its head: check base_model_name")}
    return {"values": {"weights": names[:8]}} if names else {}


def _x_quantized_moved(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    if any(fr.func.rsplit(".", 1)[-1] == "dispatch_model" for fr in getattr(ctx, "frames", []) or []):
        # from_pretrained's own dispatch moved it: the user's code did not call .to()
        return {"cause": ("from_pretrained's dispatch (accelerate's dispatch_model) called .to() on the 4/8-bit model: "
                          "accelerate and transformers at versions that do not match, or a device_map with one device"),
                "fix": fix(None, "upgrade transformers and accelerate together (or pass device_map='auto')",
                           shell="pip install -U transformers accelerate")}
    return {}


def _x_padding_side(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    # the refusal is an error; the notice a warning
    return {"severity": "error"} if "attempting to perform" in m.group(0) else {}


def _x_shape_mismatch(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    text = " ".join([ctx.line, *ctx.after[:2]])
    shapes = re.findall(r"torch\.Size\(\[([\d, ]+)\]\)", text)
    v: dict[str, Any] = {"shapes": shapes[:2]} if shapes else {}
    rows = [sh.split(",")[0].strip() for sh in shapes[:2]]
    if re.search(r"embed|lm_head|wte|word_embeddings|shared\.weight|output\.weight", text) and len(set(rows)) == 2:
        v["vocab_sizes"] = rows
        return {"values": v, "cause": (f"the vocabulary sizes differ ({rows[0]} vs {rows[1]} rows in the embeddings): "
                                       "tokens were added on one side and the embeddings resized there only")}
    return {"values": v}


def _x_shared_tensors(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    if m.group(0).startswith("Removed"):  # transformers dropped the tied copy itself: a note
        return {"severity": "info", "cause": "transformers removed a tied copy of a shared tensor while saving: "
                "expected for tied embeddings, harmless when the model ties them again on load"}
    return {}


def _x_zero_overflow(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    scale = _float(m.group(1)) if m.lastindex else None
    v: dict[str, Any] = {"loss_scale": scale} if scale is not None else {}
    stage3 = "stage3" in ctx.line or "stage_3" in ctx.line
    v["zero_stage"] = 3 if stage3 else None
    cause = ("DeepSpeed skips steps on fp16 gradient overflow" + (" in ZeRO stage 3" if stage3 else "")
             + (f" (loss scale {scale:g})" if scale is not None else "")
             + ": with fp16 the partitioned gradients overflow, the loss scale keeps halving and steps are thrown away")
    sev = "error" if scale is not None and scale <= 1 else "warning"
    return {"values": v, "cause": cause, "severity": sev}


def _x_toolkit(m: re.Match[str], ctx: Any) -> dict[str, Any] | None:
    line = ctx.line
    if "UserWarning" in line and not re.search(r"setup\.py|pip-install|pip-req-build|egg_info|bdist_wheel", line):
        return None  # DeepSpeed warns at import when nvcc is absent: harmless until it must build an op
    # the op being JIT-built (named on this line or the next few) places the failure: an optimizer's
    # op is built when the optimizer is
    op = _JIT_OP.search(" ".join([line, *ctx.after[:4]]))
    out: dict[str, Any] = {"values": {"message": m.group(0)[:200]}, "key": "",
                           "default_phase": _op_phase(next(g for g in op.groups() if g)) if op else None}
    if "Visual C++" in m.group(0):
        out["fix"] = fix(None, "install the Microsoft C++ Build Tools (the 'Desktop development with C++' workload), or "
                               "install a prebuilt wheel of the package instead of building it")
    wheel = re.search(r"Failed building wheel for ([\w-]+)", m.group(0))
    if wheel:
        out["values"]["package"] = wheel.group(1)
        out["fix"] = fix(None, f"install a prebuilt {wheel.group(1)} wheel made for this torch, CUDA and Python instead of "
                               "building it; to build, the compiler error above this line names what is missing")
    return out


def _x_bnb_setup(m: re.Match[str], ctx: Any) -> dict[str, Any]:
    if "WARNING!" in m.group(0) or "Manual override" in m.group(0):
        # bitsandbytes' search warnings: the set-up may still succeed (a later failure upgrades it)
        cause = ("bitsandbytes' CUDA set-up is searching for the CUDA runtime (libcudart.so not on the library path) or was "
                 "told to load another CUDA's binary (BNB_CUDA_VERSION): if 4-bit loading fails next, this is why")
        return {"severity": "warning", "cause": cause,
                "fix": fix(None, "unset BNB_CUDA_VERSION and let bitsandbytes find this torch's CUDA runtime",
                           shell="export BNB_CUDA_VERSION= && python -m bitsandbytes")}
    return {}


def _float(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

ERR = "error"
WARN = "warning"
INFO = "info"  # not a failure: checks report it as a note

PATTERNS: list[Pattern] = [
    # ---- GPU memory -------------------------------------------------------------------------
    _p("cuda_oom", ERR, "CUDA out of memory in a training step",
       "the GPU ran out of memory in a training step: the batch's activations do not fit",
       FIX_MEMORY,
       r"(?:CUDA|HIP|XPU) out of memory\. Tried to allocate|OutOfMemoryError: (?:CUDA|HIP) out of memory"
       r"|CUDA (?:driver )?error: out of memory|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_NOT_ENOUGH_MEMORY|cudaErrorMemoryAllocation"
       # the bare class (torch >= 2.5 raises torch.OutOfMemoryError for every backend): not CUDA's when the message
       # names Apple's MPS (mps_oom owns it)
       r"|(?:torch\.(?:cuda\.)?)?OutOfMemoryError(?::(?!\s*MPS backend)|\s+Traceback \(most recent call last\))",
       ("out of memory", "ALLOC_FAILED", "NOT_ENOUGH_MEMORY", "cudaErrorMemoryAllocation", "OutOfMemoryError")),
    _p("cuda_oom_eval", ERR, "CUDA out of memory during evaluation",
       "the GPU ran out of memory while evaluating (the eval batch or its logits), not while training",
       FIX_EVAL_BATCH, None),
    _p("cuda_oom_loading", ERR, "CUDA out of memory while loading the model",
       "the GPU ran out of memory while loading the weights: the model does not fit as loaded",
       FIX_MEMORY_LOAD, None),
    _p("cuda_oom_save", ERR, "CUDA out of memory while saving a checkpoint",
       "the GPU ran out of memory while saving a checkpoint (gathering the state dict)",
       FIX_SAVE_OOM, None),
    _p("cuda_oom_late", ERR, "CUDA out of memory at a late step",
       "the GPU ran out of memory after many successful steps: one unusually long batch, not the batch size",
       FIX_SEQ_LEN, None),
    _p("cuda_oom_generation", ERR, "CUDA out of memory while generating",
       "the GPU ran out of memory while generating text (sampling for GRPO/PPO, predict_with_generate, or a sample "
       "after training): the KV cache of the sequences generated at once, not the training step",
       fix(None, "generate fewer sequences at once and fewer max_new_tokens; the train batch is not the cause"), None,
       phase="generation"),
    _p("cuda_oom_merge", ERR, "CUDA out of memory while merging the adapter",
       "the GPU ran out of memory while merging the LoRA adapter into the base model, which is loaded unquantized in 16-bit",
       fix(None, "merge on the CPU (hide the GPU) or on a card that holds the full 16-bit model",
           shell='export CUDA_VISIBLE_DEVICES=""'), None, phase="merge"),
    _p("model_too_big_per_card", ERR, "the model does not fit on each card",
       "every process of a multi-GPU run loads its own full copy of the model and one card cannot hold it",
       fix(None, "split the model across the cards instead of one copy per card (FSDP, or one process with "
           "device_map='auto'), or load it in 4-bit; a smaller batch does not help", [("quantization.use_4bit", True)]),
       None, phase="load"),
    _p("cuda_oom_fragmentation", WARN, "GPU memory fragmentation",
       "a large share of PyTorch's reserved memory was free but fragmented, so the allocation failed anyway",
       FIX_ALLOC_CONF, None),
    _p("gpu_other_process", ERR, "another process holds GPU memory",
       "another process was holding a large part of the GPU's memory when training ran out",
       FIX_OTHER_PROCESS, None),
    _p("mps_oom", ERR, "MPS (Apple GPU) out of memory",
       "the Apple GPU ran out of memory", FIX_MEMORY,
       r"MPS backend out of memory", ("MPS backend out of memory",)),
    _p("auto_batch_exhausted", ERR, "auto batch size reached zero",
       "auto_find_batch_size halved the batch down to zero: even batch 1 does not fit",
       fix("memory.fit", "even batch size 1 does not fit: shorten max_seq_length, use 4-bit and gradient checkpointing",
           [("training.max_seq_length", "halve"), ("training.gradient_checkpointing", True), ("quantization.use_4bit", True)]),
       r"No executable batch size found, reached zero", ("No executable batch size",)),
    _p("quantized_moved", ERR, "a 4/8-bit model moved by hand",
       "the code calls .to()/.cuda() on a bitsandbytes 4-bit or 8-bit model, which is already on its devices and "
       "cannot be moved or cast",
       fix(None, "drop the .to(device)/.cuda()/.half() call on the quantized model: load it with device_map "
                 "(device_map={'': local_rank} with one process per GPU)"),
       r"`\.(?:to|cuda|half|float)` is not supported for `(?:4-bit|8-bit)|Calling `(?:cuda|to)\(\)` is not supported for "
       r"`(?:4-bit|8-bit)`", extract=_x_quantized_moved, phase="load"),
    _p("modules_offloaded", ERR, "model modules dispatched to CPU or disk",
       "the quantized model does not fit on the GPU, so device_map put some modules on the CPU or disk",
       FIX_MEMORY_LOAD,
       r"Some modules are dispatched on the CPU or the disk|Some parameters are on the meta device because they were offloaded to the (?:cpu|disk)"
       r"|offloaded to the (?:cpu|disk)|Cannot copy out of meta tensor; no data|Tensor on device meta is not on the expected device",
       ("dispatched on the CPU", "offloaded to the", "meta tensor", "device meta")),
    # ---- host -------------------------------------------------------------------------------
    _p("host_oom", ERR, "host RAM exhausted (process killed)",
       "the process was killed by the operating system, almost always because the machine ran out of RAM",
       FIX_HOST_RAM,
       r"(?:^|[\]\s|>])Killed\s*$|^Killed(?:\s|$)|exitcode\s*:\s*-9\b|Signal 9 \(SIGKILL\) received"
       r"|died with <Signals\.SIGKILL: 9>|killed by signal: Killed|terminated with signal SIGKILL"
       r"|Out of memory: Killed process|\bMemoryError\s*$|DefaultCPUAllocator: (?:not enough memory|can't allocate memory)"
       r"|Cannot allocate memory \(12\)|\[Errno 12\] Cannot allocate memory",
       ("Killed", "-9", "SIGKILL", "MemoryError", "DefaultCPUAllocator", "Cannot allocate memory"), _x_sigkill),
    _p("disk_full", ERR, "disk full",
       "the disk ran out of space while writing (checkpoints, dataset cache or model download)",
       FIX_SAVE_LIMIT,
       r"No space left on device|\[Errno 28\]|StorageFull|PytorchStreamWriter failed writing file|unexpected pos \d+ vs \d+"
       r"|Disk quota exceeded|Not enough disk space\. Needed|Not enough free disk space to download the file",
       ("No space left", "Errno 28", "StorageFull", "PytorchStreamWriter", "unexpected pos", "Disk quota", "disk space"), _x_disk),
    _p("cache_disk_full", ERR, "disk full in the datasets/Hub cache",
       "the disk holding the Hugging Face datasets/Hub cache ran out of space (dataset download, Arrow cache of map/tokenize)",
       fix(None, "point the caches at a disk with room (HF_HOME, HF_DATASETS_CACHE, or cache_dir) and clear old entries "
           "(hf cache ls); pruning checkpoints does not help here", shell="export HF_DATASETS_CACHE=/path/on/a/bigger/disk/hf_datasets"),
       None, phase="load"),
    # ---- bitsandbytes -----------------------------------------------------------------------
    _p("bnb_setup", ERR, "bitsandbytes set-up failed",
       "bitsandbytes could not load its CUDA library (CPU-only build loaded, CUDA mismatch, or torch without CUDA)",
       FIX_BNB,
       r"CUDA Setup failed despite GPU being available|libbitsandbytes_cpu\.(?:so|dll|dylib)|compiled without GPU support"
       r"|bitsandbytes library load error|Could not load bitsandbytes native library|native library functionality but it's not available"
       r"|CUDA SETUP: (?:Problem|Required library version not found|Something unexpected happened)|argument of type 'WindowsPath' is not iterable"
       r"|CUDA_?SETUP: WARNING! libcudart\.so not found|Manual override via BNB_CUDA_VERSION env variable detected",
       ("CUDA Setup", "libbitsandbytes_cpu", "without GPU support", "bitsandbytes", "CUDA SETUP", "native library", "WindowsPath",
        "CUDA_SETUP", "BNB_CUDA_VERSION"),
       _x_bnb_setup),
    _p("bnb_cuda_binary_missing", ERR, "no bitsandbytes binary for this CUDA",
       "bitsandbytes has no binary for the CUDA version this torch uses (torch's CUDA is newer than the bnb wheel)",
       FIX_BNB, r"Configured (?:CUDA|ROCm) binary not found|libbitsandbytes_cuda\d+\w*\.so: cannot open|VERSION MISMATCH",
       ("binary not found", "libbitsandbytes_cuda", "VERSION MISMATCH")),
    _p("bnb_native_missing", ERR, "bitsandbytes native functions missing",
       "bitsandbytes loaded without its native library, so 4-bit quantization functions are missing",
       FIX_BNB, r"'NoneType' object has no attribute 'c(?:quantize|dequantize|get_managed_ptr|prefetch|gemm|get_col_row_stats"
       r"|igemmlt|double_row_col_quant|transform|extract_outliers|adam|lion|sgd|momentum|rmsprop|adagrad|ademamix)\w*'"
       r"|object has no attribute 'cquantize_blockwise", ("NoneType", "cquantize")),
    _p("bnb_not_installed", ERR, "bitsandbytes missing or too old",
       "4-bit/8-bit loading needs bitsandbytes, which is missing or too old",
       FIX_BNB, r"Using `bitsandbytes` (?:4|8)-bit quantization requires|the latest version of bitsandbytes"
       r"|Using `load_in_(?:4|8)bit=True` requires Accelerate"
       r"|needs bitsandbytes, which is not installed|bitsandbytes is not installed|No package metadata was found for bitsandbytes"
       r"|module 'bitsandbytes(?:\.nn)?' has no attribute",
       ("bitsandbytes",)),
    # ---- Hub ---------------------------------------------------------------------------------
    _p("hub_gated", ERR, "gated model: no access",
       "the model is gated: its licence has not been accepted on the Hub, or no token with access was used",
       FIX_LOGIN,
       r"GatedRepoError|Cannot access gated repo|You are trying to access a gated repo|is a gated repository|"
       r"Access to model [\w./-]+ is restricted|awaiting a review from the repo authors",
       ("gated", "Gated", "restricted", "awaiting a review"), _x_gated),
    _p("hub_not_found", ERR, "model not found on the Hub",
       "the model id does not exist on the Hub (a typo), or it is private and no token was given",
       FIX_MODEL_ID,
       r"RepositoryNotFoundError|Repository Not Found for url|is not a local folder and is not a valid model identifier"
       r"|does not appear to have a file named (?:config\.json|pytorch_model\.bin|model\.safetensors)"
       r"|Can't load (?:tokenizer|the configuration of|the model) for '|Incorrect path_or_model_id: '"
       r"|Repo id must (?:be in the form|use alphanumeric chars)"
       # the Hub answers 401, not 404, for a repo that does not exist when no token is sent (or a private one)
       r"|401 Client Error: Unauthorized for url: https?://[\w.:-]+/(?:datasets/)?(?:[\w.-]+/)?[\w.-]+/resolve/",
       ("Not Found", "NotFound", "not a valid model identifier", "does not appear to have a file named", "Can't load",
        "Incorrect path_or_model_id", "Repo id must", "401 Client Error"), _x_repo_or_401),
    _p("hub_revision_not_found", ERR, "revision not found",
       "the requested revision (branch, tag or commit) does not exist for this model",
       fix(None, "set fmllm.revision to a branch, tag or commit that exists (or remove it)", [("fmllm.revision", None)]),
       r"RevisionNotFoundError|Revision Not Found for url|is not a valid git identifier \(branch name, tag name or commit id\)",
       ("Revision", "valid git identifier"), _x_repo),
    _p("hub_http_404", ERR, "the Hub answered 404",
       "a request to the Hugging Face Hub got 404 Not Found: the model id, the file name or the revision does not exist there",
       FIX_MODEL_ID,
       # huggingface.co, or any host serving the Hub's URL shapes (a mirror such as hf-mirror.com, HF_ENDPOINT):
       # /<owner>/<name>/resolve/<rev>/<file> and /api/models|datasets/...
       r"404 Client Error[:.]? (?:\(Request ID: [^)]*\) )?(?:Not Found|Entry Not Found) for url: https?://(?:huggingface\.co"
       r"|[\w.:-]+/(?:api/(?:models|datasets|spaces)/|(?:datasets/)?[\w.-]+/[\w.-]+/resolve/))"
       r"|Client error '404 Not Found' for url '?https?://(?:huggingface\.co|[\w.:-]+/(?:api/(?:models|datasets|spaces)/|(?:datasets/)?[\w.-]+/[\w.-]+/resolve/))"
       # the class on its own word: LocalEntryNotFoundError (offline, or a cache miss with no connection) is hub_unreachable's
       r"|\b(?:Remote)?EntryNotFoundError\b|Entry Not Found for url: https?://",
       extract=_x_hub_404),
    _p("hub_unreachable", ERR, "Hugging Face Hub unreachable",
       "the Hub could not be reached (no network, proxy, or offline mode) and the files are not in the local cache",
       fix(None, "download the model once where there is network (or point base_model_name at a local copy); "
                 "HF_HUB_OFFLINE=1 only works with a full cache", shell="hf download <model-id>"),
       r"We couldn't connect to '?https?://huggingface\.co|LocalEntryNotFoundError|outgoing traffic has been disabled"
       r"|Cannot find the requested files in the (?:local|disk) cache|HTTPSConnectionPool\(host='(?:huggingface\.co|cdn-lfs[\w.-]*|cas-bridge[\w.-]*)'"
       r"|(?:ConnectError|ConnectTimeout|ReadTimeout|ConnectionError|SSLError|ProxyError)\b.*(?:huggingface\.co|host='hugg)|HTTPSConnectionPool\(host='hugg|Max retries exceeded with url: /api/models"
       r"|Temporary failure in name resolution.*huggingface|Failed to resolve 'huggingface\.co'|50[0234] Server Error.*huggingface\.co",
       ("huggingface", "LocalEntryNotFoundError", "outgoing traffic", "requested files in the", "host='hugg")),
    _p("hub_auth_invalid", ERR, "invalid Hugging Face token",
       "the Hugging Face token is invalid or expired",
       fix(None, "log in again with a valid token (or fix HF_TOKEN)", shell="hf auth login"),
       r"Invalid (?:user token|credentials in Authorization header)|Invalid token passed"
       r"|401 Client Error: Unauthorized for url: https://huggingface\.co/api/whoami"
       # pushing: no token at all (autotrain's check, huggingface_hub's LocalTokenNotFoundError), or one that may not
       # create the repo (403 on /api/repos/create, 'You don't have the rights to create a model under the namespace')
       r"|Token must be specified for push|Token is required \(`?token=True`?\), but no token found|LocalTokenNotFoundError"
       r"|40[13] Client Error: (?:Forbidden|Unauthorized) for url: https?://[\w.-]+/api/repos/create"
       r"|You don't have the rights to create a (?:model|dataset|space) under (?:the|this) namespace",
       ("Invalid", "api/whoami", "Token must be specified", "no token found", "LocalTokenNotFoundError", "api/repos/create",
        "have the rights to create"), _x_hub_auth, span=6),
    _p("hub_rate_limited", ERR, "Hub rate limit",
       "the Hub refused requests for going over its rate limit (429)",
       fix(None, "log in (authenticated requests have a higher limit) and retry later", shell="hf auth login"),
       r"429 Client Error|Too Many Requests for url", ("429", "Too Many Requests")),
    _p("trust_remote_code", ERR, "model needs trust_remote_code",
       "the model ships its own Python code, which runs only if you allow it",
       fix(None, "read the model's code on the Hub, then allow it (it runs on your machine)", [("fmllm.trust_remote_code", True)]),
       r"contains custom code which must be executed|set the option `trust_remote_code=True`|Please pass the argument `trust_remote_code=True`"
       # the exception line itself, when a paste cuts it before 'trust_remote_code' (older: 'the configuration file')
       r"|requires you to execute (?:the )?(?:custom code|configuration file|modeling file)",
       ("trust_remote_code", "custom code", "requires you to execute")),
    # before transformers_too_old: the same message, told apart by the model type it names
    _p("custom_model_type_unregistered", ERR, "a model type no transformers release knows",
       "the checkpoint's model_type is a project's own architecture, not one transformers ships, so no "
       "transformers version can load it through the Auto classes",
       FIX_CUSTOM_MODEL_TYPE, _MODEL_TYPE_RX, ("odel type",), _x_custom_model_type),
    _p("transformers_too_old", ERR, "transformers does not know this architecture",
       "the model's architecture is newer than the installed transformers",
       fix(None, "upgrade transformers", shell="pip install -U transformers"),
       r"Transformers does not recognize this architecture|does not recognize this architecture"
       r"|The checkpoint you are trying to load has model type `[\w-]+`|Tokenizer class \w+ does not exist or is not currently imported"
       r"|`rope_scaling` must be a dictionary with (?:with )?two fields",
       ("recognize this architecture", "has model type", "does not exist or is not currently imported", "rope_scaling"),
       _x_too_old),
    _p("weights_corrupt", ERR, "weights file unreadable",
       "a weights file is truncated or is a Git LFS pointer instead of the real file (interrupted download)",
       fix(None, "delete the broken file from the cache and download it again", shell="hf download <model-id> --force-download"),
       r"HeaderTooLarge|MetadataIncompleteBuffer|invalid load key, '[^']*'|PytorchStreamReader failed reading zip archive",
       ("HeaderTooLarge", "MetadataIncompleteBuffer", "invalid load key", "PytorchStreamReader")),
    _p("weights_not_initialized", WARN, "some weights were newly initialized",
       "some weights were not in the checkpoint and start random: fine for a new head, wrong for a causal LM's layers",
       FIX_MODEL_ID,
       r"were not initialized from the model checkpoint at|Weights of \w+ not initialized from pretrained model",
       ("were not initialized", "not initialized from pretrained"), _x_new_weights),
    # ---- attention ---------------------------------------------------------------------------
    _p("flash_attn_missing", ERR, "flash-attn not installed",
       "flash_attention_2 was requested but the flash-attn package is not installed or not usable here",
       FIX_SDPA,
       r"FlashAttention2? has been toggled on, but it cannot be used|flash_attn seems to be not installed"
       r"|package for FlashAttention\d? doesn't seem to be installed|Flash Attention 2 is not available|FlashAttention2? is not available on CPU",
       ("FlashAttention", "flash_attn", "Flash Attention")),
    _p("flash_attn_unsupported_gpu", ERR, "flash-attn needs an Ampere or newer GPU",
       "flash-attn only runs on Ampere or newer GPUs (not T4, V100, RTX 20xx)",
       FIX_SDPA, r"FlashAttention only supports Ampere GPUs or newer|FlashAttention(?:2)? (?:only )?supports? .*(?:sm8x|sm_8|Ampere)",
       ("FlashAttention",)),
    _p("flash_attn_abi", ERR, "flash-attn binary does not match torch",
       "the flash-attn wheel was built for another torch/CUDA (undefined symbol)",
       fix(None, "install a flash-attn wheel built for this torch and CUDA (or build it against them); "
           "fmllm.attn_implementation: sdpa runs without it", shell="pip install --force-reinstall --no-build-isolation flash-attn"),
       r"flash_attn\w*.*undefined symbol|undefined symbol.*flash_attn|Flash Attention 2 installation seems to be broken",
       ("undefined symbol", "installation seems to be broken"), _x_flash_abi),
    _p("extension_abi", ERR, "compiled extension does not match torch",
       "a compiled extension (xformers, a DeepSpeed op, bitsandbytes, apex …) was built for another torch/CUDA/Python",
       fix(None, "install a wheel of that package built for this torch (or rebuild it against it)"),
       r"undefined symbol: \S+|xFormers can't load C\+\+/CUDA extensions|was compiled against (?:a different|an? (?:older|newer)) version of"
       r"|DLL load failed while importing \w+|built for:?\s+PyTorch [\d.]+\S* with CUDA"
       r"|PyTorch and torchvision were compiled with different CUDA (?:major )?versions"
       # NumPy's ABI: a module built against NumPy 1.x imported under NumPy 2
       r"|A module that was compiled using NumPy 1\.x cannot be run in|module compiled against API version \w+ but this "
       r"version of numpy is", extract=_x_extension_abi),
    _p("shared_lib_missing", ERR, "shared library not found",
       "a native library that a package loads (a CUDA runtime, NCCL, a compiled extension) cannot be opened",
       fix(None, "install the package that provides the library, or put its folder on LD_LIBRARY_PATH"),
       r"(\S+\.so(?:\.[\d.]+)?): cannot open shared object file|(?:Could not load library|Could not load dynamic library|"
       r"Unable to load) '?(lib[\w.-]+\.so[\w.]*)'?|(lib[\w-]+\.so[\d.]*)(?:: cannot open| not found|: No such file)"
       # Windows: a DLL (or one it needs) cannot be loaded
       r"|Error loading \"([^\"]+\.dll)\" or one of its dependencies|\[WinError 126\] The specified module could not be found"
       r"|Could not load library ([\w.-]+\.dll)",
       extract=_x_shared_lib),
    _p("cuda_toolkit_env", ERR, "CUDA toolkit or compiler missing for a build",
       "a CUDA extension (DeepSpeed op, flash-attn, bitsandbytes from source …) is being compiled here and the CUDA "
       "toolkit (nvcc, headers), CUDA_HOME or a C++ compiler is missing, or its CUDA differs from torch's",
       fix(None, "install a prebuilt wheel instead of compiling; or install the CUDA toolkit matching torch.version.cuda "
           "and a C++ compiler, and set CUDA_HOME", shell="export CUDA_HOME=/usr/local/cuda"),
       r"CUDA_HOME does not exist|CUDA_HOME environment variable is not set|nvcc was not found|nvcc: (?:not found|command not found)"
       r"|No such file or directory: '[^']*nvcc'|fatal error: (?:cuda/\w+|cuda\w*\.h|cu(?:blas|sparse|rand|fft)\w*\.h|nccl\.h|"
       r"thrust/\S+|cub/\S+): No such file or directory|Error building extension '[\w.-]+'|The detected CUDA version \([\d.]+\) "
       r"mismatches the version that was used to compile|Installed CUDA version [\d.]+ does not match the version torch was compiled"
       r"|unsupported GNU version|Command '\['which', '(?:c\+\+|g\+\+|gcc|nvcc)'\]' returned non-zero|error:? command (?:'|\"|“)[^'\"]*?"
       r"(?:nvcc|gcc|g\+\+|c\+\+|cl)(?:\.exe)?(?:'|\"|”) failed|Ninja is required to load C\+\+ extensions|nvcc fatal\s*:"
       # setuptools could not start the compiler; ninja's build of a JIT op failed; torch's compiler-version check
       r"|unable to execute '[^']*(?:nvcc|gcc|g\+\+|c\+\+|cl\.exe)'|Command '\['ninja', '-v'[^\]]*\]' returned non-zero exit status"
       r"|The current installed version of (?:g\+\+|gcc|clang\+\+|cl) \([^)]*\) is (?:less|greater) than the (?:minimum|maximum) required"
       r"|fatal error: Python\.h: No such file or directory"
       # torch's build of an extension, flash-attn's nvcc check, Windows without MSVC, and pip's summary of
       # a CUDA extension's failed build (its compiler error is above it)
       r"|Error compiling objects for extension|is only supported on CUDA [\d.]+ and above|Microsoft Visual C\+\+ [\d.]+ or "
       r"greater is required|Failed building wheel for (?:flash[-_]attn|deepspeed|xformers|apex|bitsandbytes|auto[-_]gptq|"
       r"mamba[-_]ssm|causal[-_]conv1d|flashinfer|vllm|unsloth)\b",
       extract=_x_toolkit, phase="load"),
    _p("flash_attn_dtype", WARN, "flash-attn with fp32 weights",
       "flash attention only runs in fp16/bf16 but the model is in float32",
       FIX_DTYPE_MATCH, r"Flash Attention 2(?:\.0)? only supports torch\.float16 and torch\.bfloat16|FlashAttention only support fp16 and bf16 data type",
       ("only supports torch.float16", "only support fp16")),
    # ---- precision ---------------------------------------------------------------------------
    _p("bf16_unsupported", ERR, "bf16 not supported here",
       "bf16 was requested but this GPU (pre-Ampere) or this torch build cannot do it",
       FIX_DTYPE_BF16_OFF,
       r"Your setup doesn't support bf16/(?:gpu|cpu)|bf16 requested, but AMP is not supported|bf16 precision was requested but not available"
       r"|bf16 mixed precision requires PyTorch >= 1\.10|does not support bfloat16 compilation natively"
       r"|Bfloat16 is only supported on GPUs with compute capability of at least 8\.0"
       r"|--tf32 requires Ampere or a newer GPU arch|(?:TF32|tf32) (?:is )?(?:requires|only supported on) Ampere",
       ("bf16", "bfloat16", "Bfloat16", "tf32", "TF32"), _x_precision),
    _p("bf16_matmul_unsupported", ERR, "bf16 matmul unsupported",
       "cuBLAS on this GPU cannot multiply bf16 matrices",
       FIX_DTYPE_BF16_OFF, r"CUBLAS_STATUS_NOT_SUPPORTED when calling .*CUDA_R_16BF|CUBLAS_STATUS_NOT_SUPPORTED.*bf16",
       ("CUBLAS_STATUS_NOT_SUPPORTED",)),
    _p("fp16_unscale", ERR, "FP16 gradients with fp16 AMP",
       "trainable weights are in fp16 while fp16 mixed precision is on; the grad scaler refuses to unscale them",
       FIX_DTYPE_FP16_OFF, r"Attempting to unscale FP16 gradients", ("unscale FP16",)),
    _p("torch_compile_failed", ERR, "torch.compile could not build the compiled layers",
       "the runner compiles each decoder layer (fmllm.compile) and the compiler failed: Triton is missing or too "
       "old, the GPU is older than Triton supports, or Inductor hit a bug",
       fix(None, "run the layers uncompiled (slower, same result): set fmllm.compile: off; or install a "
           "working triton", [("fmllm.compile", "off")]),
       r"Cannot find a working triton installation|too old to be supported by the triton GPU compiler"
       r"|torch\._(?:dynamo|inductor)\.exc\.(?:BackendCompilerFailed|InductorError)\b",
       ("triton", "BackendCompilerFailed", "InductorError")),
    _p("dtype_mismatch", ERR, "dtype mismatch in a matmul",
       "two tensors of one operation have different dtypes (compute dtype vs mixed precision setting)",
       FIX_DTYPE_MATCH,
       r"expected (?:mat1 and mat2|m1 and m2) to have the same dtype|expected scalar type (?:Half|Float|BFloat16) but found (?:Half|Float|BFloat16)"
       r"|Input type \(\S+\) and weight type \(\S+\) should be the same|(?:self|mat1) and mat2 must have the same dtype",
       ("same dtype", "expected scalar type", "should be the same")),
    _p("bnb_compute_dtype_slow", WARN, "4-bit compute dtype float32",
       "bnb_4bit_compute_dtype is float32 while inputs are 16-bit: slow and memory-hungry",
       fix("dtype.compute", "set the 4-bit compute dtype to the training precision", [("quantization.bnb_4bit_compute_dtype", "bfloat16")]),
       r"Input type into Linear4bit is torch\.(?:float16|bfloat16), but bnb_4bit_compute_dtype=torch\.float32",
       ("Input type into Linear4bit",)),
    # ---- gradients / checkpointing ---------------------------------------------------------
    _p("no_grad_checkpointing", ERR, "no gradient with checkpointing + LoRA",
       "with reentrant gradient checkpointing and a frozen base model, no input requires grad, so the loss has no grad_fn",
       FIX_GC_REENTRANT,
       r"element 0 of tensors does not require grad and does not have a grad_fn", ("does not require grad",)),
    _p("gc_inputs_no_grad", WARN, "checkpointing inputs have no grad",
       "reentrant gradient checkpointing got inputs without requires_grad: the LoRA adapters inside will get no gradient",
       FIX_GC_REENTRANT, r"None of the inputs have requires_grad=True", ("requires_grad=True",)),
    _p("ddp_reentrant", ERR, "DDP with reentrant checkpointing",
       "DDP saw a parameter marked ready twice: reentrant gradient checkpointing under DDP",
       FIX_GC_REENTRANT,
       r"Expected to mark a variable ready only once|Expected to have finished reduction in the prior iteration",
       ("mark a variable ready", "finished reduction")),
    _p("checkpoint_metadata", ERR, "recomputed tensors differ (checkpointing)",
       "non-reentrant checkpointing recomputed tensors with different metadata (QLoRA under ZeRO-3/FSDP)",
       FIX_GC_REENTRANT_TRUE,
       r"Recomputed values for the following tensors have different metadata|CheckpointError: torch\.utils\.checkpoint",
       ("Recomputed values", "CheckpointError")),
    # ---- tokenizer / data ------------------------------------------------------------------
    _p("pad_token_missing", ERR, "tokenizer has no pad token",
       "batches must be padded but the tokenizer has no pad token",
       FIX_PAD, r"Asking to pad but the tokenizer does not have a padding token|tokenizer does not have a padding token"
       r"|pad_sequence\(\): argument 'padding_value'|Using pad_token, but it is not set yet",
       ("padding token", "padding_value", "pad_token, but it is not set"), _x_pad),
    _p("token_id_out_of_range", ERR, "token id outside the vocabulary",
       "a token or label id is outside the embedding/vocabulary (a new pad token without resized embeddings, or bad labels)",
       FIX_PAD,
       r"index out of range in self|srcIndex < srcSelectDimSize|Assertion `t >= 0 && t < n_classes` failed|Target -?\d+ is out of bounds"
       r"|CUDA error: device-side assert triggered",
       ("index out of range in self", "srcSelectDimSize", "n_classes", "out of bounds", "device-side assert"), _x_token_range),
    _p("packing_too_few_tokens", ERR, "too little data to pack one sequence",
       "packing joins examples into max_seq_length-token sequences and this dataset has fewer tokens than one of them",
       fix(None, "turn packing off for a dataset this small (or lower max_seq_length)", [("training.packing", False)]),
       r"Error occurred while packing the dataset|enough samples to at least yield one packed sequence", phase="load"),
    _p("sequence_too_long", WARN, "examples longer than the model's context",
       "some examples tokenize to more tokens than the model's maximum length",
       fix("training.max_seq_length", "cap max_seq_length at the model's context and truncate or drop longer examples",
           [("training.max_seq_length", "model context length")]),
       r"[Tt]oken indices sequence length is longer than the specified maximum sequence length for this model \((\d+) > (\d+)\)"
       r"|This instance will be ignored in loss calculation|Could not find response key",
       ("Token indices", "oken indices", "ignored in loss", "response key"), _x_seq_len),
    _p("padding_side_right", WARN, "right padding while generating",
       "a decoder-only model generates from right-padded batches: the pad tokens sit between the prompt and the "
       "answer, so batched generations (evaluation, GRPO/PPO sampling) come out wrong",
       fix(None, "pad on the left for generation: tokenizer.padding_side = 'left' (training may keep right padding)"),
       r"right-padding was detected! For correct generation results, please set `padding_side='left'`"
       # flash-attention models refuse it outright (Qwen2, Mistral …)
       r"|You are attempting to perform batched generation with padding_side='right'",
       ("right-padding was detected", "padding_side='right'"), _x_padding_side, phase="generation"),
    _p("chat_template_missing", ERR, "no chat template",
       "the data is chat-formatted but the tokenizer has no chat template",
       fix(None, "use data_format: instruction, or a model/tokenizer that has a chat template", [("data_format", "instruction")]),
       r"tokenizer\.chat_template is not set|chat_template is not set and no template argument|Cannot use chat template functions because",
       ("chat_template", "chat template")),
    _p("no_loss_returned", ERR, "model returned no loss",
       "the batches carry no labels, so the model returned logits but no loss",
       fix(None, "the data collator must produce labels: check data_format matches the data file's fields", [("data_format", "match the data")]),
       r"The model did not return a loss from the inputs", ("did not return a loss",)),
    _p("unpadded_batch", ERR, "batch of unequal lengths",
       "examples of different lengths were batched without padding/truncation",
       fix("training.max_seq_length", "pad and truncate every example to max_seq_length", [("training.max_seq_length", "set")]),
       r"Unable to create tensor, you should probably activate truncation and/or padding", ("Unable to create tensor",)),
    _p("lora_target_modules", ERR, "LoRA target modules not found",
       "lora.target_modules names modules that this architecture does not have",
       fix(None, "use 'all-linear' or this model's module names", [("lora.target_modules", "all-linear")]),
       r"Target modules? .* not found in the base model|Please specify `target_modules` in `peft_config`"
       r"|Target module .* is not supported\. Currently, only the following modules are supported",
       ("not found in the base model", "target_modules", "modules are supported"), _x_target_modules),
    _p("quantized_no_adapter", ERR, "quantized model without adapter",
       "a purely quantized (4/8-bit) model cannot be trained without adapters",
       FIX_ADAPTER,
       r"You cannot perform fine-tuning on purely quantized models|The model you want to train is loaded in 8-bit precision",
       ("purely quantized", "loaded in 8-bit precision")),
    _p("weights_shape_mismatch", ERR, "checkpoint shapes do not match the model",
       "a checkpoint or adapter holds tensors of another shape than the model being loaded: saved from another "
       "config or architecture, or with a resized vocabulary",
       fix(None, "load it into the model (and tokenizer) it was saved from; after adding tokens, resize the "
                 "embeddings (model.resize_token_embeddings(len(tokenizer))) before loading the adapter"),
       r"size mismatch for [\w.]+: copying a param with shape|Trying to set a tensor of shape torch\.Size\(\[[\d, ]+\]\) in "
       r"\"?\w+\"? \(which has shape", extract=_x_shape_mismatch, phase="load"),
    _p("resume_checkpoint_missing", ERR, "resume checkpoint not found",
       "resume_from_checkpoint points at a folder with no valid checkpoint",
       fix(None, "resume from an existing checkpoint-N folder, or start fresh"),
       r"Can't find a valid checkpoint at|No valid checkpoint found in output directory", ("valid checkpoint",)),
    # ---- loss ----------------------------------------------------------------------------
    # the loss dicts' NaN is read by logdiag's loss analysis (with the steps before it); this regex reads the loss
    # other tools print: a progress bar's postfix (kohya/musubi 'avr_loss=nan', accelerate scripts' 'loss=nan'), the
    # Trainer's final metrics block ('eval_loss = nan') and its eval dicts, wandb's run summary
    _p("loss_nan", ERR, "loss is NaN", "the loss (or gradient norm) became NaN: the run diverged",
       FIX_LR,
       r"\b(?:avr_|avg_|step_|train_|lm_)?loss=(?:nan|NaN|-?inf)\b|^\s*(?:eval|train)_loss\s*=\s*(?:nan|NaN|-?inf)\s*$"
       r"|^\s*(?:wandb:\s+)?(?:train|eval)/loss\s+(?:nan|NaN)\s*$"
       # an eval dict: the loss analysis reads training dicts only
       r"|['\"]eval_loss['\"]:\s*(?:nan|NaN)\b",
       ("nan", "NaN", "inf"), _x_loss_nan_printed, phase="training"),
    _p("loss_zero", WARN, "loss is exactly 0",
       "the logged loss is exactly 0: every label is masked (the response template is not found), or fp16 broke the loss",
       fix("dtype.compute", "check the labels are not all -100 (fmllm-check data); if training in fp16 switch to bf16",
           [("training.fp16", False), ("training.bf16", True)]),
       r"^\s*train_loss\s*=\s*0\.0+\s*$|['\"]train_loss['\"]: 0\.0+\b|\btraining_loss=0\.0+\b"
       r"|^\s*(?:wandb:\s+)?train/(?:train_)?loss\s+0(?:\.0+)?\s*$"
       # a library's guard that raises before the zero loss is ever logged (Unsloth's train_on_responses_only)
       r"|All labels in your dataset are -100|[Tt]raining loss(?:es)? will be (?:all )?0\b",
       extract=_x_labels_masked),
    _p("zero_stage_numeric", WARN, "DeepSpeed skipping steps on fp16 overflow",
       "DeepSpeed (ZeRO) with fp16 keeps overflowing: the loss scale halves and steps are skipped",
       fix("dtype.compute", "train in bf16 (no loss scaling) on Ampere or newer; on older GPUs raise the ZeRO config's "
           "initial_scale_power/hysteresis or use ZeRO-2", [("training.fp16", False), ("training.bf16", True)]),
       r"(?:OVERFLOW!|overflow!) (?:Rank \d+ )?Skipping step\. Attempted loss scale: ([\d.]+)|Grad overflow on iteration \d+",
       extract=_x_zero_overflow),
    _p("loss_flat", ERR, "loss flat at ln(vocab)",
       "the loss stays at ln(vocab size): the model predicts every token as equally likely, so it is not learning",
       fix(None, "check the weights loaded (no 'newly initialized' warnings for the LM) and learning_rate > 0"), None),
    _p("generation_nan", ERR, "NaN or inf logits while sampling",
       "sampling met NaN/inf probabilities: the model's logits overflowed (fp16 on a model trained in bf16) or its "
       "weights are already NaN (a training run that diverged, a broken merge)",
       fix("dtype.compute", "generate in bf16 (or fp32) rather than fp16; if the loss went NaN in training, fix that "
           "run first", [("training.fp16", False), ("training.bf16", True)]),
       r"probability tensor contains either `?inf`?, `?nan`? or element < 0", phase="generation"),
    _p("shared_tensors_save", ERR, "tensors that share memory cannot be saved",
       "safetensors refuses to save tensors that share memory (tied input/output embeddings, or weights shared after "
       "resizing or merging) unless told which copy to keep",
       fix(None, "save through save_pretrained / Trainer.save_model (they drop the tied copy), or save_safetensors=False"),
       r"Some tensors share memory, this will lead to duplicate memory on disk|Removed shared tensor \{[^}]*\} while saving",
       extract=_x_shared_tensors, phase="save"),
    _p("fp16_overflow", ERR, "fp16 loss scale collapsing",
       "fp16 gradients keep overflowing and the loss scale keeps dropping", FIX_DTYPE_FP16_OFF,
       r"Current loss scale already at minimum", ("loss scale",)),
    # ---- distributed -------------------------------------------------------------------------
    _p("nccl_timeout", ERR, "NCCL collective timeout",
       "a collective operation waited past the NCCL timeout: one rank never joined", FIX_NCCL,
       r"Watchdog caught collective operation timeout|Some NCCL operations have failed or timed out|NCCL communicator was aborted"
       r"|ProcessGroupNCCL.*[Tt]imed? ?out|Timed out waiting \d+ms for recv operation|DistStoreError: Timed out|RendezvousTimeoutError",
       ("Watchdog caught", "NCCL", "Timed out", "timed out", "Rendezvous"), _x_nccl),
    _p("nccl_error", ERR, "NCCL error",
       "NCCL failed (driver, P2P/shared-memory or network problem between GPUs)", FIX_NCCL,
       r"NCCL error in:|ncclUnhandledCudaError|ncclSystemError|ncclInternalError|ncclInvalidUsage|ncclRemoteError|NCCL Error \d"
       r"|DistBackendError: NCCL error|retrieving ncclUniqueId from"
       # accelerate refuses to start NCCL on consumer cards without P2P/InfiniBand (RTX 40xx)
       r"|(?:does ?n[o']?t|does not|do not) support faster communication (?:broadband )?via P2P or IB",
       ("NCCL", "nccl", "P2P or IB"), _x_nccl_error),
    _p("fsdp_4bit", ERR, "FSDP with 4-bit weights",
       "FSDP tried to flatten the uint8 4-bit weights together with float ones",
       FIX_FSDP,
       r"Cannot flatten integer dtype tensors|Must flatten tensors with uniform dtype but got|Must flatten tensors with uniform `requires_grad`",
       ("flatten",), _x_flat_param),
    _p("zero3_device_map", ERR, "ZeRO-3 with device_map",
       "DeepSpeed ZeRO-3 cannot load a model with a device_map / low_cpu_mem_usage",
       fix(None, "drop device_map/low_cpu_mem_usage when launching with ZeRO-3 (or use FSDP)"),
       r"DeepSpeed Zero-3 is not compatible with .*device_map", ("Zero-3",)),
    _p("fsdp_wrap_class_not_found", ERR, "FSDP's layer class to wrap is not in the model",
       "FSDP's transformer-based auto-wrap names a layer class (fsdp_transformer_layer_cls_to_wrap) that the loaded "
       "model does not have: another model's block, or an older spelling of the class",
       fix(None, "set fsdp_transformer_layer_cls_to_wrap (accelerate's fsdp_config, or the Trainer's fsdp_config) to "
                 "the loaded model's decoder layer class as transformers spells it (print(model) shows it: "
                 "LlamaDecoderLayer, Qwen2DecoderLayer, GPT2Block …), or leave it unset to use the model's _no_split_modules"),
       r"Could not find the transformer layer class (?:to wrap |(?P<layer>[\w.]+) )in the model",
       ("transformer layer class",), _x_fsdp_layer),
    _p("device_mismatch", ERR, "tensors on different devices",
       "tensors of one operation sit on different devices",
       fix(None, "with one process per GPU load each copy on its own GPU (device_map={'': local_rank}); "
                 "if part of the model was offloaded, make it fit on the GPU"),
       r"Expected all tensors to be on the same device|You can't train a model that has been loaded in 8-bit precision on (?:a different|multiple) devices?"
       r"|You can't train a model that has been loaded with `device_map='auto'` in any distributed mode",
       ("same device", "different device", "distributed mode", "precision on"), _x_device_mismatch),
    _p("ranks_failed", ERR, "distributed ranks died",
       "ranks of the distributed run died", None,
       r"torch\.distributed\.elastic\.multiprocessing\.errors\.ChildFailedError|^ChildFailedError\b"
       r"|multiprocessing\.api:Sending process \d+ closing signal SIGTERM"
       # DeepSpeed's launcher killing the other ranks after one exited non-zero
       r"|sigkill_handler\] Killing subprocess \d+", ("ChildFailedError", "closing signal", "Killing subprocess"),
       _x_child_failed),
    _p("port_in_use", ERR, "rendezvous port already in use",
       "the distributed launcher's port is taken (another run is still alive, or another service uses it)",
       fix(None, "stop the old run or pick another port", [("fmllm.distributed.main_process_port", "a free port, e.g. 29501")]),
       r"Address already in use|The server socket has failed to listen on any local network address|EADDRINUSE"
       # accelerate's own check before it launches (accelerate >= 0.21)
       r"|Tried to launch distributed communication on port `?\d+`?, but another process is utilizing it",
       ("already in use", "failed to listen", "EADDRINUSE", "another process is utilizing")),
    _p("ds_config_mismatch", ERR, "DeepSpeed config disagrees with the Trainer's arguments",
       "the DeepSpeed config fixes values (batch sizes, accumulation, learning rate, fp16/bf16, scheduler steps) that "
       "differ from the training arguments or the number of processes the run has",
       FIX_DS_AUTO,
       r"Please correct the following DeepSpeed config values that mismatch TrainingArguments values"
       # DeepSpeed's own check of the batch triple against the processes actually launched
       r"|Check batch related parameters\. train_batch_size is not",  # rich's box may wrap the rest
       ("DeepSpeed config values that mismatch", "Check batch related parameters"), _x_ds_mismatch),
    _p("shm_exhausted", ERR, "shared memory (/dev/shm) exhausted",
       "DataLoader workers pass batches through /dev/shm, which is too small here (Docker's default is 64 MB)",
       fix(None, "give the container more shared memory (docker run --shm-size=16g / --ipc=host) or use fewer dataloader workers"),
       r"insufficient shared memory \(shm\)|unable to write to file </torch_\d+|DataLoader worker \(pid \d+\) is killed by signal: Bus error"
       r"|Error while creating shared memory segment",
       ("shared memory", "</torch_", "Bus error")),
    # ---- launch / process ------------------------------------------------------------------
    _p("signal_hangup", ERR, "run stopped by a signal (terminal closed?)",
       "the launcher got SIGHUP/SIGTERM: the terminal or SSH session closed, or a scheduler stopped the job",
       fix(None, "run detached (fmllm-run does; or tmux/nohup) so a dropped SSH session does not stop training"),
       r"SignalException: Process \d+ got signal: (\d+)|got signal: (?:1|15)\b", ("got signal",), _x_signal),
    _p("interrupted", WARN, "interrupted by the user",
       "the run was stopped with Ctrl-C (KeyboardInterrupt): not a failure of the run itself", None,
       r"^KeyboardInterrupt\b|^\s*KeyboardInterrupt\s*$", ("KeyboardInterrupt",)),
    _p("launcher_failed", WARN, "launcher reports the training process failed",
       "the launcher (accelerate/subprocess) only reports that the training process exited non-zero; the real error is above it",
       None, r"CalledProcessError: Command .* (?:returned non-zero exit status -?\d+|died with <Signals\.\w+: \d+>)", ("CalledProcessError",)),
    # ---- files and data --------------------------------------------------------------------
    _p("file_not_found", ERR, "file not found",
       "a file or folder the run needs does not exist",
       fix(None, "check the paths in the config (paths.*, base_model_name) against what is on disk"),
       r"(?:(?:FileNotFoundError|OSError): |^)\[Errno 2\] No such file or directory: '([^']+)'|FileNotFoundError: Unable to find '([^']+)'"
       r"|FileNotFoundError: Couldn't find (?:a dataset script|any data file) at ([^\s,]+)"
       r"|Error no file named [\w., ]+? found in directory ([^\s]+?)\.?$"
       r"|Can't find '[\w.-]+' at '([^']+)'",
       ("No such file", "Unable to find", "Couldn't find", "Can't find", "Error no file named"), _x_path),
    _p("permission_denied", ERR, "permission denied",
       "the run may not write (or read) a path: wrong owner, read-only mount, or another user's cache",
       fix(None, "write to a folder you own (output_dir, HF_HOME) or fix its permissions"),
       r"(?:PermissionError|OSError): \[Errno 13\] Permission denied: '([^']+)'|PermissionError at ([^\s]+) when downloading"
       r"|OSError: \[Errno 30\] Read-only file system: '([^']+)'",
       ("Permission denied", "PermissionError", "Read-only file system"), _x_path),
    _p("data_invalid", ERR, "data file could not be parsed",
       "the training data file is not valid JSON/JSONL/CSV (a bad line, mixed types in a column, or the wrong format)",
       fix(None, "fix the bad line of the data file (fmllm-check data points at it)", [("data_format", "match the data")]),
       # the class, not a source line constructing it ('raise JSONDecodeError("Expecting value", s, ...)')
       r"ArrowInvalid: JSON parse error|JSONDecodeError(?!\()|DatasetGenerationError|An error occurred while generating the dataset"
       r"|Couldn't cast array of type|ArrowInvalid: .*(?:Column|straddling|parse)"
       # datasets' json/csv builders quote pyarrow's error as a class: "Failed to read file 'x' with error <class
       # 'pyarrow.lib.ArrowInvalid'>: JSON parse error: ..."
       r"|Failed to read file '[^']*' with error <class '[\w.]*(?:ArrowInvalid|JSONDecodeError|ParserError|UnicodeDecodeError)'>"
       r"|JSON parse error: (?:Column\(|Invalid value|Missing a|The document is empty)|straddling object straddles two block boundaries"
       # Python json's message pasted without its class (JSONDecodeError above has it)
       r"|^Expecting (?:value|property name enclosed in double quotes|'[,:]' delimiter): line \d+ column \d+"
       # records without the fields the loader maps: datasets' rename/remove ('Original column name instruction not in
       # the dataset. Current columns in the dataset: [...]'), a loader naming the keys it needs
       r"|(?P<fields>(?:Original column names?|Column names?|Column to remove) [^\n]{1,120}? not in the dataset"
       r"|(?:jsonl?|json|csv|data(?:set)?) file should (?:have|contain) (?:the )?(?:keys|columns|fields))",
       ("ArrowInvalid", "JSONDecodeError", "DatasetGenerationError", "generating the dataset", "Couldn't cast",
        "Failed to read file", "JSON parse error", "straddl", "not in the dataset", "file should", "Expecting "), _x_data_fields),
    _p("sft_text_field", ERR, "SFTTrainer gets no text field",
       "TRL's SFTTrainer was given neither a text field nor a formatting function for this data",
       fix(None, "set data_format to match the data file's fields", [("data_format", "match the data")]),
       r"you didn't pass a `dataset_text_field` or `formatting_func`|You passed `packing=False` to the SFTTrainer",
       ("dataset_text_field", "packing=False")),
    _p("tokenizers_too_old", ERR, "tokenizers library too old for this tokenizer.json",
       "the installed tokenizers cannot read this model's tokenizer.json (it was saved by a newer version)",
       fix(None, "upgrade tokenizers and transformers together", shell="pip install -U tokenizers transformers"),
       r"data did not match any variant of untagged enum (?:ModelWrapper|PyPreTokenizerTypeWrapper|PyNormalizerTypeWrapper)",
       ("untagged enum",)),
    # ---- GPU / CUDA environment --------------------------------------------------------------
    _p("no_kernel_image", ERR, "no kernel image for this GPU",
       "this PyTorch build has no CUDA kernels for the GPU's architecture", FIX_TORCH_CUDA,
       r"no kernel image is available for execution on the device|with CUDA capability sm_\d+ is not compatible with the current PyTorch installation",
       ("no kernel image", "CUDA capability"), _x_no_kernel),
    _p("no_cuda", ERR, "no usable CUDA GPU",
       "torch sees no usable CUDA GPU (CPU-only torch build, missing driver, or CUDA_VISIBLE_DEVICES hides it)",
       fix(None, "check the driver and that torch is a CUDA build", shell="nvidia-smi && python -c 'import torch; print(torch.version.cuda, torch.cuda.is_available())'"),
       r"Torch not compiled with CUDA enabled|Found no NVIDIA driver on your system|No CUDA GPUs are available|No GPU found\. A GPU is needed for quantization"
       r"|CUDA driver initialization failed|torch\.cuda\.is_available\(\) is False|NVIDIA driver on your system is too old|CUDA driver version is insufficient for CUDA runtime version"
       r"|fp16 mixed precision requires a GPU|can only be used on CUDA(?: or MLU or NPU)?(?: devices)?"
       # the check people paste: 'torch.cuda.is_available()' answered False, on its line or the REPL's next
       r"|torch\.cuda\.is_available\(\)\)?\s*(?:(?:is|=+|:|->|#|returns?|gives?|prints?)\s*)?False\b"
       r"|^\s*(?:>>>|In \[\d*\]:)\s*(?:print\()?torch\.cuda\.is_available\(\)\)?\s*$",
       ("CUDA", "NVIDIA", "GPU", "cuda"), _x_no_cuda),
    _p("cuda_error", ERR, "CUDA error",
       "a CUDA call failed; CUDA reports errors asynchronously, so the frame shown may not be the real culprit",
       FIX_CUDA_DEBUG,
       r"CUDA error: ([^\n]{3,200}?)(?:\n|$|\s+CUDA kernel errors)", ("CUDA error",), _x_cuda_error),
    _p("segfault", ERR, "native crash (segmentation fault)",
       "a native library crashed the process (often a bitsandbytes, flash-attn or driver mismatch)",
       fix(None, "rerun with Python's fault handler to see which library crashed", shell="export PYTHONFAULTHANDLER=1"),
       r"Segmentation fault|Fatal Python error: Segmentation fault|SIGSEGV", ("Segmentation fault", "SIGSEGV")),
    _p("module_missing", ERR, "Python module missing",
       "a required Python package is not installed", None,
       r"No module named '([\w.]+)'|requires the (\w+) library but it was not found"
       r"|requires the following packages that were not found in your environment: ([\w.-]+)"
       # accelerate's availability checks ('DeepSpeed is not available => install it using `pip3 install deepspeed`')
       # and transformers' version gates ('requires `accelerate>=0.21.0`: Please run `pip install ...`')
       r"|\b([A-Za-z][\w-]*) is not (?:available|installed)\W{0,4}(?:=>|[,.;:-])\s*(?:[Pp]lease )?install it"
       r"|requires `([\w-]+)(?:[<>=!]=?[\w.]+)?`: Please run `pip install"
       # transformers' 'requires Accelerate: `pip install ...`' and the slow tokenizer that needs sentencepiece
       r"|requires (Accelerate|accelerate|bitsandbytes|sentencepiece|protobuf): `pip install"
       r"|Cannot instantiate this tokenizer from a slow version\. If it's based on (sentencepiece)",
       ("No module named", "library but it was not found", "packages that were not found", "install it",
        "Please run `pip install", ": `pip install", "slow version"), _x_missing_module),
    _p("library_api_changed", ERR, "a library's API changed between versions",
       "code written for one version of a library calls an argument, attribute or name the installed version does "
       "not have (renamed, removed, or newer)", None,
       r"(?:\b(?P<cls>[A-Z]\w*)\.)?(?P<func>\w+)\(\) got an unexpected keyword argument '(?P<arg>\w+)'"
       r"|'(?P<obj>\w+)' object has no attribute '(?P<attr>\w+)'"
       r"|\bmodule '(?P<mod>[\w.]+)' has no attribute '(?P<mattr>\w+)'"
       r"|cannot import name '(?P<name>\w+)' from '(?P<frm>[\w.]+)'",
       ("unexpected keyword argument", "has no attribute", "cannot import name"), _x_api_changed),
    _p("deprecation_info", INFO, "deprecation notice",
       "a library says a name or argument is deprecated: harmless for this run, worth updating the code some day", None,
       r"(?:FutureWarning|DeprecationWarning|PendingDeprecationWarning): |is deprecated and will be removed"
       r"|(?:is|are) (?:now )?deprecated(?:[.,;!]| and| in favou?r of)|has been deprecated|will be deprecated"
       # torch's checkpoint default about to change (a UserWarning): a notice, the run goes on. (transformers turning
       # the KV cache off while checkpointing is not even that: a successful run prints it, tests/data/logs/neg__*)
       r"|please pass in use_reentrant=True or use_reentrant=False explicitly|use_reentrant parameter should be passed explicitly",
       extract=_x_deprecation),
    _p("log_cut_in_traceback", INFO, "the log ends inside a traceback",
       "the text ends inside a traceback, before its exception line: the error that stopped the run is not in it",
       fix(None, "scan the whole log: the lines after this traceback name the error (fmllm-check --log FILE)"), None),
    _p("exception", ERR, "unhandled exception",
       "the run stopped on an exception that fmllm has no specific pattern for; the last frame shows where", None, None),
]

#: The phase a finding names when the log shows none (no frames, banners or bars): where these
#: failures happen in a run. Anything else defaults to load (the run never showed a step).
_FAILS_IN = {
    "first_step": ("gc_inputs_no_grad", "no_grad_checkpointing", "ddp_reentrant", "checkpoint_metadata", "fp16_unscale",
                   "no_loss_returned", "unpadded_batch", "pad_token_missing", "dtype_mismatch", "device_mismatch",
                   "bf16_matmul_unsupported", "flash_attn_dtype", "bnb_compute_dtype_slow", "cuda_oom", "mps_oom",
                   "auto_batch_exhausted", "torch_compile_failed", "token_id_out_of_range", "no_kernel_image",
                   "cuda_error"),
    "training": ("loss_nan", "loss_zero", "loss_flat", "fp16_overflow", "nccl_timeout", "cuda_oom_late",
                 "cuda_oom_fragmentation", "gpu_other_process", "zero_stage_numeric", "shm_exhausted"),
}
PATTERNS = [replace(p, phase=ph) for p in PATTERNS
            for ph in [next((k for k, ids in _FAILS_IN.items() if p.id in ids), p.phase)]]

#: Lines that announce a phase of the run (the trainer's banners, checkpoint saves, adapter merges):
#: with no traceback frames to go by, the latest of these (or a newer progress bar) names the
#: phase of a failure after it.
PHASE_MARKERS: tuple[tuple[str, str], ...] = (
    (r"\*{5} Running training \*{5}|Running training|Start(?:ing)? training|trainer\.train\(\)", "training"),
    (r"\*{5} Running Evaluation \*{5}|Running Evaluation", "eval"),
    (r"\*{5} Running Prediction \*{5}|Running Prediction|\*{5} predict metrics \*{5}", "predict"),
    (r"Saving model checkpoint to|Saving model to|Model weights saved in|Saving the (?:final )?model", "save"),
    (r"Unloading and merging|merge_and_unload|[Mm]erg(?:e|ing)\b[^\n]{0,30}?\b(?:LoRA|lora|adapter|PEFT|peft)", "merge"),
)
PHASE_MARKER_RX = re.compile("|".join(f"(?P<m{i}>{rx})" for i, (rx, _ph) in enumerate(PHASE_MARKERS)))


def marker_phase(text: str) -> str | None:
    """The phase a banner line announces, or None."""
    m = PHASE_MARKER_RX.search(text)
    return PHASE_MARKERS[int(m.lastgroup[1:])][1] if m and m.lastgroup else None


BY_ID: dict[str, Pattern] = {p.id: p for p in PATTERNS}
if len(BY_ID) != len(PATTERNS):  # pragma: no cover - guards the table itself
    raise RuntimeError("duplicate pattern ids in PATTERNS")

__all__ = ["BY_ID", "PATTERNS", "PHASE_MARKERS", "Pattern", "fix", "human", "marker_phase", "pip_name", "size_bytes"]
