"""The memory model: error on every measured point, physical properties, inputs and their bad forms."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmllm_tui import memory
from fmllm_tui.config import FineTuneConfig, load_config
from fmllm_tui.memory import ArchitectureError, GiB, PlanInputs

POINTS, ARCHS = memory.load_points()
QWEN7 = ARCHS["Qwen/Qwen2.5-7B-Instruct"]
QWEN14 = ARCHS["Qwen/Qwen2.5-14B-Instruct"]
LLAMA8 = ARCHS["meta-llama/Llama-3.1-8B-Instruct"]
QWEN05 = ARCHS["Qwen/Qwen2.5-0.5B-Instruct"]
GEMMA2_2B = ARCHS["google/gemma-2-2b-it"]

#: The guarantee of issue 19 on the process peak: at most 1% under, at most 5% over. The points the
#: constants were fitted on meet it to within 0.5 point (worst -1.3%, +5.3%: bench/RESULTS.md);
#: these bounds hold every fitted point and fail on the model before issue 19 (-7.7% on Llama-3.1-8B
#: plain without expandable segments, -7.1% on Qwen2.5-3B compiled all-linear 2048x2).
TARGET_LOW, TARGET_HIGH = -0.015, 0.055
#: Held-out points (never fitted on): the worst is -3.2% (Llama-3.1-8B plain with expandable segments).
HELDOUT_LOW = -0.035
#: Points of another library stack or harness (``other_stack``), and points recorded as outside the
#: band (``outside_band``, over-predicted, with the reason): never under-predicted.
OTHER_STACK_LOW, OTHER_STACK_HIGH = -0.01, 0.15


def _view(**sections: dict) -> FineTuneConfig:
    data = {"base_model_name": "Qwen/Qwen2.5-7B-Instruct", **sections}
    return FineTuneConfig.model_validate(data)


# --------------------------------------------------------------------------------------------
# Measured points
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", POINTS, ids=[p["id"] for p in POINTS])
def test_process_peak_error_on_recorded_point(point: dict) -> None:
    pred = memory.predict_inputs(memory.point_inputs(point), ARCHS[point["model"]])
    measured = point["measured"]["process_peak_bytes"]
    err = (pred.peak_process_bytes - measured) / measured
    low, high = ((OTHER_STACK_LOW, OTHER_STACK_HIGH) if point.get("other_stack") or point.get("outside_band") else
                 (HELDOUT_LOW, TARGET_HIGH) if point.get("heldout") else (TARGET_LOW, TARGET_HIGH))
    assert low <= err <= high, (
        f"{point['id']}: predicted {pred.peak_process_bytes / GiB:.2f} GiB, measured {measured / GiB:.2f} GiB "
        f"({err:+.1%}, bounds {low:+.1%}..{high:+.1%})"
    )
    # The range's high end is never below the measurement; the measurement lies inside it (the other
    # stack's over-prediction aside).
    assert measured <= pred.high_bytes
    assert point.get("other_stack") or pred.low_bytes <= measured


def test_points_outside_the_band_are_few_and_explained() -> None:
    """A point may be kept outside [-1%, +5%] only over-predicted and with its reason; the fitted
    set is not allowed to drift there quietly."""
    outside = [p for p in POINTS if p.get("outside_band")]
    assert len(outside) <= 2
    for p in outside:
        assert len(p["outside_band"]) > 40 and not p.get("heldout")


@pytest.mark.parametrize("point", POINTS, ids=[p["id"] for p in POINTS])
def test_torch_allocated_error_on_recorded_point(point: dict) -> None:
    """torch's peak comes from shapes and autograd's save rules alone (3%); compiled layers add two
    fitted factors (COMPILED_SAVED_FACTOR, COMPILED_WS_FACTOR): 5% there, the process-peak bar."""
    pred = memory.predict_inputs(memory.point_inputs(point), ARCHS[point["model"]])
    measured = point["measured"]["peak_allocated_bytes"]
    bound = 0.05 if point["settings"].get("compiled") else 0.03
    assert abs(pred.peak_allocated_bytes - measured) / measured <= bound


def test_points_file_is_complete() -> None:
    ids = [p["id"] for p in POINTS]
    assert len(ids) == len(set(ids)), "point ids must be unique"
    for p in POINTS:
        assert p["recipe"] in memory.RECIPES
        assert p["model"] in ARCHS
        assert p["env"]["gpu"] and p["env"]["torch"] and p["env"]["bitsandbytes"]
        m = p["measured"]
        assert m["peak_allocated_bytes"] <= m["process_peak_bytes"]
        if m["peak_reserved_bytes"] is not None:
            assert m["peak_allocated_bytes"] <= m["peak_reserved_bytes"] <= m["process_peak_bytes"]


def test_load_points_rejects_unknown_schema(tmp_path: Path) -> None:
    f = tmp_path / "points.json"
    f.write_text('{"schema": 99, "points": [], "architectures": {}}')
    with pytest.raises(ValueError, match="schema 99"):
        memory.load_points(str(f))


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def test_parameter_counts_are_exact() -> None:
    assert memory.param_count(QWEN7) == 7_615_616_512
    assert memory.param_count(QWEN14) == 14_770_033_664


def test_4bit_weights_match_the_measured_load() -> None:
    """Anchors: 5.18 GiB (7B) and 9.28 GiB (14B) allocated right after loading in nf4 + nested."""
    for arch, measured in ((QWEN7, 5.18), (QWEN14, 9.28)):
        bd = memory.predict_inputs(PlanInputs(recipe="noprep"), arch).breakdown
        weights = (bd["weights_4bit"] + bd["quant_constants"] + bd["weights_16bit"]) / GiB
        assert abs(weights - measured) / measured < 0.01


def test_breakdown_sums_to_the_process_peak_and_views_are_ordered() -> None:
    for recipe in memory.RECIPES:
        p = memory.predict_inputs(PlanInputs(recipe=recipe, loss="chunked"), QWEN7)
        assert sum(p.breakdown.values()) == p.peak_process_bytes
        assert p.peak_allocated_bytes <= p.peak_reserved_bytes <= p.peak_process_bytes
        assert p.low_bytes < p.peak_process_bytes < p.high_bytes
        assert p.breakdown["cuda_context"] == memory.OUTSIDE_ALLOCATOR_BYTES


def test_recipes_order_plain_above_noprep_above_fmllm() -> None:
    base = PlanInputs(seq_len=1024, loss="chunked", offload_embeddings="off", liger_layers=False)
    plain = memory.predict_inputs(replace(base, recipe="plain"), QWEN7).peak_process_bytes
    noprep = memory.predict_inputs(replace(base, recipe="noprep"), QWEN7).peak_process_bytes
    fmllm = memory.predict_inputs(replace(base, recipe="fmllm"), QWEN7).peak_process_bytes
    lean = memory.predict_inputs(replace(base, recipe="fmllm", loss="liger", liger_layers=True), QWEN7)
    assert plain > noprep > fmllm > lean.peak_process_bytes
    # prepare_model_for_kbit_training's fp32 upcast: embeddings and lm_head in 4 bytes.
    bd_plain = memory.predict_inputs(replace(base, recipe="plain"), QWEN7).breakdown
    bd_noprep = memory.predict_inputs(replace(base, recipe="noprep"), QWEN7).breakdown
    assert bd_plain["weights_16bit"] == pytest.approx(2 * bd_noprep["weights_16bit"], rel=1e-3)


def test_plain_loss_is_twelve_bytes_per_logit() -> None:
    p = memory.predict_inputs(PlanInputs(recipe="noprep", seq_len=2048), QWEN7)
    assert p.peak_phase == "loss"
    assert p.breakdown["loss"] == 12 * 2048 * 152064


def test_final_logit_softcapping_keeps_one_more_bf16_copy() -> None:
    """Gemma-2's logits / cap -> tanh -> x cap: tanh saves its bf16 output, the rest is freed or is
    the logits themselves: 2 bytes per logit over the plain loss's 12 (measured on two Gemma-2-2B
    runs: torch's peak within 0.5%; the old 4 bytes over-predicted it by 1-2 GiB)."""
    capped = dict(GEMMA2_2B)
    uncapped = {k: v for k, v in GEMMA2_2B.items() if k != "final_logit_softcapping"}
    inp = PlanInputs(seq_len=1024, micro_batch=2, recipe="plain", attn="eager")
    t, v = inp.tokens, GEMMA2_2B["vocab_size"]
    diff = (memory.predict_inputs(inp, capped).peak_allocated_bytes
            - memory.predict_inputs(inp, uncapped).peak_allocated_bytes)
    assert diff == 2 * t * v


