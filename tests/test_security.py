"""Secrets never leave through any output path; remote code and pickles are announced."""

from __future__ import annotations

import json
import os
import shutil
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fmllm_tui.cli_check import main
from fmllm_tui.redact import is_secret_key, mask_data, mask_text

HF = "hf_SuperSecretTokenValue123456"
SECRETS = ["hunter2-db-pass", "sk-live-abcdef0123456789", "s3cr3t-webhook", HF, "pg-dsn-password-9"]

CONFIG = f"""\
fine_tuning:
  base_model_name: {{model}}
  lora:
    r: 4
    target_modules: [q_proj, v_proj]
  quantization:
    use_4bit: true
    bnb_4bit_compute_dtype: float16
vault:
  password: {SECRETS[0]}
  nested:
    - service: openai
      api_key: {SECRETS[1]}
webhooks:
  slack:
    secret: {SECRETS[2]}
    url: https://hooks.example.com/x
database:
  dsn: postgres://app:{SECRETS[4]}@db.local/x
paths:
  ft_combined_data_file: train.jsonl
  ft_output_dir: out
  hub_token: {HF}
fmllm:
  minimal_test_steps: 3
"""


def make_config(tmp_path: Path, model: str = "Qwen/Qwen2.5-7B-Instruct") -> Path:
    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "data" / "sample_instructions.jsonl", tmp_path / "train.jsonl")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(model=model))
    return cfg


def assert_clean(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"secret {s[:6]}... leaked through {where}"


def test_secret_key_names():
    for k in ("password", "api_key", "hub_token", "secret", "AWS_SECRET_ACCESS_KEY", "credentials", "dsn"):
        assert is_secret_key(k), k
    for k in ("pad_token", "max_tokens", "tokenizer", "target_modules", "key_order"):
        assert not is_secret_key(k), k
    data = mask_data({"a": {"password": "x1234", "list": [{"api_key": "y1234"}]}, "url": f"https://u:{SECRETS[4]}@h/"})
    assert data["a"]["password"] == "***" and data["a"]["list"][0]["api_key"] == "***"
    assert SECRETS[4] not in data["url"]
    assert HF not in mask_text(f"token={HF} Authorization: Bearer abcdefghijkl")


def test_check_outputs_never_show_secrets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    cfg = make_config(tmp_path)
    junit = tmp_path / "j.xml"
    main(["--config", str(cfg), "--gpu", "RTX 3090", "--offline"])
    human = capsys.readouterr()
    main(["--config", str(cfg), "--gpu", "RTX 3090", "--offline", "--json", "--junitxml", str(junit)])
    js = capsys.readouterr()
    doc = json.loads(js.out)
    assert doc["environment"]["hf_token_set"] is True
    for text, where in ((human.out + human.err, "human output"), (js.out + js.err, "JSON"),
                        (junit.read_text(), "JUnit")):
        assert_clean(text, where)
    ET.parse(junit)  # still a valid report


def test_fix_diff_masks_secret_context_lines(tmp_path, capsys):
    cfg = make_config(tmp_path)
    before = cfg.read_bytes()
    code = main(["--config", str(cfg), "--gpu", "RTX 3090", "--offline", "--fix", "--dry-run", "--only", "gpu.bf16"])
    out = capsys.readouterr()
    assert "+    bnb_4bit_compute_dtype: bfloat16" in out.out  # the diff is shown...
    assert "password: ***" in out.out  # ...with the neighbouring secret line masked
    assert_clean(out.out + out.err, "the --fix diff")
    assert cfg.read_bytes() == before and code in (0, 1)


def test_invalid_config_message_masks_secret_values(tmp_path, capsys):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"fine_tuning:\n  base_model_name: m\n  lora:\n    r: {HF}\n")
    code = main(["--config", str(cfg), "--vram", "24GiB"])
    out = capsys.readouterr()
    assert code == 2 and "whole number" in out.err
    assert HF not in out.out + out.err
    # A section of secrets where a value belongs (issue 22): named in the error, values masked.
    cfg.write_text("fine_tuning:\n  base_model_name: m\n  lora:\n    r: {password: supersecretvalue1}\n"
                   "    target_modules: [q_proj, {api_key: supersecretvalue2}]\n")
    code = main(["--config", str(cfg), "--vram", "24GiB"])
    out = capsys.readouterr()
    assert code == 2 and "found {'password': '***'}, expected a whole number" in out.err
    assert "supersecretvalue" not in out.out + out.err


@pytest.mark.slow
def test_run_directory_is_private_and_masked(tmp_path, capsys, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    cfg = make_config(tmp_path, model=str(tiny_model_dir))
    main(["--config", str(cfg), "--test", "--only", "run.minimal_test", "--json"])
    doc = json.loads(capsys.readouterr().out)
    run_dir = Path(doc["checks"][0]["values"]["run_dir"])
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    # Every file of the run is private, train.log included (it was 0644: opened before the umask).
    loose = {str(f.relative_to(run_dir)): oct(stat.S_IMODE(f.stat().st_mode)) for f in run_dir.rglob("*")
             if f.is_file() and stat.S_IMODE(f.stat().st_mode) & 0o077}
    assert not loose, loose
    for f in run_dir.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".log", ".txt", ".yaml"):
            assert_clean(f.read_text(errors="replace"), str(f.relative_to(run_dir)))
    resolved = json.loads((run_dir / "config.json").read_text())
    text = json.dumps(resolved)
    assert "***" in text and "hooks.example.com" in text  # masked, not dropped
    assert os.environ.get("HF_TOKEN") == HF  # passed through to the child, never written down


LIST_SECRETS = ["s3cret-list-value-1", "s3cret-list-value-2"]


