"""Multi-GPU through accelerate: the mode plan, the accelerate config as accelerate itself reads
it (FSDP, DDP, multi-node, CPU offload), the decoder-layer class, the FSDP+QLoRA recipe, a real
2-process DDP run on the CPU (gloo) with stop, resume and kill, rank outcomes, every GPU in the
follow stream, and the checks gpu.count, config.multi_gpu_fit and host.offload_ram through the
NVML fake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from runconfig import write_run_config, yaml_block
from tui_support import scaled

from fmllm_tui.config import load_config, load_config_text
from fmllm_tui.runner import RunError, kill, resume, start, status, stop, wait
from fmllm_tui.runner import distributed as dist
from fmllm_tui.runner import rundir as rd
from fmllm_tui.runner.monitor import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample_instructions.jsonl"
GiB = 1024**3


def view_of(text: str, path: str = "/tmp/fmllm-dist/config.yaml") -> Any:
    return load_config_text(path, textwrap.dedent(text)).view


def cfg_text(model: str = "Qwen/Qwen2.5-72B-Instruct", fmllm: str = "", training: str = "", dtype: str = "bfloat16") -> str:
    return textwrap.dedent(f"""\
        fine_tuning:
          base_model_name: {model}
          quantization: {{bnb_4bit_compute_dtype: {dtype}}}
          training:
            max_seq_length: 1024
            per_device_train_batch_size: 1
            gradient_accumulation_steps: 4
        """) + textwrap.indent(textwrap.dedent(training), "    ") + "fmllm:\n" + textwrap.indent(
        textwrap.dedent(fmllm) or "attn_implementation: sdpa\n", "  ")


def accelerate_reads(path: Path, *extra: str) -> tuple[Any, Any, dict[str, str]]:
    """(cluster config, launch args, env) exactly as ``accelerate launch --config_file`` gets them."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    cluster = load_config_from_file(str(path))
    args = launch_command_parser().parse_args(["--config_file", str(path), *extra, "-m", "fmllm_tui.runner.train",
                                               "--run-dir", "/r"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return cluster, args, env


# ------------------------------------------------------------------------------------------------
# The mode
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmllm, gpus, fits, kind, cpu, expected",
    [
        ("", 1, True, "train", False, ("single", 1)),
        ("", 1, False, "train", False, ("single", 1)),
        ("", 2, True, "train", False, ("ddp", 2)),
        ("", 2, True, "test", False, ("single", 1)),
        ("", 4, False, "train", False, ("fsdp", 4)),
        ("", 4, False, "test", False, ("fsdp", 4)),
        ("", 2, None, "train", False, ("single", 1)),
        ("", 0, None, "train", True, ("single", 1)),
        ("distributed: {num_processes: 2}", 4, False, "train", False, ("fsdp", 2)),
        ("distributed: {mode: ddp}", 3, True, "train", False, ("ddp", 3)),
        ("distributed: {mode: fsdp, num_processes: 2}", 8, True, "train", False, ("fsdp", 2)),
        ("distributed: {mode: single}", 8, False, "train", False, ("single", 1)),
        ("distributed: {mode: ddp, num_processes: 2}", 0, None, "train", True, ("ddp", 2)),
        ("distributed: {num_machines: 2, machine_rank: 1, main_process_ip: 10.0.0.5}", 4, False, "train", False,
         ("fsdp", 8)),
        ("distributed: {mode: fsdp, num_machines: 2, main_process_ip: 10.0.0.5}", 2, True, "train", False, ("fsdp", 4)),
    ],
)
def test_plan_mode(fmllm: str, gpus: int, fits: bool | None, kind: str, cpu: bool, expected: tuple[str, int]) -> None:
    mode, n, reason = dist.plan_mode(view_of(cfg_text(fmllm=fmllm)), gpus, fits, kind=kind, cpu=cpu)
    assert (mode, n) == expected, reason
    assert reason


@pytest.mark.parametrize(
    "fmllm, gpus, cpu, words",
    [
        ("distributed: {mode: ddp}", 1, False, "needs 2 or more"),
        ("distributed: {mode: fsdp, num_processes: 4}", 2, False, "only 2 GPUs are visible"),
        ("distributed: {mode: fsdp, num_processes: 2}", 0, True, "needs CUDA GPUs"),
        ("distributed: {mode: ddp}", 0, True, "set fmllm.distributed.num_processes"),
        ("distributed: {mode: ddp}", 0, False, "no GPU is visible"),
        ("distributed: {mode: fsdp, num_processes: 3, num_machines: 2, main_process_ip: h}", 2, False,
         "not a multiple of num_machines"),
        ("distributed: {num_machines: 2, machine_rank: 2, main_process_ip: h}", 2, False, "ranks count 0 to 1"),
        ("distributed: {mode: single, num_machines: 2, main_process_ip: h}", 2, False, "need mode ddp or fsdp"),
        ("distributed: {num_processes: 4}", 2, False, "only 2 GPUs are visible"),
    ],
)
def test_plan_mode_refuses_what_cannot_run(fmllm: str, gpus: int, cpu: bool, words: str) -> None:
    with pytest.raises(dist.DistributedError, match=words):
        dist.plan_mode(view_of(cfg_text(fmllm=fmllm)), gpus, True, cpu=cpu)


def test_shard_search_prefers_no_offload_then_fewest_gpus() -> None:
    from fmllm_tui import catalogue, memory

    arch = catalogue.get_architecture("Qwen/Qwen2.5-72B-Instruct")
    view = view_of(cfg_text())
    single = memory.predict(view, arch).peak_process_bytes
    plan2 = dist.shard_search(view, arch, 24 * GiB, 2)
    assert plan2 is not None and plan2.n_gpus == 2 and plan2.cpu_offload and plan2.within_available
    plan4 = dist.shard_search(view, arch, 24 * GiB, 4)
    assert plan4 is not None and not plan4.cpu_offload and plan4.within_available and plan4.n_gpus in (3, 4)
    assert plan4.per_gpu_peak_bytes < 24 * GiB - plan4.margin_bytes < single
    # The prediction it used is the FSDP runner's: the input embedding stays on the GPUs.
    assert plan4.prediction.inputs.offload_embeddings == "off" and plan4.prediction.inputs.mode == "fsdp"
    beyond = dist.shard_search(view, arch, 24 * GiB, 1, allow_offload=False)
    assert beyond is not None and not beyond.within_available and beyond.n_gpus >= 3
    assert dist.shard_search(view, arch, 2 * GiB, 8) is None


# ------------------------------------------------------------------------------------------------
# The accelerate config, as accelerate reads it
# ------------------------------------------------------------------------------------------------


def test_fsdp_config_is_the_fsdp_qlora_recipe(tmp_path: Path) -> None:
    view = view_of(cfg_text(fmllm="distributed: {mode: fsdp, num_processes: 2}\n"))
    cfg = dist.accelerate_config(view, "fsdp", 2, layer_cls="Qwen2DecoderLayer", main_process_port=29611)
    assert cfg["distributed_type"] == "FSDP" and cfg["num_processes"] == 2 and cfg["mixed_precision"] == "bf16"
    assert cfg["fsdp_config"] == {
        "fsdp_version": 1, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_cpu_ram_efficient_loading": True, "fsdp_forward_prefetch": False, "fsdp_offload_params": False,
        "fsdp_sharding_strategy": "FULL_SHARD", "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_sync_module_states": True, "fsdp_use_orig_params": False, "fsdp_activation_checkpointing": False,
        "fsdp_transformer_layer_cls_to_wrap": "Qwen2DecoderLayer"}
    path = dist.write_accelerate_config(tmp_path, cfg)
    assert path == tmp_path / "accelerate.yaml" and oct(path.stat().st_mode & 0o777) == "0o600"
    assert dist.read_accelerate_config(path) == cfg
    cluster, args, env = accelerate_reads(path, "--num_processes", "2")
    assert cluster.distributed_type.value == "FSDP" and cluster.mixed_precision == "bf16"
    assert args.use_fsdp and args.nproc_per_node == "2" and args.master_port == "29611" and args.module
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "Qwen2DecoderLayer"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_USE_ORIG_PARAMS"] == "false" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert env["FSDP_SYNC_MODULE_STATES"] == "true" and env["FSDP_OFFLOAD_PARAMS"] == "false"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD" and env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"


def test_cpu_offload_and_fp16(tmp_path: Path) -> None:
    view = view_of(cfg_text(fmllm="distributed: {mode: fsdp, cpu_offload: true}\n", dtype="float16"))
    cfg = dist.accelerate_config(view, "fsdp", 4, layer_cls="Qwen2DecoderLayer")
    assert cfg["fsdp_config"]["fsdp_offload_params"] is True and cfg["mixed_precision"] == "fp16"
    _, _, env = accelerate_reads(dist.write_accelerate_config(tmp_path, cfg))
    assert env["FSDP_OFFLOAD_PARAMS"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "fp16"
    assert dist.quant_storage_dtype("float16") == "float32" and dist.quant_storage_dtype("bfloat16") == "bfloat16"
    assert dist.mixed_precision_for(view_of(cfg_text(dtype="float32"))) == "no"


def test_ddp_config_and_yaml_1_1_quoting(tmp_path: Path) -> None:
    view = view_of(cfg_text(dtype="float32"))
    cfg = dist.accelerate_config(view, "ddp", 2, cpu=True)
    assert cfg["distributed_type"] == "MULTI_GPU" and "fsdp_config" not in cfg and cfg["mixed_precision"] == "no"
    assert "main_process_ip" not in cfg and cfg["main_process_port"] == 29500
    path = dist.write_accelerate_config(tmp_path, cfg)
    import yaml  # PyYAML, accelerate's reader: 'no' must stay a string, not false

    assert yaml.safe_load(path.read_text())["mixed_precision"] == "no"
    cluster, args, env = accelerate_reads(path)
    assert cluster.distributed_type.value == "MULTI_GPU" and args.multi_gpu and not args.use_fsdp
    assert env.get("ACCELERATE_USE_FSDP") is None and env["ACCELERATE_MIXED_PRECISION"] == "no"
    with pytest.raises(dist.DistributedError):
        dist.accelerate_config(view, "single", 1)


def test_multi_node_config(tmp_path: Path) -> None:
    text = cfg_text(fmllm="distributed: {mode: fsdp, num_processes: 8, num_machines: 2, machine_rank: 1, "
                          "main_process_ip: 10.0.0.5, main_process_port: 29555}\n")
    view = view_of(text)
    cfg = dist.accelerate_config(view, "fsdp", 8, layer_cls="LlamaDecoderLayer")
    assert (cfg["num_machines"], cfg["machine_rank"], cfg["main_process_ip"], cfg["main_process_port"]) == \
        (2, 1, "10.0.0.5", 29555)
    assert cfg["same_network"] is True and cfg["rdzv_backend"] == "static"
    cluster, args, env = accelerate_reads(dist.write_accelerate_config(tmp_path, cfg))
    # torchrun's arguments on this machine: 4 processes here, node 1 of 2, the rank-0 machine's address.
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "4")
    # (accelerate hands the address to torchrun as its rendezvous endpoint or master address)
    where = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert where == "10.0.0.5:29555"
    with pytest.raises(dist.DistributedError, match="main_process_ip"):
        dist.accelerate_config(view_of(cfg_text(fmllm="distributed: {num_machines: 2}\n")), "ddp", 4)


def test_launch_argv_is_accelerate_launch_of_the_training_module(tmp_path: Path) -> None:
    from accelerate.commands.launch import launch_command_parser

    from fmllm_tui.runner.launch import _train_argv

    argv = dist.launch_argv(tmp_path, tmp_path / "accelerate.yaml", 2, resume=True)
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(argv[3:])
    assert args.config_file == str(tmp_path / "accelerate.yaml") and args.num_processes == 2 and args.module
    assert args.training_script == "fmllm_tui.runner.train"
    assert args.training_script_args == ["--run-dir", str(tmp_path), "--resume"]
    record = {"mode": "fsdp", "num_processes": 4, "accelerate_config": str(tmp_path / "a.yaml")}
    assert _train_argv(tmp_path, False, record)[3:7] == ["--config_file", str(tmp_path / "a.yaml"), "--num_processes", "4"]
    assert _train_argv(tmp_path, False, {"mode": "single", "num_processes": 1}) == \
        [sys.executable, "-m", "fmllm_tui.runner.train", "--run-dir", str(tmp_path)]


# ------------------------------------------------------------------------------------------------
# The decoder-layer class
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", sorted(dist.DECODER_LAYERS))
def test_decoder_layer_table_matches_transformers(model_type: str) -> None:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    assert dist.DECODER_LAYERS[model_type] == ",".join(cls._no_split_modules)


@pytest.mark.parametrize("family, expected", [("qwen2", "Qwen2DecoderLayer"), ("llama", "LlamaDecoderLayer"),
                                              ("mistral", "MistralDecoderLayer"), ("gemma2", "Gemma2DecoderLayer"),
                                              ("phi3", "Phi3DecoderLayer")])
def test_decoder_layer_of_each_family(family: str, expected: str) -> None:
    from tinymodel import build_tiny_model

    arch = json.loads((build_tiny_model(family) / "config.json").read_text())
    assert dist.decoder_layer_class(arch) == expected
    assert dist.layer_class_from_transformers(arch) == expected  # the fallback agrees


def test_decoder_layer_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not in fmllm's table: transformers answers, in a child process (no torch in this one's path).
    assert "helium" not in dist.DECODER_LAYERS
    assert dist.decoder_layer_class({"model_type": "helium", "hidden_size": 64}) == "HeliumDecoderLayer"
    # A multimodal config: the text model's layers.
    assert dist.decoder_layer_class({"model_type": "some_vlm", "text_config": {"model_type": "qwen2"}}) == \
        "Qwen2DecoderLayer"
    assert dist.decoder_layer_class({"model_type": "no_such_arch"}, in_child=False) is None
    assert dist.decoder_layer_class(None) is None
    # A class that does not say: the model is built on the meta device and asked.
    import transformers

    monkeypatch.setattr(transformers.LlamaForCausalLM, "_no_split_modules", None)
    monkeypatch.setattr(transformers.LlamaPreTrainedModel, "_no_split_modules", ["LlamaDecoderLayer"])
    small = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64}
    assert dist.layer_class_from_transformers(small) == "LlamaDecoderLayer"


