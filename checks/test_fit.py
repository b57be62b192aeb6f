"""Does the fine-tune fit the GPU, and does it use it? Plus the host: disk for checkpoints, RAM for loading."""

from __future__ import annotations

import math
import os
import shutil

from fmllm_tui.checks._plugin import check, planned_fix

from fmllm_tui.findings import plural
from fmllm_tui.units import GiB, gib

_gib = gib


@check("config.fit", "The run fits the GPU memory", "memory")
def test_config_fit(report, loaded, target, architecture, fit_plan):
    _arch, source = architecture
    mode, n, v, fit, lengths = fit_plan.mode, fit_plan.n_gpus, fit_plan.view, fit_plan.fit, fit_plan.lengths
    # With the data's lengths known, batches are as long as its longest example (up to
    # max_seq_length): that is the peak this run will reach, and what the search planned from.
    pred = fit.prediction_before
    # Grouped by what each value says; the order is the JSON's.
    report.set(
        predicted_peak_bytes=pred.peak_process_bytes, predicted_peak_allocated_bytes=pred.peak_allocated_bytes,
        predicted_range_bytes=[pred.low_bytes, pred.high_bytes],
        budget_bytes=target.budget_bytes, margin_bytes=fit.margin_bytes, breakdown=pred.breakdown,
        gpu=target.name, budget_source=target.source,
        recipe=pred.recipe, loss=pred.loss, architecture_source=source,
        mode=mode, n_gpus=n,
        fit={"fits": fit.fits, "changes": [c.to_json() for c in fit.changes], "speedup": fit.speedup,
             "predicted_peak_after_bytes": fit.prediction_after.peak_process_bytes,
             "truncated_share": fit.truncated_share},
    )
    data_note = ""
    if lengths and v.training.max_seq_length and max(lengths) < v.training.max_seq_length:
        data_note = (f" (planned for this data's longest example, {max(lengths)} tokens, not max_seq_length "
                     f"{v.training.max_seq_length}: longer data needs more)")
    report.set(planned_tokens_per_example=pred.tokens_per_micro_batch // max(1, v.training.per_device_train_batch_size))
    card_note = getattr(target.card, "note", None) if target.planning else None  # an ambiguous --gpu name
    if card_note:
        report.set(gpu_note=card_note)
    head = (f"predicted peak {_gib(pred.peak_process_bytes)} (range {pred.low_bytes / 2**30:.2f}–{_gib(pred.high_bytes)}) "
            + (f"within a {target.name}" if target.name.endswith(" budget")  # --vram: the name is the budget
               else f"on {target.name} with {_gib(target.budget_bytes)} available")
            + (f" ({card_note})" if card_note else "") + data_note)
    timing = _time(report, v, fit, lengths, n, target)
    fix = None
    cut = next((c for c in fit.changes if c.key == "training.max_seq_length"), None)
    if fit.changes:
        lines = "; ".join(f"{c.key} {c.from_} -> {c.to} ({c.comment})" for c in fit.changes)
        fix = planned_fix(loaded, "memory.fit", {"changes": fit.changes}, summary=lines)
        if fix is not None and cut is not None and not (fit.truncated_share == 0 and lengths):
            # A shorter max_seq_length than the data needs (or data fmllm could not read) changes
            # what is trained on: offered, never applied by --fix or "apply all safe".
            fix.safe = False
    if not fit.fits_now:
        if fit.fits:
            unsafe = ""
            if fix is not None and not fix.safe:
                share = (f"{fit.truncated_share:.1%} of the examples" if fit.truncated_share is not None
                         else "an unknown share of the examples (the data could not be read)")
                unsafe = (f" The change set cuts max_seq_length to {cut.to}, which truncates {share}: "
                          "--fix does not apply it; apply it by hand if that is acceptable."
                          + (_instead(report, loaded, target, lengths) if mode == "single" else
                             " Or use a smaller model (fmllm-check --recommend) or a card with more memory."))
            msg = fit.message if fit.message.endswith(".") else fit.message + "."
            report.fail(f"does not fit: {head}. {msg}{unsafe}{timing}", fix)
        more = (" Nothing sensible fits one such card." + _instead(report, loaded, target, lengths)
                if mode == "single" else "")
        report.fail(f"does not fit, even with every memory saving: {head}. {fit.message}{more}")
    if fix is not None and fit.speedup >= 1.3:
        report.warn(f"fits with room to spare: {head}. {fit.message}.{timing}", fix)
    report.ok(f"fits: {head}; margin kept {_gib(fit.margin_bytes)}.{timing}")


def _time(report, view, fit, lengths, n_gpus, target) -> str:
    """The run's predicted speed and wall-clock time on the card planned for (issue 19): as the
    config stands and, when the search changes the batch, after its changes. Values in the JSON;
    a sentence for people, or "" when the prediction has no speed (no card, no steps)."""
    from fmllm_tui.memory import planned_steps
    from fmllm_tui.units import format_duration

    t = view.training
    n_examples = len(lengths) if lengths else None
    before = fit.prediction_before
    steps = planned_steps(t.max_steps, t.num_train_epochs, n_examples, t.per_device_train_batch_size,
                          t.gradient_accumulation_steps, n_gpus)
    if not before.tokens_per_second or before.tokens_per_second <= 0:
        return ""
    report.set(predicted_tokens_per_s=round(before.tokens_per_second, 1), planned_steps=steps,
               eta_s=round(before.eta_seconds(steps), 1) if steps else None)
    where = "" if target.name.endswith(" budget") else f" on {target.name}"
    text = f" Speed{where}: ~{before.tokens_per_second:,.0f} tokens/s predicted"
    if steps:
        text += f", about {format_duration(before.eta_seconds(steps))} for {plural(steps, 'step')}"
    changed = {c.key: c.to for c in fit.changes}
    after = fit.prediction_after
    if fit.fits and fit.changes and after.tokens_per_second and after.tokens_per_second > 0:
        micro = changed.get("training.per_device_train_batch_size", t.per_device_train_batch_size)
        accum = changed.get("training.gradient_accumulation_steps", t.gradient_accumulation_steps)
        steps_after = planned_steps(t.max_steps, t.num_train_epochs, n_examples, micro, accum, n_gpus)
        report.set(predicted_tokens_per_s_after=round(after.tokens_per_second, 1),
                   eta_after_s=round(after.eta_seconds(steps_after), 1) if steps_after else None)
        text += f"; with the changes ~{after.tokens_per_second:,.0f} tokens/s"
        if steps_after:
            text += f", about {format_duration(after.eta_seconds(steps_after))}"
    from fmllm_tui.memory import SPEED_MEASURED_CARDS

    card = getattr(target, "card", None)
    basis = ("no card named: an H100/H200-class card assumed" if card is None
             else "fitted on runs on this card" if card.name in SPEED_MEASURED_CARDS
             else "scaled from H100/H200 runs by the card's specifications")
    return text + f" (compile included, model loading not; {basis})."


@check("host.disk", "Disk space for checkpoints", "host", severity="warning")
def test_disk(report, loaded, architecture, data_report):
    from fmllm_tui import memory

    v = loaded.view
    out = v.output_dir or "outputs"
    probe = out
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe.rstrip("/"))
        if parent == probe:
            break
        probe = parent
    free = shutil.disk_usage(probe or ".").free
    arch, _ = architecture
    if arch is None:
        report.skip("the model's architecture is unknown, so checkpoint sizes cannot be estimated")
    lora_params = memory.predict(v, arch).breakdown.get("lora_weights", 0) // 4  # fp32 adapter weights
    # adapter (fp32) + AdamW state (2 x fp32) + scheduler/rng/trainer state (small)
    per_ckpt = lora_params * 4 + (lora_params * 8 if "adam" in v.training.optim else lora_params * 4) + 2 * 2**20
    t = v.training
    rows = data_report.rows if data_report is not None else 0
    steps = t.max_steps if t.max_steps > 0 else math.ceil(max(rows, 1) / v.effective_batch * t.num_train_epochs)
    n_ckpt = max(1, math.ceil(steps / t.save_steps))
    if t.save_total_limit:
        n_ckpt = min(n_ckpt, t.save_total_limit)
    need = per_ckpt * (n_ckpt + 1) + lora_params * 4  # +1 while the next one is written, + final adapter
    report.set(output_dir=out, free_bytes=free, checkpoint_bytes=per_ckpt, checkpoints=n_ckpt, needed_bytes=need,
               lora_params=lora_params)
    if free < need:
        fix = planned_fix(loaded, "training.save_total_limit", {}) if not t.save_total_limit else None
        report.fail(f"{_gib(free)} free at {probe}, but {plural(n_ckpt, 'checkpoint')} of {per_ckpt / 2**20:.0f} MiB need "
                    f"{_gib(need)}: training would die with 'No space left on device' while saving. Free space, "
                    "move the output dir, or keep fewer checkpoints (training.save_total_limit).", fix)
    report.ok(f"{_gib(free)} free at {probe}; {plural(n_ckpt, 'checkpoint')} of {per_ckpt / 2**20:.0f} MiB need {_gib(need)}")


