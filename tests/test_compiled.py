"""The compiled runner path (fmllm_tui/runner/compiled.py) on the CPU.

bitsandbytes quantises 4-bit on the CPU too; the traceable dequantisation is checked bit for bit
against a host-independent numpy reference of what bitsandbytes' CUDA kernel computes, and a tiny 4-bit LoRA model is trained through
the compiled layers (``aot_eager``: the graphs and autograd that Inductor would get, without code
generation) against the eager model. The speed and GPU memory are measured by
bench/bench_runner_gpu.py and recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
BF = pytest.importorskip("bitsandbytes.functional")

from fmllm_tui.runner.compiled import (  # noqa: E402
    _compiled_linear_class,
    compile_decoder_layers,
    configure_compiler,
    decoder_layers,
    dequantize_4bit,
    linear_4bit,
    traceable_4bit,
    uncompile_decoder_layers,
)
from fmllm_tui.runner.lean import prepare_for_training  # noqa: E402
from tests.dequant_reference import bf16_bits, reference_dequantize  # noqa: E402
from tests.recipe_support import recipe_of  # noqa: E402


def _quantized(shape, quant_type, nested, seed=0):
    torch.manual_seed(seed)
    w = (torch.randn(shape) * 0.02).to(torch.bfloat16)
    return BF.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type=quant_type)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("shape", [(64, 32), (96, 200), (512, 384), (7, 9)])
def test_dequantize_matches_the_reference_bit_for_bit(quant_type, nested, shape):
    """fmllm's traceable dequantisation equals the host-independent reference in every bit but a
    zero's sign (bitsandbytes' CUDA kernel, which computes the same, is compared on the GPU by
    bench/probe_compile_gpu.py and recorded in bench/RESULTS.md)."""
    packed, qs = _quantized(shape, quant_type, nested)
    extra = (qs.state2.absmax, qs.state2.code, qs.offset) if nested else (None, None, None)
    mine = dequantize_4bit(packed, qs.absmax, qs.code, tuple(qs.shape), qs.blocksize, torch.bfloat16, *extra)
    assert mine.shape == tuple(shape) and mine.dtype == torch.bfloat16
    ref = reference_dequantize(packed, qs)
    bits = mine.view(torch.int16).numpy().view("uint16")
    # Bit for bit but for the sign of a zero: the kernel's fp4 0b1000 is -0.0, fmllm's table +0.0
    # (the same value in every sum).
    zero = (ref & 0x7FFF) == 0
    assert (bits[~zero] == ref[~zero]).all() and ((bits[zero] & 0x7FFF) == 0).all()
    # The reference itself is a dequantisation: close to the weights that were quantised.
    torch.manual_seed(0)
    source = (torch.randn(shape) * 0.02).to(torch.bfloat16).float()
    back = torch.from_numpy(ref.astype("uint32") << 16).view(torch.float32)
    assert float((back - source).abs().mean()) < 0.004


def test_the_reference_rounds_to_nearest_even():
    """The reference's bf16 rounding agrees with torch's float32 -> bf16 conversion, ties included."""
    vals = torch.tensor([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-9, -2.5e-3, 3.0e-5, 0.0], dtype=torch.float32)
    assert (vals.to(torch.bfloat16).view(torch.int16).numpy().view("uint16") == bf16_bits(vals.numpy())).all()


def _linear4bit(in_f=128, out_f=96, bias=True, nested=True):
    torch.manual_seed(0)
    q = bnb.nn.Linear4bit(in_f, out_f, bias=bias, compute_dtype=torch.bfloat16, compress_statistics=nested,
                          quant_type="nf4")
    q.weight = bnb.nn.Params4bit((torch.randn(out_f, in_f) * 0.05).to(torch.bfloat16), requires_grad=False,
                                 compress_statistics=nested, quant_type="nf4")
    if bias:
        q.bias = torch.nn.Parameter(torch.randn(out_f, dtype=torch.bfloat16) * 0.1, requires_grad=False)
    return q.to("cpu")


@pytest.mark.parametrize("bias", [True, False])
def test_traceable_linear_forward_and_input_grad_match_bitsandbytes(bias):
    q = _linear4bit(bias=bias)
    assert traceable_4bit(q) is None
    x = torch.randn(3, 5, 128, dtype=torch.bfloat16, requires_grad=True)
    ref = q(x)
    (g_ref,) = torch.autograd.grad(ref.float().square().sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    out = linear_4bit(q, x2)
    (g,) = torch.autograd.grad(out.float().square().sum(), x2)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.allclose(out.float(), ref.float(), atol=1e-2, rtol=1e-2)
    assert torch.allclose(g.float(), g_ref.float(), atol=2e-2, rtol=2e-2)


def test_compiled_linear_saves_only_the_packed_weight():
    """Inductor's partitioner must not keep the 16-bit weight from forward to backward (the
    memory the 4-bit storage exists to save): configure_compiler turns off the CSE that would
    merge the forward and backward dequantisations."""
    import torch._functorch.config as fc

    q = _linear4bit(in_f=256, out_f=512)
    q.__class__ = _compiled_linear_class(type(q))
    saved: list[tuple[tuple[int, ...], torch.dtype]] = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with fc.patch(cse=True):  # torch's default, restored afterwards
        configure_compiler()  # what compile_decoder_layers sets for the training process
        assert fc.cse is False
        f = torch.compile(lambda x: q(x), backend="aot_eager_decomp_partition")
        x = torch.randn(4, 256, dtype=torch.bfloat16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = f(x)
        y.float().sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    weight_elems = 256 * 512
    big16 = [s for s, dt in saved if dt in (torch.bfloat16, torch.float16, torch.float32) and
             torch.Size(s).numel() >= weight_elems]
    assert not big16, f"a dequantised weight was saved for backward: {saved}"


@pytest.fixture()
def four_bit_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    def load():
        m = AutoModelForCausalLM.from_pretrained(
            str(tiny_model_dir), dtype=torch.bfloat16, device_map={"": "cpu"},
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_use_double_quant=True,
                                                   bnb_4bit_compute_dtype=torch.bfloat16))
        m.config.use_cache = False
        return m

    return load


def _train_two_steps(model, ids):
    for p_name, p in model.named_parameters():
        if "lora_B" in p_name:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(p_name)))
    model.train()
    for _ in range(2):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
    return out.loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_compiled_layers_train_like_the_eager_model(four_bit_model):
    cfg = {"lora": {"r": 8, "alpha": 8, "dropout": 0.0,
                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]},
           "training": {"gradient_checkpointing": True}, "fmllm": {"loss": "chunked", "compile": "off"}}
    ids = torch.randint(0, 400, (2, 48), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)  # LoRA's A matrices start random: the same start for both models
    eager = prepare_for_training(four_bit_model(), cfg, recipe_of(cfg, cuda=False))
    loss_e, grads_e = _train_two_steps(eager, ids)

    torch.manual_seed(0)
    model = prepare_for_training(four_bit_model(), cfg, recipe_of(cfg, cuda=False))
    n, switched = compile_decoder_layers(model, checkpointing=True, backend="aot_eager")
    layers = decoder_layers(model)
    assert n == len(layers) == 2
    assert switched == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert all(layer.gradient_checkpointing is False for layer in layers)  # fmllm's checkpoint wraps the call
    loss_c, grads_c = _train_two_steps(model, ids)
    assert abs(loss_c - loss_e) < 1e-3 * abs(loss_e)
    assert grads_c.keys() == grads_e.keys() and grads_c
    for k in grads_e:
        rel = (grads_c[k] - grads_e[k]).norm() / (grads_e[k].norm() + 1e-12)
        assert rel < 0.05, f"{k}: relative gradient difference {rel:.3f}"

    uncompile_decoder_layers(model)
    assert all(layer._compiled_call_impl is None and layer.gradient_checkpointing for layer in layers)
    assert type(layers[0].self_attn.q_proj.base_layer) is bnb.nn.Linear4bit
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def _plan(compile_setting="auto", **kw):
    # float16 compute: the compile decision does not depend on it, and pre-Ampere cards lack bf16
    cfg = {"fmllm": {"compile": compile_setting}, "training": {}, "quantization": {"bnb_4bit_compute_dtype": "float16"}}
    return recipe_of(cfg, **kw)


def test_compile_auto_is_on_for_one_cuda_gpu_only():
    on = _plan(cuda=True, compute_capability=(9, 0))
    assert on.compile_layers and not on.liger_kernels  # compiled layers fuse what liger's kernels do
    assert not _plan(cuda=False).compile_layers
    assert not _plan(cuda=True, distributed="ddp").compile_layers
    old = _plan(cuda=True, compute_capability=(6, 1))
    assert not old.compile_layers and any("compute capability 6.1" in n for n in old.notes)
    assert not _plan("off", cuda=True).compile_layers


def test_compile_on_is_honoured_except_under_fsdp():
    assert _plan("on", cuda=True, distributed="ddp").compile_layers
    fsdp = _plan("on", cuda=True, distributed="fsdp")
    assert not fsdp.compile_layers and any("FSDP" in n and "uncompiled" in n for n in fsdp.notes)
    plain = recipe_of({"fmllm": {"compile": "on", "memory_recipe": "plain"}}, cuda=True)
    assert not plain.compile_layers  # the plain recipe is the reference: never changed


def test_bad_compile_setting_is_a_config_error(tmp_path):
    from fmllm_tui.config import ConfigError, load_config

    p = tmp_path / "config.yaml"
    p.write_text("base_model_name: Qwen/Qwen2.5-0.5B\nfmllm:\n  compile: yes-please\n")
    before = p.read_bytes()
    with pytest.raises(ConfigError) as e:
        load_config(p)
    text = e.value.render()
    assert "compile" in text and "auto" in text
    assert p.read_bytes() == before


@pytest.mark.parametrize("setting", ["auto", "on", "off"])
@pytest.mark.parametrize("distributed", ["single", "ddp", "fsdp"])
@pytest.mark.parametrize("cc", [(6, 1), (8, 6), (9, 0)])
@pytest.mark.parametrize("recipe", ["fmllm", "plain"])
def test_memory_model_and_runner_agree_on_compiling(setting, distributed, cc, recipe):
    """The fit check predicts the run the runner will make: both decide alike when layers compile."""
    from fmllm_tui.memory import PlanInputs, resolve_compiled

    runner = recipe_of({"fmllm": {"compile": setting, "memory_recipe": recipe},
                        "quantization": {"bnb_4bit_compute_dtype": "float16"}}, cuda=True,
                         distributed=distributed, compute_capability=cc).compile_layers
    planned = resolve_compiled(PlanInputs(seq_len=1024, micro_batch=1, recipe=recipe, mode=distributed,
                                          n_gpus=1 if distributed == "single" else 2, compute_capability=cc,
                                          compiled={"on": True, "off": False}.get(setting)))
    assert runner == planned


def test_swapped_linear_outside_compiled_code_uses_bitsandbytes():
    """A variant that runs eagerly (past the recompile limit) must not take the plain-torch
    dequantisation, which builds weight-sized index tensors: bitsandbytes' kernel serves it."""
    q = _linear4bit()
    x = torch.randn(2, 128, dtype=torch.bfloat16)
    ref = q(x)
    q.__class__ = _compiled_linear_class(type(q))
    calls = []
    import fmllm_tui.runner.compiled as compiled

    real = compiled.linear_4bit
    compiled.linear_4bit = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        out = q(x)
    finally:
        compiled.linear_4bit = real
    assert not calls and torch.equal(out, ref)


