"""CPU-side parts of bench/bench_unsloth_gpu.py: flags, cases, each recipe's process, the
two-stack wheel split, the MFU arithmetic, the loss agreement, the table and the budget.

The GPU parts (the runs themselves) are exercised on the device machine; here nothing starts a
training process, and no GPU or Unsloth is needed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> Any:
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bu = _load("bench_unsloth_gpu")
brg = bu.brg

# The wheels ../shared/device/unsloth-wheels.sh puts in .whl2/ (2026-12-07).
WHL2 = """accelerate-1.16.0-py3-none-any.whl annotated_types-0.8.0-py3-none-any.whl
bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl cut_cross_entropy-25.1.1-py3-none-any.whl
datasets-5.2.0-py3-none-any.whl docstring_parser-0.18.0-py3-none-any.whl huggingface_hub-2.5.0-py3-none-any.whl
httpx2-2.17.0-py3-none-any.whl httpcore2-2.17.0-py3-none-any.whl json5-0.17.3-py3-none-any.whl
kernels-0.19.1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl liger_kernel-0.8.5-py3-none-any.whl
msgspec-0.22.0-cp312-cp312-manylinux2014_x86_64.whl nest_asyncio-1.6.0-py3-none-any.whl
peft-0.22.0-py3-none-any.whl pydantic-2.14.4-py3-none-any.whl ruamel_yaml-0.19.1-py3-none-any.whl
structlog-26.1.0-py3-none-any.whl torchao-0.18.0-cp310-abi3-manylinux_2_24_x86_64.whl
transformers-5.25.0-py3-none-any.whl trl-1.15.0-py3-none-any.whl typeguard-4.6.1-py3-none-any.whl
tyro-1.0.16-py3-none-any.whl unsloth-2026.10.9-py3-none-any.whl unsloth_zoo-2026.10.9-py3-none-any.whl""".split()


def _projects(files: list[str]) -> set[str]:
    return {f.split("-", 1)[0] for f in files}


def test_default_flags_and_cases_are_llama_at_two_lengths_all_three_recipes() -> None:
    a = bu.parse_args([])
    cases = bu.make_cases(a)
    assert [c["name"] for c in cases] == [
        "llama8b-s1024-b1-unsloth", "llama8b-s1024-b1-fmllm", "llama8b-s1024-b1-plain",
        "llama8b-s4096-b1-unsloth", "llama8b-s4096-b1-fmllm", "llama8b-s4096-b1-plain"]
    assert a.budget_s < 600  # one device command is 10 minutes at most
    for c in cases:  # the same LoRA, data order and optimizer for every recipe
        assert (c["dropout"], c["optim"], c["extra_args"]) == (0.0, "paged_adamw_32bit",
                                                               {"train_sampling_strategy": "sequential"})


def test_flags_pick_models_seqs_batches_recipes_and_reject_unknown_names() -> None:
    cases = bu.make_cases(bu.parse_args(["--models", "7b,qwen3-8b", "--seqs", "4096", "--batches", "1,2",
                                         "--recipes", "fmllm,unsloth"]))
    assert [(c["model"], c["seq"], c["batch"], c["recipe"]) for c in cases][:4] == [
        ("7b", 4096, 1, "fmllm"), ("7b", 4096, 1, "unsloth"), ("7b", 4096, 2, "fmllm"), ("7b", 4096, 2, "unsloth")]
    assert len(cases) == 8
    with pytest.raises(SystemExit, match="llama70b"):
        bu.make_cases(bu.parse_args(["--models", "llama70b"]))
    with pytest.raises(SystemExit, match="axolotl"):
        bu.make_cases(bu.parse_args(["--recipes", "axolotl"]))


def test_fit24_is_the_largest_micro_batch_predicted_within_24_gib() -> None:
    for seq in (1024, 4096):
        b = bu.fit_batch("llama8b", seq)

        def peak(mb: int, seq: int = seq) -> int:
            case = {"name": "x", "model": "llama8b", "recipe": "fmllm", "seq": seq, "batch": mb, "dropout": 0.0}
            return brg.predict_point(brg.case_point(case))["process_peak_bytes"]

        assert peak(b) <= 24 * 2**30
        assert b == 16 or peak(b + 1) > 24 * 2**30
    longer = bu.fit_batch("llama8b", 4096)
    assert longer <= bu.fit_batch("llama8b", 1024)
    cases = bu.make_cases(bu.parse_args(["--seqs", "4096", "--batches", "fit24", "--recipes", "plain"]))
    assert [c["batch"] for c in cases] == [longer]


def test_wheels_split_into_two_stacks_that_keep_unsloths_transformers_apart() -> None:
    fm, un = bu.split_wheels(WHL2)
    assert {"unsloth", "unsloth_zoo", "trl", "torchao", "cut_cross_entropy"}.isdisjoint(_projects(fm))
    assert {"transformers", "huggingface_hub", "peft", "accelerate", "kernels"}.isdisjoint(_projects(un))
    assert {"transformers", "peft", "bitsandbytes", "datasets", "pydantic"} <= _projects(fm)
    assert {"unsloth", "unsloth_zoo", "bitsandbytes", "datasets", "pydantic", "liger_kernel"} <= _projects(un)
    assert set(fm) | set(un) == set(WHL2)


def test_unsloth_process_runs_in_unsloths_stack_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", f"/tmp/site:{REPO}")  # how the bench itself is started
    case = bu.make_cases(bu.parse_args(["--seqs", "4096", "--recipes", "unsloth"]))[0]
    argv, env = bu.unsloth_process(case, Path("/m/llama8b-random"), Path("/d/data.jsonl"), tmp_path / "run",
                                   "/tmp/site-unsloth")
    assert argv[1:] == [str(REPO / "bench" / "bench_unsloth_gpu.py"), "--worker", str(tmp_path / "run" / "spec.json")]
    assert env["PYTHONPATH"].split(":") == ["/tmp/site-unsloth", str(REPO)]  # no fmllm site, no transformers 5.25
    assert (env["HF_HUB_OFFLINE"], env["TRANSFORMERS_OFFLINE"], env["UNSLOTH_DISABLE_STATISTICS"]) == ("1", "1", "1")
    spec = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert {k: spec[k] for k in ("seq", "batch", "ga", "steps", "r", "alpha", "dropout", "optim", "seed")} == {
        "seq": 4096, "batch": 1, "ga": 2, "steps": 8, "r": 8, "alpha": 8, "dropout": 0.0,
        "optim": "paged_adamw_32bit", "seed": 42}


def test_fmllm_and_plain_run_the_same_config_but_the_recipe() -> None:
    fm, plain = (c for c in bu.make_cases(bu.parse_args(["--seqs", "1024", "--recipes", "fmllm,plain"])))
    a, b = (brg.run_spec(c, Path("/m"), Path("/d.jsonl")) for c in (fm, plain))
    assert (a["config"]["fmllm"]["memory_recipe"], b["config"]["fmllm"]["memory_recipe"]) == ("fmllm", "plain")
    a["config"]["fmllm"].pop("memory_recipe"), b["config"]["fmllm"].pop("memory_recipe")
    assert a == b
    tr = a["config"]["training"]
    assert tr["extra_args"] == {"train_sampling_strategy": "sequential"}
    assert (a["config"]["lora"]["dropout"], tr["max_seq_length"], tr["optim"]) == (0.0, 1024, "paged_adamw_32bit")


def test_flops_per_token_counts_frozen_matmuls_lora_and_causal_attention() -> None:
    from fmllm_tui import memory

    arch = brg.arch_config("7b")  # Qwen2.5-7B: 7,615,616,512 parameters
    embed = 152064 * 3584
    biases = 28 * (3584 + 2 * 512)  # q/k/v bias
    norms = 28 * 2 * 3584 + 3584
    frozen = memory.param_count(arch) - embed - biases - norms  # every matmul weight, the head included
    assert frozen == 7_070_285_824
    lora = 28 * 8 * ((3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584))
    assert bu.lora_params(arch) == lora == 5_046_272
    attention = 6 * 28 * 1024 * 3584
    assert bu.flops_per_token(arch, 1024) == 4 * frozen + 6 * lora + attention
    assert bu.mfu(4000.0, arch, 1024, 989.0) == pytest.approx(4000 * (4 * frozen + 6 * lora + attention) / 989e12)
    assert bu.mfu(None, arch, 1024, 989.0) is None


def test_loss_agreement_is_the_max_relative_difference() -> None:
    assert bu.loss_rel_diff([1.1, 2.0, 3.0], [1.0, 2.0, 3.3]) == pytest.approx(0.1)
    assert bu.loss_rel_diff([1.0, 2.0], [1.0]) == 0.0  # over the steps both have
    assert bu.loss_rel_diff([], [1.0]) is None


def _res(recipe: str, step_s: float, losses: list[float], first_s: float = 20.0) -> dict[str, Any]:
    case = bu.make_cases(bu.parse_args(["--seqs", "1024", "--recipes", recipe]))[0]
    times = [first_s] + [step_s] * 7
    return {"name": case["name"], "case": case, "status": "ok", "process_peak_bytes": 6 * 2**30,
            "step_times_s": times, "step_tokens": [2048] * 8, "losses": losses}


def test_derive_and_compare_give_steady_speed_ratios_and_loss_agreement() -> None:
    group = [bu.derive(_res("unsloth", 0.5, [12.0, 11.0]), 989.0), bu.derive(_res("fmllm", 0.4, [12.0, 11.5]), 989.0),
             bu.derive(_res("plain", 0.8, [12.0, 11.0]), 989.0)]
    bu.compare_group(group)
    un, fm, plain = group
    assert fm["steady_tokens_per_s"] == pytest.approx(2048 / 0.4)  # the 20 s first step is warm-up
    assert fm["speed"]["warmup_steps"] == 1 and fm["speed"]["warmup_s"] == pytest.approx(19.6)
    assert fm["x_plain"] == pytest.approx(2.0) and fm["x_unsloth"] == pytest.approx(1.25)
    assert un["x_plain"] == pytest.approx(1.6) and "x_unsloth" not in un
    assert fm["loss_max_rel_diff"] == pytest.approx(0.5 / 11.0) and un["loss_max_rel_diff"] == 0.0
    assert plain["loss_max_rel_diff"] is None and plain["loss_reference"] == "plain"
    text = bu.table(group + [{"name": "x", "case": {**fm["case"], "recipe": "plain"}, "status": "skipped"}])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["model", "seq", "mb", "recipe"]
    assert lines[2].split() == ["Llama-3.1-8B", "1024", "1", "fmllm", "ok", "6.00", "5,120", "20",
                                f"{fm['mfu'] * 100:.1f}", "0.0455", "2.00", "1.25"]
    assert lines[4].split()[3:5] == ["plain", "skipped"] and lines[4].split()[5:] == ["-"] * 7


def test_a_spent_budget_skips_every_run_and_still_writes_the_report(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    a = bu.parse_args(["--budget-s", "0", "--model-dir", str(tmp_path / "m"), "--runs-dir", str(tmp_path / "r")])
    report: dict[str, Any] = {"env": {"gpu": "NVIDIA H100 80GB HBM3"}, "results": []}
    bu.run_all(a, bu.make_cases(a), report, t_start=time.time())
    assert [r["status"] for r in report["results"]] == ["skipped"] * 6
    assert not (tmp_path / "m" / "llama8b-random").exists()  # nothing was built
    unsloth, fmllm, plain = bu.make_cases(a)[:3]
    assert bu.estimate_s(unsloth) - bu.estimate_s(plain) == pytest.approx(bu.UNSLOTH_EXTRA_S)
    assert bu.estimate_s(plain) < bu.estimate_s(fmllm) < bu.estimate_s(fmllm, build=True)
    # the default slice (Llama-3.1-8B, 1024 and 4096, three recipes) is planned inside the default budget
    cases = bu.make_cases(bu.parse_args([]))
    planned = sum(bu.estimate_s(c, build=i == 0) for i, c in enumerate(cases))
    assert planned < bu.parse_args([]).budget_s
    assert len(bu.table(report["results"]).splitlines()) == 7


def test_the_unsloth_workers_training_loop_measures_a_tiny_lora_model_on_the_cpu(tmp_path: Path,
                                                                                  tiny_model_dir: Path) -> None:
    """The worker's loop without Unsloth (its model comes from FastLanguageModel on the GPU): fmllm's
    tokenising and collator, the data in order, a step time, token count and loss per step."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = brg.write_data(tmp_path / "data.jsonl", n=8, words=80)
    spec = {"model_path": str(tiny_model_dir), "data": str(data), "run_dir": str(tmp_path / "run"), "seq": 32,
            "batch": 1, "ga": 2, "steps": 3, "seed": 42, "optim": "adamw_torch"}
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                           LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=bu.TARGETS))
    res = bu.train_measured(model, spec)
    assert len(res["step_times_s"]) == len(res["step_tokens"]) == len(res["losses"]) == 3
    assert all(t > 0 for t in res["step_times_s"])
    # every example is cut at 32 tokens; the loader collates one batch ahead (as in fmllm's runs)
    assert res["step_tokens"][1:] == [64, 64] and res["step_tokens"][0] in (64, 96)
    assert res["trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert res["device_name"] == "cpu" and res["peak_allocated_bytes"] is None
