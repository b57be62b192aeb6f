"""fmllm's FSDP loading on the CPU: the 4-bit model is quantized into CPU RAM (bf16 storage), its
device map is dropped, and FSDP's flat parameters keep the layers working.

A GPU run moves each FSDP unit to its GPU as it shards it (bench/bench_fsdp_gpu.py measures that
on 2 GPUs); here one gloo process wraps the CPU-quantized model with torch's FSDP the way
accelerate does (peft's wrap policy, use_orig_params off) and its loss and LoRA gradients must
equal the unwrapped model's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from fmllm_tui.runner.fsdp_trainer import fsdp_lazy_init  # noqa: E402
from fmllm_tui.runner.lean import (  # noqa: E402
    Recipe,
    RecipeError,
    load_model,
    load_threads,
    model_load_kwargs,
    prepare_for_training,
    quant_states_off_device,
    weights_not_in_storage,
)

CFG = {"base_model_name": "tiny", "quantization": {"bnb_4bit_quant_type": "nf4", "use_nested_quant": True,
                                                   "bnb_4bit_compute_dtype": "bfloat16"},
       "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
       "training": {}, "fmllm": {}}


def _recipe(distributed: str) -> Recipe:
    return Recipe(memory_recipe="fmllm", device="cuda", quantize_4bit=True, dtype="bfloat16", mixed_precision="bf16",
                  loss="plain", liger_kernels=False, offload_embeddings=False, optim="adamw_torch",
                  gradient_checkpointing=False, attn_implementation="sdpa", distributed=distributed,
                  quant_storage="bfloat16" if distributed == "fsdp" else None)


def test_fsdp_loads_into_cpu_ram_and_one_gpu_runs_load_on_their_gpu() -> None:
    fsdp = model_load_kwargs(CFG, _recipe("fsdp"), device_index=1)
    assert fsdp["device_map"] == {"": "cpu"}
    assert fsdp["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    assert model_load_kwargs(CFG, _recipe("single"), device_index=1)["device_map"] == {"": 1}
    assert model_load_kwargs(CFG, _recipe("ddp"), device_index=1)["device_map"] == {"": 1}


def test_load_threads_split_the_cores_and_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    torch.set_num_threads(1)  # what accelerate launch leaves a process with
    try:
        with load_threads() as n:
            assert n == 4 and torch.get_num_threads() == 4
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "not a number")  # a broken environment: this process alone
        with load_threads() as n:
            assert n == 16
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gloo_world():
    import torch.distributed as td

    if not (td.is_available() and td.is_gloo_available()):
        pytest.skip("this torch build has no gloo backend")
    from fmllm_tui.runner.distributed import free_port

    owned = not td.is_initialized()
    if owned:
        td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    if owned:
        td.destroy_process_group()


def test_cpu_quantized_model_trains_under_fsdp(tiny_model_dir: Path, gloo_world) -> None:
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    recipe = _recipe("fsdp")
    model = load_model(str(tiny_model_dir), CFG, recipe)
    # Quantized in CPU RAM, in the storage dtype FSDP can flatten, with no device map left for
    # accelerate to refuse ("loaded on a different device than the one you're training on").
    lin = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert lin and all(m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu" for m in lin)
    assert getattr(model, "hf_device_map", None) is None
    n4 = len(quant_states_off_device(model, torch.device("cuda", 0)))
    assert n4 == len(lin)  # every layer's state is on the CPU, so "not on cuda:0" names all of them
    assert quant_states_off_device(model, torch.device("cpu")) == []
    assert quant_states_off_device(None, torch.device("cpu")) == []
    lost = lin[0].quant_state
    lin[0].quant_state = lin[0].weight.quant_state = None  # a layer whose state went missing is named
    assert quant_states_off_device(model, torch.device("cpu")) == [
        next(n for n, m in model.named_modules() if m is lin[0]) + " (no quantization state)"]
    lin[0].quant_state = lin[0].weight.quant_state = lost

    torch.manual_seed(0)
    peft_model = prepare_for_training(model, CFG, recipe)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))

    def loss_and_grads(m):
        out = m(input_ids=ids, labels=ids)
        out.loss.backward()
        return out.loss.detach().float(), {n: p.grad.detach().float().clone()
                                          for n, p in m.named_parameters() if p.grad is not None}

    ref_loss, ref_grads = loss_and_grads(peft_model)
    assert ref_grads and all("lora_" in n for n in ref_grads)
    peft_model.zero_grad(set_to_none=True)

    wrapped = FSDP(peft_model, auto_wrap_policy=fsdp_auto_wrap_policy(peft_model), use_orig_params=False,
                   device_id=torch.device("cpu"), sync_module_states=False)
    flat = [p for p in wrapped.parameters()]
    assert not any(type(p).__name__ == "Params4bit" for p in flat)  # the 4-bit weights are flat views now
    # The runner runs FSDP's lazy initialisation at train begin, before handing the cache back.
    assert wrapped._is_root is None
    assert fsdp_lazy_init(wrapped) and wrapped._is_root is True
    assert not fsdp_lazy_init(peft_model) and not fsdp_lazy_init(None)
    loss, _ = loss_and_grads(wrapped)
    assert torch.equal(loss, ref_loss)
    # The quantization state survived flattening: every 4-bit layer still has it, on the CPU.
    assert quant_states_off_device(wrapped, torch.device("cpu")) == []
    assert len(quant_states_off_device(wrapped, torch.device("meta"))) == len(lin)
    trained = [p for p in wrapped.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    total = sum(float(g.abs().sum()) for g in ref_grads.values())
    wrapped_total = sum(float(p.grad.abs().sum()) for p in trained)
    assert wrapped_total == pytest.approx(total, rel=1e-4)


def _as_on_an_avx512bf16_host(model) -> list:
    """What bitsandbytes sets on every Linear4bit on a CPU with AVX512-BF16 (Sapphire Rapids and
    later): its eval-mode, no-grad forward then repacks the weight in place for CPU inference."""
    lin = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    for m in lin:
        m.support_avx512bf16_for_cpu = True
    return lin


def test_fsdp_storage_survives_a_cpu_forward_on_an_avx512bf16_host(tiny_model_dir: Path, gloo_world) -> None:
    """The failure a fresh CI host with AVX512-BF16 showed ("Cannot flatten integer dtype tensors"):
    a reference forward of the freshly loaded (eval-mode) model repacked the bf16-stored 4-bit
    weights into uint8. The runner hands the model over in train mode, as the Trainer runs it."""
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    recipe = _recipe("fsdp")
    model = load_model(str(tiny_model_dir), CFG, recipe)
    assert model.training
    _as_on_an_avx512bf16_host(model)
    peft_model = prepare_for_training(model, CFG, recipe)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    with torch.no_grad():
        peft_model(input_ids=ids)
    assert weights_not_in_storage(peft_model, "bfloat16") == []
    wrapped = FSDP(peft_model, auto_wrap_policy=fsdp_auto_wrap_policy(peft_model), use_orig_params=False,
                   device_id=torch.device("cpu"), sync_module_states=False)
    assert wrapped(input_ids=ids, labels=ids).loss.isfinite()


def test_a_repacked_4bit_weight_stops_the_fsdp_recipe_by_name(tiny_model_dir: Path) -> None:
    recipe = _recipe("fsdp")
    model = load_model(str(tiny_model_dir), CFG, recipe)
    lin = _as_on_an_avx512bf16_host(model)
    model.eval()  # what an eval-mode reference forward did before
    with torch.no_grad():
        model(input_ids=torch.randint(0, model.config.vocab_size, (1, 8)))
    wrong = weights_not_in_storage(model, "bfloat16")
    assert len(wrong) == len(lin) and all(w.endswith("(repacked for CPU inference)") for w in wrong)
    assert weights_not_in_storage(model, None) == []  # one GPU: bitsandbytes' own uint8, nothing to check
    with pytest.raises(RecipeError, match=r"FSDP needs every 4-bit weight stored as bfloat16.*repacked for CPU"):
        prepare_for_training(model, CFG, recipe)


RANK_SCRIPT = r'''
import json, os, sys
import torch
import torch.distributed as td
from peft.utils.other import fsdp_auto_wrap_policy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy

from fmllm_tui.runner.lean import load_model, prepare_for_training, quant_states_off_device
from tests.test_fsdp_load import CFG, _recipe

model_dir, out = sys.argv[1], sys.argv[2]
td.init_process_group("gloo")
rank = td.get_rank()
recipe = _recipe("fsdp")
torch.manual_seed(0)
model = prepare_for_training(load_model(model_dir, CFG, recipe), CFG, recipe)
n4 = sum(type(m).__name__ == "Linear4bit" and hasattr(m, "quant_state") for m in model.modules())
ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
ref = model(input_ids=ids, labels=ids).loss.item()
wrapped = FSDP(model, auto_wrap_policy=fsdp_auto_wrap_policy(model), use_orig_params=False,
               device_id=torch.device("cpu"), sharding_strategy=ShardingStrategy.FULL_SHARD)
opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
losses = []
for _ in range(3):
    loss = wrapped(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    losses.append(loss.item())
flats = [p for p in wrapped.parameters() if hasattr(p, "_unpadded_unsharded_size")]  # FSDP's flat parameters
flat = sum(p.numel() for p in flats)
unsharded = sum(p._unpadded_unsharded_size.numel() for p in flats)
json.dump({"rank": rank, "ref": ref, "losses": losses, "missing": quant_states_off_device(wrapped, torch.device("cpu")),
           "n4": n4, "local_numel": flat, "unsharded_numel": unsharded}, open(f"{out}/rank{rank}.json", "w"))
td.destroy_process_group()
'''


def test_two_ranks_shard_the_cpu_quantized_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two gloo processes shard the CPU-quantized 4-bit model (FULL_SHARD, bf16-stored 4-bit weights
    in FSDP's flat parameters): the first loss equals the unwrapped model's, training moves it, and
    every 4-bit layer keeps its quantization state."""
    import json
    import subprocess
    import sys

    import torch.distributed as td

    if not (td.is_available() and td.is_gloo_available()):
        pytest.skip("this torch build has no gloo backend")
    from fmllm_tui.runner.distributed import free_port

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    port = str(free_port())
    env = {**os.environ, "PYTHONPATH": str(repo), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tiny_model_dir), str(tmp_path)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["n4"] > 0 and r["missing"] == []
        assert 0 < r["local_numel"] <= 0.51 * r["unsharded_numel"]  # each rank holds half: really sharded
        assert r["losses"][0] == pytest.approx(r["ref"], abs=1e-4)  # sharding changed nothing
        assert r["losses"][-1] < r["losses"][0]  # and the adapters train
    assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"], abs=1e-6)