@check("host.ram", "Host RAM for loading the model", "host", severity="warning")
def test_ram(report, loaded, architecture):
    import psutil

    from fmllm_tui import memory

    arch, _ = architecture
    if arch is None:
        report.skip("the model's architecture is unknown, so its load size cannot be estimated")
    v = loaded.view
    params = memory.param_count(arch)
    # Shards are read one at a time (safetensors, low_cpu_mem_usage); Hub shards are <= ~5 GB.
    shard = min(params * 2, 5 * 10**9)
    need = shard + 2 * GiB  # the Python process, tokenizer, datasets
    if v.fmllm.distributed.cpu_offload:
        need += params // 2  # 4-bit parameters held in RAM by FSDP offload
    if v.fmllm.offload_embeddings == "on":
        need += int(arch.get("vocab_size", 0)) * int(arch.get("hidden_size", 0)) * 2
    avail = psutil.virtual_memory().available
    report.set(available_bytes=avail, needed_bytes=need, params=params)
    if avail < need:
        report.warn(f"{_gib(avail)} of RAM available, loading needs about {_gib(need)}: the kernel may kill the "
                    "run while loading shards ('Killed'). Close other programs or add swap.")
    report.ok(f"{_gib(avail)} of RAM available; loading needs about {_gib(need)}")


