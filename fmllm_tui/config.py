"""The config model: read a person's config.yaml into (a) a typed, validated view and (b) the
ruamel round-trip document that fixers edit.

Two layouts are read:

* nested: a ``fine_tuning:`` section holding the model, ``lora:``, ``quantization:`` and
  ``training:``, next to ``paths:`` and any number of sections fmllm does not know;
* flat: ``lora:``, ``quantization:``, ``training:`` at the top level, beside
  ``base_model_name`` and ``paths:``.

fmllm's own settings live in a top-level ``fmllm:`` section in both layouts.

Every setting has a *canonical* name (``training.max_seq_length``, ``base_model_name``,
``fmllm.attn_implementation``); :meth:`LoadedConfig.file_key` maps it to the dotted path in the
person's file (``fine_tuning.training.max_seq_length`` in the nested layout).

Loading never writes the file. Bad input raises :class:`ConfigError`, whose ``render()`` is a
one-screen message naming the file, line, column, what was found and what was expected.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from fmllm_tui.units import parse_size  # noqa: F401  (the one size reader; re-exported for config callers)

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One thing wrong with a config file, located as precisely as the file allows."""

    message: str
    key: str | None = None  # dotted path in the person's file
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based
    hint: str | None = None
    severity: Literal["error", "warning"] = "error"

    def render(self, path: str) -> str:
        where = path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        head = f"{where}: {self.severity}: "
        if self.key:
            head += f"{self.key}: "
        text = head + self.message
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class ConfigError(Exception):
    """A config that cannot be used. ``render()`` gives the person-facing message."""

    def __init__(self, path: str | os.PathLike[str], problems: list[Problem]):
        self.path = str(path)
        self.problems = problems
        super().__init__(self.render())

    def render(self, limit: int = 12) -> str:
        lines = [p.render(self.path) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more problems")
        lines.append(
            "fmllm did not change the file. Fix the lines above and run again "
            "(README: Config reference)."
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The typed view
# --------------------------------------------------------------------------------------------

Dtype = Literal["float16", "bfloat16", "float32"]
DataFormat = Literal["instruction", "prompt_completion", "chat"]

OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "adafactor",
    "sgd",
    "lion_8bit",
    "lion_32bit",
    "paged_lion_8bit",
    "paged_lion_32bit",
    "rmsprop",
    "adagrad",
)
Optimizer = Literal[OPTIMIZERS]  # type: ignore[valid-type]  # one list: the Literal is built from it
Scheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "warmup_stable_decay",
]


def _no_bool_for_numbers(model: type[BaseModel], name: str, value: Any) -> Any:
    """YAML's true/false must not pass as 1/0 for a numeric setting."""
    if isinstance(value, bool):
        ann = str(model.model_fields[name].annotation)
        if "bool" not in ann and ("int" in ann or "float" in ann):
            raise ValueError("expected a number, not true/false")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_bools(cls, v: Any, info: Any) -> Any:
        return _no_bool_for_numbers(cls, info.field_name, v)


class LoraSettings(_Section):
    """``lora:`` — the adapter."""

    r: int = Field(8, ge=1, le=4096, description="LoRA rank")
    alpha: float = Field(16, gt=0, le=1_000_000, description="LoRA scaling numerator")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("needs at least one module name, or 'all-linear'")
            for name in v:
                if not name.strip():
                    raise ValueError("module names must not be empty")
        return v


class QuantizationSettings(_Section):
    """``quantization:`` — bitsandbytes 4-bit loading."""

    use_4bit: bool = True
    bnb_4bit_compute_dtype: Dtype = "bfloat16"
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    use_nested_quant: bool = True


#: training.max_seq_length when the config leaves it out (or sets null): the one copy of the default
#: that the typed view, the plan and the memory model read.
DEFAULT_MAX_SEQ_LENGTH = 1024


class TrainingSettings(_Section):
    """``training:`` — transformers TrainingArguments that fmllm reads and plans with."""

    num_train_epochs: float = Field(1.0, gt=0, le=10_000)
    per_device_train_batch_size: int = Field(1, ge=1, le=65_536)
    per_device_eval_batch_size: int = Field(1, ge=1, le=65_536)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1_000_000)
    gradient_checkpointing: bool = True
    gradient_checkpointing_kwargs: dict[str, Any] | None = None
    max_grad_norm: float = Field(1.0, ge=0)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, lt=1)
    optim: Optimizer = "paged_adamw_32bit"
    lr_scheduler_type: Scheduler = "cosine"
    max_steps: int = Field(-1, ge=-1)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    group_by_length: bool = False
    save_steps: int = Field(100, ge=1)
    logging_steps: int = Field(10, ge=1)
    packing: bool = False
    max_seq_length: int | None = Field(DEFAULT_MAX_SEQ_LENGTH, ge=32, le=1_048_576)
    fp16: bool = False
    bf16: bool = False
    seed: int = Field(42, ge=0)
    eval_steps: int | None = Field(None, ge=1)
    save_total_limit: int | None = Field(None, ge=1)
    report_to: str | list[str] = "none"
    extra_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must be -1 (train for num_train_epochs) or a positive number")
        return v


