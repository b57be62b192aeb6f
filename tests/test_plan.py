"""The one plan (fmllm_tui.plan): made once per (config, target), written into the run folder,
run as written by the training process, and the same plan the memory model predicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_support import recipe_of, view_of
from test_distributed import fake_gpus
from test_runner_launch import write_config

from fmllm_tui import gpudb, memory
from fmllm_tui import recipe as rules
from fmllm_tui.config import load_config
from fmllm_tui.plan import PlanError, Recipe, RunPlan, Target, resolve_recipe, run_plan
from fmllm_tui.runner import rundir as rd
from fmllm_tui.runner.launch import RunError, build_spec, child_env

ROOT = Path(__file__).resolve().parents[1]
CARDS = ["RTX 3080", "RTX 4060 Ti 16GB", "RTX 3090", "A100 80GB", "H100"]
CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "tests" / "configs").glob("*.yaml")),
           *sorted((ROOT / "tests" / "configs" / "public").glob("*.yaml"))]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_a_named_card_gets_the_same_plan_on_any_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """What this machine has installed (liger-kernel, Triton) never changes a plan for a named card."""
    view = load_config(ROOT / "config.yaml").view
    card = gpudb.lookup("RTX 3090")
    arch = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
    plans = []
    for has in (True, False):
        monkeypatch.setattr(rules, "liger_installed", lambda has=has: has)
        monkeypatch.setattr("fmllm_tui.plan.installed", lambda module, has=has: has)
        plans.append(run_plan(view, Target.planned(card), arch=arch, card=card).to_json())
    assert plans[0] == plans[1]
    assert plans[0]["recipe"]["loss"] == "liger" and plans[0]["target"]["has_liger"]


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_memory_model_predicts_the_recipe_the_plan_holds(path: Path, card: str) -> None:
    """loss kind, compiled layers, liger layers and the optimizer as it runs: the prediction the
    checks show and the recipe the run gets are one decision."""
    from fmllm_tui.runner.distributed import model_architecture

    try:
        view = load_config(path).view
    except Exception as e:  # a corpus config fmllm refuses is another test's business
        pytest.skip(f"{path.name} does not load: {e}")
    arch = model_architecture(view)
    if arch is None:
        pytest.skip(f"{view.base_model_name} is not in the catalogue (offline)")
    gpu = gpudb.lookup(card)
    try:
        plan = run_plan(view, Target.planned(gpu), arch=arch, card=gpu)
    except PlanError as e:
        pytest.skip(f"no run on {card}: {e}")
    pred = memory.predict(view, arch, seq_len=plan.planned_seq_len, gpu=gpu)
    r = plan.recipe
    assert pred.loss == r.loss
    assert pred.inputs is not None
    assert memory.resolve_compiled(pred.inputs) == r.compile_layers
    assert memory.resolve_liger_layers(pred.inputs) == r.liger_kernels
    assert ("uses eager attention" in " ".join(pred.notes)) == (r.attn_implementation != view.fmllm.attn_implementation)
    swapped = any(f"runs as {r.optim}" in n for n in pred.notes)
    assert swapped == (r.optim != view.training.optim)
    assert plan.predicted_peak_bytes == pred.peak_process_bytes


def test_plan_round_trips_and_refuses_what_it_does_not_know() -> None:
    view = view_of({})
    plan = run_plan(view, Target("cuda", "NVIDIA H100 80GB HBM3", (9, 0), True, True))
    again = RunPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again.to_json() == plan.to_json()
    bad = plan.to_json()
    bad["recipe"]["warp_drive"] = True
    with pytest.raises(PlanError, match="warp_drive"):
        RunPlan.from_json(bad)
    with pytest.raises(PlanError, match="missing or malformed"):
        RunPlan.from_json({"recipe": None})


def test_max_seq_length_has_one_default() -> None:
    """training.max_seq_length's default is written once (config.DEFAULT_MAX_SEQ_LENGTH): the typed
    view, a plan of a config that leaves it out or sets null, and a plan read back without it agree."""
    from fmllm_tui.config import DEFAULT_MAX_SEQ_LENGTH, TrainingSettings

    assert TrainingSettings().max_seq_length == DEFAULT_MAX_SEQ_LENGTH
    target = Target("cuda", "NVIDIA H100 80GB HBM3", (9, 0), True, True)
    for cfg in ({}, {"training": {"max_seq_length": None}}):
        plan = run_plan(view_of(cfg), target)
        assert plan.max_seq_length == plan.planned_seq_len == DEFAULT_MAX_SEQ_LENGTH
    written = {k: v for k, v in plan.to_json().items() if k not in ("max_seq_length", "planned_seq_len")}
    again = RunPlan.from_json(written)
    assert again.max_seq_length == again.planned_seq_len == DEFAULT_MAX_SEQ_LENGTH


def test_launch_writes_the_plan_for_this_machine(tmp_path: Path, tiny_model_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_config(write_config(tmp_path, tiny_model_dir))
    monkeypatch.delenv("FMLLM_FAKE_NVML", raising=False)
    spec = build_spec(loaded, "test", device="cpu")
    plan = RunPlan.from_json(spec["plan"])
    assert plan.target.device == "cpu" and plan.recipe.device == "cpu" and plan.recipe.loss == "chunked"
    assert plan.max_seq_length == 96 and plan.planned_seq_len <= 96

    monkeypatch.setenv("FMLLM_FAKE_NVML", str(fake_gpus(tmp_path, 1, name="NVIDIA H100 80GB HBM3", cc=(9, 0),
                                                         total=80 * 2**30)))
    # This machine's torch is a CPU build: a GPU NVML sees cannot be used, and the plan says so.
    cpu_torch = RunPlan.from_json(build_spec(loaded, "train")["plan"])
    assert cpu_torch.target.device == "cpu" and "CPU-only build" in cpu_torch.recipe.notes[0]
    monkeypatch.setattr("fmllm_tui.gpu.torch_build_info",
                        lambda: {"installed": True, "version": "2.13.0+cu128", "cuda": "12.8"})
    gpu = RunPlan.from_json(build_spec(loaded, "train")["plan"])
    assert gpu.target.name == "NVIDIA H100 80GB HBM3" and gpu.recipe.device == "cuda" and gpu.recipe.quantize_4bit
    assert gpu.recipe.loss == ("liger" if rules.liger_installed() else "chunked")


def test_bf16_on_a_card_without_it_stops_before_launch(tmp_path: Path, tiny_model_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_config(write_config(tmp_path, tiny_model_dir))
    monkeypatch.setenv("FMLLM_FAKE_NVML", str(fake_gpus(tmp_path, 1, name="Tesla T4", cc=(7, 5), total=16 * 2**30)))
    monkeypatch.setattr("fmllm_tui.gpu.torch_build_info",
                        lambda: {"installed": True, "version": "2.13.0+cu128", "cuda": "12.8"})
    with pytest.raises(RunError, match=r"bfloat16 but this GPU \(compute capability 7.5\) has no bf16"):
        build_spec(loaded, "train")


def test_the_training_process_refuses_a_plan_this_machine_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from fmllm_tui.runner import lean

    view = view_of({})
    gpu_plan = run_plan(view, Target("cuda", "NVIDIA A100-SXM4-80GB", (8, 0), True, True))
    with pytest.raises(lean.RecipeError, match=r"planned for a CUDA GPU \(NVIDIA A100-SXM4-80GB\)"):
        lean.honour_plan(gpu_plan, cuda=False, mode="single", bf16_supported=False)
    with pytest.raises(lean.RecipeError, match="planned as single but was launched as ddp"):
        lean.honour_plan(gpu_plan, cuda=True, mode="ddp", bf16_supported=True)
    with pytest.raises(lean.RecipeError, match="has no bf16"):
        lean.honour_plan(gpu_plan, cuda=True, mode="single", bf16_supported=False)
    monkeypatch.setattr(lean, "triton_usable", lambda: False)
    monkeypatch.setattr("fmllm_tui.runner.loss.liger_available", lambda: False)
    r = lean.honour_plan(gpu_plan, cuda=True, mode="single", bf16_supported=True)
    assert gpu_plan.recipe.compile_layers and not r.compile_layers
    assert gpu_plan.recipe.loss == "liger" and r.loss == "chunked"
    assert sum(n.startswith("not as planned") for n in r.notes) == 2
    assert gpu_plan.recipe.loss == "liger"  # the plan itself is never changed


def test_optimizer_swap_is_the_plans_when_it_knows_the_shapes() -> None:
    cfg = {"training": {"optim": "paged_adamw_32bit"}}
    assert recipe_of(cfg, cuda=True, trainable_params=5_000_000).optim == "adamw_torch_fused"
    assert recipe_of(cfg, cuda=True, trainable_params=None).optim == "paged_adamw_32bit"  # left to the run
    assert recipe_of(cfg, cuda=True, trainable_params=5_000_000, distributed="fsdp").optim == "adamw_torch"


@pytest.mark.slow
def test_the_training_process_runs_the_plan_not_its_own_reading(tmp_path: Path, tiny_model_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan that differs from what the config alone would give (the plain loss where the
    config says auto) is what the training process runs: it decides nothing again."""
    monkeypatch.delenv("FMLLM_FAKE_NVML", raising=False)
    loaded = load_config(write_config(tmp_path, tiny_model_dir))
    spec = build_spec(loaded, "test", steps=2, device="cpu")
    assert spec["plan"]["recipe"]["loss"] == "chunked"
    spec["plan"]["recipe"]["loss"] = "plain"
    spec["plan"]["recipe"]["notes"] = ["a note only the plan has"]
    spec["runner"]["sample_generations"] = 0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rd.write_json_atomic(run_dir / rd.CONFIG, spec)
    env = {**os.environ, **child_env({"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""})}
    proc = subprocess.run([sys.executable, "-m", "fmllm_tui.runner.train", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    result = json.loads((run_dir / rd.RESULT).read_text())
    assert result["recipe"]["loss"] == "plain", result["recipe"]
    assert "a note only the plan has" in result["recipe"]["notes"]
    assert "[fmllm] plan for cpu: fmllm recipe, loss plain" in log


def test_a_model_without_sdpa_is_planned_and_predicted_with_eager_attention() -> None:
    """transformers 5.25 refuses SDPA for gemma-2 at load (measured on the H100): the plan runs
    eager attention and the prediction counts its seq x seq scores."""
    arch = {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
            "final_logit_softcapping": 30.0, "tie_word_embeddings": True}
    view = view_of({"training": {"max_seq_length": 2048}})
    plan = run_plan(view, Target.planned(gpudb.lookup("RTX 3090")), arch=arch)
    # soft-capped logits: the chunked loss caps each chunk (liger's fused loss is not used on them)
    assert plan.recipe.attn_implementation == "eager" and plan.recipe.loss == "chunked"
    assert any("final_logit_softcapping" in n for n in plan.recipe.notes)
    assert memory.predict(view, arch).loss == "chunked"  # the prediction plans the same loss
    sdpa = memory.predict(view, {**arch, "model_type": "llama"})
    eager = memory.predict(view, arch)
    assert any("eager attention" in n for n in eager.notes) and eager.peak_process_bytes > sdpa.peak_process_bytes


def test_recipe_json_names_every_field_the_runner_reads() -> None:
    r = resolve_recipe(view_of({}), Target.cpu())
    assert Recipe.from_json(r.to_json()) == r
