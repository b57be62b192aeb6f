"""Environment checks: allocator settings and variables that change what the GPU run sees."""

from __future__ import annotations

import os

from checks._plugin import check
from fmllm_tui.findings import Fix

RECOMMENDED_ALLOC = "expandable_segments:True"


@check("env.alloc_conf", "PyTorch allocator settings", "env", severity="warning")
def test_alloc_conf(report):
    value = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
    report.set(PYTORCH_CUDA_ALLOC_CONF=value, recommended=RECOMMENDED_ALLOC)
    fix = Fix(
        id="env.alloc_conf",
        shell=f"export PYTORCH_CUDA_ALLOC_CONF={RECOMMENDED_ALLOC}",
        summary="fmllm's runner sets this in the training process's environment by itself",
    )
    if not value:
        report.warn("PYTORCH_CUDA_ALLOC_CONF is not set. With expandable_segments:True the allocator grows "
                    "segments instead of leaving fragments, which avoids OOMs with memory 'reserved but "
                    "unallocated' when sequence lengths vary (fmllm-run sets it for its own runs).", fix)
    opts = dict(p.split(":", 1) for p in value.split(",") if ":" in p)
    if opts.get("expandable_segments", "").lower() == "true":
        report.ok(f"PYTORCH_CUDA_ALLOC_CONF={value}")
    if "max_split_size_mb" in opts:
        report.warn(f"PYTORCH_CUDA_ALLOC_CONF={value}: max_split_size_mb is a legacy workaround for "
                    "fragmentation (it stops the allocator splitting large blocks, at the cost of more "
                    "cudaMalloc calls and wasted tails); expandable_segments:True removes the fragmentation "
                    "itself. Replace it.", fix)
    report.warn(f"PYTORCH_CUDA_ALLOC_CONF={value} does not enable expandable segments.", fix)


@check("env.cuda_visible_devices", "CUDA_VISIBLE_DEVICES leaves a GPU visible", "env")
def test_cuda_visible_devices(report, inventory):
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    report.set(CUDA_VISIBLE_DEVICES=value)
    if value is None:
        report.ok("CUDA_VISIBLE_DEVICES is not set (every GPU visible)")
    items = [x.strip() for x in value.split(",") if x.strip()]
    if not items or items == ["-1"] or (inventory.ok and not inventory.devices):
        report.fail(f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU from training: unset it or list a "
                    "device index (e.g. export CUDA_VISIBLE_DEVICES=0).",
                    Fix(id="env.cuda_visible_devices", shell="unset CUDA_VISIBLE_DEVICES"))
    report.ok(f"CUDA_VISIBLE_DEVICES={value}")


@check("env.tf_allow_growth", "No TensorFlow-only memory settings", "env", severity="warning")
def test_tf_allow_growth(report):
    value = os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")
    report.set(TF_FORCE_GPU_ALLOW_GROWTH=value)
    if value is not None:
        report.warn(f"TF_FORCE_GPU_ALLOW_GROWTH={value} has no effect on PyTorch (it is a TensorFlow "
                    "setting); PyTorch already allocates on demand. For fragmentation use "
                    f"PYTORCH_CUDA_ALLOC_CONF={RECOMMENDED_ALLOC}.",
                    Fix(id="env.tf_allow_growth", shell="unset TF_FORCE_GPU_ALLOW_GROWTH"))
    report.ok("TF_FORCE_GPU_ALLOW_GROWTH is not set")
