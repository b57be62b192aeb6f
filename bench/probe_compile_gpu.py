#!/usr/bin/env python3
"""GPU probe of the compiled runner path (fmllm_tui/runner/compiled.py), before timing it.

1. fmllm's traceable 4-bit dequantisation against bitsandbytes' CUDA kernel (nf4/fp4, nested or
   not, the 7B's weight shapes and the CPU tests' shapes): bit-exact or not, max |difference|;
   and the CPU tests' numpy reference (tests/dequant_reference.py) against the same kernel.
2. ``torch._dynamo.explain`` of one decoder layer of a 4-bit LoRA model prepared with
   ``fmllm.compile: on``: graphs and graph breaks with their reasons (a break inside a layer
   splits it into several compiled pieces with Python between them).

    python bench/probe_compile_gpu.py --model /tmp/fmllm-bench-models/qwen2.5-7b-random

Writes ``$OUT/probe_compile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dequant_check() -> list[dict]:
    import bitsandbytes.functional as BF
    import torch

    from fmllm_tui.runner.compiled import dequantize_4bit
    from tests.dequant_reference import reference_dequantize

    rows = []
    torch.manual_seed(0)
    for qt in ("nf4", "fp4"):
        for nested in (True, False):
            for shape in ((3584, 3584), (512, 3584), (18944, 3584), (3584, 18944), (100, 72), (64, 32), (7, 9),
                          (96, 200), (512, 384)):
                w = (torch.randn(shape, device="cuda") * 0.02).to(torch.bfloat16)
                packed, qs = BF.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type=qt)
                ref = BF.dequantize_4bit(packed, qs)
                extra = (qs.state2.absmax, qs.state2.code, qs.offset) if nested else (None, None, None)
                mine = dequantize_4bit(packed, qs.absmax, qs.code, tuple(qs.shape), qs.blocksize, torch.bfloat16, *extra)
                # The CPU tests' host-independent reference must be what this CUDA kernel computes.
                numpy_ref = reference_dequantize(packed, qs)
                rows.append({"quant": qt, "nested": nested, "shape": list(shape), "equal": bool(torch.equal(ref, mine)),
                             "max_abs_diff": float((ref.float() - mine.float()).abs().max()),
                             "reference_equal": bool((ref.view(torch.int16).cpu().numpy().view("uint16")
                                                      == numpy_ref).all())})
    return rows


def explain_layer(model_path: str) -> dict:
    import torch

    from fmllm_tui.config import FineTuneConfig
    from fmllm_tui.plan import Target, resolve_recipe
    from fmllm_tui.runner.compiled import decoder_layers
    from fmllm_tui.runner.lean import load_model, prepare_for_training

    cfg = {"lora": {"r": 8, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
           "quantization": {"use_4bit": True, "bnb_4bit_compute_dtype": "bfloat16", "use_nested_quant": True},
           "training": {"gradient_checkpointing": True}, "fmllm": {"offload_embeddings": "off"}}
    view = FineTuneConfig.model_validate({"base_model_name": model_path, **cfg})
    recipe = resolve_recipe(view, Target("cuda", "probe", None, False, True), overrides={"compile": "on"})
    model = load_model(model_path, cfg, recipe)
    model = prepare_for_training(model, cfg, recipe)
    model.train()
    layer = decoder_layers(model)[0]
    inner = model.get_base_model().model
    hs = torch.randn(1, 1024, model.config.hidden_size, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(1024, device="cuda")[None]
    pe = inner.rotary_emb(hs, pos)

    def one(h):
        return layer._call_impl(h, attention_mask=None, position_ids=pos, position_embeddings=pe)

    ex = torch._dynamo.explain(one)(hs)
    return {"notes": recipe.notes, "graphs": ex.graph_count, "graph_breaks": ex.graph_break_count,
            "ops": ex.op_count,
            "reasons": [{"reason": str(b.reason)[:500], "where": [str(s)[:300] for s in b.user_stack[-2:]]}
                        for b in ex.break_reasons]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    out = Path(os.environ.get("OUT") or "bench_out")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    try:
        report["dequant"] = dequant_check()
    except Exception as e:  # keep the second part
        report["dequant_error"] = f"{type(e).__name__}: {e}"
    try:
        report["explain"] = explain_layer(a.model)
    except Exception as e:
        report["explain_error"] = f"{type(e).__name__}: {e}"
    (out / "probe_compile.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=1)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
