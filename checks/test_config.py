"""Config checks: the file is valid, and its settings agree with each other."""

from __future__ import annotations

from fmllm_tui.checks._plugin import check, planned_fix

from fmllm_tui.config import ConfigError


@check("config.valid", "Config file is valid", "config")
def test_config_valid(report, config_or_error, options):
    report.set(path=str(options.config_path))
    if isinstance(config_or_error, ConfigError):
        report.set(problems=[p.__dict__ for p in config_or_error.problems])
        report.fail(config_or_error.render())
    cfg = config_or_error
    report.set(layout=cfg.layout, model=cfg.view.base_model_name, data_file=cfg.view.data_file)
    if cfg.warnings:
        report.set(unknown_keys=[w.key for w in cfg.warnings])
        n = len(cfg.warnings)
        report.warn(f"{options.config_path} is usable; {n} warning{'s' if n != 1 else ''} on keys fmllm does not "
                    "read where they are (kept in the file):\n"
                    + "\n".join(w.render(str(options.config_path)) for w in cfg.warnings))
    report.ok(f"{options.config_path} is valid ({cfg.layout} layout, model {cfg.view.base_model_name})")


@check("config.precision", "fp16/bf16 flags agree with the compute dtype", "config")
def test_precision_flags(report, loaded):
    t = loaded.view.training
    dtype = loaded.view.compute_dtype
    report.set(fp16=t.fp16, bf16=t.bf16, compute_dtype=dtype)
    if t.fp16 and t.bf16:
        fix = planned_fix(loaded, "training.precision_flags", {"compute_dtype": dtype})
        report.fail("training.fp16 and training.bf16 are both true; transformers refuses to start. "
                    f"Keep the one matching the compute dtype ({dtype}).", fix)
    if (t.bf16 and dtype == "float16") or (t.fp16 and dtype == "bfloat16"):
        fix = planned_fix(loaded, "training.precision_flags", {"compute_dtype": dtype})
        flag = "bf16" if t.bf16 else "fp16"
        report.warn(f"training.{flag} is on but quantization.bnb_4bit_compute_dtype is {dtype}: "
                    "the run mixes two 16-bit formats (extra casts, and fp16 overflow risk).", fix)
    report.ok(f"mixed precision follows the compute dtype ({dtype})")


@check("config.packing", "Packing has a sequence length", "config")
def test_packing(report, loaded):
    t = loaded.view.training
    report.set(packing=t.packing, max_seq_length=t.max_seq_length)
    if t.packing and not t.max_seq_length:
        fix = planned_fix(loaded, "training.packing_seq", {})
        report.fail("training.packing is on but max_seq_length is empty: packed sequences would have "
                    "no length limit and the first long batch runs out of memory.", fix)
    report.ok("packing is off" if not t.packing else f"packing into {t.max_seq_length}-token sequences")


@check("config.eval_batch", "Eval settings have eval data", "config", severity="warning")
def test_eval_batch(report, loaded):
    t = loaded.view.training
    has_eval = bool(loaded.view.eval_data_file)
    set_in_file = loaded.has("training.per_device_eval_batch_size")
    report.set(per_device_eval_batch_size=t.per_device_eval_batch_size, eval_data_file=loaded.view.eval_data_file)
    if set_in_file and not has_eval and t.per_device_eval_batch_size > t.per_device_train_batch_size:
        report.warn(f"per_device_eval_batch_size is {t.per_device_eval_batch_size} but there is no eval data "
                    "(paths.ft_eval_data_file): the setting has no effect.")
    if has_eval and t.per_device_eval_batch_size > 4 * t.per_device_train_batch_size:
        fix = planned_fix(loaded, "training.eval_batch", {})
        report.warn(f"the eval batch ({t.per_device_eval_batch_size}) is over 4x the train micro-batch "
                    f"({t.per_device_train_batch_size}); evaluation keeps full logits and often runs out of "
                    "memory after training went fine.", fix)
    report.ok("eval batch size is consistent" if has_eval else "no eval data configured")


@check("config.batch", "Effective batch is sensible", "config", severity="warning")
def test_effective_batch(report, loaded):
    t = loaded.view.training
    eff = loaded.view.effective_batch
    report.set(micro_batch=t.per_device_train_batch_size, accumulation=t.gradient_accumulation_steps, effective_batch=eff)
    if eff > 1024:
        report.warn(f"effective batch is {eff} examples per optimizer step (micro-batch "
                    f"{t.per_device_train_batch_size} x accumulation {t.gradient_accumulation_steps}); "
                    "LoRA fine-tunes usually use 8 to 128, and a huge batch means very few optimizer steps.")
    report.ok(f"effective batch {eff} (micro-batch {t.per_device_train_batch_size} x accumulation {t.gradient_accumulation_steps})")


@check("config.adapter", "A quantized model trains an adapter", "config")
def test_adapter(report, loaded):
    v = loaded.view
    report.set(use_adapter=v.use_adapter, use_4bit=v.quantization.use_4bit)
    if v.quantization.use_4bit and not v.use_adapter:
        fix = planned_fix(loaded, "model.adapter", {})
        report.fail("use_4bit is on but use_adapter is off: 4-bit weights cannot be trained directly "
                    "(transformers: 'You cannot perform fine-tuning on purely quantized models').", fix)
    report.ok("LoRA adapter on a 4-bit model" if v.quantization.use_4bit else
              ("LoRA adapter on 16-bit weights" if v.use_adapter else "full fine-tune (no adapter, no 4-bit)"))


@check("config.gc_reentrant", "Gradient checkpointing is non-reentrant", "config", severity="warning")
def test_gc_reentrant(report, loaded):
    t = loaded.view.training
    kwargs = t.gradient_checkpointing_kwargs or {}
    report.set(gradient_checkpointing=t.gradient_checkpointing, use_reentrant=kwargs.get("use_reentrant"))
    if t.gradient_checkpointing and kwargs.get("use_reentrant") is True:
        fix = planned_fix(loaded, "training.gc_reentrant", {})
        report.warn("gradient checkpointing is reentrant: with a frozen 4-bit base and LoRA this fails "
                    "with 'element 0 of tensors does not require grad' unless inputs require grad, and "
                    "breaks under DDP ('mark a variable ready only once'). Use use_reentrant: false.", fix)
    report.ok("gradient checkpointing off" if not t.gradient_checkpointing else "non-reentrant gradient checkpointing")
