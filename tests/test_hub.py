"""fmllm_tui.hub through the real huggingface_hub client and the local Hub stand-in."""

from __future__ import annotations

import json
import shutil

import pytest
from hubstub import HubStub, dead_endpoint
from tinymodel import build_tiny_model

from fmllm_tui import catalogue
from fmllm_tui.hub import check_model, resolve_config, validate_model_id, weight_summary

TOKEN = "hf_SecretTokenValue0123456789abc"


@pytest.fixture
def hub(hub_server: HubStub, tiny_model_dir) -> HubStub:
    hub_server.add_model_dir("org/tiny", tiny_model_dir)
    hub_server.add_model_dir("meta-llama/Llama-tiny", tiny_model_dir, gated="manual")
    for mid in ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-32B-Instruct"):
        hub_server.add_config_only(mid, catalogue.get_architecture(mid))
    return hub_server


def _all_text(status) -> str:
    return json.dumps(status.to_dict())


def test_model_on_the_hub_downloads_only_its_config(hub):
    s = check_model("org/tiny")
    assert (s.kind, s.ok) == ("hub", True)
    assert s.config["model_type"] == "qwen2" and s.config["vocab_size"] == 512
    assert s.has_safetensors is True and s.pickle_only is False
    assert "model.safetensors" in s.files and len(s.commit) == 40
    assert "safetensors weights" in s.message and s.remedy is None
    assert not [r for r in hub.requests if "safetensors" in r.path and r.method == "GET"]
    assert not [r for r in hub.requests if r.server == "cdn"]


def test_local_folder(tmp_path, tiny_model_dir):
    s = check_model(str(tiny_model_dir))
    assert (s.kind, s.ok, s.has_safetensors) == ("local_dir", True, True)
    assert s.config["model_type"] == "qwen2"

    no_weights = build_tiny_model("qwen2", dest=tmp_path / "m")
    (no_weights / "model.safetensors").unlink()
    s = check_model(str(no_weights))
    assert (s.kind, s.ok) == ("local_dir", False)
    assert "no weight files" in s.message and "safetensors" in s.remedy

    (no_weights / "config.json").write_text('{"model_type": "qwen2",\n  "hidden_size": }')
    s = check_model(str(no_weights))
    assert not s.ok and "not valid JSON (line 2, column" in s.message

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-7B"}))
    s = check_model(str(adapter))
    assert not s.ok and "LoRA adapter" in s.message and "Qwen/Qwen2.5-7B" in s.remedy

    s = check_model("./no/such/folder")
    assert (s.kind, s.ok) == ("not_found", False) and "no folder at ./no/such/folder" in s.message
    assert check_model("~nosuchuser-xyz/model").kind == "not_found"
    assert check_model("/dev/null\0x").kind == "not_found"


def test_pickle_only_weights(tmp_path, hub):
    hub.add_config_only("old/pickled", catalogue.get_architecture("Qwen/Qwen2.5-0.5B"), weights="bin")
    s = check_model("old/pickled")
    assert (s.kind, s.ok, s.has_safetensors, s.pickle_only) == ("hub", True, False, True)
    assert "pickle" in s.message

    local = build_tiny_model("qwen2", dest=tmp_path / "m")
    (local / "model.safetensors").rename(local / "pytorch_model.bin")
    s = check_model(str(local))
    assert (s.ok, s.has_safetensors, s.pickle_only) == (True, False, True)


def test_no_weights_and_no_config_on_the_hub(hub):
    hub.add_config_only("org/config-only", {"model_type": "llama"}, weights=None)
    s = check_model("org/config-only")
    assert (s.kind, s.ok) == ("hub", False) and "no weight files" in s.message
    assert s.config == {"model_type": "llama"}
    hub.add_repo("org/lora", {"adapter_config.json": {"base_model_name_or_path": "org/tiny"},
                              "adapter_model.safetensors": b"\0" * 16})
    s = check_model("org/lora")
    assert not s.ok and "LoRA adapter" in s.message and "org/tiny" in s.message


def test_auto_map_is_reported(hub):
    cfg = {**catalogue.get_architecture("microsoft/Phi-3-mini-4k-instruct")}
    hub.add_config_only("microsoft/Phi-3-mini-4k-instruct", cfg)
    s = check_model("microsoft/Phi-3-mini-4k-instruct")
    assert s.ok and s.auto_map == cfg["auto_map"]
    assert check_model("org/tiny").auto_map is None


