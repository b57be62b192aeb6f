"""A host-independent reference of bitsandbytes' 4-bit dequantisation (what its CUDA kernel
computes), in numpy from the packed bytes alone. tests/test_compiled.py checks fmllm's traceable
dequantisation against it bit for bit on the CPU; bench/probe_compile_gpu.py checks it against
bitsandbytes' CUDA kernel on the GPU (bench/RESULTS.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def reference_dequantize(packed: Any, qs: Any) -> np.ndarray:
    """The bf16 bit patterns bitsandbytes' CUDA kernel produces, computed in numpy from the packed
    bytes alone: an element is ``code[nibble] * scale`` in float32 (high nibble first), a nested
    scale ``code2[q] * absmax2[block / 256] + offset`` (a multiply, then an add: no fused
    multiply-add), rounded to bf16 to nearest even by integer arithmetic; an fp4 code with its sign
    bit set is negative, zero included (-0.0, as the kernel gives). Nothing here depends on
    the host's instruction set (bitsandbytes' own CPU path does: its AVX-512 kernel is off for some
    shapes)."""
    f32 = np.float32
    rows, cols = qs.shape
    n = rows * cols
    data = packed.reshape(-1).view(torch.uint8).cpu().numpy()
    j = np.arange(n)
    nibble = np.where(j % 2 == 0, data[j // 2] >> 4, data[j // 2] & 0xF).astype(np.int64)
    if qs.nested:
        q = qs.absmax.cpu().numpy().astype(np.int64)
        scales = qs.state2.code.cpu().numpy().astype(f32)[q] * qs.state2.absmax.cpu().numpy().astype(f32)[
            np.arange(q.size) // qs.state2.blocksize]
        scales = (scales + f32(qs.offset.item())).astype(f32)
    else:
        scales = qs.absmax.cpu().numpy().astype(f32)
    code = qs.code.cpu().numpy().astype(f32)[nibble]
    if qs.quant_type == "fp4":  # the kernel takes an fp4 sign from the code's top bit: 0b1000 is -0.0
        code = np.where(nibble >= 8, np.copysign(code, f32(-1)), code).astype(f32)
    values = (code * scales[j // qs.blocksize]).astype(f32)
    return bf16_bits(values).reshape(rows, cols)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, rounded to nearest even in integer arithmetic."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
