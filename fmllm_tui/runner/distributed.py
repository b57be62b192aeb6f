"""Multi-GPU training through accelerate: which mode, its accelerate config, the launch argv.

fmllm writes no distribution code of its own. A multi-process run is ``accelerate launch`` of
the training process (:mod:`fmllm_tui.runner.train`) with a config file fmllm writes into the run
folder (``accelerate.yaml``):

* **DDP** (``distributed_type: MULTI_GPU``): the model fits one card and several are present;
  every GPU holds the whole 4-bit model and trains on its share of the batches.
* **FSDP + QLoRA** (``distributed_type: FSDP``): the model does not fit one card; FSDP shards the
  4-bit weights (stored in the compute dtype, ``bnb_4bit_quant_storage``), the adapters, their
  gradients and optimizer state over the GPUs, wrapping each decoder layer
  (``TRANSFORMER_BASED_WRAP`` with the model's decoder-layer class), with
  ``fsdp_use_orig_params: false``; every process quantizes the model into CPU RAM and FSDP moves
  each unit to its GPU as it shards it (transformers 5 reads the checkpoint in every process, so
  ``fsdp_cpu_ram_efficient_loading`` no longer keeps it to rank 0), and optionally
  keeping parameters in CPU RAM between uses (``fmllm.distributed.cpu_offload``).
* **Multi-node**: ``num_machines``, ``machine_rank``, ``main_process_ip`` and
  ``main_process_port`` go into the same file; each machine starts its own fmllm run with its
  own ``machine_rank``. ``num_processes`` is accelerate's: the total over all machines.

No torch here: the parent (``fmllm-run``, the TUI, the checks) stays light. What needs
transformers (the decoder-layer class of an architecture fmllm's table does not list) runs in a
child process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCELERATE_CONFIG = "accelerate.yaml"
MODES = ("single", "ddp", "fsdp")
# Largest GPU count the shard search plans for (one host of 8 cards).
MAX_PLAN_GPUS = 8
# Host RAM per FSDP CPU-offload run, in bytes per model parameter, from the two published 70B
# runs: the PEFT FSDP guide (~107 GB for Llama-2-70B on 2 GPUs) and Answer.AI's fsdp_qlora
# ("just over 128 GB"). fmllm has not measured this itself (no GPU host with that much RAM).
OFFLOAD_RAM_BYTES_PER_PARAM = (1.55, 1.86)
# Each training process: Python, torch, CUDA libraries, tokenizer, data.
PROCESS_RAM_BYTES = 3 * 1024**3

# model_type -> the decoder-layer class FSDP wraps (transformers' _no_split_modules of the
# model's CausalLM class; tests/test_distributed.py checks every entry against transformers).
DECODER_LAYERS: dict[str, str] = {
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
    "ministral": "MinistralDecoderLayer",
    "mixtral": "MixtralDecoderLayer",
    "qwen2": "Qwen2DecoderLayer",
    "qwen2_moe": "Qwen2MoeDecoderLayer",
    "qwen3": "Qwen3DecoderLayer",
    "qwen3_moe": "Qwen3MoeDecoderLayer",
    "gemma": "GemmaDecoderLayer",
    "gemma2": "Gemma2DecoderLayer",
    "gemma3": "Gemma3DecoderLayer",
    "gemma3_text": "Gemma3DecoderLayer",
    "phi": "PhiDecoderLayer",
    "phi3": "Phi3DecoderLayer",
    "phimoe": "PhimoeDecoderLayer",
    "falcon": "FalconDecoderLayer",
    "gpt_neox": "GPTNeoXLayer",
    "starcoder2": "Starcoder2DecoderLayer",
    "olmo": "OlmoDecoderLayer",
    "olmo2": "Olmo2DecoderLayer",
    "cohere": "CohereDecoderLayer",
    "cohere2": "Cohere2DecoderLayer",
    "granite": "GraniteDecoderLayer",
    "deepseek_v2": "DeepseekV2DecoderLayer",
    "deepseek_v3": "DeepseekV3DecoderLayer",
    "stablelm": "StableLmDecoderLayer",
    "glm": "GlmDecoderLayer",
    "glm4": "Glm4DecoderLayer",
    "smollm3": "SmolLM3DecoderLayer",
    "gpt_oss": "GptOssDecoderLayer",
    "exaone": "LlamaDecoderLayer",
}


class DistributedError(ValueError):
    """A distributed setting fmllm cannot run; the message says what and how to fix it."""


# ------------------------------------------------------------------------------------------------
# The decoder-layer class
# ------------------------------------------------------------------------------------------------


def _text_config(arch: dict[str, Any]) -> dict[str, Any]:
    inner = arch.get("text_config")
    return inner if isinstance(inner, dict) and inner.get("model_type") else arch


def decoder_layer_class(arch: dict[str, Any] | None, *, trust_remote_code: bool = False,
                        in_child: bool = True, timeout: float = 120.0) -> str | None:
    """The class name(s) FSDP wraps one unit each (comma-separated when several), or None.

    fmllm's table first (by ``model_type``); otherwise transformers' ``_no_split_modules`` of the
    architecture's CausalLM class, instantiated on the meta device when the class does not say.
    That needs transformers, so by default it runs in a child process (the parent never imports
    torch). None when neither knows (accelerate then reads ``_no_split_modules`` at run time).
    """
    if not isinstance(arch, dict):
        return None
    for cfg in (arch, _text_config(arch)):
        found = DECODER_LAYERS.get(str(cfg.get("model_type") or ""))
        if found:
            return found
    if not in_child:
        return layer_class_from_transformers(arch, trust_remote_code=trust_remote_code)
    code = ("import json,sys;from fmllm_tui.runner.distributed import layer_class_from_transformers as f;"
            "a=json.load(sys.stdin);print(json.dumps(f(a['arch'],trust_remote_code=a['trust'])))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], input=json.dumps({"arch": arch, "trust": trust_remote_code}),
                              capture_output=True, text=True, timeout=timeout)
        value = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    return value if isinstance(value, str) and value else None


def layer_class_from_transformers(arch: dict[str, Any], *, trust_remote_code: bool = False) -> str | None:
    """``_no_split_modules`` of the architecture's CausalLM model (imports transformers and torch).

    The class attribute when the class sets it; else the model is built on the meta device
    (no memory, no weights) and asked. None when transformers does not know the architecture.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    fields = {k: v for k, v in arch.items() if k not in ("model_type", "quantization_config", "auto_map")}
    model_type = str(arch.get("model_type") or "")
    names: list[str] | None = None
    cls_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if cls_name:
        import transformers

        cls = getattr(transformers, cls_name, None)
        names = list(getattr(cls, "_no_split_modules", None) or []) or None
    if names is None:
        try:
            config = AutoConfig.for_model(model_type, **fields) if model_type else None
        except (ValueError, KeyError, TypeError):
            config = None
        if config is None:
            return None
        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        except (ValueError, KeyError, TypeError, ImportError, OSError):
            return None
        names = list(getattr(model, "_no_split_modules", None) or []) or None
    return ",".join(names) if names else None