# ------------------------------------------------------------------------------------------------
# The FSDP+QLoRA recipe in the training process
# ------------------------------------------------------------------------------------------------


def _cfg(dtype: str = "bfloat16", **training: Any) -> dict[str, Any]:
    return {"quantization": {"use_4bit": True, "bnb_4bit_compute_dtype": dtype, "bnb_4bit_quant_type": "nf4",
                             "use_nested_quant": True},
            "training": {"optim": "paged_adamw_8bit", **training}, "fmllm": {"offload_embeddings": "on"}}


def test_fsdp_recipe_and_load_kwargs() -> None:
    import torch

    from fmllm_tui.runner.lean import model_load_kwargs
    from tests.recipe_support import recipe_of as plan_recipe

    r = plan_recipe(_cfg(), cuda=True, distributed="fsdp")
    assert (r.quant_storage, r.dtype, r.offload_embeddings, r.optim, r.gc_reentrant) == \
        ("bfloat16", "bfloat16", False, "adamw_torch", True)
    notes = " ".join(r.notes)
    assert "FSDP shards the input embedding" in notes and "paged_adamw_8bit" in notes
    kw = model_load_kwargs(_cfg(), r, device_index=1)
    q = kw["quantization_config"]
    assert kw["device_map"] == {"": "cpu"} and kw["dtype"] is torch.bfloat16  # FSDP moves it to the GPUs
    assert q.bnb_4bit_quant_storage == torch.bfloat16 and q.bnb_4bit_compute_dtype == torch.bfloat16

    r16 = plan_recipe(_cfg("float16"), cuda=True, distributed="fsdp")
    kw16 = model_load_kwargs(_cfg("float16"), r16)
    assert kw16["dtype"] is torch.float32 and kw16["quantization_config"].bnb_4bit_quant_storage == torch.float32
    assert kw16["quantization_config"].bnb_4bit_compute_dtype == torch.float16 and r16.mixed_precision == "fp16"

    own = plan_recipe(_cfg(gradient_checkpointing_kwargs={"use_reentrant": False}), cuda=True, distributed="fsdp")
    assert own.gc_reentrant is False  # the config's own setting wins

    ddp = plan_recipe(_cfg(), cuda=True, distributed="ddp")
    assert ddp.quant_storage is None and ddp.offload_embeddings and ddp.optim == "paged_adamw_8bit"
    kw_ddp = model_load_kwargs(_cfg(), ddp, device_index=1)
    assert kw_ddp["device_map"] == {"": 1} and kw_ddp["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    with pytest.raises(Exception, match="unknown distributed mode"):
        plan_recipe(_cfg(), cuda=True, distributed="zero3")


def test_fsdp_checkpoints_count_as_complete(tmp_path: Path) -> None:
    from fmllm_tui.runner.train import last_complete_checkpoint

    good = tmp_path / "checkpoint-4"
    (good / "pytorch_model_fsdp_0").mkdir(parents=True)
    (good / "optimizer_0").mkdir()
    (good / "trainer_state.json").write_text("{}")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(good / "adapter_model.safetensors"))  # fmllm's, after the Trainer's files
    half = tmp_path / "checkpoint-6"
    (half / "pytorch_model_fsdp_0").mkdir(parents=True)  # killed before the optimizer and the state
    no_adapter = tmp_path / "checkpoint-8"  # the Trainer's files, killed before fmllm's adapter
    (no_adapter / "pytorch_model_fsdp_0").mkdir(parents=True)
    (no_adapter / "optimizer_0").mkdir()
    (no_adapter / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path, rename=False) == good and half.is_dir() and no_adapter.is_dir()
    assert last_complete_checkpoint(tmp_path) == good and (tmp_path / "checkpoint-6.incomplete").is_dir()
    assert (tmp_path / "checkpoint-8.incomplete").is_dir()


