"""The real huggingface_hub client works against the local Hub stand-in (through HF_ENDPOINT)."""

from __future__ import annotations

import json
import os

import pytest
from hubstub import HubStub, dead_endpoint

TOKEN = "hf_StubTokenForTests0123456789"


@pytest.fixture
def hub(hub_server: HubStub, tiny_model_dir) -> HubStub:
    hub_server.add_model_dir("org/tiny", tiny_model_dir, downloads=10)
    hub_server.add_model_dir("meta-llama/Llama-tiny", tiny_model_dir, gated="manual")
    hub_server.add_config_only("Qwen/Qwen2.5-7B-Instruct", {"model_type": "qwen2", "hidden_size": 3584,
                                                            "intermediate_size": 18944, "num_hidden_layers": 28,
                                                            "num_attention_heads": 28, "num_key_value_heads": 4,
                                                            "vocab_size": 152064, "tie_word_embeddings": False})
    return hub_server


def test_fixture_points_the_client_at_the_stand_in(hub):
    from huggingface_hub import constants

    assert os.environ["HF_ENDPOINT"] == hub.endpoint == constants.ENDPOINT
    assert "HF_TOKEN" not in os.environ
    assert constants.HF_HUB_CACHE.startswith(os.environ["HF_HOME"])


def test_model_info(hub):
    from huggingface_hub import HfApi, model_info

    info = HfApi().model_info("org/tiny")
    assert info.id == "org/tiny" and len(info.sha) == 40 and info.gated is False
    names = {s.rfilename for s in info.siblings}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert info.config["model_type"] == "qwen2"
    assert info.safetensors.total > 0
    # The module-level helper (an HfApi made at import) goes to the stand-in too.
    detailed = model_info("org/tiny", files_metadata=True)
    st = next(s for s in detailed.siblings if s.rfilename == "model.safetensors")
    assert st.lfs is not None and st.size == (hub.repos["org/tiny"].files["model.safetensors"].size)
    assert HfApi().model_info("org/tiny", revision=info.sha).sha == info.sha


def test_hf_hub_download_small_file_and_lfs_weights(hub, tiny_model_dir):
    from huggingface_hub import hf_hub_download

    cfg = hf_hub_download("org/tiny", "config.json")
    assert json.loads(open(cfg).read())["model_type"] == "qwen2"
    weights = hf_hub_download("org/tiny", "model.safetensors")
    assert open(weights, "rb").read() == (tiny_model_dir / "model.safetensors").read_bytes()
    # Small files went through the resolve-cache redirect, weights through the CDN.
    assert hub.requests_to("/api/resolve-cache/models/org/tiny/", method="GET")
    cdn = [r for r in hub.requests if r.server == "cdn"]
    assert len(cdn) == 1 and cdn[0].method == "GET"


def test_token_is_sent_to_the_hub_but_not_to_the_cdn(hub, monkeypatch):
    from huggingface_hub import hf_hub_download

    hub.add_token(TOKEN, grants=["meta-llama/Llama-tiny"])
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hf_hub_download("meta-llama/Llama-tiny", "model.safetensors")
    head = hub.requests_to("/meta-llama/Llama-tiny/resolve/main/model.safetensors", method="HEAD")
    assert head and head[0].authorization == f"Bearer {TOKEN}"
    cdn = [r for r in hub.requests if r.server == "cdn"]
    assert cdn and all(r.authorization is None for r in cdn)


def test_list_models_search(hub):
    from huggingface_hub import HfApi, list_models

    assert [m.id for m in HfApi().list_models(search="qwen2.5")] == ["Qwen/Qwen2.5-7B-Instruct"]
    assert [m.id for m in list_models(search="tiny", sort="downloads")] == ["org/tiny", "meta-llama/Llama-tiny"]
    assert [m.id for m in HfApi().list_models(search="tiny", author="org")] == ["org/tiny"]
    assert list(HfApi().list_models(search="nothing-like-this")) == []
    searches = [r for r in hub.requests if r.path == "/api/models"]
    assert searches[0].query["search"] == ["qwen2.5"]


def test_list_models_follows_pagination(hub_server):
    from huggingface_hub import HfApi

    hub_server.page_size = 2
    for i in range(5):
        hub_server.add_repo(f"org/m{i}", {"config.json": {"model_type": "llama"}})
    assert [m.id for m in HfApi().list_models(search="org/m")] == [f"org/m{i}" for i in range(5)]
    assert len([r for r in hub_server.requests if r.path == "/api/models"]) == 3


