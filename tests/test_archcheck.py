"""LoRA target modules are checked against the real architecture, built on the meta device."""

from __future__ import annotations

import pytest
from tinymodel import tiny_config_dict

from fmllm_tui import catalogue
from fmllm_tui.archcheck import (
    ArchCheckError,
    check_model_targets,
    check_target_modules,
    describe_missing,
    linear_module_names,
    suggest_modules,
)

LLAMA_LIKE = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma2"])
def test_tiny_configs_have_the_usual_linear_layers(arch):
    assert linear_module_names(tiny_config_dict(arch)) == LLAMA_LIKE


def test_phi3_fuses_projections():
    assert linear_module_names(tiny_config_dict("phi3")) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


@pytest.mark.parametrize("mid", ["Qwen/Qwen2.5-72B-Instruct", "meta-llama/Llama-3.3-70B-Instruct",
                                 "google/gemma-3-27b-it", "microsoft/phi-4"])
def test_full_size_catalogue_configs_build_on_meta(mid):
    import psutil

    rss = psutil.Process().memory_info().rss
    names = linear_module_names(catalogue.get_architecture(mid))
    assert "lm_head" not in names
    assert names == ({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"} if "phi" in mid else LLAMA_LIKE)
    # A 70B model in bf16 is 140 GB: on the meta device it costs next to nothing.
    assert psutil.Process().memory_info().rss - rss < 500 * 2**20


def test_check_target_modules_lists_missing_names_in_their_spelling():
    cfg = tiny_config_dict("qwen2")
    missing, available = check_target_modules(cfg, ["q_proj", "v_proj", "q_proj ", "query", "qproj"])
    assert missing == ["q_proj ", "query", "qproj"]
    assert available == sorted(LLAMA_LIKE)
    assert check_target_modules(cfg, "all-linear") == ([], sorted(LLAMA_LIKE))
    assert check_target_modules(cfg, ["self_attn.q_proj", "mlp.down_proj"])[0] == []
    assert check_target_modules(cfg, r".*\.(q|v)_proj")[0] == []
    assert check_target_modules(cfg, r".*\.wq")[0] == [r".*\.wq"]
    assert check_target_modules(cfg, "[unclosed")[0] == ["[unclosed"]
    # PEFT can adapt embeddings and the head too: they exist, so they are not "missing".
    assert check_target_modules(cfg, ["embed_tokens", "lm_head"])[0] == []


def test_did_you_mean_for_module_names():
    avail = sorted(LLAMA_LIKE)
    assert suggest_modules("q_proj ", avail) == ["q_proj"]
    assert suggest_modules("Q_PROJ", avail) == ["q_proj"]
    assert suggest_modules("query", avail) == ["q_proj"]
    assert suggest_modules("qproj", avail)[0] == "q_proj"
    assert suggest_modules("w2", avail) == ["down_proj"]
    assert suggest_modules("c_attn", avail) == ["q_proj", "k_proj", "v_proj"]  # GPT-2 fuses them
    phi = sorted(linear_module_names(tiny_config_dict("phi3")))
    assert suggest_modules("q_proj", phi) == ["qkv_proj"]
    assert suggest_modules("up_proj", phi) == ["gate_up_proj"]
    cfg = tiny_config_dict("llama")
    missing, available = check_target_modules(cfg, ["mlp", "self_attn"])
    assert describe_missing(missing, available, config_dict=cfg) == {
        "mlp": ["gate_proj", "up_proj", "down_proj"], "self_attn": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def test_configs_that_cannot_be_built_say_why():
    with pytest.raises(ArchCheckError, match="needs the model's own code"):
        linear_module_names({"model_type": "someones_arch", "auto_map": {"AutoConfig": "c.C"}})
    with pytest.raises(ArchCheckError, match="does not know model_type 'nonexistent'"):
        linear_module_names({"model_type": "nonexistent"})
    with pytest.raises(ArchCheckError, match="no model_type"):
        linear_module_names({"hidden_size": 64})
    # The shipped tables answer for known shapes without building; a real build still validates.
    from fmllm_tui.archcheck import _config_key, _module_table

    with pytest.raises(ArchCheckError, match="could not be read as a qwen2 config"):
        _module_table(_config_key({**tiny_config_dict("qwen2"), "hidden_size": "big"}), False, None)


def test_native_model_with_auto_map_is_checked_without_remote_code():
    cfg = catalogue.get_architecture("microsoft/Phi-3-mini-4k-instruct")
    assert cfg["auto_map"]
    assert "qkv_proj" in linear_module_names(cfg)


def test_check_model_targets_end_to_end(hub_server, tiny_model_dir):
    ok = check_model_targets(str(tiny_model_dir), ["q_proj", "v_proj"])
    assert (ok.checked, ok.ok, ok.source) == (True, True, "local")

    bad = check_model_targets(str(tiny_model_dir), ["q_proj", "query", "qproj"])
    assert (bad.checked, bad.ok) == (True, False)
    assert bad.missing == ["query", "qproj"]
    assert "did you mean q_proj" in bad.message and bad.remedy == "use target_modules: q_proj"

    hub_server.add_config_only("microsoft/phi-4", catalogue.get_architecture("microsoft/phi-4"))
    phi = check_model_targets("microsoft/phi-4", ["q_proj", "v_proj"])
    assert phi.source == "hub" and phi.missing == ["q_proj", "v_proj"]
    assert phi.suggestions == {"q_proj": ["qkv_proj"], "v_proj": ["qkv_proj"]}
    assert phi.remedy == "use target_modules: qkv_proj"

    offline = check_model_targets("Qwen/Qwen2.5-7B-Instruct", "all-linear", offline=True)
    assert (offline.ok, offline.source) == (True, "catalogue")

    unknown = check_model_targets("nobody/nothing", ["q_proj"])
    assert (unknown.checked, unknown.ok) == (False, False) and "unknown" in unknown.message

    hub_server.add_config_only("someone/custom", {"model_type": "custom_arch", "auto_map": {"AutoConfig": "c.C"}})
    remote = check_model_targets("someone/custom", ["q_proj"])
    assert not remote.checked and "trust_remote_code" in remote.message
    assert "fmllm.trust_remote_code" in remote.remedy


def test_importing_the_modules_loads_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys, fmllm_tui.hub, fmllm_tui.archcheck, fmllm_tui.catalogue; "
            "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub', 'httpx2', 'textual') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shipped_module_tables_match_real_builds():
    """The torch-free fast path must give what a meta-device build gives, for every catalogue model."""
    import json

    from fmllm_tui import archcheck, catalogue

    shipped = json.loads(archcheck._SHIPPED_TABLES.read_text())
    by_key: dict[str, dict] = {}
    for mid in catalogue.known_model_ids():
        cfg = catalogue.get_architecture(mid)
        by_key.setdefault(archcheck.shape_key(cfg), cfg)
    assert set(by_key) <= set(shipped), "regenerate fmllm_tui/data/module_tables.json (archcheck.build_shipped_tables)"
    for key, cfg in by_key.items():
        real = archcheck.collapse(archcheck._module_table(archcheck._config_key(cfg), False, None))
        assert shipped[key] == real, cfg["model_type"]


def test_fast_path_needs_no_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom fmllm_tui import archcheck, catalogue\n"
            "a = catalogue.get_architecture('Qwen/Qwen2.5-7B-Instruct')\n"
            "print(archcheck.check_target_modules(a, ['q_proj', 'v_proj']))\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "([], [" in proc.stdout


def test_unknown_shape_is_built_once_then_cached(tmp_path, monkeypatch):
    from fmllm_tui import archcheck
    from tests.tinymodel import tiny_config_dict

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    archcheck._load_tables.cache_clear()
    cfg = tiny_config_dict("llama")
    cfg["attention_bias"] = True  # a shape the shipped tables don't hold
    assert archcheck._cached_table(cfg) is None
    missing, available = archcheck.check_target_modules(cfg, ["q_proj"])
    assert not missing and "q_proj" in available
    assert archcheck._cached_table(cfg) is not None
    assert (tmp_path / "fmllm" / "module_tables.json").is_file()