def test_secrets_in_lists_and_sections_under_secret_names_are_masked(tmp_path, capsys):
    """Issue 22: a LIST under a secret-named key showed in the run folder's config.json and next
    to a change in the --fix --dry-run diff."""
    data = mask_data({"credentials": [LIST_SECRETS[0], {"user": "x", "pw": LIST_SECRETS[1]}],
                      "auth": {"kind": "basic", "value": "abcd1234"}, "ok": ["plain"]})
    assert data == {"credentials": ["***", {"user": "***", "pw": "***"}], "auth": {"kind": "***", "value": "***"},
                    "ok": ["plain"]}
    from fmllm_tui.redact import secret_values

    assert set(LIST_SECRETS) <= set(secret_values({"api_keys": [LIST_SECRETS[0]], "a": {"tokens": [1],
                                                                                         "credentials": [LIST_SECRETS[1]]}}))
    cfg = make_config(tmp_path)
    # A secret list right beside the changed line, so the diff's context shows it.
    cfg.write_text(cfg.read_text().replace(
        "    bnb_4bit_compute_dtype: float16\n",
        f"    bnb_4bit_compute_dtype: float16\napi_keys: [{LIST_SECRETS[0]}, {LIST_SECRETS[1]}]\n", 1))
    main(["--config", str(cfg), "--gpu", "RTX 3090", "--offline", "--fix", "--dry-run", "--only", "gpu.bf16"])
    out = capsys.readouterr()
    assert "bnb_4bit_compute_dtype: bfloat16" in out.out
    for s in LIST_SECRETS:
        assert s not in out.out + out.err


def test_counts_named_tokens_are_not_secrets_and_url_passwords_are_masked_whole():
    for k in ("planned_tokens_per_example", "tokens_per_second", "train_tokens"):
        assert not is_secret_key(k), k
    for k in ("api_tokens", "auth_tokens", "hf_token", "access_tokens"):
        assert is_secret_key(k), k
    for pw in ("p@ss/word", "a/b@c", "plain"):
        out = mask_text(f"db: postgres://app:{pw}@db.local/x and more")
        assert pw not in out and "postgres://app:***@db.local/x and more" in out, out


CMD_SECRETS = ["hf_" + "Cmd4" * 6, "sk-proj-" + "Q9" * 12, "flag-secret-value-77"]


def test_train_command_secrets_never_reach_the_run_folder_or_status(tmp_path, capsys):
    """Issue 22: an hf_ token (or sk- key) in fmllm.train_command was written to run.json. The run
    folder and `fmllm-run status` keep it masked; the training command still gets it, on resume too
    (read again from the config, which must still be the command the run started with)."""
    import sys
    import textwrap

    from fmllm_tui.cli_run import main as run_cli
    from fmllm_tui.config import load_config
    from fmllm_tui.runner import RunError, resume, start, wait

    got = tmp_path / "got.jsonl"  # outside the run folder: what the trainer received
    (tmp_path / "trainer.py").write_text(textwrap.dedent(f"""\
        import json, os, sys
        with open({str(got)!r}, "a") as fh:
            fh.write(json.dumps({{"argv": sys.argv[1:], "resume": os.environ.get("FMLLM_RESUME")}}) + "\\n")
        print("trainer ran with", len(sys.argv), "args")
    """))
    argv = [sys.executable, "trainer.py", "--hub", CMD_SECRETS[0], CMD_SECRETS[1], "--api-key", CMD_SECRETS[2],
            "--max_new_tokens", "5"]
    cfg = make_config(tmp_path, model="Qwen/Qwen2.5-0.5B-Instruct")
    cfg.write_text(cfg.read_text() + f"  train_command: {json.dumps(argv)}\n")
    run_dir = start(load_config(cfg), "train")
    rec = wait(run_dir, timeout=60)
    assert rec and rec["status"] == "ok", (run_dir / "train.log").read_text()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["argv"][-2:] == ["--max_new_tokens", "5"] and record["secrets_handed_over"] is True
    assert record["argv"][3:7] == ["hf_***", "sk-proj-***", "--api-key", "***"]
    resume(run_dir)
    rec = wait(run_dir, timeout=60)
    assert rec and rec["status"] == "ok", (run_dir / "train.log").read_text()
    calls = [json.loads(line) for line in got.read_text().splitlines()]
    assert [c["argv"] for c in calls] == [argv[2:]] * 2 and calls[1]["resume"] == "1"
    assert run_cli(["status", "--run-dir", str(run_dir), "--json"]) == 0
    assert run_cli(["status", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr()
    texts = {str(f.relative_to(run_dir)): f.read_text(errors="replace") for f in run_dir.rglob("*") if f.is_file()}
    for s in CMD_SECRETS:
        assert s not in out.out + out.err
        for name, text in texts.items():
            assert s not in text, f"{s[:6]}... in {name}"
    # A rotated secret in the same command is taken from the config; another command is not resumed.
    cfg.write_text(cfg.read_text().replace(CMD_SECRETS[2], "rotated-secret-value"))
    resume(run_dir)
    assert (wait(run_dir, timeout=60) or {}).get("status") == "ok"
    assert json.loads(got.read_text().splitlines()[-1])["argv"][4] == "rotated-secret-value"
    cfg.write_text(cfg.read_text().replace('"5"', '"6"'))
    import time

    from fmllm_tui.runner import procs

    end = time.monotonic() + 60  # the supervisor writes exit.json, then ends: on a busy machine, slowly
    while procs.live(run_dir) and time.monotonic() < end:
        time.sleep(0.1)
    with pytest.raises(RunError, match="no longer the command it started with"):
        resume(run_dir)