def test_chunked_loss_follows_the_runner_chunk() -> None:
    p = memory.predict_inputs(PlanInputs(recipe="fmllm", loss="chunked", liger_layers=False, seq_len=4096), QWEN7)
    chunk = memory.CHUNKED_LOSS_ELEMENTS // 152064
    assert memory.resolve_loss("fmllm", "chunked") == "chunked"
    plain = memory.predict_inputs(PlanInputs(recipe="noprep", seq_len=4096), QWEN7)
    assert p.peak_process_bytes < plain.peak_process_bytes - 4 * GiB
    # The chunk's logits, not the sequence's, set the loss term.
    longer = memory.predict_inputs(PlanInputs(recipe="fmllm", loss="chunked", liger_layers=False, seq_len=8192), QWEN7)
    assert chunk < 4096
    assert longer.peak_process_bytes - p.peak_process_bytes < 4096 * 152064 * 4


def test_each_lever_saves_memory() -> None:
    base = PlanInputs(recipe="fmllm", loss="chunked", liger_layers=False, offload_embeddings="off",
                      seq_len=2048, micro_batch=2, nested_quant=False, optim="paged_adamw_32bit",
                      lora_targets="all-linear", lora_r=64)

    def peak(**ch: object) -> int:
        return memory.predict_inputs(replace(base, **ch), QWEN7).peak_process_bytes

    p0 = peak()
    assert peak(gradient_checkpointing=False) > p0
    assert peak(nested_quant=True) < p0
    assert peak(optim="paged_adamw_8bit") < p0
    assert peak(micro_batch=1) < p0
    assert peak(use_4bit=False) > p0 + 8 * GiB
    off = memory.predict_inputs(replace(base, offload_embeddings="on"), QWEN7)
    # the bf16 table leaves the GPU, less the measured runtime cost of the CPU-offload dispatch
    assert p0 - off.peak_process_bytes >= 152064 * 3584 * 2 - memory.OFFLOAD_RUNTIME_BYTES
    assert peak(lora_dropout=0.0) < p0


