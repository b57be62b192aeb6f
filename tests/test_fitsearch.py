"""The fit search and recommendations: fits the budget, keeps the effective batch, grows the
micro-batch when memory is plentiful, cuts the sequence only last, bad inputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fmllm_tui import catalogue, fitsearch, gpudb, memory
from fmllm_tui.config import FineTuneConfig, file_key_for
from fmllm_tui.memory import GiB

QWEN7 = catalogue.get_architecture("Qwen/Qwen2.5-7B-Instruct")
QWEN05 = catalogue.get_architecture("Qwen/Qwen2.5-0.5B-Instruct")


def _view(recipe: str = "fmllm", **training: object) -> FineTuneConfig:
    t = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "max_seq_length": 1024,
         "optim": "paged_adamw_32bit", "gradient_checkpointing": True, **training}
    return FineTuneConfig.model_validate({
        "base_model_name": "Qwen/Qwen2.5-7B-Instruct",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "quantization": {"use_4bit": True, "use_nested_quant": True, "bnb_4bit_compute_dtype": "bfloat16"},
        "training": t,
        "fmllm": {"memory_recipe": recipe, "loss": "chunked", "offload_embeddings": "off"},
    })


def _eff(settings: dict) -> int:
    return settings["training.per_device_train_batch_size"] * settings["training.gradient_accumulation_steps"]


@pytest.mark.parametrize("budget_gib", [6, 7, 8, 10, 12, 16, 24, 40, 80, 141])
@pytest.mark.parametrize("recipe", ["fmllm", "plain"])
def test_result_fits_and_keeps_the_effective_batch(budget_gib: int, recipe: str) -> None:
    view = _view(recipe)
    budget = budget_gib * GiB
    res = fitsearch.fit(view, QWEN7, budget)
    assert _eff(res.settings_after) == view.effective_batch
    assert res.margin_bytes == fitsearch.default_margin(budget)
    if res.fits:
        assert res.prediction_after.peak_process_bytes <= budget - res.margin_bytes
    else:
        assert not res.changes and "nothing fits" in res.message
    if res.fits_now:
        assert res.prediction_before.peak_process_bytes <= budget - res.margin_bytes
    # Savings of the listed changes add up to the before/after difference.
    total = sum(c.saving_bytes for c in res.changes)
    assert total == res.prediction_before.peak_process_bytes - res.prediction_after.peak_process_bytes
    for c in res.changes:
        assert c.key in fitsearch.KEYS.values() and c.from_ != c.to and c.comment
        assert file_key_for("nested", c.key).startswith(("fine_tuning.", "fmllm."))


def test_grows_the_micro_batch_when_memory_is_plentiful() -> None:
    """The guide: increase per_device_train_batch_size if memory allows (H200: 3x tokens/s at 4096 vs 1024)."""
    card = gpudb.lookup("h200")
    res = fitsearch.fit(_view(), QWEN7, card.usable_bytes, gpu=card)
    assert res.fits_now
    after = res.settings_after
    assert after["training.per_device_train_batch_size"] > 1
    assert _eff(after) == 8
    assert res.speedup > 1.5 and res.prediction_after.relative_speed > res.prediction_before.relative_speed
    grow = next(c for c in res.changes if c.key == "training.per_device_train_batch_size")
    assert grow.saving_bytes < 0  # it spends memory
    assert "use the room for a predicted" in res.message and "fits with room to spare" not in res.message


def test_no_changes_when_it_fits_and_cannot_go_faster() -> None:
    view = _view(per_device_train_batch_size=1, gradient_accumulation_steps=1)  # nothing to trade
    res = fitsearch.fit(view, QWEN7, 9 * GiB)
    assert res.fits_now and res.fits
    assert [c.key for c in res.changes] in ([], ["training.gradient_checkpointing"])


def test_cuts_micro_batch_before_anything_else() -> None:
    view = _view(per_device_train_batch_size=8, gradient_accumulation_steps=1, max_seq_length=2048)
    before = memory.predict(view, QWEN7).peak_process_bytes
    res = fitsearch.fit(view, QWEN7, before - 2 * GiB)
    assert res.fits and not res.fits_now
    keys = [c.key for c in res.changes]
    assert keys[0] == "training.per_device_train_batch_size"
    assert "training.gradient_accumulation_steps" in keys
    assert "training.max_seq_length" not in keys and "lora.r" not in keys
    assert _eff(res.settings_after) == 8


def _leanest_at_full_length(view: FineTuneConfig) -> int:
    inp, _ = memory.inputs_from_view(view)
    lean = replace(inp, micro_batch=1, grad_accum=inp.micro_batch * inp.grad_accum, gradient_checkpointing=True,
                   use_4bit=True, nested_quant=True, optim="paged_adamw_8bit",
                   offload_embeddings="on" if inp.recipe == "fmllm" else inp.offload_embeddings)
    return memory.predict_inputs(lean, QWEN7).peak_process_bytes


@pytest.mark.parametrize("recipe", ["fmllm", "plain"])
def test_cuts_the_sequence_only_when_nothing_else_fits(recipe: str) -> None:
    view = _view(recipe, max_seq_length=4096, per_device_train_batch_size=2, gradient_accumulation_steps=4)
    floor = _leanest_at_full_length(view)
    lengths = [100] * 50 + [3000] * 30 + [4096] * 20
    # Just above the leanest full-length plan: no truncation; just below: truncation, reported.
    above = fitsearch.fit(view, QWEN7, floor + fitsearch.default_margin(floor) + 512 * 2**20, example_lengths=lengths)
    assert above.fits and "training.max_seq_length" not in [c.key for c in above.changes]
    assert above.truncated_share is None
    budget = int(floor * 0.97)
    below = fitsearch.fit(view, QWEN7, budget, example_lengths=lengths)
    assert below.fits and not below.fits_now
    cut = next(c for c in below.changes if c.key == "training.max_seq_length")
    assert cut.to < 4096 and cut.to % fitsearch.SEQ_STEP == 0
    new = cut.to
    assert below.truncated_share == pytest.approx(sum(1 for x in lengths if x > new) / len(lengths))
    assert "truncates" in below.message and "longer" in cut.comment
    assert "lora.r" not in [c.key for c in below.changes]  # the rank goes after the sequence
    assert below.prediction_after.peak_process_bytes <= budget - below.margin_bytes
    # The longest sequence that fits: one step longer does not.
    longer = replace(memory.inputs_from_view(view)[0], seq_len=new + fitsearch.SEQ_STEP)
    settings = below.settings_after
    longer = replace(longer, micro_batch=settings["training.per_device_train_batch_size"],
                     grad_accum=settings["training.gradient_accumulation_steps"],
                     gradient_checkpointing=True, optim="paged_adamw_8bit", nested_quant=True, use_4bit=True,
                     offload_embeddings="on" if recipe == "fmllm" else "off")
    assert memory.predict_inputs(longer, QWEN7).peak_process_bytes > budget - below.margin_bytes


def test_truncation_share_unknown_without_lengths() -> None:
    view = _view(max_seq_length=4096)
    floor = _leanest_at_full_length(view)
    res = fitsearch.fit(view, QWEN7, int(floor * 0.95))
    cut = [c for c in res.changes if c.key == "training.max_seq_length"]
    assert res.fits and cut
    assert res.truncated_share is None
    assert "pass the data's token lengths" in cut[0].comment


def test_lengths_shorter_than_the_limit_plan_for_the_longest_example() -> None:
    view = _view(max_seq_length=4096)
    res = fitsearch.fit(view, QWEN7, 40 * GiB, example_lengths=[200, 300, 512])
    assert res.prediction_before.tokens_per_micro_batch == 512
    assert any("longest example has 512 tokens" in n for n in res.notes)


def test_nothing_fits_says_so() -> None:
    res = fitsearch.fit(_view(), QWEN7, 3 * GiB)
    assert not res.fits and not res.fits_now and res.changes == []
    assert "nothing fits" in res.message and "smaller model" in res.message


def test_plain_recipe_points_at_fmllms_runner_when_that_fits() -> None:
    card = gpudb.lookup("rtx3080-10gb")
    res = fitsearch.fit(_view("plain", gradient_accumulation_steps=1), QWEN7, card.usable_bytes, gpu=card)
    assert not res.fits
    assert "fmllm.memory_recipe: fmllm" in res.message


def test_rank_is_the_last_resort() -> None:
    view = _view(max_seq_length=64, per_device_train_batch_size=1, gradient_accumulation_steps=1)
    inp, _ = memory.inputs_from_view(view)
    lean = replace(inp, optim="paged_adamw_8bit", offload_embeddings="on")
    at_floor = memory.predict_inputs(lean, QWEN7).peak_process_bytes  # the sequence is already at its floor
    one = memory.predict_inputs(replace(lean, lora_r=1), QWEN7).peak_process_bytes
    assert one < at_floor
    budget = int((one + at_floor) / 2 / (1 - fitsearch.MARGIN_SHARE))  # only a lower rank meets it
    res = fitsearch.fit(view, QWEN7, budget, margin_bytes=fitsearch.default_margin(budget))
    assert res.fits
    keys = [c.key for c in res.changes]
    assert "lora.r" in keys and "lora.alpha" in keys and keys.index("lora.r") == len(keys) - 2
    alpha = next(c for c in res.changes if c.key == "lora.alpha")
    rank = next(c for c in res.changes if c.key == "lora.r")
    assert alpha.to / rank.to == pytest.approx(32 / 16)  # alpha/r kept


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget_bytes": 0}, "positive"),
        ({"budget_bytes": -5}, "positive"),
        ({"budget_bytes": GiB, "margin_bytes": 2 * GiB}, "margin"),
        ({"budget_bytes": GiB, "margin_bytes": -1}, "margin"),
        ({"budget_bytes": 8 * GiB, "example_lengths": [100, -3]}, "lengths"),
        ({"budget_bytes": 8 * GiB, "example_lengths": [1.5]}, "lengths"),
        ({"budget_bytes": 8 * GiB, "mode": "zero3"}, "mode"),
    ],
)
def test_bad_fit_arguments(kwargs: dict, match: str) -> None:
    budget = kwargs.pop("budget_bytes")
    with pytest.raises(ValueError, match=match):
        fitsearch.fit(_view(), QWEN7, budget, **kwargs)


def test_fit_result_serialises() -> None:
    res = fitsearch.fit(_view(), QWEN7, 8 * GiB)
    d = res.to_json()
    assert d["prediction_before"]["peak_process_bytes"] == res.prediction_before.peak_process_bytes
    assert isinstance(d["changes"], list) and isinstance(d["settings_after"], dict)


def test_changes_are_findings_changes_the_fixer_plans_from_as_they_are() -> None:
    """One shape: the search lists findings.Change (canonical key, why, saving), written to JSON as
    fmllm-check always wrote them, and the memory.fit fixer maps them to the file's keys directly."""
    from fmllm_tui.fixes import plan_fix

    from fmllm_tui.config import load_config
    from fmllm_tui.findings import Change

    loaded = load_config(Path(__file__).parent / "data" / "configs" / "shipped_nested.yaml")
    res = fitsearch.fit(loaded.view, QWEN7, 6 * GiB)
    assert res.fits and not res.fits_now and res.changes
    assert all(isinstance(c, Change) and c.saving_bytes is not None and c.comment for c in res.changes)
    assert [list(c.to_json()) for c in res.changes] == [["key", "from", "to", "why", "saving_bytes"]] * len(res.changes)
    assert res.to_json()["changes"] == [c.to_json() for c in res.changes]
    planned = plan_fix(loaded, "memory.fit", {"changes": res.changes})
    assert [c.key for c in planned] == [loaded.file_key(c.key) for c in res.changes if c.to != c.from_]
    assert all(c.comment and c.comment.startswith(f.comment or "") for c, f in zip(planned, res.changes, strict=True))
    assert [list(c.to_json()) for c in planned] == [["key", "from", "to"]] * len(planned)  # file edits: no saving


