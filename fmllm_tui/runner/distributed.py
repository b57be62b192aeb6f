"""Multi-GPU training through accelerate: its accelerate config and the launch argv (which mode
and how many processes is planned in fmllm_tui/multigpu.py).

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
from pathlib import Path
from typing import Any

# The multi-GPU plan (mode, one-card fit, FSDP shard search, host RAM) is core planning, torch-free,
# in fmllm_tui/multigpu.py; the launcher reads it from there (re-exported for its callers).
from fmllm_tui.multigpu import (  # noqa: F401
    MAX_PLAN_GPUS,
    MODES,
    OFFLOAD_RAM_BYTES_PER_PARAM,
    PROCESS_RAM_BYTES,
    DistributedError,
    ShardPlan,
    fits_one_card,
    fsdp_view,
    load_host_ram_bytes,
    offload_host_ram_bytes,
    plan_mode,
    shard_search,
)
from fmllm_tui.plan import quant_storage_dtype  # noqa: F401

ACCELERATE_CONFIG = "accelerate.yaml"

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
# The accelerate config
# ------------------------------------------------------------------------------------------------


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