def test_offload_auto_follows_the_runner_threshold() -> None:
    big = memory.predict_inputs(PlanInputs(recipe="fmllm", offload_embeddings="auto", loss="chunked"), QWEN7)
    assert any("on the CPU" in n for n in big.notes)
    tied = memory.predict_inputs(PlanInputs(recipe="fmllm", offload_embeddings="on", loss="chunked"), QWEN05)
    assert any("tied" in n for n in tied.notes)


def test_eager_attention_adds_a_quadratic_term() -> None:
    sdpa = [memory.predict_inputs(PlanInputs(recipe="noprep", seq_len=s), LLAMA8).peak_process_bytes for s in (2048, 4096)]
    eager = [memory.predict_inputs(PlanInputs(recipe="noprep", seq_len=s, attn="eager"), LLAMA8).peak_process_bytes
             for s in (2048, 4096)]
    gap_small, gap_big = eager[0] - sdpa[0], eager[1] - sdpa[1]
    assert gap_big > 3.5 * gap_small  # s**2, not s


def test_cublas_workspace_strands_a_logits_block_on_small_models() -> None:
    """Allocator snapshots: on Hopper the 32 MiB backward workspace lands in a freed logits block
    when every cached layer block is smaller (Qwen2.5-0.5B), not on Llama-3.1-8B (112 MiB blocks)."""
    small = PlanInputs(recipe="noprep", seq_len=1024)
    hopper = memory.predict_inputs(replace(small, compute_capability=(9, 0)), QWEN05)
    ampere = memory.predict_inputs(replace(small, compute_capability=(8, 6)), QWEN05)  # 8 MiB workspace
    unknown = memory.predict_inputs(small, QWEN05)
    logits_block = 2 * 1024 * 151936
    assert hopper.breakdown["allocator_reserve"] - ampere.breakdown["allocator_reserve"] == 2 * logits_block
    assert unknown.peak_process_bytes == hopper.peak_process_bytes  # unknown GPU: the safer plan
    big = [memory.predict_inputs(replace(small, compute_capability=cc), LLAMA8).peak_process_bytes
           for cc in ((9, 0), (8, 6))]
    assert big[0] == big[1]