def test_a_failing_rank_explains_the_run() -> None:
    from fmllm_tui.runner.supervise import decide_status, merge_outcomes

    oom1 = {"status": "oom", "message": "CUDA out of memory", "rank": 1, "ts": 1.0}
    lost0 = {"status": "failed", "message": "RuntimeError: Connection closed by peer", "ts": 1.0}
    merged = merge_outcomes(lost0, [oom1], stop_requested=False)
    assert merged["status"] == "oom" and merged["message"].startswith("rank 1:") and merged["rank0_outcome"] == lost0
    assert decide_status(1, merged, False, None) == "oom"
    # rank 0 read the launcher's SIGTERM as a stop; nobody asked for one: the failing rank is the cause
    fail1 = {"status": "failed", "message": "ValueError: bad batch", "rank": 1}
    assert merge_outcomes({"status": "stopped", "message": "SIGTERM"}, [fail1], False)["status"] == "failed"
    assert merge_outcomes(None, [fail1], False)["message"] == "rank 1: ValueError: bad batch"
    # a stop the person asked for, or no failing rank: rank 0's outcome stands
    stopped = {"status": "stopped", "message": "stopped at step 3"}
    assert merge_outcomes(stopped, [fail1], True) == stopped
    assert merge_outcomes(lost0, [{"status": "ok", "rank": 1}], False) == lost0