# --------------------------------------------------------------------------------------------
# Recommendations
# --------------------------------------------------------------------------------------------


def test_recommend_lists_what_fits_largest_first() -> None:
    card = gpudb.lookup("rtx 4090")
    recs = fitsearch.recommend(card.usable_bytes, _view(), gpu=card)
    assert recs, "a 24 GB card fits some catalogue models"
    params = [r.params for r in recs]
    assert params == sorted(params, reverse=True)
    margin = fitsearch.default_margin(card.usable_bytes)
    for r in recs:
        assert r.fits and r.peak_process_bytes <= card.usable_bytes - margin
        assert r.high_bytes <= card.usable_bytes  # the whole predicted range fits the card
        assert r.tokens_per_second > 0 and f"~{r.tokens_per_second:,.0f} tokens/s" in r.describe()
        for c in r.changes:  # tiers 0-2 only: the data and the adapter stay as configured
            assert c.key not in ("training.max_seq_length", "lora.r")
        assert r.describe().startswith(f"  {r.model_id}") and "relative" not in r.describe()
    ids = {m for r in recs for m in [r.model_id, *r.also]}
    assert "meta-llama/Llama-3.1-70B-Instruct" not in ids
    assert "Qwen/Qwen2.5-0.5B-Instruct" in ids
    # Base and instruct variants of one architecture share an entry.
    qwen7 = next(r for r in recs if r.model_id == "Qwen/Qwen2.5-7B-Instruct")
    assert "Qwen/Qwen2.5-7B" in qwen7.also