def test_recompile_limit_covers_a_run_of_varied_batches(four_bit_model):
    """Lengths, a padding mask, checkpointing off and evaluation: the shared compiled layer stays
    within fmllm's recompile limit (dynamo is told to raise instead of falling back to eager)."""
    import torch._dynamo.config as dynamo_config

    cfg = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
           "training": {"gradient_checkpointing": False}, "fmllm": {"loss": "chunked", "compile": "off"}}
    torch._dynamo.reset()
    model = prepare_for_training(four_bit_model(), cfg, recipe_of(cfg, cuda=False))
    compile_decoder_layers(model, checkpointing=False, backend="eager")
    model.train()
    with dynamo_config.patch(fail_on_recompile_limit_hit=True):  # restored even when an assertion fails
        g = torch.Generator().manual_seed(0)
        for length in (16, 24, 31, 40, 17, 48):
            ids = torch.randint(0, 400, (2, length), generator=g)
            mask = torch.ones_like(ids)
            if length % 2:
                mask[1, -3:] = 0  # a padded batch
            model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        model.eval()
        with torch.no_grad():
            for length in (20, 33):
                model(input_ids=torch.randint(0, 400, (1, length), generator=g))


def test_compile_auto_skips_remote_code_and_missing_triton():
    from fmllm_tui.plan import PlanError

    remote = recipe_of({"fmllm": {"compile": "auto", "trust_remote_code": True}}, cuda=True,
                       compute_capability=(9, 0))
    assert not remote.compile_layers and any("trust_remote_code" in n for n in remote.notes)
    auto = recipe_of({"fmllm": {"compile": "auto"}}, cuda=True, compute_capability=(9, 0), triton=False)
    assert not auto.compile_layers and any("Triton is not installed" in n for n in auto.notes)
    with pytest.raises(PlanError, match="fmllm.compile is on but Triton"):
        recipe_of({"fmllm": {"compile": "on"}}, cuda=True, compute_capability=(9, 0), triton=False)
    # on the CPU, compile: on needs no Triton (Inductor writes C++ there)
    assert recipe_of({"fmllm": {"compile": "on"}}, cuda=False).compile_layers