# ------------------------------------------------------------------------------------------------
# Launching for real: 2 DDP processes on the CPU over gloo
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def run_config(tmp_path: Path, model: Path | str, fmllm: str, training: str = "") -> Path:
    """A 2-process run's config; `fmllm` and `training` are YAML snippets added to those sections."""
    return write_run_config(tmp_path, model, training=yaml_block(training), fmllm=yaml_block(fmllm))


def wait_rows(run_dir: Path, step: int, timeout: float = 120) -> list[dict[str, Any]]:
    end = time.monotonic() + scaled(timeout)
    while time.monotonic() < end:
        rows = read_jsonl(run_dir / rd.METRICS)
        if rows and rows[-1]["step"] >= step:
            return rows
        if (run_dir / rd.EXIT).exists():
            raise AssertionError(f"ended early: {(run_dir / rd.EXIT).read_text()}\n{(run_dir / rd.LOG).read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached:\n{(run_dir / rd.LOG).read_text()[-3000:]}")


def _pids_of(run_dir: Path) -> list[int]:
    import psutil

    sup = int((run_dir / rd.PID).read_text().split()[0])
    return [sup] + [c.pid for c in psutil.Process(sup).children(recursive=True)]


def _cmdline(pid: int) -> str:
    """``pid``'s command line, or "" when it has gone meanwhile (short-lived children) or cannot
    be read."""
    import psutil

    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def _rank_pids(pids: list[int]) -> list[int]:
    """The training ranks among ``pids`` (not accelerate's launcher)."""
    return [p for p in pids if "fmllm_tui.runner.train" in (c := _cmdline(p)) and "accelerate" not in c]