def test_gated_repo_without_and_with_a_token_lacking_access(hub, monkeypatch):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError

    # Model info of a gated repo is public, as on huggingface.co.
    assert HfApi().model_info("meta-llama/Llama-tiny").gated == "manual"
    with pytest.raises(GatedRepoError) as no_token:
        hf_hub_download("meta-llama/Llama-tiny", "config.json")
    assert no_token.value.response.status_code == 401
    assert "You must have access to it and be authenticated" in no_token.value.server_message

    hub.add_token(TOKEN)  # valid, but never granted access
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(GatedRepoError) as no_access:
        hf_hub_download("meta-llama/Llama-tiny", "config.json")
    assert no_access.value.response.status_code == 403
    assert "not in the authorized list" in no_access.value.server_message


def test_not_found_errors(hub, monkeypatch):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    with pytest.raises(RepositoryNotFoundError) as anon:
        HfApi().model_info("nobody/nothing")
    assert anon.value.response.status_code == 401  # anonymous: the Hub won't say whether it's private
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("org/tiny", "no-such-file.json")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info("org/tiny", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/tiny", "config.json", revision="v9")

    hub.add_token(TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(RepositoryNotFoundError) as authed:
        HfApi().model_info("nobody/nothing")
    assert authed.value.response.status_code == 404
    monkeypatch.setenv("HF_TOKEN", "hf_NotARegisteredToken123")
    with pytest.raises(HfHubHTTPError) as bad:
        HfApi().model_info("org/tiny")
    assert bad.value.response.status_code == 401
    assert "Invalid credentials in Authorization header" in str(bad.value)


def test_private_repo_needs_a_granted_token(hub, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    hub.add_repo("me/secret", {"config.json": {"model_type": "llama"}}, private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("me/secret")
    hub.add_token(TOKEN, grants=["me/secret"])
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert HfApi().model_info("me/secret").private is True


def test_config_only_repo_lists_weights_it_does_not_serve(hub):
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url

    files = {s.rfilename for s in HfApi().model_info("Qwen/Qwen2.5-7B-Instruct").siblings}
    assert "config.json" in files and "model.safetensors.index.json" in files
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    assert shards[0] == "model-00001-of-00004.safetensors" and len(shards) == 4
    meta = get_hf_file_metadata(hf_hub_url("Qwen/Qwen2.5-7B-Instruct", shards[0]))
    assert meta.size == 5_000_000_000 and len(meta.etag) == 64
    assert json.loads(open(hf_hub_download("Qwen/Qwen2.5-7B-Instruct", "config.json")).read())["hidden_size"] == 3584


def test_whoami(hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    hub.add_token(TOKEN, user="alice")
    assert HfApi().whoami(token=TOKEN)["name"] == "alice"
    with pytest.raises(HfHubHTTPError):
        HfApi().whoami(token="hf_UnknownToken000000000")


def test_tree_listing_and_transformers_loading(hub):
    from huggingface_hub import HfApi
    from transformers import AutoConfig, AutoTokenizer

    paths = {f.path for f in HfApi().list_repo_tree("org/tiny")}
    assert "config.json" in paths
    assert AutoConfig.from_pretrained("org/tiny").model_type == "qwen2"
    assert len(AutoTokenizer.from_pretrained("org/tiny")) == 512


def test_unreachable_modes(hub, monkeypatch):
    import httpx2
    from huggingface_hub import HfApi

    hub.fail_mode = "drop"
    with pytest.raises(httpx2.RemoteProtocolError):
        HfApi().model_info("org/tiny")
    hub.fail_mode = "hang"
    hub.hang_seconds = 2
    with pytest.raises(httpx2.TimeoutException):
        HfApi().model_info("org/tiny", timeout=0.3)
    hub.fail_mode = None
    with pytest.raises(httpx2.ConnectError):
        HfApi(endpoint=dead_endpoint()).model_info("org/tiny", timeout=2)


def test_stand_in_prints_nothing(hub, monkeypatch, capfd):
    from huggingface_hub import hf_hub_download

    hub.add_token(TOKEN, grants=["meta-llama/Llama-tiny"])
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hf_hub_download("meta-llama/Llama-tiny", "config.json")
    out, err = capfd.readouterr()
    assert TOKEN not in out + err
    assert "GET /" not in err  # no request log lines from the HTTP server