# ------------------------------------------------------------------------------------------------
# The mode
# ------------------------------------------------------------------------------------------------


def plan_mode(view: Any, n_gpus_visible: int, fits_one_card: bool | None, *, kind: str = "train",
              cpu: bool = False) -> tuple[str, int, str]:
    """(mode, total processes, why) for a run of ``view`` on this machine.

    ``fmllm.distributed.mode``: single, ddp and fsdp are taken as set (and checked against the
    GPUs visible here); auto picks single with one GPU, ddp when the model fits one card and
    several are visible, fsdp when it does not fit one card. ``fits_one_card`` None means the
    memory could not be predicted: auto then stays on one GPU and says so. A minimal test
    (``kind="test"``) of a model that fits one card runs on one. ``cpu``: a CPU run (several
    processes only with mode ddp, over gloo). Raises :class:`DistributedError`.
    """
    d = view.fmllm.distributed
    machines = int(d.num_machines)
    local = max(0, int(n_gpus_visible))
    if d.machine_rank >= machines:
        raise DistributedError(f"fmllm.distributed.machine_rank is {d.machine_rank} but num_machines is {machines}: "
                               f"ranks count 0 to {machines - 1}")
    if d.mode == "single":
        if machines > 1:
            raise DistributedError("fmllm.distributed.mode is single but num_machines is "
                                   f"{machines}: several machines need mode ddp or fsdp")
        return "single", 1, "fmllm.distributed.mode is single: one process on one GPU"
    if d.mode in ("ddp", "fsdp"):
        if cpu and d.mode == "fsdp":
            raise DistributedError("fmllm.distributed.mode is fsdp but this run is on the CPU: accelerate's FSDP "
                                   "needs CUDA GPUs. Use mode ddp for a multi-process CPU test, or run on GPUs")
        if cpu:
            n = int(d.num_processes or 0)
            if n < 2:
                raise DistributedError("fmllm.distributed.mode is ddp on the CPU: set fmllm.distributed.num_processes "
                                       "(2 or more processes, over gloo)")
            return d.mode, n, f"fmllm.distributed.mode is ddp: {n} CPU processes over gloo"
        if local == 0:
            raise DistributedError(f"fmllm.distributed.mode is {d.mode} but no GPU is visible here "
                                   "(see fmllm-check gpu.devices and CUDA_VISIBLE_DEVICES)")
        n = int(d.num_processes or local * machines)
        _check_count(n, local, machines)
        if n < 2:
            raise DistributedError(f"fmllm.distributed.mode is {d.mode} with {n} process: {d.mode} needs 2 or more "
                                   f"(one per GPU); {local} GPU{'s are' if local != 1 else ' is'} visible here. "
                                   "Use mode single (or auto) for one GPU")
        return d.mode, n, f"fmllm.distributed.mode is {d.mode}: {n} processes, one per GPU"
    # auto
    if cpu:
        return "single", 1, ("auto on the CPU: one process (mode ddp with num_processes runs several over gloo)")
    n = int(d.num_processes or local * machines)
    if n <= 1 and machines == 1:
        if fits_one_card is False:
            return "single", 1, ("auto: one GPU visible and the model does not fit it; FSDP needs several GPUs "
                                 "(see fmllm-check config.multi_gpu_fit)")
        return "single", 1, "auto: one GPU" if local <= 1 else "auto: fmllm.distributed.num_processes is 1"
    if fits_one_card is None:
        return "single", 1, (f"auto: the model's memory could not be predicted (its architecture is not known "
                             f"offline), so fmllm trains on one GPU; set fmllm.distributed.mode: ddp or fsdp to use "
                             f"all {n}")
    if fits_one_card and kind == "test" and machines == 1:
        return "single", 1, "auto: the model fits one GPU; the minimal test runs on one"
    _check_count(n, local, machines)
    if fits_one_card:
        return "ddp", n, f"auto: the model fits one GPU and {n} are visible: DDP, each GPU trains on its share"
    return "fsdp", n, f"auto: the model does not fit one GPU: FSDP shards it over {n}"


