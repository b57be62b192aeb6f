"""The model and security checks through fmllm-check, against the local Hub stand-in."""

from __future__ import annotations

import json
from pathlib import Path

from fmllm_tui.cli_check import main
from tests.tinymodel import tiny_config_dict

CONFIG = """\
base_model_name: {model}
lora:
  r: 8
  target_modules: {targets}
fmllm:
  trust_remote_code: {trc}
{extra}"""


def run(tmp_path: Path, capsys, model: str, *, targets: str = "[q_proj, v_proj]", trc: str = "false",
        extra: str = "", only: tuple[str, ...] = ("model", "security")) -> tuple[int, dict]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(model=model, targets=targets, trc=trc, extra=extra))
    code = main(["--config", str(cfg), "--json", "--only", *only])
    out = capsys.readouterr().out
    doc = json.loads(out)
    return code, {c["id"]: c for c in doc["checks"]}


def test_model_on_the_hub_passes(tmp_path, capsys, hub_server, tiny_model_dir):
    hub_server.add_model_dir("acme/tiny-qwen", tiny_model_dir)
    code, checks = run(tmp_path, capsys, "acme/tiny-qwen")
    assert checks["model.available"]["status"] == "pass"
    assert checks["model.architecture"]["status"] == "pass"
    assert checks["security.pickle_weights"]["status"] == "pass"
    assert code == 0


def test_local_directory(tmp_path, capsys, tiny_model_dir):
    code, checks = run(tmp_path, capsys, str(tiny_model_dir))
    assert checks["model.available"]["status"] == "pass"
    assert checks["model.architecture"]["values"]["source"] == "local"


def test_wrong_id_gets_suggestions_and_a_fix(tmp_path, capsys, hub_server):
    hub_server.add_config_only("Qwen/Qwen2.5-14B-Instruct", tiny_config_dict("qwen2"))
    code, checks = run(tmp_path, capsys, "Qwen/Qwen2.5-15B-Instruct")
    c = checks["model.available"]
    assert c["status"] == "fail" and code == 1
    assert "Qwen/Qwen2.5-14B-Instruct" in c["finding"]
    assert c["fix"]["id"] == "model.id"
    assert c["fix"]["changes"][0]["to"] == "Qwen/Qwen2.5-14B-Instruct"


def test_gated_without_token(tmp_path, capsys, hub_server):
    hub_server.add_config_only("meta-llama/Llama-3.1-8B-Instruct", tiny_config_dict("llama"), gated="manual")
    code, checks = run(tmp_path, capsys, "meta-llama/Llama-3.1-8B-Instruct")
    c = checks["model.available"]
    assert c["status"] == "fail" and c["values"]["kind"] == "gated_no_token"
    assert "login" in (c["fix"]["shell"] or "")
    # The catalogue still knows the architecture, so planning goes on.
    assert checks["model.architecture"]["status"] == "pass"


def test_token_never_printed(tmp_path, capsys, hub_server, monkeypatch):
    secret = "hf_abcdefghijklmnopqrstuvwxyz0123"
    monkeypatch.setenv("HF_TOKEN", secret)
    hub_server.add_config_only("meta-llama/Llama-3.1-8B-Instruct", tiny_config_dict("llama"), gated="manual")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(model="meta-llama/Llama-3.1-8B-Instruct", targets="[q_proj]", trc="false", extra=""))
    main(["--config", str(cfg), "--json", "--only", "model"])
    main(["--config", str(cfg), "--only", "model"])
    out = capsys.readouterr()
    assert secret not in out.out + out.err


def test_missing_target_module_has_did_you_mean(tmp_path, capsys, tiny_model_dir):
    code, checks = run(tmp_path, capsys, str(tiny_model_dir), targets="[q_proj, qproj, query_key]")
    c = checks["model.architecture"]
    assert c["status"] == "fail"
    assert "'qproj' (did you mean 'q_proj'?)" in c["finding"]
    assert c["values"]["missing"] == ["qproj", "query_key"]


def test_unreachable_hub_with_unknown_model_fails(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from tests.hubstub import dead_endpoint

    monkeypatch.setenv("HF_ENDPOINT", dead_endpoint())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub fixes its offline mode at import: an earlier --offline run in this process
    # must not decide this test.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    code, checks = run(tmp_path, capsys, "someone/private-model")
    c = checks["model.available"]
    assert c["status"] == "fail" and c["values"]["kind"] == "unreachable"
    assert checks["model.architecture"]["status"] == "skip"


def test_remote_code_is_named_and_pinned(tmp_path, capsys, hub_server, tiny_model_dir):
    cfgjson = json.loads((tiny_model_dir / "config.json").read_text())
    cfgjson["auto_map"] = {"AutoConfig": "configuration_acme.AcmeConfig",
                           "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"}
    hub_server.add_repo("acme/remote", {"config.json": cfgjson, "modeling_acme.py": "x = 1\n",
                                        "configuration_acme.py": "y = 2\n", "model.safetensors": b"\0" * 64})
    code, checks = run(tmp_path, capsys, "acme/remote", only=("security.remote_code",))
    c = checks["security.remote_code"]
    assert c["status"] == "warn" and "modeling_acme.py" in c["finding"] and "trust_remote_code is off" in c["finding"]
    code, checks = run(tmp_path, capsys, "acme/remote", trc="true", only=("security.remote_code",))
    c = checks["security.remote_code"]
    assert c["status"] == "warn" and "Pin fmllm.revision" in c["finding"]
    assert c["fix"]["id"] == "model.pin_revision"
    assert len(c["fix"]["changes"][0]["to"]) == 40


def test_pickle_only_weights_warn(tmp_path, capsys, hub_server):
    hub_server.add_config_only("acme/old-model", tiny_config_dict("llama"), weights="bin")
    code, checks = run(tmp_path, capsys, "acme/old-model", only=("security.pickle_weights",))
    c = checks["security.pickle_weights"]
    assert c["status"] == "warn" and "pickle" in c["finding"] and "safe_serialization" in c["finding"]


def test_offline_typo_offers_the_catalogue_id_but_never_applies_it(tmp_path, capsys, monkeypatch):
    """Offline, a misspelt id used to get 'download it' (hf download of the typo) as its fix."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    code, checks = run(tmp_path, capsys, "Qwen/Qwen2.5-15B-Instruct", only=("model.available",))
    av = checks["model.available"]
    assert code == 1 and av["status"] == "fail"
    assert av["fix"]["id"] == "model.id" and av["fix"]["safe"] is False
    assert av["fix"]["changes"][0]["to"] == "Qwen/Qwen2.5-14B-Instruct"
    assert not (av["fix"].get("shell") or "").startswith("hf download")
    before = (tmp_path / "config.yaml").read_text()
    main(["--config", str(tmp_path / "config.yaml"), "--only", "model.available", "--fix"])
    capsys.readouterr()
    assert (tmp_path / "config.yaml").read_text() == before


def test_an_unreachable_hub_gives_advice_not_a_command(tmp_path, capsys, monkeypatch):
    """HF_ENDPOINT at a closed port: the fix's ``shell`` held prose ("check the network or proxy
    ..."), printed as "run: check the network ..."; ``shell`` is a command or nothing."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code, checks = run(tmp_path, capsys, "someone/not-in-the-catalogue-7b")
    c = checks["model.available"]
    assert c["values"]["kind"] == "unreachable", c
    assert c["fix"]["shell"] is None and "network" in c["fix"]["summary"]