def test_recommend_can_include_what_does_not_fit() -> None:
    recs = fitsearch.recommend(8 * GiB, _view(), include_unfit=True,
                               model_ids=["Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.1-70B-Instruct"])
    by_id = {r.model_id: r for r in recs}
    assert by_id["Qwen/Qwen2.5-0.5B-Instruct"].fits
    big = by_id["meta-llama/Llama-3.1-70B-Instruct"]
    assert not big.fits and not big.changes and "does not fit" in big.describe()
    assert big.to_json()["model_id"] == "meta-llama/Llama-3.1-70B-Instruct"


def test_recommend_lists_nothing_whose_range_goes_above_the_card() -> None:
    """The issue's case: --recommend on an RTX 4090 listed settings whose predicted high end was
    above the card. Each model fitted within the margin but not its range is now 'does not fit'."""
    card = gpudb.lookup("rtx 4090")
    every = fitsearch.recommend(card.usable_bytes, _view(), gpu=card, include_unfit=True)
    listed = {r.model_id for r in fitsearch.recommend(card.usable_bytes, _view(), gpu=card)}
    for r in every:
        assert (r.model_id in listed) == r.fits
        if r.fits:
            assert r.high_bytes <= card.usable_bytes
    edge = [r for r in every if not r.fits and "predicted range reaches" in r.message]
    assert edge  # on a 24 GB card some 32B-class models sit at the edge
    for r in edge:
        assert r.high_bytes > card.usable_bytes and "does not fit" in r.describe()


