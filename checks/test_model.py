"""Model checks: the id resolves (Hub, cache, local dir), its architecture has the LoRA targets,
and loading it runs no code nobody announced."""

from __future__ import annotations

import re

from fmllm_tui.checks._plugin import check, planned_fix
from fmllm_tui.checks.conftest import SOFT_KINDS

from fmllm_tui.findings import Fix, plural


@check("model.available", "Model id resolves", "model")
def test_model_available(report, loaded, model_status):
    from fmllm_tui import catalogue

    st = model_status
    mid = loaded.view.base_model_name
    report.set(model=mid, kind=st.kind, location=st.location, suggestions=st.suggestions,
               has_safetensors=st.has_safetensors, commit=st.commit)
    if st.ok:
        report.ok(st.message)
    known = catalogue.get_architecture(mid) is not None
    if st.kind in SOFT_KINDS and known:
        lead = st.message if st.message.rstrip().endswith((".", ":", "!", "?")) else st.message.rstrip() + "."
        report.warn(f"{lead} {mid} is a public model in fmllm's catalogue, so planning uses the catalogue's "
                    "architecture; the weights will be downloaded on the first run.",
                    Fix(id="model.download", shell=f"hf download {mid}", summary=st.remedy or ""))
    fix = None
    if st.kind == "not_found" and st.suggestions:
        fix = planned_fix(loaded, "model.id", {"suggestions": st.suggestions},
                          summary=f"headless --fix takes the top suggestion, {st.suggestions[0]}")
    elif st.kind == "offline_missing" and st.suggestions:
        # Offline, a likely typo cannot be confirmed: the suggestion is offered, never applied by --fix.
        fix = planned_fix(loaded, "model.id", {"suggestions": st.suggestions}, summary=st.remedy or "")
        if fix is not None:
            fix.safe = False
    elif st.remedy:
        fix = _advice(st.kind, st.remedy)
    text = st.message
    if st.suggestions:
        text += " Did you mean: " + ", ".join(st.suggestions[:3]) + "?"
    report.fail(text, fix)


def _advice(kind: str, remedy: str) -> Fix:
    """A remedy in words as a fix: its summary, and ``shell`` only when it names a command to run
    (in backquotes, e.g. `hf auth login`); "check the network or proxy ..." is advice, not a command."""
    command = re.search(r"`([^`]+)`", remedy)
    return Fix(id=f"model.{kind}", shell=command.group(1) if command else None, summary=remedy)


@check("model.architecture", "LoRA target modules exist in the model", "model")
def test_model_architecture(report, loaded, architecture):
    from fmllm_tui import archcheck

    cfg, source = architecture
    v = loaded.view
    if cfg is None:
        report.skip("the model's config.json is not available (see model.available)")
    targets = v.lora.target_modules
    report.set(source=source, model_type=cfg.get("model_type"), target_modules=targets)
    try:
        missing, available = archcheck.check_target_modules(
            cfg, targets, trust_remote_code=v.fmllm.trust_remote_code,
            source=v.base_model_name if v.fmllm.trust_remote_code else None)
    except archcheck.ArchCheckError as e:
        report.skip(f"cannot build the architecture to check it: {e}")
    report.set(available=sorted(available), missing=missing)
    if missing:
        hints = archcheck.describe_missing(missing, available, config_dict=cfg)
        parts = []
        for name in missing:
            sug = hints.get(name) or []
            parts.append(f"{name!r}" + (f" (did you mean {', '.join(repr(s) for s in sug)}?)" if sug else ""))
        key = loaded.file_key("lora.target_modules")
        report.fail(f"{key}: {', '.join(parts)} not found in {v.base_model_name} ({cfg.get('model_type')}); "
                    f"its linear layers are: {', '.join(sorted(available))}. PEFT would stop with "
                    "'Target modules ... not found in the base model'.")
    report.ok(f"{plural(len(targets), 'target module') if isinstance(targets, list) else 'all-linear target modules'} found in "
              f"{cfg.get('model_type')} (architecture from {source})")


@check("security.remote_code", "No unannounced remote code", "security", severity="warning")
def test_remote_code(report, loaded, model_status):
    v = loaded.view
    auto_map = model_status.auto_map or (model_status.config or {}).get("auto_map")
    report.set(trust_remote_code=v.fmllm.trust_remote_code, auto_map=auto_map, revision=v.fmllm.revision)
    if not auto_map:
        report.ok("the model needs no remote code" + ("" if not v.fmllm.trust_remote_code else
                  "; fmllm.trust_remote_code is on but unused: turn it off"))
    modules = sorted({str(x).split(".")[0] + ".py" for x in auto_map.values() if isinstance(x, str)})
    if not v.fmllm.trust_remote_code:
        report.warn(f"{v.base_model_name} ships its own model code ({', '.join(modules)}); fmllm will not run it "
                    "because fmllm.trust_remote_code is off, so loading may fail. Read those files, then set "
                    "fmllm.trust_remote_code: true with a pinned fmllm.revision.")
    if not v.fmllm.revision or len(v.fmllm.revision) != 40:
        fix = None
        if model_status.commit:
            fix = planned_fix(loaded, "model.pin_revision", {"commit": model_status.commit})
        report.warn(f"fmllm.trust_remote_code is on: loading {v.base_model_name} runs its {', '.join(modules)}. "
                    "Pin fmllm.revision to a commit hash so that code cannot change under you.", fix)
    report.ok(f"remote code ({', '.join(modules)}) allowed at pinned revision {v.fmllm.revision}")


@check("security.pickle_weights", "Weights load without pickle", "security", severity="warning")
def test_pickle_weights(report, model_status):
    st = model_status
    report.set(has_safetensors=st.has_safetensors, pickle_only=st.pickle_only)
    if st.pickle_only is None and st.has_safetensors is None:
        report.skip("the model's file list is not available (see model.available)")
    if st.pickle_only:
        weights = [f for f in st.files if f.endswith((".bin", ".pt", ".pth"))][:4]
        report.warn(f"{st.model_id} has only pickle-based weights ({', '.join(weights)}); loading a pickle can "
                    "execute code. Prefer a safetensors copy, or convert them once in a sandbox: "
                    "python -c \"from transformers import AutoModelForCausalLM as M; "
                    f"M.from_pretrained('{st.model_id}').save_pretrained('converted', safe_serialization=True)\"")
    report.ok("safetensors weights" if st.has_safetensors else "no weights listed yet")