def _instead(report, loaded, target, lengths) -> str:
    """What fits the card instead (presets, smaller catalogue models) with predicted peaks, and how
    to take one: the finding's last sentences when nothing sensible fits as configured."""
    alts = _alternatives(loaded, target, lengths)
    report.set(alternatives=alts)
    listed = "; ".join(f"{a['what']} (predicted {_gib(a['peak_bytes'])})" for a in alts)
    return ((f" What fits instead: {listed}." if listed else "")
            + " None is applied for you: a preset with fmllm-check --preset NAME, another model by hand "
            "(fmllm-check --recommend lists more), or FSDP over several GPUs if you have them "
            "(fmllm.distributed.mode: fsdp, num_processes: N; see config.multi_gpu_fit).")


def _alternatives(loaded, target, lengths, limit: int = 3) -> list[dict]:
    """What fits the card instead, with predicted peaks: presets (as they would leave this config),
    then the largest catalogue models with this config's settings (fitsearch.recommend)."""
    from fmllm_tui.fixes import PRESETS, FixError

    from fmllm_tui import fitsearch

    limit_bytes = target.budget_bytes - fitsearch.default_margin(target.budget_bytes)
    out: list[dict] = []
    for name, pre in PRESETS.items():
        if pre.gpus > 1:
            continue
        try:
            pred = fitsearch.preset_prediction(loaded, name, lengths, gpu=target.card)
        except (LookupError, FixError, ValueError):
            continue
        if pred.high_bytes <= target.budget_bytes and pred.peak_process_bytes <= limit_bytes:
            out.append({"kind": "preset", "what": f"preset {name} ({pre.model})", "peak_bytes": pred.peak_process_bytes})
    recs = fitsearch.recommend(target.budget_bytes, loaded.view, gpu=target.card, example_lengths=lengths)
    out += [{"kind": "model", "what": r.model_id, "peak_bytes": r.peak_process_bytes} for r in recs[:limit]]
    return out[: limit + 2]