def _check_count(n: int, local: int, machines: int) -> None:
    """``n`` processes in all must split evenly over the machines, one per GPU here."""
    per_machine, rest = divmod(n, machines)
    if rest:
        raise DistributedError(f"fmllm.distributed.num_processes is {n}, not a multiple of num_machines "
                               f"{machines}: accelerate starts the same number of processes on every machine")
    if per_machine > local:
        raise DistributedError(f"fmllm.distributed.num_processes is {n} ({per_machine} per machine) but only "
                               f"{local} GPU{'s are' if local != 1 else ' is'} visible here: set num_processes to "
                               f"{local * machines} or fewer (one process per GPU)")


def fits_one_card(view: Any, arch: dict[str, Any] | None, free_bytes: list[int]) -> tuple[bool | None, Any]:
    """(whether the single-GPU prediction fits the smallest free memory less fmllm's margin, the
    prediction); (None, None) when the architecture is unknown or the memory model refuses it."""
    if not isinstance(arch, dict) or not free_bytes:
        return None, None
    from fmllm_tui import fitsearch, memory

    try:
        pred = memory.predict(view, arch, mode="single")
    except (memory.ArchitectureError, ValueError):
        return None, None
    budget = min(free_bytes)
    return pred.peak_process_bytes <= budget - fitsearch.default_margin(budget), pred