class PathsSettings(BaseModel):
    """``paths:`` — where data and outputs live. Other keys here are kept and ignored."""

    model_config = ConfigDict(extra="allow")

    data_dir: str | None = None
    output_dir: str | None = None
    ft_combined_data_file: str | None = None
    ft_eval_data_file: str | None = None
    ft_output_dir: str | None = None


class DistributedSettings(_Section):
    """``fmllm.distributed:`` — multi-GPU through accelerate."""

    mode: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    num_processes: int | None = Field(None, ge=1, le=1024)
    cpu_offload: bool = False
    num_machines: int = Field(1, ge=1)
    machine_rank: int = Field(0, ge=0)
    main_process_ip: str | None = None
    main_process_port: int = Field(29500, ge=1, le=65535)


class FmllmSettings(_Section):
    """``fmllm:`` — settings fmllm adds of its own (same home in both layouts)."""

    attn_implementation: Literal["sdpa", "flash_attention_2", "eager"] = "sdpa"
    target_gpu: str | None = None
    vram: str | None = None
    memory_recipe: Literal["fmllm", "plain"] = "fmllm"
    loss: Literal["auto", "liger", "chunked", "plain"] = "auto"
    offload_embeddings: Literal["auto", "on", "off"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    response_only_loss: bool = True
    minimal_test_steps: int = Field(10, ge=1, le=10_000)
    train_command: list[str] | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    pad_token: str | None = None
    run_dir: str | None = None
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)

    @field_validator("train_command")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("must be a non-empty list of arguments, e.g. [python, train.py]")
        return v

    @field_validator("vram", "target_gpu", mode="before")
    @classmethod
    def _number_as_text(cls, v: Any) -> Any:
        """``target_gpu: 4090`` and ``vram: 24`` (YAML reads numbers) mean what --gpu 4090 and --vram 24 do."""
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("vram")
    @classmethod
    def _vram(cls, v: str | None) -> str | None:
        if v is not None:
            parse_size(v)
        return v

    @field_validator("target_gpu")
    @classmethod
    def _target_gpu(cls, v: str | None) -> str | None:
        if v is not None:
            from fmllm_tui import gpudb

            try:
                gpudb.lookup(v)
            except LookupError as e:
                raise ValueError(str(e)) from None
        return v


