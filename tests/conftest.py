"""Shared fixtures: tiny local models and the local Hub stand-in (see tinymodel.py, hubstub.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ holds helper modules (tinymodel, hubstub) that test files import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hubstub import HubStub  # noqa: E402
from tinymodel import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny Qwen2 model folder (shared, read-only: copy it with build_tiny_model(dest=...))."""
    return build_tiny_model("qwen2")


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """A tiny Llama model folder (shared, read-only)."""
    return build_tiny_model("llama")


def point_hf_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path) -> None:
    """Point huggingface_hub (env and the constants it read at import) at ``endpoint`` and ``hf_home``."""
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    cache = hf_home / "hub"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub reads these once at import; patch them so in-process calls follow the env.
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    _http.close_session()  # drop pooled connections to an earlier stand-in


@pytest.fixture
def hub_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubStub]:
    """A started Hub stand-in; HF_ENDPOINT points at it, HF_TOKEN is unset, HF_HOME is a tmp dir.

    Register repos with ``hub_server.add_model_dir(...)`` / ``add_config_only(...)`` and tokens
    with ``add_token(...)``; recorded requests are in ``hub_server.requests``.
    """
    from huggingface_hub.utils import _http

    stub = HubStub().start()
    point_hf_hub_at(monkeypatch, stub.endpoint, tmp_path / "hf-home")
    try:
        yield stub
    finally:
        _http.close_session()
        stub.stop()