@dataclass
class ShardPlan:
    """FSDP over ``n_gpus`` (with CPU offload or not) and its per-GPU prediction."""

    n_gpus: int
    cpu_offload: bool
    per_gpu_peak_bytes: int
    budget_bytes: int
    margin_bytes: int
    within_available: bool
    prediction: Any

    def describe(self) -> str:
        off = " with parameters offloaded to CPU RAM" if self.cpu_offload else ""
        return f"FSDP over {self.n_gpus} GPUs{off} (per-GPU peak {self.per_gpu_peak_bytes / 2**30:.2f} GiB)"


def fsdp_view(view: Any, cpu_offload: bool | None = None) -> Any:
    """A copy of ``view`` as the FSDP runner trains it, for the memory model: the input embedding
    stays on the GPUs (the runner never offloads it under FSDP) and ``cpu_offload`` as given
    (None: as configured)."""
    v = view.model_copy(deep=True)
    v.fmllm.offload_embeddings = "off"
    if cpu_offload is not None:
        v.fmllm.distributed.cpu_offload = cpu_offload
    return v


def shard_search(view: Any, arch: dict[str, Any], budget_per_gpu: int, n_available: int, *,
                 allow_offload: bool = True, max_gpus: int = MAX_PLAN_GPUS,
                 seq_len: int | None = None) -> ShardPlan | None:
    """The cheapest FSDP plan whose per-GPU prediction fits ``budget_per_gpu`` less the margin
    (at ``seq_len`` tokens per example: fitsearch.planning_seq_len; default max_seq_length).

    Preference: without offload on the GPUs available, then with offload on them, then the
    same beyond what is available (``within_available`` False: more GPUs are needed). Fewer
    GPUs first within each. None when nothing up to ``max_gpus`` fits.
    """
    from fmllm_tui import fitsearch, memory

    margin = fitsearch.default_margin(budget_per_gpu)
    limit = budget_per_gpu - margin
    offloads = (False, True) if allow_offload else (False,)
    views = {o: fsdp_view(view, o) for o in offloads}
    avail = max(1, int(n_available))
    ranges = [(range(2, avail + 1), True), (range(max(2, avail + 1), max_gpus + 1), False)]
    for counts, within in ranges:
        for off in offloads:
            for n in counts:
                pred = memory.predict(views[off], arch, mode="fsdp", n_gpus=n, seq_len=seq_len)
                if pred.peak_process_bytes <= limit:
                    return ShardPlan(n, off, pred.peak_process_bytes, budget_per_gpu, margin, within, pred)
    return None


def offload_host_ram_bytes(arch: dict[str, Any], n_processes_here: int) -> tuple[int, int]:
    """(low, high) host RAM one machine needs for an FSDP run with CPU offload.

    Scaled from the published 70B runs by parameter count (OFFLOAD_RAM_BYTES_PER_PARAM), plus
    each process's own footprint. An estimate from others' measurements, not fmllm's own.
    """
    from fmllm_tui import memory

    params = memory.param_count(arch)
    base = PROCESS_RAM_BYTES * max(1, n_processes_here)
    lo, hi = OFFLOAD_RAM_BYTES_PER_PARAM
    return int(params * lo) + base, int(params * hi) + base


