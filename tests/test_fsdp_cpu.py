"""fmllm's FSDP path for real on the CPU: 2 processes over gloo, started by fmllm's launcher
(``accelerate launch`` with the accelerate.yaml fmllm writes) into the same training process
(``python -m fmllm_tui.runner.train``) a GPU run uses, with a tiny Qwen2 model in float32.

Two things stand between FSDP and the CPU, both outside fmllm, and this test lifts them for its
own processes only:

* accelerate turns its FSDP plugin on only for GPU-like process groups (``AcceleratorState``:
  MULTI_GPU, MULTI_XPU, ...). CPU ranks are MULTI_CPU, where accelerate silently trains plain
  data-parallel instead. A ``sitecustomize`` the ranks import (through PYTHONPATH) promotes
  MULTI_CPU to FSDP when accelerate's launcher asked for FSDP, and ``ACCELERATE_TORCH_DEVICE=cpu``
  gives FSDP the plain ``cpu`` device (accelerate's own ``cpu:0`` fails FSDP's device check).
* torch's FSDP refuses ``sync_module_states`` on CPU tensors, and accelerate forces it on with
  ``fsdp_cpu_ram_efficient_loading``: the CPU run turns both off (every rank loads the model).

fmllm itself refuses FSDP on the CPU (plan_mode); the test lets it through and rewrites those two
keys of the accelerate config. Everything else is fmllm's GPU path: the accelerate config and
launch, peft + FSDP (use_orig_params false, decoder layers and LoRA layers wrapped), reentrant
gradient checkpointing, the lean loss, FSDP checkpoints, saving the adapter gathered from the
ranks, resuming, and every rank's rows in metrics.jsonl. The FSDP losses and adapter must equal a
one-process run's on the same data and seed (float32: to 1e-5), which also checks that 2 ranks x
accumulation 2 see the same examples per optimizer step as 1 process x accumulation 4 (what
bench/bench_fsdp_gpu.py relies on).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from runconfig import write_run_config, yaml_block
from tui_support import scaled

from fmllm_tui.config import load_config
from fmllm_tui.runner import distributed as dist
from fmllm_tui.runner import resume, start, wait
from fmllm_tui.runner import rundir as rd
from fmllm_tui.runner.monitor import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample_instructions.jsonl"
STEPS = 4

# Imported by every process of the run (PYTHONPATH); acts only in accelerate's FSDP ranks.
SHIM = '''\
import os

if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and "LOCAL_RANK" in os.environ:
    from accelerate import state as _state

    _init = _state.AcceleratorState.__init__

    def _fsdp_on_cpu(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if self.distributed_type == _state.DistributedType.MULTI_CPU and plugin is not None:
            self.distributed_type = _state.DistributedType.FSDP
            self.fsdp_plugin = plugin

    _state.AcceleratorState.__init__ = _fsdp_on_cpu
'''


def _cpu_fsdp_unavailable() -> str | None:
    """Why this torch/accelerate cannot run the test, or None."""
    try:
        import torch.distributed as td
        from accelerate import state
        from torch.distributed.fsdp import FullyShardedDataParallel  # noqa: F401
    except ImportError as e:
        return f"torch.distributed FSDP or accelerate is not importable: {e}"
    if not (td.is_available() and td.is_gloo_available()):
        return "this torch build has no gloo backend (torch.distributed on the CPU)"
    if not all(hasattr(state.DistributedType, k) for k in ("FSDP", "MULTI_CPU")):
        return "this accelerate has no DistributedType.FSDP / MULTI_CPU: the CPU shim does not apply"
    return None


@pytest.fixture
def cpu_fsdp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Let fmllm plan FSDP on the CPU (test only) and return the ranks' extra environment."""
    why = _cpu_fsdp_unavailable()
    if why:
        pytest.skip(f"skipped: {why}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    plan_mode, accelerate_config = dist.plan_mode, dist.accelerate_config

    def plan_fsdp_on_cpu(view: Any, n_gpus: int, fits: bool | None, *, kind: str = "train",
                         cpu: bool = False) -> tuple[str, int, str]:
        d = view.fmllm.distributed
        if cpu and d.mode == "fsdp":
            return "fsdp", int(d.num_processes), f"test: FSDP over {d.num_processes} CPU processes (gloo)"
        return plan_mode(view, n_gpus, fits, kind=kind, cpu=cpu)

    def cpu_accelerate_config(*args: Any, **kwargs: Any) -> dict[str, Any]:
        cfg = accelerate_config(*args, **kwargs)
        if kwargs.get("cpu") and "fsdp_config" in cfg:
            cfg["fsdp_config"].update(fsdp_sync_module_states=False, fsdp_cpu_ram_efficient_loading=False)
        return cfg

    monkeypatch.setattr(dist, "plan_mode", plan_fsdp_on_cpu)
    monkeypatch.setattr(dist, "accelerate_config", cpu_accelerate_config)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    return {"PYTHONPATH": f"{shim}:{REPO}", "ACCELERATE_TORCH_DEVICE": "cpu"}


def write_config(folder: Path, model: Path, distributed: str, ga: int) -> Path:
    """Batch 1 x `ga` accumulation at length 64, a checkpoint every 2 steps, the given `distributed`."""
    return write_run_config(
        folder, model,
        training={"per_device_train_batch_size": 1, "gradient_accumulation_steps": ga, "max_seq_length": 64,
                  "max_steps": STEPS, "save_steps": 2, "seed": 3},
        fmllm=yaml_block(f"distributed: {distributed}\n"))



def finished(run_dir: Path, timeout: float = 150) -> dict[str, Any]:
    timeout = scaled(timeout)  # two torch-importing ranks on a loaded 2-core machine
    rec = wait(run_dir, timeout=timeout)
    assert rec is not None, f"no exit in {timeout}s:\n{(run_dir / rd.LOG).read_text()[-3000:]}"
    assert rec["status"] == "ok", f"{rec.get('message')}\n{(run_dir / rd.LOG).read_text()[-4000:]}"
    return json.loads((run_dir / rd.SUMMARY).read_text())


def adapter_of(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_matches_one_process_and_resumes(
        tmp_path: Path, tiny_model_dir: Path, cpu_fsdp: dict[str, str]) -> None:
    import torch

    fsdp_cfg = write_config(tmp_path / "fsdp", tiny_model_dir, "{mode: fsdp, num_processes: 2}", ga=2)
    single_cfg = write_config(tmp_path / "single", tiny_model_dir, "{mode: single}", ga=4)
    t0 = time.monotonic()
    # Both at once (they are detached): the one-process run is the reference.
    fsdp_dir = start(load_config(fsdp_cfg), "train", device="cpu", env=cpu_fsdp)
    single_dir = start(load_config(single_cfg), "train", device="cpu", env=cpu_fsdp)
    fsdp, single = finished(fsdp_dir), finished(single_dir)

    # fmllm's FSDP launch: accelerate launch of the training module with the config fmllm wrote
    record = json.loads((fsdp_dir / rd.RUN).read_text())
    assert record["argv"][1:3] == ["-m", "accelerate.commands.launch"]
    acc = dist.read_accelerate_config(fsdp_dir / "accelerate.yaml")
    assert acc["distributed_type"] == "FSDP" and acc["num_processes"] == 2
    assert acc["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
    assert fsdp["distributed"] == "fsdp" and fsdp["world_size"] == 2 and fsdp["recipe"]["gc_reentrant"]
    assert [(r["rank"], r["steps"]) for r in fsdp["ranks"]] == [(0, STEPS), (1, STEPS)]
    rows = read_jsonl(fsdp_dir / rd.METRICS)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(len(r["ranks"]) == 2 and all(k["tokens"] > 0 for k in r["ranks"]) for r in rows)
    # The Trainer ran under FSDP (its sharded checkpoint), and fmllm's adapter is in each one
    for step in (2, 4):
        ckpt = fsdp_dir / rd.CHECKPOINTS / f"checkpoint-{step}"
        assert (ckpt / "pytorch_model_fsdp_0").is_dir() and (ckpt / "optimizer_0").is_dir(), sorted(ckpt.iterdir())
        assert len(adapter_of(ckpt)) == 8, f"checkpoint-{step} holds no complete adapter"

    # Same data and seed: the same losses and the same adapter as one process (float32)
    assert len(fsdp["losses"]) == len(single["losses"]) == STEPS
    assert fsdp["losses"] == pytest.approx(single["losses"], abs=1e-5), (fsdp["losses"], single["losses"])
    a, b = adapter_of(fsdp_dir / rd.ADAPTER), adapter_of(single_dir / rd.ADAPTER)
    assert len(a) == 8 and set(a) == set(b), (sorted(a), sorted(b))  # 2 layers x q,v x A,B
    assert all(float(t.abs().sum()) > 0 for k, t in a.items() if "lora_B" in k)  # trained, not the zero init
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    first = time.monotonic() - t0

    # Resume from checkpoint-2 (as after a stop): steps 3 and 4 again, with the same losses
    shutil.rmtree(fsdp_dir / rd.CHECKPOINTS / f"checkpoint-{STEPS}")
    resume(fsdp_dir)
    again = finished(fsdp_dir)
    assert "resuming from checkpoint-2" in (fsdp_dir / rd.LOG).read_text()
    resumed = read_jsonl(fsdp_dir / rd.METRICS)[STEPS:]
    assert [r["step"] for r in resumed] == [3, 4]
    assert [r["loss"] for r in resumed] == pytest.approx(fsdp["losses"][2:], abs=1e-6)
    assert again["losses"] == pytest.approx(fsdp["losses"][2:], abs=1e-6)
    print(f"FSDP and one-process runs {first:.0f}s, FSDP resume {time.monotonic() - t0 - first:.0f}s")