def test_predictions_stay_monotone_across_the_workspace_threshold() -> None:
    for recipe in ("noprep", "plain"):
        for b in (1, 2, 3):
            peaks = [memory.predict_inputs(PlanInputs(recipe=recipe, seq_len=s, micro_batch=b), QWEN05).peak_process_bytes
                     for s in range(256, 8193, 128)]
            assert peaks == sorted(peaks)
    # Just past the threshold (MLP blocks of 32 MiB at ~3450 tokens) the envelope holds the plan up
    # and says so; far past it the physics alone is larger.
    just_past = memory.predict_inputs(PlanInputs(recipe="noprep", seq_len=3584), QWEN05)
    assert any("just below this length" in n for n in just_past.notes)
    far = memory.predict_inputs(PlanInputs(recipe="noprep", seq_len=8192), QWEN05)
    assert not any("just below this length" in n for n in far.notes)


def test_paged_state_counts_for_nvml_not_torch() -> None:
    inp = PlanInputs(recipe="noprep", lora_r=64, lora_targets="all-linear", optim="paged_adamw_32bit")
    paged = memory.predict_inputs(inp, QWEN7)
    unpaged = memory.predict_inputs(replace(inp, optim="adamw_torch"), QWEN7)
    assert paged.breakdown["optimizer_paged"] > 0
    assert paged.peak_allocated_bytes < unpaged.peak_allocated_bytes
    assert unpaged.breakdown["optimizer_paged"] == 0


def test_plain_recipe_strands_the_freed_16bit_embedding_blocks() -> None:
    """Allocator snapshot (issue 19): prepare_model_for_kbit_training frees the 16-bit embedding
    and head blocks; once the fp32 logits block is as large, nothing reuses them (no expandable
    segments). Below that length, or with fmllm's loss, or without the fp32 cast, none are kept."""
    llama = memory.ArchSpec.from_config(LLAMA8)
    freed = 2 * llama.vocab * llama.hidden
    plain = PlanInputs(recipe="plain", seq_len=2048, expandable_segments=False)  # 4 x 2048 x V == freed
    short = memory.predict_inputs(replace(plain, seq_len=2047), LLAMA8)
    at = memory.predict_inputs(plain, LLAMA8)
    stranded = at.breakdown["allocator_reserve"] - short.breakdown["allocator_reserve"]
    assert stranded >= memory.PREP_STRANDED * 2 * freed  # two blocks: embedding and head, untied
    noprep = [memory.predict_inputs(replace(plain, recipe="noprep", seq_len=n), LLAMA8) for n in (2047, 2048)]
    assert noprep[1].breakdown["allocator_reserve"] - noprep[0].breakdown["allocator_reserve"] < freed // 10


def test_compiled_mlp_adapters_hold_more_in_the_layer_backward() -> None:
    """Compiled all-linear runs allocated 6.1-6.5 B x intermediate per token more than the eager
    terms (four models, issue 19); attention-only adapters do not."""
    base = PlanInputs(recipe="fmllm", compiled=True, seq_len=1024, micro_batch=4, lora_r=16)
    qkvo = memory.predict_inputs(base, LLAMA8)
    all_linear = memory.predict_inputs(replace(base, lora_targets="all-linear"), LLAMA8)
    extra = int(memory.COMPILED_MLP_LORA_BYTES * 14336 * 4096)
    assert all_linear.breakdown["backward_working_set"] - qkvo.breakdown["backward_working_set"] >= extra


