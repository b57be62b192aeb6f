"""GPU and software-stack checks: driver and devices, torch's CUDA build, bf16, bitsandbytes,
flash-attention. Local-machine checks skip when planning for a named GPU (--gpu/--vram)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from fmllm_tui.checks._plugin import check, planned_fix

from fmllm_tui.findings import Fix
from fmllm_tui.units import gib

PLANNING_SKIP = "planning for {name} ({source}): this machine's GPU stack is not checked"


def _gib(b: int) -> str:
    return gib(b, 1)


@check("gpu.devices", "NVIDIA driver and GPUs", "gpu")
def test_gpu_devices(report, inventory, planning):
    if any(planning) and not (inventory.ok and inventory.devices):
        what = planning[0] or f"a {planning[1]} budget"
        report.skip(f"planning for {what}: this machine has no usable GPU ({inventory.error or 'none visible'}), "
                    "which is fine for planning")
    report.set(
        source=inventory.source,
        driver_version=inventory.driver_version,
        cuda_driver_version=".".join(map(str, inventory.cuda_driver_version)) if inventory.cuda_driver_version else None,
        devices=[
            {
                "index": d.index,
                "name": d.name,
                "total_bytes": d.total_bytes,
                "free_bytes": d.free_bytes,
                "compute_capability": ".".join(map(str, d.compute_capability)),
                "processes": [{"pid": p.pid, "name": p.name, "used_bytes": p.used_bytes} for p in d.processes],
            }
            for d in inventory.devices
        ],
    )
    if not inventory.ok or not inventory.devices:
        why = inventory.error or "NVML sees no GPU"
        if inventory.ok and not inventory.devices and os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            why = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
        report.fail(
            f"no usable CUDA GPU: {why}. Fine-tuning needs an NVIDIA GPU. Here fmllm can still plan for "
            "the card you will use (fmllm-check --gpu 'RTX 3080' or --vram 10GiB) and run the CPU smoke "
            "test (fmllm-check --test)."
        )
    lines = []
    for d in inventory.devices:
        line = (f"GPU {d.index}: {d.name}, {_gib(d.free_bytes)} free of {_gib(d.total_bytes)}, "
                f"compute capability {d.compute_capability[0]}.{d.compute_capability[1]}")
        lines.append(line)
    others = [(d, p) for d in inventory.devices for p in d.processes]
    head = f"driver {inventory.driver_version}; " + "; ".join(lines)
    if others:
        procs = ", ".join(f"PID {p.pid} {p.name} {p.used_bytes / 2**20:.0f} MiB on GPU {d.index}" for d, p in others)
        report.warn(f"{head}. Other processes hold GPU memory: {procs}. Their memory is not available to "
                    "training; stop them or plan with what is free.")
    report.ok(head)


@check("gpu.torch_build", "torch is a CUDA build the driver supports", "gpu")
def test_torch_build(report, inventory, planning):
    from fmllm_tui.gpu import torch_build_info

    info = torch_build_info()
    report.set(**{k: v for k, v in info.items()})
    if any(planning):
        report.skip(PLANNING_SKIP.format(name=planning[0] or planning[1], source="--gpu/--vram or fmllm.target_gpu"))
    if not info.get("installed"):
        report.fail("torch is not installed. Install a CUDA build: pip install torch (see pytorch.org for your CUDA).")
    version = info["version"]
    if not info.get("cuda"):
        report.fail(f"torch {version} is a CPU-only build: it cannot use the GPU. Install a CUDA build, "
                    "e.g. pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu124")
    built = tuple(int(x) for x in str(info["cuda"]).split(".")[:2])
    drv = inventory.cuda_driver_version
    report.set(torch_cuda=info["cuda"], driver_supports_cuda=".".join(map(str, drv)) if drv else None)
    if drv and built[0] > drv[0]:
        report.fail(f"torch {version} was built for CUDA {info['cuda']} but the driver supports only CUDA "
                    f"{drv[0]}.{drv[1]}: update the NVIDIA driver, or install a torch built for CUDA {drv[0]}.x.")
    if drv and built > drv:
        report.warn(f"torch is built for CUDA {info['cuda']}, newer than the driver's {drv[0]}.{drv[1]}; "
                    "minor-version compatibility usually works, but update the driver if kernels fail to load.")
    report.ok(f"torch {version} with CUDA {info['cuda']}" + (f" (driver supports {drv[0]}.{drv[1]})" if drv else ""))


@check("gpu.bf16", "Compute dtype suits the GPU", "gpu")
def test_bf16(report, loaded, target):
    dtype = loaded.view.compute_dtype
    cc = target.compute_capability
    report.set(compute_dtype=dtype, compute_capability=".".join(map(str, cc)) if cc else None, gpu=target.name)
    if cc is None:
        report.skip(f"compute capability of {target.name} is unknown")
    ampere = tuple(cc) >= (8, 0)
    if dtype == "bfloat16" and not ampere:
        fix = planned_fix(loaded, "dtype.compute", {"to": "float16"})
        report.fail(f"bnb_4bit_compute_dtype is bfloat16 but {target.name} (sm_{cc[0]}{cc[1]}) has no bf16 "
                    "support (needs Ampere, RTX 30xx / A100, or newer): use float16.", fix)
    if dtype == "float16" and ampere:
        fix = planned_fix(loaded, "dtype.compute", {"to": "bfloat16"})
        report.warn(f"{target.name} supports bfloat16: it has fp32's range, so no loss scaling and no fp16 "
                    "overflow (NaN losses); same memory and speed. Switch bnb_4bit_compute_dtype to bfloat16.", fix)
    report.ok(f"{dtype} on {target.name}")


@check("gpu.flash_attn", "Attention implementation is usable", "gpu")
def test_flash_attn(report, loaded, request):
    impl = loaded.view.fmllm.attn_implementation
    report.set(attn_implementation=impl)
    if impl != "flash_attention_2":
        if impl == "eager":
            fix = planned_fix(loaded, "attn.sdpa", {})
            report.warn("eager attention stores the seq x seq attention matrix of every head (memory grows "
                        "with the square of max_seq_length); sdpa gives the same result without it.", fix)
        report.ok(f"{impl} attention")
    installed = importlib.util.find_spec("flash_attn") is not None
    try:
        target = request.getfixturevalue("target")
    except BaseException:  # no GPU here and none named: judge the package alone
        target = None
    cc = target.compute_capability if target else None
    report.set(flash_attn_installed=installed, compute_capability=".".join(map(str, cc)) if cc else None)
    if not installed:
        fix = planned_fix(loaded, "attn.sdpa", {})
        report.fail("attn_implementation is flash_attention_2 but the flash-attn package is not installed; "
                    "sdpa is as memory-lean for training (or pip install flash-attn --no-build-isolation).", fix)
    if cc is not None and tuple(cc) < (8, 0):
        fix = planned_fix(loaded, "attn.sdpa", {})
        report.fail(f"FlashAttention 2 needs Ampere or newer; {target.name if target else 'this GPU'} is sm_{cc[0]}{cc[1]}. Use sdpa.", fix)
    report.ok("flash-attn installed and supported")


@check("gpu.bitsandbytes", "bitsandbytes 4-bit works on the GPU", "gpu")
def test_bitsandbytes(report, inventory, target, loaded):
    if target.planning:
        report.skip(PLANNING_SKIP.format(name=target.name, source=target.source))
    if not loaded.view.quantization.use_4bit:
        report.skip("use_4bit is off: bitsandbytes is not used")
    if importlib.util.find_spec("bitsandbytes") is None:
        report.fail("bitsandbytes is not installed; 4-bit loading needs it: pip install -U bitsandbytes")
    if not inventory.ok or not inventory.devices:
        report.skip("no CUDA GPU: the 4-bit kernels cannot be tested here")
    # A real functional test in a child process (keeps torch out of this process).
    proc = subprocess.run(
        [sys.executable, "-m", "fmllm_tui.probes", "bnb", "--dtype", loaded.view.compute_dtype],
        capture_output=True, text=True, timeout=300,
    )
    try:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        report.fail("the bitsandbytes test crashed: " + " | ".join(tail) +
                    ". Run python -m bitsandbytes for its diagnosis; pip install -U bitsandbytes usually fixes it.")
    report.set(**res)
    if not res.get("ok"):
        report.fail(f"bitsandbytes 4-bit test failed: {res.get('error')}. Run python -m bitsandbytes; "
                    "check torch is a CUDA build; pip install -U bitsandbytes.")
    report.ok(f"bitsandbytes {res.get('version')}: nf4 quantize + 4-bit matmul on {res.get('device')} "
              f"match the dense result (max relative error {res.get('rel_error'):.3f})")


@check("gpu.liger", "The GPU install has what the plan assumes", "gpu", severity="warning")
def test_liger(report, inventory, target, loaded):
    """Plans for a CUDA card assume fmllm's GPU install (liger-kernel, fmllm_tui.recipe); on the
    GPU machine itself, say when the install lacks it, so the run is the one planned."""
    from fmllm_tui import recipe

    if target.planning:
        report.skip(PLANNING_SKIP.format(name=target.name, source=target.source))
    if not inventory.ok or not inventory.devices:
        report.skip("no CUDA GPU here: the CPU runs use the chunked loss, as planned for the CPU")
    fm = loaded.view.fmllm
    needs = fm.memory_recipe == "fmllm" and fm.loss in ("auto", "liger")
    report.set(liger_installed=recipe.liger_installed(), planned_with_liger=needs)
    if not needs:
        report.skip(f"memory_recipe {fm.memory_recipe}, loss {fm.loss}: liger-kernel is not used")
    if not recipe.liger_installed():
        report.warn("liger-kernel is not installed: the plan assumes its fused loss (a few MB) and kernels; "
                    "this run would use the chunked loss and the model's own layers, with a higher peak than "
                    "predicted.", Fix(id="gpu.liger", shell="pip install liger-kernel",
                                      summary="fmllm's GPU extra; from a checkout, pin it: "
                                              "pip install -c constraints.txt -e '.[gpu]'", safe=False))
    report.ok("liger-kernel is installed, as the plan assumes")
