"""Which keys a fix may write: fmllm's canonical settings, in the layout of the person's file."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from fmllm_tui.config import FT_SECTIONS, TOP_FIELDS, FineTuneConfig, LoadedConfig, PathsSettings

from .errors import FixError


def _annotation_model(ann: Any) -> type[BaseModel] | None:
    for cand in (ann, *typing.get_args(ann)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _annotation_is_dict(ann: Any) -> bool:
    return any(c is dict or typing.get_origin(c) is dict for c in (ann, *typing.get_args(ann)))


def known_canonical(key: str) -> bool:
    """Is ``key`` a canonical setting fmllm reads (``training.max_seq_length``, ``lora.r``, ...)?"""
    if not isinstance(key, str) or not key:
        return False
    model: type[BaseModel] = FineTuneConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if model is PathsSettings:
            return True  # paths: keeps any key
        field = model.model_fields.get(part)
        if field is None or (model is FineTuneConfig and part in ("data_file", "eval_data_file", "output_dir")):
            return False
        if i == len(parts) - 1:
            return True
        sub = _annotation_model(field.annotation)
        if sub is not None:
            model = sub
            continue
        return _annotation_is_dict(field.annotation)  # free-form mappings (extra_args, kwargs)
    return False


def canonical_of(loaded: LoadedConfig, file_key: str) -> str:
    """The canonical name of a dotted key of the person's file; FixError if fmllm does not read it."""
    head = file_key.split(".", 1)[0]
    if loaded.layout == "nested":
        if file_key.startswith("fine_tuning."):
            canonical = file_key[len("fine_tuning.") :]
            if canonical.split(".", 1)[0] not in (*FT_SECTIONS, *TOP_FIELDS):
                canonical = ""
        elif head in FT_SECTIONS or head in TOP_FIELDS:
            raise FixError(
                f"fix key {file_key!r} is a canonical name, but this config nests settings under fine_tuning:",
                hint="plan changes with loaded.file_key(canonical) (this is a bug in the caller)",
            )
        else:
            canonical = file_key
    else:
        canonical = file_key
    if not canonical or not known_canonical(canonical):
        raise FixError(f"{file_key!r} is not a setting fmllm reads, so no fix writes it")
    return canonical