def test_memory_model_plans_remote_code_uncompiled(tmp_path):
    from fmllm_tui.config import load_config
    from fmllm_tui.memory import inputs_from_view, resolve_compiled

    p = tmp_path / "config.yaml"
    p.write_text("base_model_name: org/custom\nfmllm:\n  trust_remote_code: true\n")
    inp, _ = inputs_from_view(load_config(p).view)
    assert inp.compiled is False and not resolve_compiled(inp)
    p.write_text("base_model_name: org/custom\nfmllm:\n  trust_remote_code: true\n  compile: on\n")
    inp, _ = inputs_from_view(load_config(p).view)
    assert resolve_compiled(inp)


def test_configure_compiler_keeps_torchs_caches_for_the_next_run(monkeypatch, tmp_path):
    """A training process started without fmllm-run still compiles into fmllm's cache, a user's
    own TORCHINDUCTOR_CACHE_DIR wins, and AOTAutograd's cache accepts the compiled layers' 4-bit
    autograd function (by default it skips graphs that hold one: every run re-traced them)."""
    import torch._functorch.config as functorch_config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.setattr(functorch_config, "autograd_cache_allow_custom_autograd_functions", False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # recorded, so what configure_compiler sets is undone
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    configure_compiler()
    assert cache_dir() == str(tmp_path / "fmllm" / "compile")
    assert functorch_config.autograd_cache_allow_custom_autograd_functions is True
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    configure_compiler()
    assert cache_dir() == str(tmp_path / "theirs")