def test_gated_without_a_token(hub):
    s = check_model("meta-llama/Llama-tiny")
    assert (s.kind, s.ok) == ("gated_no_token", False)
    assert "https://huggingface.co/meta-llama/Llama-tiny" in s.remedy and "hf auth login" in s.remedy
    assert s.files and s.has_safetensors is True  # the file list is public


def test_gated_with_a_token_lacking_access_never_shows_the_token(hub, monkeypatch, capfd):
    hub.add_token(TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    s = check_model("meta-llama/Llama-tiny")
    assert (s.kind, s.ok) == ("gated_no_access", False)
    assert "request access" in s.remedy
    assert TOKEN not in _all_text(s)
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.requests if r.server == "hub")
    out, err = capfd.readouterr()
    assert TOKEN not in out + err


def test_gated_with_access_is_fine(hub, monkeypatch):
    hub.add_token(TOKEN, grants=["meta-llama/Llama-tiny"])
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    s = check_model("meta-llama/Llama-tiny")
    assert (s.kind, s.ok) == ("hub", True) and "gated; your token has access" in s.message


def test_invalid_token(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # not registered with the stand-in
    s = check_model("org/tiny")
    assert (s.kind, s.ok) == ("invalid_token", False)
    assert "settings/tokens" in s.remedy and TOKEN not in _all_text(s)


def test_saved_login_token_is_used(hub, monkeypatch, tmp_path):
    import os

    hub.add_token(TOKEN, grants=["meta-llama/Llama-tiny"])
    (tmp_path / "hf-home").mkdir(exist_ok=True)
    (tmp_path / "hf-home" / "token").write_text(TOKEN)
    assert os.environ["HF_HOME"] == str(tmp_path / "hf-home")
    assert check_model("meta-llama/Llama-tiny").ok


def test_not_found_suggests_from_the_hub_search(hub):
    s = check_model("Qwen/Qwen2.5-15B-Instruct")
    assert (s.kind, s.ok) == ("not_found", False)
    assert s.suggestions[0] == "Qwen/Qwen2.5-14B-Instruct"
    # Only ids the Hub returned (the stand-in has three Qwen repos, not the whole catalogue).
    assert set(s.suggestions) <= {"Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-32B-Instruct"}
    assert "did you mean Qwen/Qwen2.5-14B-Instruct" in s.remedy
    searches = [r for r in hub.requests if r.path == "/api/models"]
    assert [r.query["search"] for r in searches] == [["Qwen2.5"]]


def test_not_found_with_no_search_hits_falls_back_to_the_catalogue(hub):
    s = check_model("meta-llama/Llama-3.1-9B-Instruct")
    assert s.kind == "not_found" and s.suggestions[0] == "meta-llama/Llama-3.1-8B-Instruct"


def test_revision_not_found(hub):
    s = check_model("org/tiny", revision="v9")
    assert (s.kind, s.ok) == ("revision_not_found", False) and "'v9'" in s.message


@pytest.mark.parametrize("bad", ["Qwen//x", "Qwen/Qwen 7B", " org/tiny", "org/tiny ", "", "a/b/c",
                                 "org/mod\u20acl", "org/--x", "org/x.git", "-org/x"])
def test_invalid_ids(hub, bad):
    s = check_model(bad)
    assert (s.kind, s.ok) == ("invalid_id", False)
    assert "not a valid model id" in s.message and "organisation/name" in s.remedy
    assert not hub.requests  # never sent to the Hub


def test_invalid_id_with_spaces_suggests_the_trimmed_id():
    assert check_model(" org/tiny ").suggestions[0] == "org/tiny"
    assert validate_model_id("Qwen/Qwen2.5-7B-Instruct") is None
    assert validate_model_id("gpt2") is None


def test_unreachable_hub(hub, monkeypatch):
    hub.fail_mode = "drop"
    s = check_model("org/tiny")
    assert (s.kind, s.ok) == ("unreachable", False)
    assert "--offline" in s.remedy and "HF_ENDPOINT" in s.remedy
    hub.fail_mode = "hang"
    hub.hang_seconds = 2
    s = check_model("org/tiny", timeout=0.3)
    assert s.kind == "unreachable" and "timed out" in s.message
    hub.fail_mode = None
    endpoint = dead_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    s = check_model("org/tiny")
    assert s.kind == "unreachable" and endpoint in s.message and "ConnectError" in s.message


def test_offline_cache_hit_and_miss(hub, monkeypatch):
    from huggingface_hub import hf_hub_download

    assert check_model("org/tiny").ok  # online: caches config.json only
    hub.clear_requests()
    s = check_model("org/tiny", offline=True)
    assert (s.kind, s.ok) == ("cache", False) and "not the weights" in s.message
    assert "hf download org/tiny" in s.remedy

    hf_hub_download("org/tiny", "model.safetensors")
    hub.clear_requests()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = check_model("org/tiny")
    assert (s.kind, s.ok, s.has_safetensors) == ("cache", True, True)
    assert s.config["model_type"] == "qwen2" and "HF_HUB_OFFLINE is set" in s.message
    assert not hub.requests  # offline means no network at all

    s = check_model("Qwen/Qwen2.5-15B-Instruct")
    assert (s.kind, s.ok) == ("offline_missing", False)
    assert s.suggestions[0] == "Qwen/Qwen2.5-14B-Instruct"  # from the catalogue
    # A likely typo offline: the remedy leads with the id to check, not a download of the typo.
    assert s.remedy.startswith("check the id") and "did you mean Qwen/Qwen2.5-14B-Instruct?" in s.remedy
    right = check_model("Qwen/Qwen2.5-7B-Instruct")
    assert right.suggestions == []  # a right id needs no did-you-mean
    assert right.remedy.startswith("download it while online (`hf download Qwen/Qwen2.5-7B-Instruct`)")
    assert not hub.requests


def test_token_never_appears_in_any_field(hub, monkeypatch, tmp_path):
    plain = "plainsecret-not-hf-shaped-987654"  # not hf_-shaped: masked because it is the token
    for token in (TOKEN, plain):
        monkeypatch.setenv("HF_TOKEN", token)
        hub.tokens.clear()
        hub.add_token(token, grants=["org/tiny"])
        for mid in ("org/tiny", "meta-llama/Llama-tiny", "nobody/nothing", "Qwen//x", f"org/{token}"):
            s = check_model(mid)
            assert token not in _all_text(s), (mid, s)
        hub.fail_mode = "drop"
        assert token not in _all_text(check_model("org/tiny"))
        hub.fail_mode = None


def test_resolve_config_sources(hub, tiny_model_dir, monkeypatch):
    cfg, src = resolve_config(str(tiny_model_dir))
    assert src == "local" and cfg["model_type"] == "qwen2"
    cfg, src = resolve_config("Qwen/Qwen2.5-7B-Instruct")
    assert src == "hub" and cfg["hidden_size"] == 3584
    cfg, src = resolve_config("Qwen/Qwen2.5-7B-Instruct", offline=True)
    assert src == "cache" and cfg["hidden_size"] == 3584
    cfg, src = resolve_config("meta-llama/Llama-3.1-8B-Instruct", offline=True)
    assert src == "catalogue" and cfg["num_hidden_layers"] == 32
    hub.add_config_only("meta-llama/Llama-3.1-8B-Instruct", {"model_type": "llama"}, gated="manual")
    cfg, src = resolve_config("meta-llama/Llama-3.1-8B-Instruct")  # gated, no token: catalogue
    assert src == "catalogue" and cfg["hidden_size"] == 4096
    assert resolve_config("nobody/nothing") == (None, "none")  # a wrong id stays wrong
    assert resolve_config("Qwen//x") == (None, "none")


def test_weight_summary():
    assert weight_summary(["model-00001-of-00002.safetensors", "pytorch_model.bin"]) == (True, False)
    assert weight_summary(["pytorch_model.bin", "training_args.bin"]) == (False, True)
    assert weight_summary(["training_args.bin", "adapter_model.safetensors"]) == (False, False)
    assert weight_summary(["original/consolidated.00.pth"]) == (False, False)


def test_copying_the_cache_elsewhere_is_found_via_hf_hub_cache(hub, monkeypatch, tmp_path):
    assert check_model("org/tiny").ok
    import os

    moved = tmp_path / "moved-cache"
    shutil.copytree(os.environ["HF_HUB_CACHE"], moved, symlinks=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(moved))
    s = check_model("org/tiny", offline=True)
    assert s.kind == "cache" and str(moved) in s.location
