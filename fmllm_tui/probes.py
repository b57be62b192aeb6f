"""Small functional tests that need torch, run as `python -m fmllm_tui.probes NAME` in a child
process so that the checks' own process never imports torch. Each prints one JSON line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def probe_bnb(dtype: str) -> dict[str, Any]:
    """Quantize a dense layer to nf4 on the GPU and compare its 4-bit matmul with the dense one."""
    out: dict[str, Any] = {"ok": False}
    try:
        import torch
    except Exception as e:  # pragma: no cover - torch is a dependency
        return {**out, "error": f"torch import failed: {e}"}
    if not torch.cuda.is_available():
        return {**out, "error": "torch sees no CUDA device"}
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
    except Exception as e:
        return {**out, "error": f"import bitsandbytes failed: {type(e).__name__}: {e}"}
    out["version"] = getattr(bnb, "__version__", "?")
    cdtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    try:
        torch.manual_seed(0)
        dense = torch.nn.Linear(512, 256, bias=False, dtype=torch.float16)
        layer = bnb.nn.Linear4bit(512, 256, bias=False, compute_dtype=cdtype, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
        layer = layer.cuda()  # quantizes here
        x = torch.randn(8, 512, device="cuda", dtype=cdtype)
        y4 = layer(x).float()
        deq = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(cdtype)
        ref_q = (x @ deq.t()).float()
        ref_dense = (x @ dense.weight.to("cuda", cdtype).t()).float()
        err_q = ((y4 - ref_q).norm() / ref_q.norm()).item()
        err_dense = ((y4 - ref_dense).norm() / ref_dense.norm()).item()
        out.update(
            device=torch.cuda.get_device_name(0),
            rel_error=err_dense,
            rel_error_vs_dequantized=err_q,
            weight_dtype=str(layer.weight.dtype),
        )
        # nf4 keeps ~10% relative error against the dense weights; the kernel itself must agree
        # with its own dequantized weights to rounding.
        if err_q > 0.02 or err_dense > 0.25 or not torch.isfinite(y4).all():
            out["error"] = f"4-bit matmul disagrees: {err_q:.4f} vs dequantized, {err_dense:.4f} vs dense"
            return out
        out["ok"] = True
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fmllm_tui.probes")
    ap.add_argument("name", choices=["bnb"])
    ap.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    a = ap.parse_args(argv)
    res = probe_bnb(a.dtype)
    print(json.dumps(res))
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
