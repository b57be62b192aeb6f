"""A fix never makes a config worse, over a corpus of configs x cards (the "one plan" issue).

Corpus: the shipped config.yaml, the TUI tests' config, tests/configs/*.yaml (nested and flat
layouts, keys and sections of the project's own, 7B to 72B) and tests/configs/public/*.yaml (real
configs copied verbatim from public repositories; their sources are in SOURCES.md). Cards: RTX 3080 10 GB,
RTX 4060 Ti 16 GB, RTX 3090, RTX 4090, A100 40/80 GB, H100. For each pair, fmllm-check
--offline --gpu CARD: after --fix no check that passed fails, the number of fails does not
grow, and a second --fix changes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fmllm_tui.cli_check import main

ROOT = Path(__file__).resolve().parents[1]
CARDS = ["RTX 3080", "RTX 4060 Ti 16GB", "RTX 3090", "RTX 4090", "A100 40GB", "A100 80GB", "H100"]


def _corpus() -> dict[str, str]:
    from tui_support import CONFIG

    out = {"shipped": (ROOT / "config.yaml").read_text(),
           "tui-fixture": CONFIG.format(model="Qwen/Qwen2.5-0.5B-Instruct", attn="sdpa", use_4bit="true", seq=512,
                                        steps=5, save_steps=50, training_extra="")}
    for p in sorted((ROOT / "tests" / "configs").glob("*.yaml")):
        out[p.stem] = p.read_text()
    for p in sorted((ROOT / "tests" / "configs" / "public").glob("*.yaml")):  # verbatim (SOURCES.md)
        out["public:" + p.stem] = p.read_text()
    return out


CORPUS = _corpus()


def _statuses(capsys: pytest.CaptureFixture[str], cfg: Path, card: str) -> dict[str, dict]:
    main(["--config", str(cfg), "--gpu", card, "--offline", "--json"])
    return {c["id"]: c for c in json.loads(capsys.readouterr().out)["checks"]}


def _assert_no_worse(before: dict[str, dict], after: dict[str, dict], what: str) -> None:
    """The property: no check that passed fails, and the number of fails does not grow."""
    broke = {k: after[k]["finding"] for k, c in before.items() if c["status"] == "pass" and after[k]["status"] == "fail"}
    assert not broke, f"{what} made these fail: {broke}"
    fails = [sorted(k for k, c in res.items() if c["status"] in ("fail", "crash")) for res in (before, after)]
    assert len(fails[1]) <= len(fails[0]), fails


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_fix_never_makes_a_config_worse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], name: str, card: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for var in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "CUDA_VISIBLE_DEVICES", "FMLLM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    shutil.copytree(ROOT / "data", tmp_path / "data")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CORPUS[name])
    before = _statuses(capsys, cfg, card)
    main(["--config", str(cfg), "--gpu", card, "--offline", "--fix"])
    capsys.readouterr()
    fixed = cfg.read_text()
    after = _statuses(capsys, cfg, card)
    _assert_no_worse(before, after, f"--fix on {card}")
    main(["--config", str(cfg), "--gpu", card, "--offline", "--fix"])
    capsys.readouterr()
    assert cfg.read_text() == fixed, "a second --fix changed the config again"


TUI_CASES = [("shipped", "RTX 3080"), ("nested_qwen14b_long", "RTX 3080"), ("flat_llama31_8b_wandb", "RTX 4060 Ti 16GB"),
             ("public:PatrickAllenCooper__FM-LLM-Solver__config__ffd79f3a", "RTX 3080"),
             ("public:PatrickAllenCooper__FM-LLM-Solver__config__c2f4c653", "RTX 3090")]


@pytest.mark.parametrize(("name", "card"), TUI_CASES)
def test_tui_apply_all_safe_never_makes_a_config_worse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], name: str, card: str) -> None:
    """The TUI's "apply all safe" (the results it reads from fmllm-check's JSON, then its
    configops preview and apply): the same property, and the same file as `fmllm-check --fix`."""
    from fmllm_tui.findings import CheckResult
    from fmllm_tui.tui import configops

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for var in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "CUDA_VISIBLE_DEVICES", "FMLLM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    shutil.copytree(ROOT / "data", tmp_path / "data")
    cfg, cli = tmp_path / "config.yaml", tmp_path / "cli.yaml"
    cfg.write_text(CORPUS[name])
    cli.write_text(CORPUS[name])
    before = _statuses(capsys, cfg, card)
    results = [CheckResult.from_json(c) for c in before.values()]
    changes, _ids, _shells = configops.safe_fix_changes(results)
    if changes:
        pre = configops.preview(cfg, changes)
        configops.apply(cfg, changes, pre.expected_raw)
    after = _statuses(capsys, cfg, card)
    _assert_no_worse(before, after, f"apply all safe on {card}")
    main(["--config", str(cli), "--gpu", card, "--offline", "--fix"])
    capsys.readouterr()
    assert cfg.read_text() == cli.read_text(), "the TUI's apply-all and fmllm-check --fix wrote different files"
