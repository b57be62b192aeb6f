"""Presets: the guide's optimized run scripts as named, documented, reversible config profiles.

A guide run script backs up the config, switches the model, applies the optimizations, runs
fine-tuning and evaluation, and restores the config. Here a preset is the "switch the model and
apply the optimizations" part as one list of changes; ``apply_changes`` makes the backup and
``undo`` (or :func:`fixes.safewrite.temporarily_applied`) restores it.

Settings a preset leaves alone are the person's own (data, paths, learning rate, epochs) and the
ones the checks decide per machine (the compute dtype follows the GPU: ``dtype.compute``).
Memory numbers come from bench measurements on an H200 (research/anchor-measurements.md):
process peaks of the lean recipe, 7B 1024 tokens x 1: 6.6 GiB; 14B: 11.2 GiB.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from fmllm_tui.config import LoadedConfig
from fmllm_tui.findings import Change

from .engine import same
from .errors import FixError
from .fixers import FIXERS, Fixer, change, current, known_canonical, present

_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Preset:
    """A named profile: the model, what GPU memory it targets, and the canonical changes."""

    name: str
    description: str
    target_gpu_memory: str  # per GPU, as parse_size reads it
    model: str
    changes: tuple[tuple[str, Any, str], ...]  # (canonical key, value, why)
    gpus: int = 1
    alternatives: tuple[str, ...] = ()  # other model ids the preset is written for
    notes: str = ""
    host_ram: str | None = None  # host memory the preset needs, when it offloads


_LEAN = (
    ("use_adapter", True, "train a LoRA adapter on the frozen 4-bit model"),
    ("quantization.use_4bit", True, "4-bit base weights: ~0.5 bytes per parameter"),
    ("quantization.bnb_4bit_quant_type", "nf4", "NF4 keeps more accuracy than FP4 at the same size"),
    ("quantization.use_nested_quant", True, "double quantization saves ~0.4 bits per parameter"),
    ("training.per_device_train_batch_size", 1, "one sequence per micro-batch"),
    ("training.gradient_checkpointing", True, "keep one hidden state per layer, recompute the rest"),
    ("training.gradient_checkpointing_kwargs", {"use_reentrant": False}, "non-reentrant checkpointing works with PEFT"),
    ("training.per_device_eval_batch_size", 1, "evaluation has its own peak"),
    ("fmllm.memory_recipe", "fmllm", "lean runner: no fp32 copies of embeddings and norms"),
    ("fmllm.loss", "auto", "fused or chunked loss instead of full-vocabulary fp32 logits"),
    ("fmllm.attn_implementation", "sdpa", "memory-efficient attention without extra packages"),
)

def _merge(*groups: tuple[tuple[str, Any, str], ...]) -> tuple[tuple[str, Any, str], ...]:
    """Preset changes by key; a later group overrides an earlier one (one change per key)."""
    out: dict[str, tuple[str, Any, str]] = {}
    for group in groups:
        for item in group:
            out[item[0]] = item
    return tuple(out.values())


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="7b-10gb",
            description="Qwen2.5-7B-Instruct QLoRA on a 10 GB card (RTX 3080 class)",
            target_gpu_memory="10GiB",
            model="Qwen/Qwen2.5-7B-Instruct",
            changes=_merge(
                _LEAN,
                (
                    ("lora.r", 8, "rank 8 on attention: small adapter, small optimizer state"),
                    ("lora.target_modules", _QKVO, "adapters on attention projections only"),
                    ("training.gradient_accumulation_steps", 8, "effective batch 8 without extra memory"),
                    ("training.max_seq_length", 1024, "1024 tokens per example"),
                    ("training.optim", "paged_adamw_32bit", "paged optimizer state can spill to CPU under pressure"),
                    ("fmllm.offload_embeddings", "auto", "fmllm decides from the predicted peak"),
                ),
            ),
            notes="Measured process peak 6.6 GiB on an H200 (lean recipe, 1024 tokens x 1).",
        ),
        Preset(
            name="14b-12gb",
            description="Qwen2.5-14B-Instruct QLoRA on a 12 GB card (RTX 3060 12 GB / 4070 class)",
            target_gpu_memory="12GiB",
            model="Qwen/Qwen2.5-14B-Instruct",
            changes=_merge(
                _LEAN,
                (
                    ("lora.r", 8, "rank 8 on attention: small adapter, small optimizer state"),
                    ("lora.target_modules", _QKVO, "adapters on attention projections only"),
                    ("training.gradient_accumulation_steps", 16, "effective batch 16 without extra memory"),
                    ("training.max_seq_length", 512, "512 tokens per example leaves headroom on 12 GB"),
                    ("training.optim", "paged_adamw_8bit", "8-bit paged optimizer state"),
                    ("fmllm.offload_embeddings", "on", "the 152k x 5120 embedding (1.5 GiB) lives on the CPU"),
                ),
            ),
            notes="Measured process peak 11.2 GiB at 1024 tokens (H200, lean recipe): too close to "
            "12 GB, hence 512 tokens and CPU embeddings. Check with fmllm-check on the card.",
        ),
        Preset(
            name="14b-24gb",
            description="Qwen2.5-14B-Instruct QLoRA on a 24 GB card (RTX 3090/4090 class), longer sequences",
            target_gpu_memory="24GiB",
            model="Qwen/Qwen2.5-14B-Instruct",
            changes=_merge(
                _LEAN,
                (
                    ("training.per_device_train_batch_size", 2, "two sequences per micro-batch use the room"),
                    ("lora.r", 16, "rank 16 on every linear layer"),
                    ("lora.alpha", 32, "alpha = 2 x r keeps the adapter's scale"),
                    ("lora.target_modules", _ALL_LINEAR, "adapters on attention and MLP projections"),
                    ("training.gradient_accumulation_steps", 4, "effective batch 8"),
                    ("training.max_seq_length", 2048, "2048 tokens per example"),
                    ("training.optim", "paged_adamw_32bit", "paged optimizer state can spill to CPU under pressure"),
                    ("fmllm.offload_embeddings", "auto", "fmllm decides from the predicted peak"),
                ),
            ),
            notes="4096 tokens per micro-batch; the lean 14B recipe peaks at 11.2 GiB for 1024 tokens.",
        ),
        Preset(
            name="70b-multi-gpu",
            description="Qwen2.5-72B-Instruct (or Llama-3.3-70B-Instruct) QLoRA with FSDP across GPUs",
            target_gpu_memory="24GiB",
            gpus=2,
            host_ram="128GiB",
            model="Qwen/Qwen2.5-72B-Instruct",
            alternatives=("meta-llama/Llama-3.3-70B-Instruct",),
            changes=_merge(
                _LEAN,
                (
                    ("quantization.bnb_4bit_compute_dtype", "bfloat16", "FSDP shards 4-bit weights stored in bfloat16"),
                    ("training.bf16", True, "bfloat16 mixed precision, matching the 4-bit storage"),
                    ("training.fp16", False, "bfloat16 mixed precision, matching the 4-bit storage"),
                    ("lora.r", 8, "rank 8 on attention: small adapter, small optimizer state"),
                    ("lora.target_modules", _QKVO, "adapters on attention projections only"),
                    ("training.gradient_accumulation_steps", 8, "effective batch 8 per GPU"),
                    ("training.max_seq_length", 1024, "1024 tokens per example"),
                    ("training.optim", "adamw_torch", "paged 8-bit optimizers fail to save under FSDP"),
                    ("fmllm.offload_embeddings", "off", "FSDP shards the embedding with the rest"),
                    ("fmllm.distributed.mode", "fsdp", "shard the 4-bit model across GPUs"),
                    ("fmllm.distributed.cpu_offload", True, "parameters wait in host RAM between uses"),
                ),
            ),
            notes="Needs bfloat16 GPUs (Ampere or newer). Reported for 70B on 2 GPUs (PEFT FSDP "
            "guide): ~19.6 GB per GPU plus ~107 GB host RAM with CPU offload; ~35.6 GB per GPU "
            "without. Llama-3.3 is gated: accept its licence and log in first. fmllm's FSDP launch "
            "loads the 4-bit model into CPU RAM in every process first (host.load_ram) and peaks "
            "while FSDP wraps it, with the embeddings and head held twice (config.multi_gpu_fit).",
        ),
    )
}

for _p in PRESETS.values():  # a typo in a preset is a bug: fail at import, not in a person's run
    for _key, _value, _why in _p.changes:
        if not known_canonical(_key):
            raise RuntimeError(f"preset {_p.name}: unknown setting {_key}")


def get_preset(name: str) -> Preset:
    """The preset called ``name``; FixError naming the known ones (and a near miss) otherwise."""
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.5)
    raise FixError(
        f"no preset called {name!r}",
        hint=(f"did you mean {close[0]!r}? " if close else "") + f"presets: {', '.join(PRESETS)} (fmllm-check --list-presets)",
    )


def preset_changes(loaded: LoadedConfig, name: str, model: str | None = None) -> list[Change]:
    """The changes that turn ``loaded`` into preset ``name`` (empty if it already is).

    ``model`` picks one of the preset's alternatives (e.g. Llama-3.3-70B for ``70b-multi-gpu``).
    """
    preset = get_preset(name)
    chosen = model or preset.model
    if chosen not in (preset.model, *preset.alternatives):
        raise FixError(
            f"preset {name} is written for {', '.join((preset.model, *preset.alternatives))}, not {chosen!r}",
            hint="pick one of those, or set base_model_name yourself and run fmllm-check --fix",
        )
    why = f"preset {name}"
    out = change(loaded, "base_model_name", chosen, f"{why}: {preset.description}")
    if out and current(loaded, "fmllm.revision"):
        out += change(loaded, "fmllm.revision", None, "the pinned revision was a commit of the old model")
    for key, value, reason in preset.changes:
        if not present(loaded, key) and same(effective(loaded, key), value):
            continue  # absent and already the default: a preset writes only what differs
        out += change(loaded, key, value, f"{why}: {reason}")
    return out


def effective(loaded: LoadedConfig, canonical: str) -> Any:
    """The value fmllm uses for a canonical setting (the file's, else the schema default)."""
    node: Any = loaded.view
    for part in canonical.split("."):
        if isinstance(node, BaseModel):
            node = getattr(node, part, None)
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node.model_dump() if isinstance(node, BaseModel) else node


def list_presets() -> str:
    """Plain-text table for ``fmllm-check --list-presets``."""
    lines = []
    for p in PRESETS.values():
        gpus = f"{p.gpus} x {p.target_gpu_memory}" if p.gpus > 1 else p.target_gpu_memory
        ram = f", host RAM {p.host_ram}" if p.host_ram else ""
        lines.append(f"{p.name:<15} {gpus} GPU memory{ram}")
        lines.append(f"{'':<15} {p.description}")
        models = ", ".join((p.model, *p.alternatives))
        lines.append(f"{'':<15} model: {models}")
        if p.notes:
            lines.append(f"{'':<15} {p.notes}")
    return "\n".join(lines)


def _preset_planner(name: str):  # type: ignore[no-untyped-def]
    def plan(loaded: LoadedConfig, values: dict[str, Any]) -> list[Change]:
        model = values.get("model")
        return preset_changes(loaded, name, model if isinstance(model, str) else None)

    return plan


for _name, _preset in PRESETS.items():
    FIXERS[f"preset.{_name}"] = Fixer(f"preset.{_name}", f"Preset {_name}", _preset.description, _preset_planner(_name))