class FineTuneConfig(BaseModel):
    """The typed, validated view every fmllm module reads."""

    model_config = ConfigDict(extra="forbid")

    base_model_name: str = Field(min_length=1)
    data_format: DataFormat = "instruction"
    use_adapter: bool = True
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationSettings = Field(default_factory=QuantizationSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    paths: PathsSettings = Field(default_factory=PathsSettings)
    fmllm: FmllmSettings = Field(default_factory=FmllmSettings)

    # Filled by the loader (not from the file): absolute paths resolved against the config dir.
    data_file: str | None = None
    eval_data_file: str | None = None
    output_dir: str | None = None

    @property
    def compute_dtype(self) -> str:
        return self.quantization.bnb_4bit_compute_dtype

    @property
    def effective_batch(self) -> int:
        t = self.training
        return t.per_device_train_batch_size * t.gradient_accumulation_steps


# Keys people often write for ours; used for did-you-mean before difflib.
ALIASES: dict[str, str] = {
    "lora_alpha": "alpha",
    "lora_r": "r",
    "rank": "r",
    "lora_dropout": "dropout",
    "lora_rank": "r",
    "target_module": "target_modules",
    "load_in_4bit": "use_4bit",
    "bnb_4bit_use_double_quant": "use_nested_quant",
    "double_quant": "use_nested_quant",
    "compute_dtype": "bnb_4bit_compute_dtype",
    "quant_type": "bnb_4bit_quant_type",
    "batch_size": "per_device_train_batch_size",
    "micro_batch_size": "per_device_train_batch_size",
    "train_batch_size": "per_device_train_batch_size",
    "eval_batch_size": "per_device_eval_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "gradient_accumulation": "gradient_accumulation_steps",
    "lr": "learning_rate",
    "epochs": "num_train_epochs",
    "optimizer": "optim",
    "scheduler": "lr_scheduler_type",
    "seq_len": "max_seq_length",
    "max_length": "max_seq_length",
    "cutoff_len": "max_seq_length",
    "sequence_len": "max_seq_length",
    "model_name": "base_model_name",
    "base_model": "base_model_name",
    "model": "base_model_name",
    "attn_implementation": "attn_implementation",
}

SECTIONS: dict[str, type[BaseModel]] = {
    "lora": LoraSettings,
    "quantization": QuantizationSettings,
    "training": TrainingSettings,
    "fmllm": FmllmSettings,
}
TOP_FIELDS = ("base_model_name", "data_format", "use_adapter")
FT_SECTIONS = ("lora", "quantization", "training")

# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------

# parse_size lives in fmllm_tui/units.py (re-exported here for the callers that read configs).


# --------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------


def make_yaml() -> YAML:
    """The one round-trip YAML instance configuration fmllm reads and writes with."""
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096
    y.allow_duplicate_keys = False
    return y


def _line_col_of_offset(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


def read_text(path: Path) -> tuple[bytes, str]:
    """Read a config file's bytes and text, turning every OS/encoding failure into ConfigError."""
    try:
        exists = path.exists()
    except PermissionError:
        raise ConfigError(
            path,
            [Problem("permission denied: fmllm cannot reach this file (a folder above it is not readable)",
                     hint=f"check the folders' owner and mode: ls -ld {path.parent}")],
        ) from None
    if not exists:
        if path.is_symlink():
            raise ConfigError(path, [Problem("the file is a symbolic link to a missing file")])
        raise ConfigError(
            path,
            [
                Problem(
                    "no such file",
                    hint="pass the path of your config.yaml with --config PATH "
                    "(or set FMLLM_CONFIG)",
                )
            ],
        )
    if path.is_dir():
        inside = path / "config.yaml"
        raise ConfigError(
            path,
            [Problem("this is a directory, not a config file",
                     hint=(f"did you mean {inside}?" if inside.is_file() else
                           "pass the path of your config.yaml with --config PATH"))],
        )
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise ConfigError(
            path,
            [Problem("permission denied: fmllm cannot read this file", hint=f"check its owner and mode: ls -l {path}")],
        ) from None
    except OSError as e:
        raise ConfigError(path, [Problem(f"cannot read the file: {e.strerror or e}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(
            path,
            [
                Problem(
                    f"the file is not UTF-8 text (byte 0x{raw[e.start]:02x} cannot be decoded)",
                    line=line,
                    column=col,
                    hint="save it as UTF-8, e.g. iconv -f latin1 -t utf-8 config.yaml > fixed.yaml",
                )
            ],
        ) from None
    if "\x00" in text:
        off = text.index("\x00")
        line, col = _line_col_of_offset(text, off)
        raise ConfigError(path, [Problem("the file contains a NUL byte: it is binary, not YAML", line=line, column=col)])
    return raw, text


#: What a config may cost before fmllm reads it (a config is a few KB; real ones stay far below).
MAX_CONFIG_CHARS = 4 * 1024 * 1024
MAX_NESTING = 64
MAX_EXPANDED_NODES = 200_000  # nodes once every alias is expanded (a "billion laughs" has 10**9)


def _check_cost(path: Path, text: str) -> None:
    """Size, nesting depth and alias expansion of ``text``, from the YAML event stream (no
    document is built): each over its limit is a located ConfigError, found in well under a
    second with bounded memory. YAML errors are left to the real parse."""
    from ruamel.yaml.events import (
        AliasEvent,
        CollectionEndEvent,
        CollectionStartEvent,
        NodeEvent,
    )

    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(path, [Problem(f"the file is {len(text) / 2**20:.1f} MiB; fmllm reads configs up to "
                                         f"{MAX_CONFIG_CHARS // 2**20} MiB", line=1, column=1,
                                         hint="is this the right file? a config.yaml is a few KB")])
    frames: list[list[Any]] = []  # open collections: [anchor, expanded node count]
    anchors: dict[str, int] = {}
    total = 0

    def stop(ev: Any, message: str, hint: str) -> None:
        mark = ev.start_mark
        raise ConfigError(path, [Problem(message, line=mark.line + 1, column=mark.column + 1, hint=hint)])

    def add(n: int) -> None:
        nonlocal total
        total += n
        if frames:
            frames[-1][1] += n

    try:
        for ev in make_yaml().parse(io.StringIO(text)):
            if isinstance(ev, CollectionStartEvent):
                add(1)
                frames.append([ev.anchor, 1])
                if len(frames) > MAX_NESTING:
                    stop(ev, f"the settings nest more than {MAX_NESTING} levels deep here",
                         "a config is a few levels deep; this looks generated or broken")
            elif isinstance(ev, CollectionEndEvent):
                anchor, n = frames.pop()
                if anchor is not None:
                    anchors[anchor] = n
            elif isinstance(ev, AliasEvent):
                if any(f[0] == ev.anchor for f in frames):
                    stop(ev, f"*{ev.anchor} refers to the section it is inside (&{ev.anchor} is still open here): "
                         "a cycle", "point the alias (or the merge key <<:) at an anchor defined before this section")
                add(anchors.get(ev.anchor, 1))
            elif isinstance(ev, NodeEvent):  # a scalar
                add(1)
                if ev.anchor is not None:
                    anchors[ev.anchor] = 1
            if total > MAX_EXPANDED_NODES:
                stop(ev, f"the aliases (*name) expand to more than {MAX_EXPANDED_NODES:,} values here",
                     "an alias that repeats other aliases grows exponentially ('billion laughs'); "
                     "write the values out, or reference each anchor once")
    except (YAMLError, RecursionError):
        return  # the real parse reports it, located


def parse_document(path: Path, text: str) -> CommentedMap:
    """Parse YAML text into the round-trip document; errors become ConfigError with line/col."""
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        raise ConfigError(
            path,
            [
                Problem(
                    "the file is empty (no settings in it)",
                    hint="start from the shipped config.yaml; the README's Config reference lists every key",
                )
            ],
        )
    _check_cost(path, text)
    y = make_yaml()
    try:
        doc = y.load(io.StringIO(text))
    except RecursionError:
        raise ConfigError(path, [Problem("the settings nest too deeply to read", line=1, column=1)]) from None
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        col = mark.column + 1 if mark is not None else None
        what = (e.problem or "invalid YAML").strip()
        if "duplicate key" in str(e) or type(e).__name__ == "DuplicateKeyError":
            key_match = re.search(r'found duplicate key "([^"]+)"', str(e))
            keyname = key_match.group(1) if key_match else "a key"
            first = e.context_mark
            msg = f"duplicate key {keyname!r}: it appears twice in the same section"
            hint = "keep one of them; YAML would silently use only one"
            if first is not None:
                hint = f"the first is at line {first.line + 1}; " + hint
            raise ConfigError(path, [Problem(msg, line=line, column=col, hint=hint)]) from None
        ctx = f" ({e.context.strip()})" if e.context else ""
        raise ConfigError(
            path,
            [
                Problem(
                    f"invalid YAML: {what}{ctx}",
                    line=line,
                    column=col,
                    hint="check indentation (spaces, not tabs), colons after keys, and quotes",
                )
            ],
        ) from None
    except YAMLError as e:
        raise ConfigError(path, [Problem(f"invalid YAML: {e}")]) from None
    if doc is None:
        raise ConfigError(path, [Problem("the file is empty (no settings in it)")])
    if not isinstance(doc, CommentedMap):
        raise ConfigError(
            path,
            [
                Problem(
                    f"the top level must be a mapping of sections (key: value), found a {type(doc).__name__}",
                    line=1,
                    column=1,
                )
            ],
        )
    return doc


# --------------------------------------------------------------------------------------------
# Positions in the round-trip document
# --------------------------------------------------------------------------------------------


def node_at(doc: Any, dotted: str) -> Any:
    """Return the node at a dotted path in the document, or raise KeyError."""
    node = doc
    for part in dotted.split("."):
        if isinstance(node, CommentedSeq) and part.isdigit():
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(dotted)
    return node


def position_of(doc: CommentedMap, dotted: str, *, value: bool = True) -> tuple[int | None, int | None]:
    """1-based (line, column) of a key's value (or the key itself) in the document.

    Falls back to the deepest existing ancestor, so a missing key points at its section.
    """
    parts = dotted.split(".")
    for depth in range(len(parts), 0, -1):
        parent_path, last = parts[: depth - 1], parts[depth - 1]
        try:
            parent = node_at(doc, ".".join(parent_path)) if parent_path else doc
        except KeyError:
            continue
        try:
            if isinstance(parent, CommentedMap) and last in parent:
                ln, col = parent.lc.value(last) if value and depth == len(parts) else parent.lc.key(last)
                return ln + 1, col + 1
            if isinstance(parent, CommentedSeq) and last.isdigit() and int(last) < len(parent):
                ln, col = parent.lc.item(int(last))
                return ln + 1, col + 1
        except (KeyError, TypeError, AttributeError):
            continue
    return None, None


def located(doc: CommentedMap, key: str, message: str, *, value: bool = True, **fields: Any) -> Problem:
    """A Problem about ``key`` (a dotted path in the file), placed at its value (``value=False``:
    at the key itself); ``fields`` are Problem's others (hint, severity)."""
    line, col = position_of(doc, key, value=value)
    return Problem(message, key=key, line=line, column=col, **fields)


def to_plain(node: Any) -> Any:
    """Round-trip nodes → plain dict/list/scalars (ruamel scalar subclasses → builtins)."""
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [to_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if node is None:
        return None
    return str(node)  # timestamps and other tags: read as text


# --------------------------------------------------------------------------------------------
# Interpolation (${paths.data_dir}/x.jsonl, ${oc.env:VAR,default})
# --------------------------------------------------------------------------------------------


def _resolve_interpolations(path: Path, doc: CommentedMap, plain: dict[str, Any], file_keys: list[str]) -> dict[str, str]:
    """Resolve OmegaConf interpolations in the given string values. Returns key → resolved."""
    wanted = {}
    for key in file_keys:
        try:
            value = node_at(plain, key) if "." in key else plain[key]
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(value, str) and "${" in value:
            wanted[key] = value
    if not wanted:
        return {}
    from omegaconf import OmegaConf  # deferred: only configs that interpolate pay for it
    from omegaconf.errors import OmegaConfBaseException

    try:
        conf = OmegaConf.create(plain)
    except OmegaConfBaseException as e:
        raise ConfigError(path, [Problem(f"cannot resolve ${{...}} interpolations: {e}")]) from None
    out: dict[str, str] = {}
    problems = []
    for key, raw in wanted.items():
        try:
            value = OmegaConf.select(conf, key, throw_on_missing=True)
            out[key] = str(value)
        except Exception as e:  # OmegaConf raises several unrelated types here
            problems.append(located(
                doc, key, f"cannot resolve {raw!r}: {str(e).splitlines()[0]}",
                hint="an interpolation names another key, e.g. ${paths.data_dir}/train.jsonl, "
                "or an environment variable, e.g. ${oc.env:DATA_DIR}",
            ))
    if problems:
        raise ConfigError(path, problems)
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_PYDANTIC_WORDS = {
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number, not a fraction",
    "int_type": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected text",
    "list_type": "expected a list",
    "dict_type": "expected a mapping (key: value lines)",
    "model_type": "expected a section (key: value lines)",
    "missing": "this required key is missing",
}


def _describe(error: dict[str, Any]) -> tuple[str, str | None]:
    """Plain-words message and expectation for one pydantic error."""
    etype = error["type"]
    ctx = error.get("ctx") or {}
    found = error.get("input")
    from fmllm_tui.redact import mask_data

    # A section pasted where a value belongs may hold secrets (password: ...): masked in the message.
    shown = "nothing (empty value)" if found is None else repr(mask_data(found))
    if etype == "literal_error":
        expected = ctx.get("expected", "")
        options = re.findall(r"'([^']*)'", expected)
        close = difflib.get_close_matches(str(found), options, n=1, cutoff=0.5) if isinstance(found, str) else []
        hint = f"did you mean {close[0]!r}?" if close else None
        return f"found {shown}, expected one of: {', '.join(options)}", hint
    if etype in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}[etype]
        limit = next(iter(ctx.values())) if ctx else "?"
        return f"found {shown}, expected a value {sign} {limit}", None
    if etype == "too_short":
        return f"found {shown}, expected a non-empty value", None
    if etype == "value_error":
        return f"found {shown}: {ctx.get('error', error.get('msg'))}", None
    if etype in _PYDANTIC_WORDS:
        msg = _PYDANTIC_WORDS[etype]
        if etype != "missing":
            msg = f"found {shown}, {msg}"
        return msg, None
    return f"found {shown}: {error.get('msg')}", None


def _did_you_mean(name: str, options: list[str]) -> str | None:
    alias = ALIASES.get(name)
    if alias and alias in options:
        return alias
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return close[0] if close else None


@dataclass
class LoadedConfig:
    """A loaded config: the typed view, the round-trip document and where each key lives."""

    path: Path
    text: str
    raw: bytes
    doc: CommentedMap
    layout: Literal["nested", "flat"]
    view: FineTuneConfig
    interpolated: dict[str, str] = field(default_factory=dict)
    # Keys fmllm does not know inside the sections it reads: kept in the file, ignored, reported.
    warnings: list[Problem] = field(default_factory=list)

    def file_key(self, canonical: str) -> str:
        """Dotted path in the person's file for a canonical setting name."""
        return file_key_for(self.layout, canonical)

    def position(self, canonical: str) -> tuple[int | None, int | None]:
        return position_of(self.doc, self.file_key(canonical))

    def has(self, canonical: str) -> bool:
        try:
            node_at(self.doc, self.file_key(canonical))
            return True
        except (KeyError, IndexError):
            return False


def file_key_for(layout: str, canonical: str) -> str:
    head = canonical.split(".", 1)[0]
    if layout == "nested" and (head in FT_SECTIONS or head in TOP_FIELDS):
        return "fine_tuning." + canonical
    return canonical


#: Names real flat configs use for settings fmllm reads inside a section (TrainingArguments /
#: SFTConfig / BitsAndBytesConfig spellings), beyond the section's own field names.
_MISPLACED_ALIASES = {
    "lora_r": "lora.r", "lora_rank": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules", "target_modules": "lora.target_modules",
    "load_in_4bit": "quantization.use_4bit", "bnb_4bit_use_double_quant": "quantization.use_nested_quant",
    "train_file": "paths.ft_combined_data_file", "eval_file": "paths.ft_eval_data_file",
    "max_length": "training.max_seq_length", "max_seq_len": "training.max_seq_length",
}


def misplaced_home(name: str) -> str | None:
    """Where fmllm reads a setting named ``name`` found outside its section (``max_seq_length``
    -> ``training.max_seq_length``), or None when no section has it."""
    if name in _MISPLACED_ALIASES:
        return _MISPLACED_ALIASES[name]
    for sec in (*FT_SECTIONS, "fmllm"):
        model = _model_for(sec)
        if model is not None and name in model.model_fields:
            return f"{sec}.{name}"
    return None


def _misplaced_top_level(doc: CommentedMap) -> Problem | None:
    """One warning for flat-layout settings written at the top level that fmllm reads inside a
    section (a real layout: TrainingArguments keys beside base_model_name). fmllm would plan with
    its defaults for them, silently, so it names each and where it belongs."""
    found: list[tuple[str, str]] = []
    for k in doc:
        name = str(k)
        if name in TOP_FIELDS or name in FT_SECTIONS or name in ("paths", "fmllm") or isinstance(doc[k], dict):
            continue
        home = misplaced_home(name)
        if home:
            found.append((name, home))
    if not found:
        return None
    listed = ", ".join(f"{n} (-> {h})" for n, h in found)
    return located(
        doc, found[0][0],
        f"{len(found)} setting{'s' if len(found) != 1 else ''} at the top level fmllm does not read there: {listed}",
        value=False,
        hint="fmllm plans with its defaults for these; move each under its section (e.g. training:) to be read",
        severity="warning",
    )


def detect_layout(doc: CommentedMap) -> Literal["nested", "flat"] | None:
    if "fine_tuning" in doc:
        return "nested"
    if any(k in doc for k in (*FT_SECTIONS, "base_model_name")):
        return "flat"
    return None


def _section_dict(path: Path, doc: CommentedMap, file_key: str, node: Any, problems: list[Problem]) -> dict[str, Any] | None:
    if node is None:
        return {}
    if not isinstance(node, dict):
        problems.append(located(doc, file_key, f"expected a section (indented key: value lines), found {to_plain(node)!r}"))
        return None
    return to_plain(node)


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read, parse and validate a config file. Never writes it. Raises ConfigError."""
    p = Path(path)
    raw, text = read_text(p)
    return load_config_text(p, text, raw)


def load_config_text(path: str | os.PathLike[str], text: str, raw: bytes | None = None) -> LoadedConfig:
    """Parse and validate ``text`` as the contents of ``path`` (which is not read or written).

    Relative paths in the config resolve against ``path``'s folder. Raises ConfigError.
    """
    p = Path(path)
    if raw is None:
        raw = text.encode("utf-8")
    doc = parse_document(p, text)
    layout = detect_layout(doc)
    if layout is None:
        raise ConfigError(p, [_no_settings()])
    problems: list[Problem] = []
    warnings: list[Problem] = []
    data = _gather(p, doc, layout, problems, warnings)
    interpolated = _interpolate(p, doc, layout, data)
    if "base_model_name" not in data and not problems:
        problems.append(located(doc, file_key_for(layout, "base_model_name"), "the model id is missing",
                                hint="add e.g. base_model_name: Qwen/Qwen2.5-7B-Instruct (a Hub id or a local directory)"))
    view: FineTuneConfig | None = None
    if not problems:
        view = _validate(data, layout, doc, problems, warnings)
    if problems or view is None:
        # Keep problems in file order so the first one on screen is the first in the file.
        problems.sort(key=lambda pr: (pr.line or 0, pr.column or 0))
        raise ConfigError(p, _dedupe(problems))
    warnings.sort(key=lambda pr: (pr.line or 0, pr.column or 0))
    _settle_paths(p, doc, layout, view)
    return LoadedConfig(path=p, text=text, raw=raw, doc=doc, layout=layout, view=view, interpolated=interpolated,
                        warnings=_dedupe(warnings))


def _no_settings() -> Problem:
    """The problem of a YAML file with neither layout's keys (a new one each time: callers may edit it)."""
    return Problem(
        "no fine-tuning settings found: expected a 'fine_tuning:' section (nested layout) "
        "or 'lora:', 'quantization:', 'training:' and 'base_model_name' at the top (flat layout)",
        line=1,
        column=1,
        hint="see the shipped config.yaml and the README's Config reference",
    )


def _gather(p: Path, doc: CommentedMap, layout: Literal["nested", "flat"], problems: list[Problem],
            warnings: list[Problem]) -> dict[str, Any]:
    """The settings fmllm reads, as plain data under canonical names (before interpolation and
    validation). Appends what is misplaced or malformed to ``problems`` and ``warnings``."""
    root_key = "fine_tuning" if layout == "nested" else ""
    root = doc["fine_tuning"] if layout == "nested" else doc
    if layout == "nested" and not isinstance(root, dict):
        raise ConfigError(p, [located(doc, "fine_tuning", "expected a section (indented key: value lines)")])
    data: dict[str, Any] = {name: to_plain(root[name]) for name in TOP_FIELDS if name in root}
    if layout == "nested":
        warnings.extend(_unknown_in_fine_tuning(doc, root))
    else:
        stray = _misplaced_top_level(doc)
        if stray:
            warnings.append(stray)
        problems.extend(_model_id_aliases(doc))
    for sec in FT_SECTIONS:
        if sec in root:
            d = _section_dict(p, doc, f"{root_key}.{sec}" if root_key else sec, root[sec], problems)
            if d is not None:
                data[sec] = d
    for sec in ("paths", "fmllm"):
        if sec in doc:
            d = _section_dict(p, doc, sec, doc[sec], problems)
            if d is not None:
                data[sec] = d
    return data


def _unknown_in_fine_tuning(doc: CommentedMap, root: Any) -> list[Problem]:
    """A warning for each key of the nested layout's ``fine_tuning:`` that fmllm does not read,
    saying where fmllm reads it when it belongs in a section."""
    allowed = set(TOP_FIELDS) | set(FT_SECTIONS)
    found = []
    for k in root:
        if str(k) in allowed:
            continue
        sug = _did_you_mean(str(k), sorted(allowed))
        home = misplaced_home(str(k))
        found.append(located(
            doc, f"fine_tuning.{k}", f"unknown key {str(k)!r} in section 'fine_tuning' (fmllm ignores it)",
            value=False, severity="warning",
            hint=(f"fmllm reads it as fine_tuning.{home}: move it there (until then fmllm plans "
                  "with its default) " if home else f"did you mean {sug!r}? " if sug else "")
            + f"known keys: {', '.join(sorted(allowed))}",
        ))
    return found


def _model_id_aliases(doc: CommentedMap) -> list[Problem]:
    """A flat config without base_model_name that names its model under another common key."""
    if "base_model_name" in doc:
        return []
    return [located(doc, alias, f"fmllm reads the model id from 'base_model_name', found {alias!r}", value=False,
                    hint=f"rename {alias!r} to 'base_model_name'")
            for alias in ("model_name", "base_model", "model") if alias in doc and isinstance(doc[alias], str)]


def _interpolate(p: Path, doc: CommentedMap, layout: Literal["nested", "flat"], data: dict[str, Any]) -> dict[str, str]:
    """Resolve the ``${...}`` interpolations in every string of ``data`` (in place); returns each
    resolved file key with its value."""
    string_keys: list[str] = []

    def collect(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                collect(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                collect(f"{prefix}.{i}", v)
        elif isinstance(value, str) and "${" in value:
            string_keys.append(prefix)

    for canonical_root, value in data.items():
        collect(file_key_for(layout, canonical_root), value)
    if not string_keys:
        return {}
    interpolated = _resolve_interpolations(p, doc, to_plain(doc), string_keys)
    for fk, resolved in interpolated.items():
        canonical = fk[len("fine_tuning.") :] if layout == "nested" and fk.startswith("fine_tuning.") else fk
        parts = canonical.split(".")
        target: Any = data
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(parts[-1])] = resolved
        else:
            target[parts[-1]] = resolved
    return interpolated


def _settle_paths(p: Path, doc: CommentedMap, layout: Literal["nested", "flat"], view: FineTuneConfig) -> None:
    """Check the model id and resolve the data and output paths against the config's folder."""
    base = p.resolve().parent
    bad_id = _model_id_problem(base, view.base_model_name)
    if bad_id:
        raise ConfigError(p, [located(doc, file_key_for(layout, "base_model_name"), bad_id,
                                      hint="a Hub id like Qwen/Qwen2.5-7B-Instruct, or the path of a local folder")])
    view.data_file = _resolve_path(base, view.paths.ft_combined_data_file, view.paths.data_dir)
    view.eval_data_file = _resolve_path(base, view.paths.ft_eval_data_file, view.paths.data_dir)
    out = os.path.expanduser(view.paths.ft_output_dir or view.paths.output_dir or "outputs")
    view.output_dir = out if os.path.isabs(out) else str((base / out).resolve())


def _model_id_problem(base: Path, model_id: str) -> str | None:
    """Why ``model_id`` is neither a local folder nor a valid Hub id (hub.validate_model_id's
    rule); None when it is usable. Every check then plans from a model it can name."""
    from fmllm_tui.hub import _looks_like_path, validate_model_id

    try:
        candidates = [Path(model_id).expanduser(), base / Path(model_id).expanduser()]
        if any(c.is_dir() for c in candidates) or _looks_like_path(model_id):
            return None  # a folder (model.available says whether it holds a model)
    except (OSError, RuntimeError, ValueError):
        pass
    problem = validate_model_id(model_id)
    return f"{model_id!r} is not a valid model id: {problem}" if problem else None


def _validate(data: dict[str, Any], layout: Literal["nested", "flat"], doc: CommentedMap,
              problems: list[Problem], warnings: list[Problem]) -> FineTuneConfig | None:
    """The typed view of ``data``. A key fmllm does not know, in a section it reads, is a warning
    (real projects keep keys of their own there) and is dropped from the view; a known key of the
    wrong type or range is an error. Appends to ``problems`` and ``warnings``."""
    for _ in range(8):  # each pass drops the unknown keys pydantic named; nesting is shallow
        try:
            return FineTuneConfig.model_validate(data)
        except ValidationError as ve:
            errors = ve.errors()
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        if len(unknown) < len(errors):
            break
        for err in unknown:
            loc = [str(x) for x in err["loc"]]
            warnings.append(_unknown_key(loc, layout, doc))
            target: Any = data
            for part in loc[:-1]:
                target = target[part]
            target.pop(loc[-1], None)
    for err in errors:
        loc = [str(x) for x in err["loc"]]
        # Drop pydantic's union/literal branch labels from the location.
        loc = [x for x in loc if not (x.startswith("literal[") or x in ("list[str]", "str", "int", "float", "bool", "function-after[_non_empty(), union[list[str],literal['all-linear']]]"))]
        if err["type"] == "extra_forbidden":
            warnings.append(_unknown_key(loc, layout, doc))
            continue
        canonical = ".".join(loc)
        msg, hint = _describe(err)
        problems.append(located(doc, file_key_for(layout, canonical), msg, hint=hint or _HINTS.get(canonical)))
    return None


def _unknown_key(loc: list[str], layout: Literal["nested", "flat"], doc: CommentedMap) -> Problem:
    """The warning for a key fmllm does not read, with a did-you-mean among the section's keys."""
    section_canon = ".".join(loc[:-1])
    name = loc[-1]
    model = _model_for(section_canon)
    options = sorted(model.model_fields) if model else []
    sug = _did_you_mean(name, options)
    section_name = file_key_for(layout, section_canon) if section_canon else "(top level)"
    return located(
        doc, file_key_for(layout, ".".join(loc)), f"unknown key {name!r} in section {section_name!r} (fmllm ignores it)",
        value=False,
        hint=(f"did you mean {sug!r}? " if sug else "")
        + ("other TrainingArguments go under training.extra_args" if section_canon.endswith("training")
           else f"known keys: {', '.join(options)}"),
        severity="warning",
    )


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen = set()
    out = []
    for pr in problems:
        key = (pr.key, pr.message)
        if key not in seen:
            seen.add(key)
            out.append(pr)
    return out


def _resolve_path(base: Path, value: str | None, data_dir: str | None) -> str | None:
    if not value:
        return None
    v = os.path.expanduser(value)
    if os.path.isabs(v):
        return v
    return str((base / v).resolve())


def _model_for(section_canonical: str) -> type[BaseModel] | None:
    if section_canonical == "":
        return FineTuneConfig
    if section_canonical == "fmllm.distributed":
        return DistributedSettings
    return SECTIONS.get(section_canonical)


_HINTS = {
    "lora.r": "r is the LoRA rank: a whole number, typically 8 to 64, e.g. `r: 8`",
    "lora.alpha": "alpha scales the adapter; usually equal to r or 2*r, e.g. `alpha: 16`",
    "lora.dropout": "a fraction from 0 (none) to below 1, e.g. `dropout: 0.05`",
    "training.learning_rate": "a positive number below 1; QLoRA usually uses 1e-4 to 3e-4",
    "training.max_seq_length": "tokens per example, from 32 up; 512 to 4096 is typical",
    "training.per_device_train_batch_size": "examples per GPU per step: a whole number, 1 or more",
    "training.gradient_accumulation_steps": "micro-batches per optimizer step: a whole number, 1 or more",
}


def default_config_path() -> Path:
    """--config default: $FMLLM_CONFIG, else ./config.yaml."""
    env = os.environ.get("FMLLM_CONFIG")
    return Path(env) if env else Path("config.yaml")