def load_host_ram_bytes(view: Any, arch: dict[str, Any], n_processes_here: int) -> int:
    """Host RAM one machine needs while an FSDP run loads: every process quantizes the whole model
    into CPU RAM (4-bit weights and their constants, the 16-bit embeddings, head and norms) before
    FSDP moves it to the GPUs unit by unit, plus each process's own footprint. Derived from the
    model's sizes (the CPU copy is freed as units move); fmllm has not measured host RAM itself."""
    from fmllm_tui import memory

    bd = memory.predict(fsdp_view(view), arch, mode="single").breakdown
    whole = int(bd.get("weights_4bit", 0)) + int(bd.get("quant_constants", 0)) + int(bd.get("weights_16bit", 0))
    return max(1, n_processes_here) * (whole + PROCESS_RAM_BYTES)


# ------------------------------------------------------------------------------------------------
# The accelerate config
# ------------------------------------------------------------------------------------------------


def quant_storage_dtype(compute_dtype: str) -> str:
    """The dtype the 4-bit weights are stored in under FSDP (FSDP shards float tensors only).

    The compute dtype for bfloat16 (and float32); float32 for float16, as the PEFT FSDP guide
    asks for fp16 mixed precision (fp16 storage is not stable there).
    """
    return "float32" if compute_dtype == "float16" else compute_dtype


def mixed_precision_for(view: Any, *, cpu: bool = False) -> str:
    """accelerate's mixed_precision from the config: bf16, fp16 or no."""
    if cpu:
        return "no"
    t = view.training
    if t.bf16:
        return "bf16"
    if t.fp16:
        return "fp16"
    return {"bfloat16": "bf16", "float16": "fp16"}.get(view.quantization.bnb_4bit_compute_dtype, "no")


def accelerate_config(view: Any, mode: str, n_processes: int, *, layer_cls: str | None = None,
                      cpu: bool = False, main_process_port: int | None = None) -> dict[str, Any]:
    """The accelerate config (the YAML ``accelerate launch --config_file`` reads) for ``mode``.

    ``layer_cls``: the decoder-layer class(es) FSDP wraps (:func:`decoder_layer_class`); None
    leaves it to accelerate, which then reads the model's ``_no_split_modules``. ``cpu``: the
    processes train on the CPU over gloo (tests); accelerate starts them as for GPUs.
    ``main_process_port`` overrides ``fmllm.distributed.main_process_port``.
    """
    if mode not in ("ddp", "fsdp"):
        raise DistributedError(f"an accelerate config is written for ddp or fsdp, not {mode!r}")
    if n_processes < 1:
        raise DistributedError(f"num_processes must be at least 1, got {n_processes}")
    d = view.fmllm.distributed
    if d.num_machines > 1 and not d.main_process_ip:
        raise DistributedError(f"fmllm.distributed.num_machines is {d.num_machines}: set "
                               "fmllm.distributed.main_process_ip to the address of the machine with machine_rank 0 "
                               "(every machine must reach it on main_process_port)")
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "FSDP" if mode == "fsdp" else "MULTI_GPU",
        "downcast_bf16": "no",
        "gpu_ids": "all",
        "machine_rank": int(d.machine_rank),
        "main_training_function": "main",
        "mixed_precision": mixed_precision_for(view, cpu=cpu),
        "num_machines": int(d.num_machines),
        "num_processes": int(n_processes),
        "rdzv_backend": "static",
        "same_network": True,
        # use_cpu: true would start one process (accelerate's CPU launcher needs MPI for more);
        # CPU ranks pick gloo themselves.
        "use_cpu": False,
        "main_process_port": int(main_process_port or d.main_process_port),
    }
    if d.num_machines > 1:
        cfg["main_process_ip"] = str(d.main_process_ip)
    if mode == "fsdp":
        fsdp: dict[str, Any] = {
            "fsdp_version": 1,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_forward_prefetch": False,
            "fsdp_offload_params": bool(d.cpu_offload),
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_sync_module_states": True,
            "fsdp_use_orig_params": False,
            # fmllm's runner checkpoints the layers itself (transformers' gradient checkpointing).
            "fsdp_activation_checkpointing": False,
        }
        if layer_cls:
            fsdp["fsdp_transformer_layer_cls_to_wrap"] = layer_cls
        cfg["fsdp_config"] = fsdp
    return cfg