def test_time_before_launch() -> None:
    """ETA = start-up + steps x tokens per step / tokens per second; the measured card kinds say
    so, any other card says it is scaled from its specifications (and a slower card is slower)."""
    from fmllm_tui import gpudb

    inp = PlanInputs(recipe="fmllm", seq_len=2048, micro_batch=2, grad_accum=4)
    h100, rtx = gpudb.lookup("h100"), gpudb.lookup("rtx 4090")
    fast = memory.estimate_time(inp, LLAMA8, steps=500, gpu=h100)
    slow = memory.estimate_time(inp, LLAMA8, steps=500, gpu=rtx)
    assert fast.basis.startswith("measured") and slow.basis.startswith("estimate") and "165" in slow.basis
    assert slow.tokens_per_second < fast.tokens_per_second
    assert fast.tokens_per_step == 2048 * 2 * 4
    assert fast.eta_s == pytest.approx(fast.startup_s + 500 * fast.tokens_per_step / fast.tokens_per_second)
    pred = memory.predict_inputs(replace(inp, tflops=h100.tflops16, bandwidth_gbs=h100.bandwidth_gbs), LLAMA8)
    assert pred.eta_seconds(500) == pytest.approx(fast.eta_s)
    eager = memory.predict_inputs(replace(inp, compiled=False), LLAMA8)
    assert pred.startup_seconds == memory.STARTUP_COMPILED_S > eager.startup_seconds == memory.STARTUP_EAGER_S


_SPEED_POINTS = [p for p in POINTS if p.get("harness") == "runner" and p["measured"].get("tokens_per_second")
                 and not p.get("speed_excluded") and not p.get("heldout")]


@pytest.mark.parametrize("point", _SPEED_POINTS, ids=[p["id"] for p in _SPEED_POINTS])
def test_tokens_per_second_on_fitted_runner_points(point: dict) -> None:
    """The speed model against fmllm's runner on the H100 (bench/RESULTS.md, issue 19): within 20%
    on every point it was fitted on (throughput itself varies ~10-30% between machines)."""
    from fmllm_tui import gpudb

    card = gpudb.match_nvml(point["env"]["gpu"])
    inp = replace(memory.point_inputs(point), tflops=card.tflops16, bandwidth_gbs=card.bandwidth_gbs)
    pred = memory.predict_inputs(inp, ARCHS[point["model"]])
    measured = point["measured"]["tokens_per_second"]
    assert abs(pred.tokens_per_second - measured) / measured <= 0.20


def test_fsdp_never_offloads_the_embedding() -> None:
    # The FSDP runner shards the input embedding with the rest: asking to offload it changes nothing.
    for setting in ("on", "auto", "off"):
        p = memory.predict_inputs(PlanInputs(recipe="fmllm", offload_embeddings=setting, mode="fsdp", n_gpus=2), QWEN14)
        assert sum(p.breakdown.values()) == p.peak_process_bytes and "offload_runtime" not in p.breakdown
        assert p.fsdp_root_bytes == 2 * 152064 * 5120 * 2
        assert (setting == "on") == any("does not apply" in n for n in p.notes)
    same = {memory.predict_inputs(PlanInputs(recipe="fmllm", offload_embeddings=x, mode="fsdp", n_gpus=2),
                                  QWEN14).peak_process_bytes for x in ("on", "auto", "off")}
    assert len(same) == 1