def _still_running(proc: Any) -> bool:
    """``proc`` (a psutil.Process) is the same process and not a zombie (a zombie is gone for our
    purposes; is_running() also tells a reused pid apart)."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_stop_resume_kill(tmp_path: Path, tiny_model_dir: Path, offline: None) -> None:
    import psutil

    cfg = run_config(tmp_path, tiny_model_dir, "distributed: {mode: ddp, num_processes: 2}\n",
                     training="max_steps: 400\nsave_steps: 2\nseed: 3\n")
    run_dir = start(load_config(cfg), "train", device="cpu")
    record = json.loads((run_dir / rd.RUN).read_text())
    assert record["argv"][1:3] == ["-m", "accelerate.commands.launch"] and record["distributed"]["mode"] == "ddp"
    acc = dist.read_accelerate_config(run_dir / "accelerate.yaml")
    assert acc["distributed_type"] == "MULTI_GPU" and acc["num_processes"] == 2
    assert json.loads((run_dir / rd.CONFIG).read_text())["runner"]["distributed"]["mode"] == "ddp"
    rows = wait_rows(run_dir, 3)
    # Two ranks, each with its own share of the data: an epoch goes twice as fast as on one.
    first = rows[0]
    assert first["world_size"] == 2 and [r["rank"] for r in first["ranks"]] == [0, 1]
    assert all(r["tokens"] > 0 and r["peak_bytes"] > 0 for r in first["ranks"])
    n_examples = sum(1 for line in SAMPLE.read_text().splitlines() if line.strip())
    assert first["epoch"] == pytest.approx(2 * 2 / n_examples, rel=0.2)
    assert len(_rank_pids(_pids_of(run_dir))) == 2

    # stop: the ranks read stop.requested at a step's end, checkpoint and exit together
    assert stop(run_dir)
    rec = wait(run_dir, timeout=scaled(90))
    assert rec["status"] == "stopped", rec
    summary = json.loads((run_dir / rd.SUMMARY).read_text())
    stopped_at = summary["steps"]
    assert summary["distributed"] == "ddp" and len(summary["ranks"]) == 2
    assert (run_dir / rd.CHECKPOINTS / f"checkpoint-{stopped_at}" / "adapter_model.safetensors").is_file()

    # resume starts accelerate again, from that checkpoint, on a port free now
    old_port = dist.read_accelerate_config(run_dir / "accelerate.yaml")["main_process_port"]
    resume(run_dir)
    record = json.loads((run_dir / rd.RUN).read_text())
    assert record["argv"][-1] == "--resume" and record["argv"][1:3] == ["-m", "accelerate.commands.launch"]
    new_port = dist.read_accelerate_config(run_dir / "accelerate.yaml")["main_process_port"]
    assert new_port == record["distributed"]["main_process_port"] and isinstance(new_port, int) and old_port

    # kill (here while the ranks start): they run in sessions of their own, and still none survives
    end = time.monotonic() + scaled(60)
    pids: list[int] = []
    rank_pids: list[int] = []
    while time.monotonic() < end:
        pids = _pids_of(run_dir)
        rank_pids = _rank_pids(pids)
        if len(rank_pids) == 2:
            break
        time.sleep(0.1)
    assert len(rank_pids) == 2, (f"the 2 ranks never started after the resume; processes: "
                                 f"{[(p, _cmdline(p)) for p in pids]}\n{(run_dir / rd.LOG).read_text()[-3000:]}")
    assert len(pids) >= 4  # supervisor, accelerate's launcher, 2 ranks
    assert all(os.getsid(p) != os.getsid(pids[0]) for p in rank_pids)
    procs = []
    for p in pids:  # held before the kill, so a pid reused afterwards is not taken for a survivor
        try:
            procs.append(psutil.Process(p))
        except psutil.NoSuchProcess:
            pass
    assert kill(run_dir)
    assert status(run_dir)["state"] == "killed"
    end = time.monotonic() + 30
    alive = [p for p in procs if _still_running(p)]
    while alive and time.monotonic() < end:
        time.sleep(0.1)
        alive = [p for p in procs if _still_running(p)]
    assert alive == [], [(p.pid, _cmdline(p.pid)) for p in alive]


@pytest.mark.slow
def test_ddp_minimal_test_on_two_cpu_processes(tmp_path: Path, tiny_model_dir: Path, offline: None) -> None:
    from fmllm_tui.runner import run_minimal_test

    cfg = run_config(tmp_path, tiny_model_dir, "minimal_test_steps: 4\ndistributed: {mode: ddp, num_processes: 2}\n")
    report = run_minimal_test(load_config(cfg), device="cpu", timeout=scaled(180))
    assert report["status"] == "ok" and report["ok"], json.dumps(report, default=str)[:3000]
    assert report["adapter_reloaded"] and report["steps"] == 4 and isinstance(report["generation"], str)
    result = json.loads((Path(report["run_dir"]) / rd.RESULT).read_text())
    assert result["distributed"] == "ddp" and result["world_size"] == 2
    assert [r["steps"] for r in result["ranks"]] == [4, 4]
    log = (Path(report["run_dir"]) / rd.LOG).read_text()
    assert log.count("[fmllm] phase: training") == 1  # rank 0 alone writes fmllm's lines


def test_start_refuses_what_cannot_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    cases = [("distributed: {mode: fsdp, num_processes: 2}\n", "cpu", "needs CUDA GPUs"),
             ("distributed: {mode: ddp}\n", "cpu", "num_processes"),
             ("distributed: {mode: ddp, num_processes: 2, num_machines: 2}\n", "cpu", "main_process_ip")]
    for fmllm, device, words in cases:
        cfg = run_config(tmp_path, tiny_model_dir, fmllm)
        with pytest.raises(RunError, match=words):
            start(load_config(cfg), "train", device=device)
    assert not (tmp_path / "out" / "runs").exists() or not any(
        p.is_dir() and not p.is_symlink() for p in (tmp_path / "out" / "runs").iterdir())


def test_plan_launch_on_two_fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What start() launches on a 2-GPU machine: DDP for a 14B, FSDP (Qwen2 layers) for a 72B."""
    monkeypatch.setenv("FMLLM_FAKE_NVML", str(fake_gpus(tmp_path, 2)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def plan(text: str, kind: str = "train") -> dict[str, Any]:
        path = tmp_path / "config.yaml"
        path.write_text(text)
        return dist.plan_launch(load_config(path), kind=kind)

    small = plan(cfg_text(model="Qwen/Qwen2.5-14B-Instruct"))
    assert (small["mode"], small["num_processes"], small["decided"]) == ("ddp", 2, True)
    assert small["accelerate"]["distributed_type"] == "MULTI_GPU" and small["port_auto"]
    assert plan(cfg_text(model="Qwen/Qwen2.5-14B-Instruct"), kind="test")["mode"] == "single"
    # a cap below the 14B's need: it no longer fits one card, so FSDP
    assert plan(cfg_text(model="Qwen/Qwen2.5-14B-Instruct", fmllm="vram: 8GiB\n"))["mode"] == "fsdp"
    big = plan(cfg_text(fmllm="distributed: {main_process_port: 29511}\n"))
    assert (big["mode"], big["num_processes"], big["layer_cls"]) == ("fsdp", 2, "Qwen2DecoderLayer")
    assert big["accelerate"]["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
    assert big["main_process_port"] == 29511 and not big["port_auto"]  # the person's port is kept
    unknown = plan(cfg_text(model="someone/unknown-model"))
    assert unknown["mode"] == "single" and "could not be predicted" in unknown["reason"]
    with pytest.raises(dist.DistributedError, match="only 2 GPUs"):
        plan(cfg_text(fmllm="distributed: {mode: fsdp, num_processes: 3}\n"))


# ------------------------------------------------------------------------------------------------
# Watching every GPU
# ------------------------------------------------------------------------------------------------


def fake_gpus(tmp_path: Path, n: int = 2, total: int = 24 * GiB, used: int = GiB // 2, name: str = "NVIDIA GeForce RTX 3090",
              cc: tuple[int, int] = (8, 6), **extra: Any) -> Path:
    devices = [{"name": name, "total": total, "used": used + i * 2**20, "cc": list(cc), "uuid": f"GPU-{i}",
                "util": 10 * (i + 1), **extra} for i in range(n)]
    p = tmp_path / f"nvml-{n}.json"
    p.write_text(json.dumps({"driver": "550.54.15", "cuda": 12040, "devices": devices}))
    return p


def test_follow_reports_every_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fmllm_tui.runner import follow

    monkeypatch.setenv("FMLLM_FAKE_NVML", str(fake_gpus(tmp_path, 2)))
    snaps = dist.gpu_snapshots()
    assert [(s["index"], s["util_pct"]) for s in snaps] == [(0, 10), (1, 20)]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rd.write_json_atomic(run_dir / rd.RUN, {"kind": "train"})
    # A live process whose command line names the run folder stands in for the supervisor.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(run_dir)])
    try:
        (run_dir / rd.PID).write_text(f"{proc.pid}\n")
        events = list(follow(run_dir, poll=0.05, gpu_every=0.0, timeout=0.3))
    finally:
        proc.kill()
        proc.wait()
    gpu = [e for e in events if e["type"] == "gpu"]
    assert gpu and len(gpu[0]["gpus"]) == 2 and gpu[0]["index"] == 0
    assert gpu[0]["gpus"][1]["used"] == GiB // 2 + 2**20 and gpu[0]["gpus"][1]["total"] == 24 * GiB


# ------------------------------------------------------------------------------------------------
# The checks, through the NVML fake
# ------------------------------------------------------------------------------------------------


def run_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, nvml: Path | None, only: list[str],
               gpu: str | None = None) -> dict[str, Any]:
    from fmllm_tui.checkrun import RunOptions
    from fmllm_tui.checkrun import run_checks as run

    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if nvml is None:
        monkeypatch.setenv("FMLLM_FAKE_NVML", str(fake_gpus(tmp_path, 0)))
    else:
        monkeypatch.setenv("FMLLM_FAKE_NVML", str(nvml))
    import gc

    # pytest's teardown collects garbage 5 times; with torch already imported by earlier tests
    # that costs seconds per run: leave the existing objects out of it.
    gc.freeze()
    try:
        out = run(RunOptions(config=str(cfg), offline=True, only=only, gpu=gpu))
    finally:
        gc.unfreeze()
    return {r.id: r for r in out.results}


def test_check_72b_on_two_24gb_cards_needs_fsdp_and_offload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = run_checks(tmp_path, monkeypatch, cfg_text(fmllm="distributed: {mode: single}\n"), fake_gpus(tmp_path, 2),
                     ["config.multi_gpu_fit"])
    r = res["config.multi_gpu_fit"]
    assert r.status == "fail"
    assert "will not fit one card" in r.finding and "fits 2 with FSDP over 2 GPUs with parameters offloaded" in r.finding
    assert "per-GPU peak" in r.finding
    changes = {c.key: c.to for c in r.fix.changes}
    assert changes == {"fmllm.distributed.mode": "fsdp", "fmllm.distributed.cpu_offload": True}
    assert r.values["fsdp_gpus"] == 2 and r.values["fsdp_per_gpu_peak_bytes"] < 23 * GiB < r.values["single_gpu_peak_bytes"]
    # The fix is real: applied, the config says fsdp with offload, and the check passes.
    from fmllm_tui.fixes import render_changes

    fixed = render_changes(load_config(tmp_path / "config.yaml"), r.fix.changes)
    (tmp_path / "config.yaml").write_text(fixed)
    res = run_checks(tmp_path, monkeypatch, fixed, fake_gpus(tmp_path, 2), ["config.multi_gpu_fit"])
    r = res["config.multi_gpu_fit"]
    # The model loads into CPU RAM and FSDP moves it to the GPUs unit by unit: the per-GPU peak is
    # wrapping's (the root unit twice while FSDP flattens it), well inside the 24 GB card.
    assert r.status == "pass", r.finding
    assert "FSDP over 2 GPUs with CPU offload: per-GPU peak" in r.finding and "(FSDP wrap)" in r.finding
    assert r.values["training_peak_bytes"] < r.values["runner_per_gpu_peak_bytes"] < r.values["budget_bytes"] - r.values["margin_bytes"]


def test_check_72b_on_four_cards_fits_without_offload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = run_checks(tmp_path, monkeypatch, cfg_text(fmllm="distributed: {mode: ddp}\n"), fake_gpus(tmp_path, 4),
                     ["config.multi_gpu_fit"])
    r = res["config.multi_gpu_fit"]
    assert r.status == "fail" and "fits 4 with FSDP over 4 GPUs (per-GPU peak" in r.finding, r.finding
    assert [(c.key, c.from_, c.to) for c in r.fix.changes] == [("fmllm.distributed.mode", "ddp", "fsdp")]
    # auto needs no change: it picks FSDP over the 4 GPUs by itself
    res = run_checks(tmp_path, monkeypatch, cfg_text(), fake_gpus(tmp_path, 4), ["config.multi_gpu_fit"])
    r = res["config.multi_gpu_fit"]
    # Wrapping (every shard plus the root twice) is the per-GPU peak, and it fits the 24 GB card.
    assert r.status == "pass" and "FSDP over 4 GPUs: per-GPU peak" in r.finding and "(FSDP wrap)" in r.finding, r.finding
    v = r.values
    assert v["peak_phase"] == "FSDP wrap" and v["runner_gpus"] == 4
    assert v["training_peak_bytes"] < v["runner_per_gpu_peak_bytes"] < v["budget_bytes"] - v["margin_bytes"]


def test_check_model_too_big_for_this_machine_and_planning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = run_checks(tmp_path, monkeypatch, cfg_text(), fake_gpus(tmp_path, 1), ["config.multi_gpu_fit"])
    r = res["config.multi_gpu_fit"]
    assert r.status == "fail" and "this machine has 1 GPU" in r.finding and r.fix is None
    # Planning for a named card with no GPU here: a named card is one GPU unless the config says
    # how many. What FSDP would need is said, never applied as a fix for GPUs the person may not have.
    res = run_checks(tmp_path, monkeypatch, cfg_text(), None, ["config.multi_gpu_fit", "gpu.count"], gpu="RTX 3090")
    r = res["config.multi_gpu_fit"]
    # Beyond what is here, more GPUs without offload come before fewer with it (offload is slow).
    # 3 would hold the sharded training, but wrapping holds the 72B's embeddings and head twice.
    assert r.status == "fail" and "it needs FSDP over 4 GPUs (per-GPU peak" in r.finding, r.finding
    assert "the target is 1 such GPU (set fmllm.distributed.num_processes" in r.finding and r.fix is None
    assert res["gpu.count"].status == "skip" and "planning for RTX 3090" in res["gpu.count"].finding
    # Saying there are 4 such cards makes the FSDP plan a fix within them.
    res = run_checks(tmp_path, monkeypatch, cfg_text(fmllm="distributed: {mode: ddp, num_processes: 4}\n"),
                     None, ["config.multi_gpu_fit"], gpu="RTX 3090")
    r = res["config.multi_gpu_fit"]
    assert r.status == "fail" and "fits 4 with FSDP over 4 GPUs (per-GPU peak" in r.finding, r.finding
    assert {c.key: c.to for c in r.fix.changes} == {"fmllm.distributed.mode": "fsdp"}


def test_check_14b_fits_one_card_and_nccl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = cfg_text(model="Qwen/Qwen2.5-14B-Instruct")
    nvml = fake_gpus(tmp_path, 2, processes=[{"pid": 4242, "name": "python other.py", "used": 512 * 2**20}])
    res = run_checks(tmp_path, monkeypatch, text, nvml, ["config.multi_gpu_fit", "gpu.count"])
    fit, count = res["config.multi_gpu_fit"], res["gpu.count"]
    assert fit.status == "pass" and "fits one card" in fit.finding and "DDP over the 2 GPUs" in fit.finding
    # This machine's torch is a CPU build: the child probe finds no NCCL, and DDP needs it.
    assert count.status == "fail", count.finding
    assert "NCCL is not available" in count.finding and "+cpu" in count.finding and "Plan: ddp over 2" in count.finding
    assert count.values["nccl"]["ok"] and count.values["nccl"]["nccl"] is False
    assert [(c.key, c.to) for c in count.fix.changes] == [("fmllm.distributed.mode", "single")]
    assert count.values["per_gpu_peak_bytes"] > count.values["single_gpu_peak_bytes"]  # DDP's gradient buckets
    # With NCCL (as on a CUDA build) the same machine passes.
    monkeypatch.setattr(dist, "nccl_probe", lambda timeout=120.0: {"ok": True, "nccl": True, "nccl_version": "2.21.5"})
    res = run_checks(tmp_path, monkeypatch, text, nvml, ["gpu.count"])
    assert res["gpu.count"].status == "pass" and "NCCL 2.21.5" in res["gpu.count"].finding
    assert "GPU 1 NVIDIA GeForce RTX 3090" in res["gpu.count"].finding


def test_preset_70b_multi_gpu_on_two_24gb_cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fmllm_tui.fixes import preset_changes, render_changes

    path = tmp_path / "config.yaml"
    path.write_text(cfg_text(model="Qwen/Qwen2.5-7B-Instruct"))
    text = render_changes(load_config(path), preset_changes(load_config(path), "70b-multi-gpu"))
    view = load_config_text(path, text).view
    assert (view.fmllm.distributed.mode, view.fmllm.distributed.cpu_offload) == ("fsdp", True)
    res = run_checks(tmp_path, monkeypatch, text, fake_gpus(tmp_path, 2), ["config.multi_gpu_fit"])
    r = res["config.multi_gpu_fit"]
    assert r.status == "pass" and "FSDP over 2 GPUs with CPU offload: per-GPU peak" in r.finding, r.finding
    cfg = dist.accelerate_config(view, "fsdp", 2, layer_cls=dist.decoder_layer_class({"model_type": "qwen2"}))
    assert cfg["fsdp_config"]["fsdp_offload_params"] is True and cfg["mixed_precision"] == "bf16"


def test_check_gpu_count_free_memory_and_process_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "nccl_probe", lambda timeout=120.0: {"ok": True, "nccl": True, "nccl_version": "2.21.5"})
    # Another job holds most of GPU 1: the per-GPU plan does not fit there.
    spec = json.loads(fake_gpus(tmp_path, 2).read_text())
    spec["devices"][1]["used"] = 20 * GiB
    spec["devices"][1]["processes"] = [{"pid": 777, "name": "python hog.py", "used": 20 * GiB}]
    nvml = tmp_path / "busy.json"
    nvml.write_text(json.dumps(spec))
    res = run_checks(tmp_path, monkeypatch, cfg_text(fmllm="distributed: {mode: fsdp, cpu_offload: true}\n"), nvml,
                     ["gpu.count"])
    r = res["gpu.count"]
    assert r.status == "fail" and "GPU 1 has 4.00 GiB free but the fsdp plan needs" in r.finding
    assert "PID 777 python hog.py" in r.finding
    res = run_checks(tmp_path, monkeypatch, cfg_text(fmllm="distributed: {mode: fsdp, num_processes: 4}\n"),
                     fake_gpus(tmp_path, 2), ["gpu.count"])
    r = res["gpu.count"]
    assert r.status == "fail" and "only 2 GPUs are visible" in r.finding
    assert [(c.key, c.from_, c.to) for c in r.fix.changes] == [("fmllm.distributed.num_processes", 4, 2)]


def test_check_host_ram_for_offload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    text = cfg_text(fmllm="distributed: {mode: fsdp, cpu_offload: true}\n")
    res = run_checks(tmp_path, monkeypatch, text, fake_gpus(tmp_path, 4), ["host.offload_ram"])
    r = res["host.offload_ram"]
    low = r.values["needed_low_bytes"]
    assert 100 * GiB < low < r.values["needed_high_bytes"] < 140 * GiB  # 72B: the published ~107-128 GB
    if psutil.virtual_memory().available + psutil.swap_memory().free < low:  # this 24 GiB machine
        assert r.status == "fail" and "would kill" in r.finding
        # 4 cards fit the 72B without offload: the fix turns it off
        assert [(c.key, c.to) for c in r.fix.changes] == [("fmllm.distributed.cpu_offload", False)]
    res = run_checks(tmp_path, monkeypatch, cfg_text(fmllm="distributed: {mode: ddp, cpu_offload: true}\n"),
                     fake_gpus(tmp_path, 4), ["host.offload_ram"])
    assert res["host.offload_ram"].status == "skip" and "mode is ddp" in res["host.offload_ram"].finding
    res = run_checks(tmp_path, monkeypatch, cfg_text(), fake_gpus(tmp_path, 4), ["host.offload_ram"])
    assert res["host.offload_ram"].status == "skip"


def test_check_host_ram_for_fsdp_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import psutil

    def host(available_gib: float, swap_gib: float) -> None:
        monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(
            available=int(available_gib * GiB), total=int(available_gib * GiB) + GiB))
        monkeypatch.setattr(psutil, "swap_memory", lambda: types.SimpleNamespace(free=int(swap_gib * GiB)))

    text = cfg_text(fmllm="distributed: {mode: fsdp, num_processes: 4}\n")
    host(500, 0)
    r = run_checks(tmp_path, monkeypatch, text, fake_gpus(tmp_path, 4), ["host.load_ram"])["host.load_ram"]
    need = r.values["needed_bytes"]
    # Four processes, each with the whole 4-bit 72B (~40 GiB) and its own ~3 GiB.
    assert r.status == "pass" and r.values["processes_here"] == 4 and 160 * GiB < need < 190 * GiB, r.finding
    assert "each of the 4 processes on this machine first loads the whole 4-bit model into CPU RAM" in r.finding
    host(need / GiB - 20, 40)  # RAM short, swap covers it: a warning
    r = run_checks(tmp_path, monkeypatch, text, fake_gpus(tmp_path, 4), ["host.load_ram"])["host.load_ram"]
    assert r.status == "warn" and "it would swap while loading" in r.finding, r.finding
    host(need / GiB - 20, 10)  # neither: the kernel would kill it
    r = run_checks(tmp_path, monkeypatch, text, fake_gpus(tmp_path, 4), ["host.load_ram"])["host.load_ram"]
    assert r.status == "fail" and "would kill the run while loading" in r.finding and "num_processes" in r.finding
    auto = run_checks(tmp_path, monkeypatch, cfg_text(), fake_gpus(tmp_path, 4), ["host.load_ram"])["host.load_ram"]
    assert auto.status == "fail" and auto.finding.startswith("mode auto trains this with FSDP: "), auto.finding
    small = cfg_text(model="Qwen/Qwen2.5-7B-Instruct")  # fits one card: auto never loads it into CPU RAM
    r = run_checks(tmp_path, monkeypatch, small, fake_gpus(tmp_path, 4), ["host.load_ram"])["host.load_ram"]
    assert r.status == "skip" and "mode auto plans ddp here" in r.finding, r.finding
    r = run_checks(tmp_path, monkeypatch, cfg_text(), fake_gpus(tmp_path, 1), ["host.load_ram"])["host.load_ram"]
    assert r.status == "skip" and "mode auto plans single here" in r.finding, r.finding
    r = run_checks(tmp_path, monkeypatch, cfg_text(fmllm="distributed: {mode: ddp}\n"), fake_gpus(tmp_path, 4),
                   ["host.load_ram"])["host.load_ram"]
    assert r.status == "skip" and "mode is ddp" in r.finding
    # With CPU offload every process still loads the whole model into CPU RAM first.
    host(500, 0)
    r = run_checks(tmp_path, monkeypatch, cfg_text(fmllm="distributed: {mode: fsdp, num_processes: 4, cpu_offload: true}\n"),
                   fake_gpus(tmp_path, 4), ["host.load_ram"])["host.load_ram"]
    assert r.status == "pass" and r.values["needed_bytes"] == need, r.finding


