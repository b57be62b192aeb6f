"""The config model: both layouts, interpolation, and every bad form of the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fmllm_tui.config import ConfigError, load_config, parse_size

ROOT = Path(__file__).resolve().parents[1]

NESTED = """\
paths:
  data_dir: data
  ft_combined_data_file: ${paths.data_dir}/train.jsonl
database:            # a section fmllm does not know
  password: hunter2
fine_tuning:
  base_model_name: Qwen/Qwen2.5-7B-Instruct
  lora:
    r: 8
    alpha: 16
  training:
    per_device_train_batch_size: 2
"""

FLAT = """\
base_model_name: meta-llama/Llama-3.1-8B-Instruct
lora:
  r: 16
quantization:
  use_4bit: true
training:
  max_seq_length: 2048
paths:
  ft_combined_data_file: /abs/train.jsonl
"""


def write(tmp_path: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def load_error(path: Path) -> ConfigError:
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    if before is not None:
        assert path.read_bytes() == before, "loading must never write the file"
    return ei.value


def test_shipped_config_loads():
    cfg = load_config(ROOT / "config.yaml")
    v = cfg.view
    assert cfg.layout == "nested"
    assert v.base_model_name == "Qwen/Qwen2.5-7B-Instruct"
    assert v.quantization.use_4bit and v.quantization.use_nested_quant
    assert v.quantization.bnb_4bit_compute_dtype == "float16"
    assert (v.lora.r, v.lora.alpha, v.lora.dropout) == (8, 8, 0.1)
    assert v.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    t = v.training
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.max_seq_length) == (1, 8, 1024)
    assert t.gradient_checkpointing and t.optim == "paged_adamw_32bit" and t.learning_rate == 2e-4
    assert v.data_file and Path(v.data_file).is_file(), "the shipped config points at the shipped sample data"


def test_nested_layout_and_interpolation(tmp_path):
    cfg = load_config(write(tmp_path, NESTED))
    assert cfg.layout == "nested"
    assert cfg.view.training.per_device_train_batch_size == 2
    assert cfg.view.data_file == str((tmp_path / "data" / "train.jsonl").resolve())
    assert cfg.file_key("training.max_seq_length") == "fine_tuning.training.max_seq_length"
    assert cfg.file_key("paths.data_dir") == "paths.data_dir"
    assert cfg.file_key("fmllm.attn_implementation") == "fmllm.attn_implementation"
    assert cfg.position("lora.r") == (9, 8)


def test_flat_layout(tmp_path):
    cfg = load_config(write(tmp_path, FLAT))
    assert cfg.layout == "flat"
    assert cfg.view.lora.r == 16 and cfg.view.training.max_seq_length == 2048
    assert cfg.file_key("lora.r") == "lora.r"
    assert cfg.view.data_file == "/abs/train.jsonl"


def test_env_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("FMLLM_TEST_MODEL", "Qwen/Qwen2.5-0.5B")
    cfg = load_config(write(tmp_path, "base_model_name: ${oc.env:FMLLM_TEST_MODEL}\nlora: {r: 4}\n"))
    assert cfg.view.base_model_name == "Qwen/Qwen2.5-0.5B"


def test_unknown_sections_are_kept_and_ignored(tmp_path):
    text = NESTED + "webserver:\n  port: 8080\n  when: 2024-01-01\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.doc["webserver"]["port"] == 8080
    assert cfg.text == text


@pytest.mark.parametrize(
    "text, line, col, words",
    [
        ("fine_tuning:\n  lora:\n    r: 8\n   alpha: [1,\n", 4, 4, ["invalid YAML"]),
        ("fine_tuning:\n  base_model_name: m\n  lora:\n    r: eight\n", 4, 8, ["fine_tuning.lora.r", "'eight'", "whole number"]),
        ("fine_tuning:\n  base_model_name: m\n  lora:\n    r: 0\n", 4, 8, ["fine_tuning.lora.r", ">= 1"]),
        ("fine_tuning:\n  base_model_name: m\n  training:\n    learning_rate: -1\n", 4, 20, ["learning_rate", "> 0"]),
        ("fine_tuning:\n  base_model_name: m\n  training:\n    max_seq_length: 10\n", 4, 21, ["max_seq_length", ">= 32"]),
        ("fine_tuning:\n  base_model_name: m\n  lora:\n    r: 8\n    r: 16\n", 5, 5, ["duplicate key 'r'", "line 4"]),
        ("fine_tuning:\n  base_model_name: m\n  lora:\n    r: true\n", 4, 8, ["lora.r", "not true/false"]),
        ("fine_tuning:\n  base_model_name: m\n  training:\n    optim: paged_adamw_32\n", 4, 12, ["optim", "did you mean 'paged_adamw_32bit'"]),
        ("fine_tuning:\n  base_model_name: m\n  quantization:\n    use_4bit: maybe\n", 4, 15, ["use_4bit", "true or false"]),
        ("fine_tuning:\n  base_model_name: m\n  lora: 8\n", 3, 9, ["fine_tuning.lora", "expected a section"]),
        ("paths:\n  ft_combined_data_file: ${paths.nope}/x.jsonl\nbase_model_name: m\nlora: {r: 4}\n", 2, 26, ["cannot resolve", "paths.nope"]),
        ("fine_tuning:\n  lora:\n    r: 8\n", None, None, ["model id is missing"]),
        ("just a string\n", 1, 1, ["top level must be a mapping"]),
        ("database:\n  host: x\n", 1, 1, ["no fine-tuning settings found"]),
        ("fine_tuning:\n  base_model_name: m\nfmllm:\n  target_gpu: RTX 9999 Ultra\n", 4, 15,
         ["fmllm.target_gpu", "unknown GPU 'RTX 9999 Ultra'", "--vram"]),
        ("fine_tuning:\n  base_model_name: m\nfmllm:\n  target_gpu: 24GB\n", 4, 15,
         ["fmllm.target_gpu", "is a memory size, not a GPU model"]),
        ("fine_tuning:\n  base_model_name: m\nfmllm:\n  vram: lots\n", 4, 9, ["fmllm.vram", "lots"]),
    ],
    ids=["invalid-yaml", "wrong-type", "r-zero", "lr-negative", "seq-too-small", "duplicate-key",
         "bool-for-int", "bad-choice", "bad-bool", "section-not-mapping", "bad-interpolation", "missing-model",
         "not-a-mapping", "no-fine-tuning", "target-gpu-unknown", "target-gpu-a-size", "vram-not-a-size"],
)
def test_bad_values_are_located(tmp_path, text, line, col, words):
    path = write(tmp_path, text)
    err = load_error(path)
    msg = err.render()
    first = err.problems[0]
    if line is not None:
        assert (first.line, first.column) == (line, col), msg
        assert f"{path}:{line}:{col}:" in msg
    for w in words:
        assert w in msg, msg
    assert "Traceback" not in msg
    assert "did not change the file" in msg


REAL = """# a real project's config: keys of its own inside fmllm's sections
fine_tuning:
  base_model_name: m
  wandb_project: my-proj   # read by the project's own code
  lora:
    r: 8
    lora_alpha: 16
  training:
    my_own_flag: true
