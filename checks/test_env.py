"""Environment checks: allocator settings and variables that change what the GPU run sees."""

from __future__ import annotations

import os

from fmllm_tui.checks._plugin import check

from fmllm_tui.findings import Fix

RECOMMENDED_ALLOC = "expandable_segments:True"


@check("env.alloc_conf", "PyTorch allocator settings", "env", severity="warning")
def test_alloc_conf(report):
    # torch reads PYTORCH_ALLOC_CONF first; PYTORCH_CUDA_ALLOC_CONF is its older name, read when
    # the first is unset (c10/core/AllocatorConfig.h). Judge, and fix, the one torch will use.
    name = "PYTORCH_ALLOC_CONF" if os.environ.get("PYTORCH_ALLOC_CONF") else "PYTORCH_CUDA_ALLOC_CONF"
    value = os.environ.get(name)
    report.set(variable=name, value=value, PYTORCH_CUDA_ALLOC_CONF=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
               PYTORCH_ALLOC_CONF=os.environ.get("PYTORCH_ALLOC_CONF"), recommended=RECOMMENDED_ALLOC)
    fix = Fix(
        id="env.alloc_conf",
        shell=f"export {name}={RECOMMENDED_ALLOC}",
        summary="fmllm's runner sets this in the training process's environment by itself when neither "
                "variable is set",
    )
    if not value:
        report.warn("PYTORCH_CUDA_ALLOC_CONF is not set. With expandable_segments:True the allocator grows "
                    "segments instead of leaving fragments, which avoids OOMs with memory 'reserved but "
                    "unallocated' when sequence lengths vary (fmllm-run sets it for its own runs).", fix)
    shadowed = (f" (PYTORCH_CUDA_ALLOC_CONF={os.environ['PYTORCH_CUDA_ALLOC_CONF']} is also set; torch ignores it)"
                if name == "PYTORCH_ALLOC_CONF" and os.environ.get("PYTORCH_CUDA_ALLOC_CONF") else "")
    opts = dict(p.split(":", 1) for p in value.split(",") if ":" in p)
    if opts.get("expandable_segments", "").lower() == "true":
        report.ok(f"{name}={value}{shadowed}")
    if "max_split_size_mb" in opts:
        report.warn(f"{name}={value}: max_split_size_mb is a legacy workaround for "
                    "fragmentation (it stops the allocator splitting large blocks, at the cost of more "
                    "cudaMalloc calls and wasted tails); expandable_segments:True removes the fragmentation "
                    f"itself. Replace it.{shadowed}", fix)
    report.warn(f"{name}={value} does not enable expandable segments.{shadowed}", fix)


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