def test_memory_fit_fixer_writes_the_distributed_keys(tmp_path: Path) -> None:
    from fmllm_tui.fixes import plan_fix, render_changes

    from fmllm_tui.findings import Change

    path = tmp_path / "config.yaml"
    path.write_text("# my run\n" + cfg_text())
    loaded = load_config(path)
    changes = plan_fix(loaded, "memory.fit", {"changes": [
        Change("fmllm.distributed.mode", "fsdp", from_="auto", comment="shard"),
        Change("fmllm.distributed.num_processes", 2, comment="two GPUs")]})
    text = render_changes(loaded, changes)
    again = load_config_text(path, text)
    assert again.view.fmllm.distributed.mode == "fsdp" and again.view.fmllm.distributed.num_processes == 2
    assert text.startswith("# my run\n")


def test_parent_stays_torch_free() -> None:
    code = ("import sys, fmllm_tui.runner.distributed as d, fmllm_tui.runner.launch;"
            "d.plan_mode; bad=[m for m in ('torch','transformers','peft','accelerate') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[]"


def test_shard_search_keeps_a_configured_cpu_offload() -> None:
    """A config with cpu_offload: true (the 70b-multi-gpu preset, written for 2 x 24 GiB) is
    sized with offload first: 2 GPUs, not "needs FSDP over 4 GPUs" without it (newcomer pass)."""
    from fmllm_tui import catalogue

    arch = catalogue.get_architecture("Qwen/Qwen2.5-72B-Instruct")
    view = view_of(cfg_text(fmllm="distributed: {mode: fsdp, cpu_offload: true}"))
    plan = dist.shard_search(view, arch, 24 * GiB, 1)
    assert plan is not None and plan.cpu_offload and plan.n_gpus == 2
    without = view_of(cfg_text(fmllm="distributed: {mode: fsdp}"))
    other = dist.shard_search(without, arch, 24 * GiB, 1)
    assert other is not None and not other.cpu_offload and other.n_gpus > 2