def test_multi_gpu_modes() -> None:
    inp = PlanInputs(recipe="fmllm", loss="chunked", liger_layers=False, offload_embeddings="off")
    single = memory.predict_inputs(inp, QWEN14)
    ddp = memory.predict_inputs(replace(inp, mode="ddp", n_gpus=2), QWEN14)
    fsdp2 = memory.predict_inputs(replace(inp, mode="fsdp", n_gpus=2), QWEN14)
    fsdp4 = memory.predict_inputs(replace(inp, mode="fsdp", n_gpus=4), QWEN14)
    off = memory.predict_inputs(replace(inp, mode="fsdp", n_gpus=4, cpu_offload=True), QWEN14)
    assert ddp.peak_process_bytes > single.peak_process_bytes  # whole model + buckets + NCCL
    assert fsdp4.peak_process_bytes < fsdp2.peak_process_bytes
    # Sharded training needs less than DDP's whole model per GPU; wrapping a 14B over 2 GPUs peaks
    # higher (the root unit's parameters twice while FSDP flattens them; measured, bench/RESULTS.md).
    assert fsdp2.phase_peaks["training"] < ddp.peak_process_bytes < fsdp2.phase_peaks["FSDP wrap"]
    root = fsdp2.breakdown["fsdp_wrap_transient"] // 2
    assert fsdp2.peak_phase == "FSDP wrap" and root == 2 * 152064 * 5120 * 2  # input embedding + head, bf16
    assert sum(fsdp2.breakdown.values()) == fsdp2.peak_process_bytes
    assert off.peak_process_bytes < fsdp4.peak_process_bytes
    assert fsdp2.tokens_per_step == 2 * single.tokens_per_step
    assert any("FSDP" in n for n in fsdp2.notes) and any("DDP" in n for n in ddp.notes)


# --------------------------------------------------------------------------------------------
# Monotonicity (property-based)
# --------------------------------------------------------------------------------------------

_inputs = st.builds(
    PlanInputs,
    seq_len=st.integers(64, 8192),
    micro_batch=st.integers(1, 8),
    gradient_checkpointing=st.booleans(),
    use_4bit=st.booleans(),
    nested_quant=st.booleans(),
    lora_r=st.sampled_from([1, 4, 8, 16, 64, 128]),
    lora_targets=st.sampled_from([("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"), "all-linear"]),
    lora_dropout=st.sampled_from([0.0, 0.05]),
    optim=st.sampled_from(["paged_adamw_32bit", "paged_adamw_8bit", "adamw_torch", "adamw_8bit", "sgd"]),
    recipe=st.sampled_from(memory.RECIPES),
    attn=st.sampled_from(["sdpa", "eager", "flash_attention_2"]),
    loss=st.sampled_from(["chunked", "liger", "plain"]),
    offload_embeddings=st.sampled_from(["on", "off"]),
    liger_layers=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(inp=_inputs, arch=st.sampled_from([QWEN7, LLAMA8, QWEN05]))
def test_more_tokens_or_rank_never_needs_less_memory(inp: PlanInputs, arch: dict) -> None:
    p = memory.predict_inputs(inp, arch)
    for bigger in (replace(inp, seq_len=inp.seq_len + 64), replace(inp, micro_batch=inp.micro_batch + 1),
                   replace(inp, lora_r=inp.lora_r * 2)):
        q = memory.predict_inputs(bigger, arch)
        assert q.peak_allocated_bytes >= p.peak_allocated_bytes
        assert q.peak_process_bytes >= p.peak_process_bytes
    assert sum(p.breakdown.values()) == p.peak_process_bytes
    assert p.tokens_per_second > 0 and 0 < p.relative_speed <= 1


# --------------------------------------------------------------------------------------------
# Architectures and targets
# --------------------------------------------------------------------------------------------


def test_every_catalogue_architecture_predicts() -> None:
    from fmllm_tui import catalogue

    for mid in catalogue.known_model_ids():
        arch = catalogue.get_architecture(mid)
        assert arch is not None
        p = memory.predict_inputs(PlanInputs(recipe="fmllm", loss="chunked"), arch)
        assert p.peak_process_bytes > memory.OUTSIDE_ALLOCATOR_BYTES
        assert abs(memory.param_count(arch) - catalogue.param_count(arch)) / catalogue.param_count(arch) < 0.01


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({**QWEN7, "hidden_size": None}, "hidden_size"),
        ({**QWEN7, "num_hidden_layers": "28"}, "num_hidden_layers"),
        ({**QWEN7, "vocab_size": 0}, "vocab_size"),
        ({**QWEN7, "num_hidden_layers": True}, "num_hidden_layers"),
        ({**QWEN7, "num_key_value_heads": 5}, "multiple"),
        ({**QWEN7, "num_local_experts": 8}, "mixture-of-experts"),
        ("not a dict", "mapping"),
    ],
)
def test_bad_architecture_configs_name_the_field(cfg: object, match: str) -> None:
    with pytest.raises(ArchitectureError, match=match):
        memory.ArchSpec.from_config(cfg)  # type: ignore[arg-type]