fmllm:
  distributed:
    mode: auto
    zero_stage: 3
database:
  url: ${oc.env:DB_URL}
  secret: ${vault:db/password}
"""


def test_unknown_keys_in_read_sections_are_warnings_not_errors(tmp_path):
    path = write(tmp_path, REAL)
    cfg = load_config(path)  # accepted
    got = [(w.key, w.line, w.column, w.severity) for w in cfg.warnings]
    assert got == [("fine_tuning.wandb_project", 4, 3, "warning"), ("fine_tuning.lora.lora_alpha", 7, 5, "warning"),
                   ("fine_tuning.training.my_own_flag", 9, 5, "warning"), ("fmllm.distributed.zero_stage", 13, 5, "warning")]
    text = "\n".join(w.render(str(path)) for w in cfg.warnings)
    assert f"{path}:7:5: warning: fine_tuning.lora.lora_alpha: unknown key 'lora_alpha'" in text
    assert "did you mean 'alpha'" in text and "training.extra_args" in text
    assert cfg.view.lora.r == 8 and cfg.text == REAL  # the rest is read; the file is untouched
    # The project's own keys stay in the document, so a fix keeps them.
    assert cfg.doc["fine_tuning"]["wandb_project"] == "my-proj"


def test_settings_outside_their_section_are_named_with_where_they_belong(tmp_path):
    """A real flat layout writes TrainingArguments keys beside base_model_name; fmllm would plan
    with its own defaults for them. It says so, once, naming each key and its home."""
    flat = ("base_model_name: Qwen/Qwen2.5-0.5B-Instruct\nmax_seq_length: 2048\nlora_r: 64\n"
            "bnb_4bit_use_double_quant: true\nwandb:\n  project: x\nlora:\n  alpha: 16\n")
    cfg = load_config(write(tmp_path, flat))
    (w,) = cfg.warnings
    assert (w.key, w.line, w.column, w.severity) == ("max_seq_length", 2, 1, "warning")
    assert ("3 settings at the top level fmllm does not read there: max_seq_length (-> training.max_seq_length), "
            "lora_r (-> lora.r), bnb_4bit_use_double_quant (-> quantization.use_nested_quant)") in w.message
    assert cfg.view.training.max_seq_length == 1024  # still the default: the warning says why
    nested = "fine_tuning:\n  base_model_name: m\n  max_seq_length: 2048\n"
    (nw,) = load_config(write(tmp_path, nested)).warnings
    assert nw.key == "fine_tuning.max_seq_length" and "fine_tuning.training.max_seq_length" in (nw.hint or "")


def test_a_wrong_value_beside_an_unknown_key_is_still_an_error(tmp_path):
    path = write(tmp_path, "fine_tuning:\n  base_model_name: m\n  lora:\n    r: 0\n    lora_alpha: 16\n")
    err = load_error(path)
    assert [(p.key, p.severity) for p in err.problems] == [("fine_tuning.lora.r", "error")]


def test_config_valid_warns_naming_the_unknown_keys(tmp_path, capsys):
    from fmllm_tui.cli_check import main

    (tmp_path / "data").mkdir()
    path = write(tmp_path, REAL)
    code = main(["--config", str(path), "--offline", "--vram", "24GiB", "--only", "config.valid", "--json"])
    (res,) = json.loads(capsys.readouterr().out)["checks"]
    assert code == 0 and res["status"] == "warn"
    assert res["values"]["unknown_keys"] == ["fine_tuning.wandb_project", "fine_tuning.lora.lora_alpha",
                                             "fine_tuning.training.my_own_flag", "fmllm.distributed.zero_stage"]
    assert "did you mean 'alpha'" in res["finding"]


def test_several_problems_are_all_reported_in_file_order(tmp_path):
    path = write(tmp_path, "fine_tuning:\n  base_model_name: m\n  training:\n    max_seq_length: 10\n  lora:\n    r: 0\n")
    err = load_error(path)
    assert [p.line for p in err.problems] == [4, 6]


def test_missing_file(tmp_path):
    err = load_error(tmp_path / "nope.yaml")
    assert "no such file" in err.render() and "--config" in err.render()
    assert not (tmp_path / "nope.yaml").exists()


def test_directory_given(tmp_path):
    err = load_error(tmp_path)
    assert "directory" in err.render()


def test_empty_file(tmp_path):
    for text in ("", "\n\n", "# only a comment\n"):
        err = load_error(write(tmp_path, text))
        assert "empty" in err.render()


def test_not_utf8(tmp_path):
    path = write(tmp_path, b"fine_tuning:\n  base_model_name: caf\xe9\n")
    err = load_error(path)
    assert "not UTF-8" in err.render()
    assert (err.problems[0].line, err.problems[0].column) == (2, 23)


def test_binary_file(tmp_path):
    err = load_error(write(tmp_path, b"fine_tuning:\x00\x01\n"))
    assert "NUL" in err.render()


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="needs a non-root user to make a file unreadable")
def test_unreadable_file():
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="fmllm-unreadable-"))
    folder.chmod(0o755)  # traversable by the unprivileged user; only the file is closed
    path = write(folder, NESTED)
    path.chmod(0o000)
    code = (
        "import sys\nfrom fmllm_tui.config import load_config, ConfigError\n"
        "try:\n    load_config(sys.argv[1])\nexcept ConfigError as e:\n    print(e.render()); sys.exit(2)\n"
    )
    cmd = [sys.executable, "-c", code, str(path)]
    if os.geteuid() == 0:  # root reads anything: drop to nobody for this one call
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    path.chmod(0o644)
    shutil.rmtree(folder)
    assert proc.returncode == 2, proc.stderr
    assert "permission denied" in proc.stdout


def test_parse_size():
    assert parse_size("10GiB") == 10 * 2**30
    assert parse_size("10GB") == 10 * 2**30  # GPU memory "GB" means GiB to people
    assert parse_size("16000MiB") == 16000 * 2**20
    assert parse_size("24") == 24 * 2**30
    for bad in ("ten", "-3GiB", "0", "10XB", ""):
        with pytest.raises(ValueError):
            parse_size(bad)


SHIPPED = (ROOT / "config.yaml").read_text()
LAUGHS = "\nlaughs:  # a section fmllm does not read\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


@pytest.mark.parametrize("text, line, words", [
    # the alias that crosses the limit: 9**6 values at the sixth level ('f'), on the block's 7th line
    (SHIPPED + LAUGHS, SHIPPED.count("\n") + 8, "aliases (*name) expand to more than"),
    (SHIPPED + "\ndeep:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(400)) + "  " * 401 + "v: 1\n",
     SHIPPED.count("\n") + 66, "nest more than 64 levels"),
    (SHIPPED + "\ndeep: " + "[" * 5000 + "]" * 5000 + "\n", SHIPPED.count("\n") + 2, "nest more than 64 levels"),
], ids=["billion-laughs", "deep-block-mapping", "deep-flow-list"])
def test_a_config_that_would_cost_too_much_is_a_located_error(tmp_path, text, line, words):
    """Alias bombs and deep nesting, even in sections fmllm does not read, stop before the
    document is built (they used to grow memory without bound, or raise RecursionError)."""
    path = write(tmp_path, text)
    err = load_error(path)
    (first,) = err.problems
    assert words in first.message and first.line == line, err.render()
    assert f"{path}:{line}:" in err.render()


def test_the_cost_limits_leave_ordinary_anchors_and_merge_keys_alone(tmp_path):
    text = SHIPPED.replace("fine_tuning:\n", "lora_defaults: &ld\n  r: 16\n  alpha: 32\nfine_tuning:\n", 1).replace(
        "  lora:\n    r: 8                  # LoRA rank; barely moves peak memory, lower it last\n"
        "    alpha: 8              # scaling (alpha / r); no memory effect\n", "  lora:\n    <<: *ld\n", 1)
    cfg = load_config(write(tmp_path, text))
    assert (cfg.view.lora.r, cfg.view.lora.alpha) == (16, 32)


def test_a_huge_file_is_refused_before_parsing(tmp_path):
    path = write(tmp_path, SHIPPED + "\n# " + "x" * (5 * 2**20) + "\n")
    err = load_error(path)
    assert "fmllm reads configs up to 4 MiB" in err.render() and err.problems[0].line == 1


def test_fmllm_check_exits_2_on_an_alias_bomb(tmp_path, capsys):
    from fmllm_tui.cli_check import main

    path = write(tmp_path, SHIPPED + LAUGHS)
    assert main(["--config", str(path), "--offline", "--vram", "24GiB"]) == 2
    assert "expand to more than" in capsys.readouterr().err


def test_a_model_id_with_a_look_alike_letter_is_a_located_config_error(tmp_path, capsys):
    """A Cyrillic 'с' in 'Instruct' crashed 12 checks (exit 3): huggingface_hub refused the id in
    each. It is a config error at the key, naming the character."""
    from fmllm_tui.cli_check import main

    path = write(tmp_path, SHIPPED.replace("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instru\u0441t"))
    err = load_error(path)
    (first,) = err.problems
    assert (first.key, first.line) == ("fine_tuning.base_model_name", 12)
    assert "CYRILLIC SMALL LETTER ES, at position 23" in first.message and "retype it" in first.message
    assert main(["--config", str(path), "--offline", "--vram", "24GiB"]) == 2
    assert "[CRASH]" not in capsys.readouterr().out


def test_a_local_folder_and_a_path_are_not_judged_as_hub_ids(tmp_path):
    model = tmp_path / "my models" / "qwen 7b"  # spaces: no Hub id could be this
    model.mkdir(parents=True)
    cfg = load_config(write(tmp_path, SHIPPED.replace("Qwen/Qwen2.5-7B-Instruct", "my models/qwen 7b")))
    assert cfg.view.base_model_name == "my models/qwen 7b"
    cfg = load_config(write(tmp_path, SHIPPED.replace("Qwen/Qwen2.5-7B-Instruct", "./not/there/yet")))
    assert cfg.view.base_model_name == "./not/there/yet"  # model.available says it is missing


def test_a_merge_key_into_its_own_anchor_is_a_located_config_error(tmp_path):
    """`lora: &lo` holding `<<: *lo` crashed every check (exit 3) inside ruamel."""
    path = write(tmp_path, SHIPPED.replace("  lora:\n", "  lora: &lo\n    <<: *lo\n", 1))
    err = load_error(path)
    (first,) = err.problems
    assert "*lo refers to the section it is inside" in first.message and first.line == 17


def test_a_gpu_or_size_written_as_a_number_reads_as_the_flags_do(tmp_path):
    """YAML reads ``target_gpu: 4090`` and ``vram: 24`` as numbers; --gpu 4090 and --vram 24 work,
    so these do too (they were refused: "found 4090, expected text")."""
    p = tmp_path / "c.yaml"
    p.write_text("fine_tuning:\n  base_model_name: m\nfmllm:\n  target_gpu: 4090\n  vram: 24\n")
    view = load_config(p).view
    assert (view.fmllm.target_gpu, view.fmllm.vram) == ("4090", "24")
    assert parse_size(view.fmllm.vram) == 24 * 2**30
    p.write_text("fine_tuning:\n  base_model_name: m\nfmllm:\n  target_gpu: 99999\n")
    with pytest.raises(ConfigError, match="unknown GPU '99999'"):
        load_config(p)


def test_a_folder_as_the_config_suggests_its_config_yaml_only_when_there_is_one(tmp_path):
    """--config pointing at a folder: "did you mean FOLDER/config.yaml?" only when that file exists
    (it was suggested for any folder, e.g. one named dir.yaml)."""
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError) as e:
        load_config(folder)
    assert "directory, not a config file" in e.value.render() and "did you mean" not in e.value.render()
    (folder / "config.yaml").write_text("fine_tuning:\n  base_model_name: m\n")
    with pytest.raises(ConfigError) as e:
        load_config(folder)
    assert f"did you mean {folder / 'config.yaml'}?" in e.value.render()
