"""Golden predictions: a dozen plans whose every number is pinned, so that a refactor of
fmllm_tui/memory.py that changes any of them fails here (issue 18: the split of predict_inputs kept
12,386 predictions byte-identical; these cases are a cheap sample of them).

The cases cover each branch of the model: checkpointing on and off, the loss and the layer-backward
peaks, the plain recipe's fp32 cast, the chunked and fused losses, eager attention, compiled layers,
the embedding offload and its micro-batch-1 floor, the workspace-stranding envelope, full
fine-tuning, 8-bit and 32-bit optimizers, DDP, FSDP (the wrap phase, CPU offload), an older GPU.

A deliberate change of the model or of its calibration constants changes these numbers: check the
diff is the one meant, then rewrite the expectations with ``python tests/test_memory_golden.py``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from fmllm_tui import memory
from fmllm_tui.memory import PlanInputs

GOLDEN = Path(__file__).with_name("memory_golden.json")
_, ARCHS = memory.load_points()
QWEN05, QWEN7, QWEN14 = "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct"
LLAMA8 = "meta-llama/Llama-3.1-8B-Instruct"
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: (case id, model, PlanInputs fields other than the defaults).
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("fmllm-defaults", QWEN7, {}),
    ("plain-prep-2048", QWEN7, {"recipe": "plain", "seq_len": 2048, "expandable_segments": False}),
    ("noprep-no-checkpointing-padded", LLAMA8,
     {"recipe": "noprep", "gradient_checkpointing": False, "seq_len": 512, "micro_batch": 2}),
    ("lean-all-linear-4096", QWEN05, {"recipe": "lean", "seq_len": 4096, "lora_r": 64, "lora_targets": ALL_LINEAR}),
    ("stranding-envelope", QWEN05, {"recipe": "noprep", "seq_len": 4096}),
    ("compiled-mlp-adapters", LLAMA8, {"compiled": True, "seq_len": 2048, "micro_batch": 2, "packing": True,
                                       "lora_targets": "all-linear", "lora_r": 16}),
    ("eager-attention", QWEN7, {"attn": "eager", "compiled": False, "seq_len": 1024, "micro_batch": 2}),
    ("chunked-loss-turing", QWEN7, {"loss": "chunked", "compute_capability": (7, 5), "micro_batch": 4,
                                    "tflops": 65.0, "bandwidth_gbs": 320.0}),
    ("offload-auto", QWEN7, {"offload_embeddings": "auto", "seq_len": 2048}),
    ("offload-on-micro-batch-2", QWEN7, {"offload_embeddings": "on", "micro_batch": 2, "packing": True}),
    ("full-fine-tuning", QWEN05, {"use_adapter": False, "use_4bit": False, "optim": "adamw_torch"}),
    ("8bit-fp4-fp32", LLAMA8, {"optim": "paged_adamw_8bit", "quant_type": "fp4", "nested_quant": False,
                               "compute_dtype": "float32", "recipe": "noprep"}),
    ("ddp-2", QWEN7, {"mode": "ddp", "n_gpus": 2, "grad_accum": 4}),
    ("fsdp-2-wrap", QWEN14, {"mode": "fsdp", "n_gpus": 2, "optim": "adamw_torch"}),
    ("fsdp-4-cpu-offload", QWEN14, {"mode": "fsdp", "n_gpus": 4, "cpu_offload": True, "seq_len": 4096}),
]


def _predict(model: str, fields: dict[str, Any]) -> dict[str, Any]:
    d = memory.predict_inputs(PlanInputs(**fields), ARCHS[model]).to_json()
    d.pop("inputs")  # the case's own fields
    d["breakdown"] = list(d["breakdown"].items())  # the order is output too (describe() ranks ties by it)
    return d


def _same(got: Any, want: Any) -> bool:
    """Equal, floats to 1e-12 (libm may differ in the last bit across platforms)."""
    if isinstance(want, float):
        return isinstance(got, float) and math.isclose(got, want, rel_tol=1e-12)
    if isinstance(want, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return got == want


@pytest.mark.parametrize(("case", "model", "fields"), CASES, ids=[c[0] for c in CASES])
def test_prediction_is_the_golden_one(case: str, model: str, fields: dict[str, Any]) -> None:
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))[case]
    got = json.loads(json.dumps(_predict(model, fields)))  # tuples -> lists, as stored
    diff = [k for k in want if not _same(got.get(k), want[k])]
    assert not diff, f"{case}: {', '.join(f'{k}: {got.get(k)!r} != {want[k]!r}' for k in diff)}"


def test_the_cases_reach_each_branch() -> None:
    """The sample keeps covering what it claims (a case edited away from its branch fails here)."""
    got = {case: _predict(model, fields) for case, model, fields in CASES}
    phases = {g["peak_phase"] for g in got.values()}
    assert phases == {"loss", "layer backward", "FSDP wrap"}
    assert {g["loss"] for g in got.values()} == {"plain", "chunked", "liger"}
    keys = {k for g in got.values() for k, _ in g["breakdown"]}
    assert {"offload_runtime", "nccl_buffers", "ddp_grad_buckets", "attention_mask", "lora_autocast_copies",
            "head_autocast_copy", "fsdp_wrap_transient"} <= keys
    notes = " ".join(n for g in got.values() for n in g["notes"])
    assert "allocator's pattern just below this length" in notes
    assert "FSDP CPU offload" in notes


if __name__ == "__main__":  # rewrite the expectations (after a deliberate change only)
    GOLDEN.write_text(json.dumps({c: _predict(m, f) for c, m, f in CASES}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN} ({len(CASES)} cases)", file=sys.stderr)
