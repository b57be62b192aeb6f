"""The minimal fine-tuning test (fmllm-check --test): load, train N steps, save, reload, generate."""

from __future__ import annotations

from fmllm_tui.checks._plugin import check

from fmllm_tui.units import GiB


@check("run.minimal_test", "Minimal fine-tuning test", "run")
def test_minimal_run(report, options, loaded, architecture):
    if not options.run_test:
        report.skip("runs only with --test (it trains for a few steps)")
    if loaded.view.fmllm.train_command:
        report.skip("fmllm.train_command runs your own script; start it with fmllm-run start")
    from fmllm_tui import memory
    from fmllm_tui.runner import RunError, run_minimal_test

    predicted = None
    arch, _ = architecture
    if arch is not None:
        try:
            predicted = memory.predict(loaded.view, arch).peak_process_bytes
        except (ValueError, memory.ArchitectureError):
            predicted = None
    try:
        res = run_minimal_test(loaded, predicted_peak_bytes=predicted)
    except RunError as e:
        report.fail(str(e))
    keep = ("ok", "steps", "losses", "peak_bytes", "tokens_per_s", "device", "model", "run_dir", "generation",
            "status", "loss_falling", "adapter_reloaded", "problems", "notes")
    report.set(**{k: res.get(k) for k in keep}, predicted_peak_bytes=predicted)
    where = (f"on {res.get('device')}" if res.get("device") else "before a device was chosen") + (" (CPU smoke test: a tiny random model of the configured architecture)"
                                          if str(res.get("device", "")).startswith("cpu") else "")
    losses = res.get("losses") or []
    if not res.get("ok"):
        probs = "; ".join(res.get("problems") or []) or f"status {res.get('status')}"
        diag = res.get("diagnosis") or []
        if diag:
            probs += " | diagnosis: " + "; ".join(h.get("cause", "") for h in diag[:2])
        report.fail(f"the minimal test failed {where}: {probs} (log: {res.get('run_dir')}/train.log)")
    peak = res.get("peak_bytes")
    summary = (f"{res.get('steps')} steps {where}, loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else
               f"{res.get('steps')} steps {where}")
    on_gpu = str(res.get("device", "")).startswith("cuda")
    if peak:
        summary += f", peak {peak / GiB:.2f} GiB" + (f" (predicted {predicted / GiB:.2f})" if predicted and on_gpu else "")
    if res.get("tokens_per_s"):
        summary += f", {res['tokens_per_s']:.0f} tokens/s"
    summary += "; adapter saved and reloaded" if res.get("adapter_reloaded") else ""
    if res.get("problems"):
        report.warn(summary + ". But: " + "; ".join(res["problems"]))
    report.ok(summary)