def write_accelerate_config(run_dir: str | os.PathLike[str], cfg: dict[str, Any]) -> Path:
    """Write ``cfg`` as ``run_dir/accelerate.yaml`` (atomically, mode 0600). Returns the path."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    # accelerate reads it with PyYAML (YAML 1.1): 1.1 output quotes 'no', 'on', 'yes'.
    yaml.version = (1, 1)
    yaml.default_flow_style = False
    buf = io.StringIO()
    buf.write("# Written by fmllm for this run: `accelerate launch --config_file` reads it.\n")
    yaml.dump(cfg, buf)
    path = Path(run_dir) / ACCELERATE_CONFIG
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_accelerate_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The accelerate config fmllm wrote (a plain dict)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        data = YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except YAMLError as e:
        raise DistributedError(f"{path} is not readable YAML: {e}") from None
    if not isinstance(data, dict):
        raise DistributedError(f"{path} is not an accelerate config (expected a mapping)")
    return data


def launch_argv(run_dir: str | os.PathLike[str], config_path: str | os.PathLike[str], n_processes: int, *,
                resume: bool = False) -> list[str]:
    """``accelerate launch`` of the training process, as an argv list (no shell)."""
    tail = ["-m", "fmllm_tui.runner.train", "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path),
            "--num_processes", str(int(n_processes)), *tail]


def free_port() -> int:
    """A TCP port free on this machine right now (for a single-machine rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------
# Planning a launch
# ------------------------------------------------------------------------------------------------


def visible_gpus() -> list[Any]:
    """The GPUs NVML reports (honouring CUDA_VISIBLE_DEVICES and FMLLM_FAKE_NVML); [] without."""
    from fmllm_tui import gpu

    inv = gpu.probe()
    return list(inv.devices) if inv.ok else []


def model_architecture(view: Any) -> dict[str, Any] | None:
    """The model's config.json fields from a local folder, the local cache or fmllm's catalogue
    (never the network); None when none has it."""
    from .smoke import local_model_config

    arch, _ = local_model_config(view.base_model_name, revision=view.fmllm.revision)
    return arch


def plan_launch(loaded: Any, *, kind: str = "train", device: str | None = None,
                vram_bytes: int | None = None) -> dict[str, Any]:
    """Everything :func:`fmllm_tui.runner.launch.start` needs to start ``kind`` distributed.

    ``vram_bytes`` (``--vram``, else ``fmllm.vram``) caps each GPU's memory the plan counts on.

    Returns ``{"mode", "num_processes", "reason", ...}``; mode single means a plain one-process
    run. For ddp/fsdp also ``accelerate`` (the config dict to write), ``num_machines``,
    ``machine_rank``, ``main_process_ip``, ``main_process_port``, ``cpu_offload``, ``layer_cls``
    and ``cpu``. Raises :class:`DistributedError`.
    """
    view = loaded.view
    d = view.fmllm.distributed
    cpu = device == "cpu"
    devices = [] if cpu else visible_gpus()
    n_visible = len(devices)
    if not cpu and n_visible == 0 and d.mode in ("ddp", "fsdp"):
        n_visible = _cuda_visible_count()
    arch = None
    fits = None
    if d.mode == "auto" and not cpu and (n_visible > 1 or d.num_machines > 1):
        arch = model_architecture(view)
        free = [dv.free_bytes for dv in devices]
        if vram_bytes is None and view.fmllm.vram:
            from fmllm_tui.config import parse_size

            vram_bytes = parse_size(view.fmllm.vram)
        if vram_bytes:  # a cap the person set: plan within it, as the runner will run
            free = [min(f, int(vram_bytes)) for f in free]
        fits, _ = fits_one_card(view, arch, free)
    mode, n, reason = plan_mode(view, n_visible, fits, kind=kind, cpu=cpu)
    # decided: a choice worth a line in train.log (several processes, or one of several GPUs).
    out: dict[str, Any] = {"mode": mode, "num_processes": n, "reason": reason, "cpu": cpu,
                           "decided": mode != "single" or n_visible > 1}
    if mode == "single":
        return out
    layer = None
    if mode == "fsdp":
        arch = arch if arch is not None else model_architecture(view)
        layer = decoder_layer_class(arch, trust_remote_code=view.fmllm.trust_remote_code)
        if layer is None:
            out["note"] = ("the decoder-layer class of this model is not known offline: accelerate wraps the "
                           "model's _no_split_modules")
    port = None
    # One machine and no port in the file: a free one, so two runs on one host never collide.
    if d.num_machines == 1 and not loaded.has("fmllm.distributed.main_process_port"):
        port = free_port()
    cfg = accelerate_config(view, mode, n, layer_cls=layer, cpu=cpu, main_process_port=port)
    out.update(accelerate=cfg, num_machines=int(d.num_machines), machine_rank=int(d.machine_rank),
               main_process_ip=d.main_process_ip, main_process_port=cfg["main_process_port"], port_auto=port is not None,
               cpu_offload=bool(d.cpu_offload) if mode == "fsdp" else False, layer_cls=layer)
    return out


def _cuda_visible_count() -> int:
    """GPUs CUDA_VISIBLE_DEVICES names (0 when unset: then NVML's count is the answer)."""
    from fmllm_tui.gpu import cuda_visible_devices

    return len(cuda_visible_devices() or [])


# ------------------------------------------------------------------------------------------------
# Watching: every GPU, and NCCL
# ------------------------------------------------------------------------------------------------


def gpu_snapshots() -> list[dict[str, Any]]:
    """One reading of every visible GPU: index, name, total/used/free bytes, utilisation %."""
    return [{"index": dv.index, "name": dv.name, "total": dv.total_bytes, "used": dv.used_bytes,
             "free": dv.free_bytes, "util_pct": dv.utilization_pct} for dv in visible_gpus()]


_NCCL_PROBE = (
    "import json,torch\n"
    "out={'torch':torch.__version__,'cuda':torch.version.cuda,'distributed':torch.distributed.is_available()}\n"
    "out['nccl']=bool(out['distributed'] and torch.distributed.is_nccl_available())\n"
    "try:\n"
    "    v=torch.cuda.nccl.version() if out['nccl'] else None\n"
    "    out['nccl_version']='.'.join(map(str,v)) if isinstance(v,tuple) else v\n"
    "except Exception as e:\n"
    "    out['nccl_version']=None\n"
    "print(json.dumps(out))\n"
)


def nccl_probe(timeout: float = 120.0) -> dict[str, Any]:
    """Whether this environment's torch has NCCL, asked in a child process (torch stays out of
    the caller). ``{"ok": bool, "nccl": bool, "nccl_version", "torch", "cuda"}``; ``ok`` False
    with ``error`` when the child could not answer."""
    try:
        proc = subprocess.run([sys.executable, "-c", _NCCL_PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the probe did not answer in {timeout:.0f}s"}
    except OSError as e:
        return {"ok": False, "error": f"could not start {sys.executable}: {e.strerror or e}"}
    try:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return {"ok": False, "error": f"the probe failed: {tail or f'exit code {proc.returncode}'}"}
    return {"ok": True, **res}