def test_multimodal_text_config_and_defaults() -> None:
    spec = memory.ArchSpec.from_config({"model_type": "gemma3", "text_config": {
        "model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 262208}})
    assert spec.tied and spec.norms_per_layer == 4 and spec.qk_norm
    llama = memory.ArchSpec.from_config({k: v for k, v in LLAMA8.items() if k not in ("head_dim", "tie_word_embeddings")})
    assert llama.head_dim == 128 and not llama.tied


def test_target_names_resolve_per_architecture() -> None:
    phi3 = memory.ArchSpec.from_config({"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
                                        "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32064})
    roles, notes = memory.resolve_targets(("q_proj", "k_proj", "v_proj", "o_proj"), phi3)
    assert roles == ("qkv", "o") and any("fuses" in n for n in notes)
    roles, notes = memory.resolve_targets(("q_proj", "lm_head", "c_attn"), memory.ArchSpec.from_config(QWEN7))
    assert roles == ("q",) and "c_attn" in notes[0] and "lm_head" in notes[0]
    roles, _ = memory.resolve_targets("all-linear", memory.ArchSpec.from_config(QWEN7))
    assert roles == ("q", "k", "v", "o", "gate", "up", "down")


# --------------------------------------------------------------------------------------------
# From a config
# --------------------------------------------------------------------------------------------


def test_predict_from_the_shipped_config() -> None:
    view = load_config(Path(__file__).resolve().parent.parent / "config.yaml").view
    p = memory.predict(view, QWEN7, recipe="plain")
    assert 10 * GiB < p.peak_process_bytes < 14 * GiB
    assert p.tokens_per_step == 1024 * 8
    longer = memory.predict(view, QWEN7, recipe="plain", seq_len=4096, micro_batch=2)
    assert longer.peak_process_bytes > p.peak_process_bytes
    assert longer.inputs is not None and longer.inputs.padded is None and longer.inputs.micro_batch == 2


def test_predict_notes_a_missing_sequence_limit() -> None:
    p = memory.predict(_view(training={"max_seq_length": None}), QWEN7)
    assert p.tokens_per_micro_batch == 1024
    assert any("max_seq_length is not set" in n for n in p.notes)


def test_missing_sequence_limit_plans_the_config_models_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """One default for max_seq_length: the plan reads the config model's, not a copy of its value."""
    from fmllm_tui.config import TrainingSettings

    monkeypatch.setattr(TrainingSettings.model_fields["max_seq_length"], "default", 2048)
    p = memory.predict(_view(training={"max_seq_length": None}), QWEN7)
    assert p.tokens_per_micro_batch == 2048
    assert "training.max_seq_length is not set: planned for 2048 tokens (fmllm's default); set it" in p.notes


@pytest.mark.parametrize(("kwargs", "match"), [({"recipe": "fast"}, "recipe"), ({"mode": "zero3"}, "mode")])
def test_predict_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        memory.predict(_view(), QWEN7, **kwargs)


def test_predict_inputs_rejects_nonsense_sizes() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        memory.predict_inputs(PlanInputs(seq_len=0), QWEN7)


def test_memory_module_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, fmllm_tui.memory, fmllm_tui.fitsearch, fmllm_tui.gpudb; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