def test_recommend_rejects_a_bad_budget() -> None:
    with pytest.raises(ValueError, match="positive"):
        fitsearch.recommend(0, _view())


@pytest.mark.parametrize("offload", ["on", "auto"])
def test_fsdp_search_never_offloads_the_embedding(offload: str) -> None:
    # Under FSDP the runner shards the embedding: the search must neither crash on the setting nor
    # propose it, and its plan must fit on the per-GPU prediction.
    view = _view(**{"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2})
    view.fmllm.offload_embeddings = offload
    for budget in (6 * GiB, 9 * GiB, 16 * GiB):
        res = fitsearch.fit(view, QWEN7, budget, mode="fsdp", n_gpus=2)
        assert all(c.key != "fmllm.offload_embeddings" for c in res.changes)
        after = res.prediction_after
        assert "offload_runtime" not in after.breakdown and after.fsdp_root_bytes > 0
        if res.fits:
            assert after.peak_process_bytes <= budget - res.margin_bytes


def test_recommend_names_the_lora_targets_as_each_model_names_them() -> None:
    """The shipped config's q/k/v/o targets on phi-3 (which fuses q/k/v into qkv_proj): the
    recommendation planned LoRA on qkv_proj but left target_modules as q_proj..., so following it
    failed model.architecture ("'q_proj' not found"). It now carries the rename, and the renamed
    targets exist in the model."""
    from fmllm_tui import archcheck

    card = gpudb.lookup("rtx 4090")
    view = _view()
    assert list(view.lora.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    recs = fitsearch.recommend(card.usable_bytes, view, gpu=card, include_unfit=True,
                               model_ids=["microsoft/Phi-3-mini-4k-instruct", "Qwen/Qwen2.5-7B-Instruct"])
    by_id = {r.model_id: r for r in recs}
    phi = by_id["microsoft/Phi-3-mini-4k-instruct"]
    (rename,) = [c for c in phi.changes if c.key == "lora.target_modules"]
    assert rename.to == ["qkv_proj", "o_proj"] and "target_modules=['qkv_proj', 'o_proj']" in phi.describe()
    missing, _ = archcheck.check_target_modules(catalogue.get_architecture(phi.model_id), rename.to)
    assert missing == []
    assert not [c for c in by_id["Qwen/Qwen2.5-7B-Instruct"].changes if c.key == "lora.target_modules"]


@pytest.mark.parametrize("targets, model_type, want", [
    (["q_proj", "v_proj"], "phi3", ["qkv_proj"]),
    (["gate_proj", "up_proj", "down_proj"], "phi3", ["gate_up_proj", "down_proj"]),
    (["qkv_proj", "o_proj"], "llama", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    (["q_proj", "o_proj"], "llama", None),
    ("all-linear", "phi3", None),
])
def test_targets_as_named(targets, model_type, want) -> None:
    spec = memory.ArchSpec.from_config({"model_type": model_type, "hidden_size": 64, "intermediate_size": 128,
                                        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100})
    assert memory.targets_as_named(targets, spec) == want