def _cuda_calls(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
    """torch.cuda's memory calls on a CPU machine: recorded or zero."""
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("release"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: events.append("reset"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name in ("memory_allocated", "max_memory_allocated", "max_memory_reserved", "memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, lambda *a: 0)


@pytest.mark.parametrize("is_root", [True, False])
def test_fsdp_train_begin_runs_the_lazy_init_before_releasing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str], is_root: bool) -> None:
    from fmllm_tui.runner import fsdp_trainer

    events: list[str] = []
    _cuda_calls(monkeypatch, events)
    monkeypatch.setattr(fsdp_trainer, "quant_states_off_device", lambda model, device: [])
    monkeypatch.setattr(fsdp_trainer, "fsdp_lazy_init", lambda model: events.append(f"lazy_init {model}") or is_root)
    cb = fsdp_trainer.FsdpTrainBegin(sampler=None)
    state = type("S", (), {"global_step": 0, "max_steps": 4})()
    cb.on_train_begin(None, state, None, model="root")
    # The lazy init's freed buffer must be gone before the first forward gathers the root.
    assert events == ["lazy_init root", "release", "reset"]
    said = capsys.readouterr().out
    assert ("not a torch FSDP root" in said) is (not is_root)


def test_fsdp_trainer_releases_the_cache_before_every_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Trainer

    from fmllm_tui.runner.fsdp_trainer import fsdp_trainer_class

    events: list[str] = []
    _cuda_calls(monkeypatch, events)
    monkeypatch.setattr(Trainer, "_save_checkpoint", lambda self, model, trial: events.append(f"save {model}"))
    for cuda, want in ((True, ["release", "save m"]), (False, ["save m"])):
        events.clear()
        cls = fsdp_trainer_class(Trainer, cuda)
        cls._save_checkpoint(object.__new__(cls), "m", None)  # whatever asked for the save (steps, stop, eval)
        assert events == want
