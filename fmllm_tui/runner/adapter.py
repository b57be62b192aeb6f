"""The adapter's files in the training process: save (atomic, with a completion marker),
gather under FSDP, load a checkpoint's adapter for a resume, check a saved adapter reloads
equal, and find the newest complete checkpoint (:mod:`fmllm_tui.runner.train` uses them).

Under FSDP the adapter is sharded over the ranks and peft cannot select its tensors from the
wrapped model: their keys are mapped before wrapping (:func:`adapter_key_map`), the full state
dict is gathered to rank 0 (:func:`gather_full_state`) and the adapter's tensors picked from it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from . import rundir as rd
from .lean import RecipeError
from .runfiles import say


class SaveError(Exception):
    """Saving the adapter failed; nothing that looks complete was left behind."""


def adapter_key_map(model: Any, adapter_name: str = "default") -> dict[str, str]:
    """{model state-dict key: key in adapter_model.safetensors} of the adapter's tensors, asked of
    peft while the model is unwrapped. Under FSDP peft cannot select them itself: it matches the
    wrapped module names, which carry ``_fsdp_wrapped_module`` inside, and keeps nothing."""
    from peft import get_peft_model_state_dict

    saved = get_peft_model_state_dict(model, adapter_name=adapter_name)
    by_ptr = {t.data_ptr(): k for k, t in saved.items()}
    out = {name: by_ptr[t.data_ptr()] for name, t in model.state_dict().items() if t.data_ptr() in by_ptr}
    if len(out) != len(saved):
        raise RecipeError(f"could not match the adapter's {len(saved)} tensors to the model's parameters "
                          f"(matched {len(out)}): saving under FSDP would lose some")
    return out


def adapter_from_full_state(full_state: dict[str, Any], key_map: dict[str, str]) -> dict[str, Any]:
    """The adapter's tensors (peft's saved keys) picked from the full state dict FSDP gathered."""
    missing = [k for k in key_map if k not in full_state]
    if missing or not key_map:
        raise SaveError(f"the gathered FSDP state dict lacks {len(missing)} of the adapter's {len(key_map)} "
                        f"tensors (e.g. {missing[0] if missing else 'none selected'}); nothing was saved")
    return {saved: full_state[k].detach().to("cpu").contiguous() for k, saved in key_map.items()}


def gather_full_state(wrapped: Any, device: str) -> dict[str, Any]:
    """The FSDP model's full state dict, on rank 0 (a collective: every rank calls it; the
    others get an empty or partial dict). On the CPU without ``offload_to_cpu``: torch's FSDP
    frees the unsharded storage the offloaded "copies" would alias there."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    cfg = FullStateDictConfig(offload_to_cpu=device == "cuda", rank0_only=True)
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, cfg):
        return wrapped.state_dict()


def write_adapter_files(model: Any, tmp: Path, adapter: dict[str, Any], adapter_name: str = "default") -> None:
    """peft's save_pretrained, for tensors already selected: adapter_config.json (inference
    mode, as peft writes it) and adapter_model.safetensors."""
    import copy

    from safetensors.torch import save_file

    config = copy.deepcopy(model.peft_config[adapter_name])
    config.inference_mode = True
    config.save_pretrained(str(tmp))
    # The tensors last, under their final name only once complete (a checkpoint counts as
    # complete when its adapter_model.safetensors is there).
    part = tmp / ".adapter_model.safetensors.part"
    save_file(adapter, str(part), metadata={"format": "pt"})
    os.replace(part, tmp / "adapter_model.safetensors")


def load_checkpoint_adapter(model: Any, checkpoint: Path) -> int:
    """FSDP resume: the checkpoint's adapter into the (not yet wrapped) peft model, on every rank.
    The Trainer's own FSDP checkpoint holds no adapter tensors (see adapter_key_map)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = checkpoint / "adapter_model.safetensors"
    try:
        tensors = load_file(str(f))
    except Exception as e:  # missing, truncated or not safetensors: say which file and what to do
        raise RecipeError(f"{f} cannot be read ({type(e).__name__}: {e}): resume from an earlier checkpoint "
                          "(move this one aside) or start a new run") from None
    result = set_peft_model_state_dict(model, tensors)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if not tensors or unexpected:
        raise RecipeError(f"{f} does not fit this model's adapter ({len(tensors)} tensors, {len(unexpected)} unexpected, "
                          f"e.g. {unexpected[:1]}): start a new run instead of resuming this one")
    return len(tensors)


def save_adapter_atomic(model: Any, tokenizer: Any, dest: Path, meta: dict[str, Any],
                        adapter: dict[str, Any] | None = None) -> Path:
    """Save the adapter to a temporary folder beside ``dest``, write the completion marker last,
    then rename. On any failure the temporary folder is removed and :class:`SaveError` says why;
    ``dest`` is never left half-written. ``adapter``: the adapter's tensors already selected
    (FSDP: :func:`adapter_from_full_state`); None: peft takes them from ``model``."""
    dest = Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        if adapter is not None:
            write_adapter_files(model, tmp, adapter)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[str(f.relative_to(tmp))] = f.stat().st_size
        marker = {"files": files, "saved": time.time(), **meta}
        rd.write_json_atomic(tmp / rd.COMPLETE_MARKER, marker)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{int(time.time())}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        try:
            fd = os.open(dest.parent, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        except OSError:
            pass
        return dest
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            free = shutil.disk_usage(dest.parent).free
            raise SaveError(f"disk full while saving the adapter to {dest} ({free / 2**20:.0f} MiB free): "
                            "free space or point paths.output_dir at a bigger disk; nothing was left "
                            "that looks like a finished adapter") from None
        raise SaveError(f"saving the adapter to {dest} failed: {e.strerror or e}; nothing was left that "
                        "looks like a finished adapter") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def last_complete_checkpoint(folder: Path, *, rename: bool = True) -> Path | None:
    """The newest checkpoint whose save finished: trainer state and the adapter present (an FSDP
    checkpoint holds the sharded model, ``pytorch_model_fsdp_*``, and optimizer instead).

    Checkpoints a kill interrupted mid-save are renamed ``*.incomplete`` so the Trainer's
    rotation never counts them (``rename`` False: only rank 0 renames, the others just skip).
    One with a file cut short (rundir.checkpoint_problem names it) is renamed ``*.damaged`` and
    the one before it is used, saying so.
    """
    found = []
    for step, p in rd.checkpoint_dirs(folder):
        if rd.checkpoint_saved(p):
            found.append((step, p))
        elif rename:
            p.rename(p.with_name(p.name + ".incomplete"))
    damaged: list[str] = []
    for _, p in found:  # newest first
        problem = rd.checkpoint_problem(p)
        if problem is None:
            if damaged:
                say(f"falling back to {p.name}, the newest complete checkpoint before {damaged[-1]}")
            return p
        say(f"{p.name} is damaged and not resumed from: {problem}")
        damaged.append(p.name)
        if rename:
            p.rename(p.with_name(p.name + ".damaged"))
    return None


def _adapter_tensors(model: Any, name: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.named_parameters():
        if f".{name}." in k or k.endswith(f".{name}"):
            out[k.replace(f".{name}", "")] = v.detach()
    return out


def reload_check(model: Any, adapter: Path) -> tuple[bool, str]:
    """Load the saved adapter beside the trained one and compare every tensor."""
    try:
        model.load_adapter(str(adapter), adapter_name="reloaded", is_trainable=False)
        trained = _adapter_tensors(model, "default")
        loaded = _adapter_tensors(model, "reloaded")
        if not trained or set(trained) != set(loaded):
            return False, f"the reloaded adapter has {len(loaded)} tensors, the trained one {len(trained)}"
        bad = [k for k in trained if not torch.equal(trained[k].float().cpu(), loaded[k].float().cpu())]
        if bad:
            return False, f"{len(bad)} tensors differ after reloading, e.g. {bad[0]}"
        model.set_adapter("reloaded")
        return True, f"reloaded {len(loaded)} tensors from {adapter}; all equal to the trained ones"
    except Exception as e:  # a reload failure is a finding of the test, not a crash
        return False, f"reloading the adapter failed: {type(e).__name__}: {e}"


def reload_check_files(adapter: Path, expected: dict[str, torch.Tensor]) -> tuple[bool, str]:
    """FSDP: compare the saved adapter file with the adapter tensors gathered from the ranks
    (the sharded model cannot load a second adapter beside the first)."""
    try:
        from safetensors.torch import load_file

        files = sorted(adapter.glob("adapter_model*.safetensors"))
        if not files:
            return False, f"no adapter_model*.safetensors in {adapter}"
        saved: dict[str, torch.Tensor] = {}
        for f in files:
            saved.update(load_file(str(f)))
        if not expected or set(saved) != set(expected):
            return False, f"the saved adapter has {len(saved)} tensors, the trained one {len(expected)}"
        bad = [k for k in expected if not torch.equal(expected[k].float().cpu(), saved[k].float().cpu())]
        if bad:
            return False, f"{len(bad)} tensors differ after reloading, e.g. {bad[0]}"
        return True, f"reloaded {len(saved)} tensors from {adapter}; all equal to the gathered trained ones"
    except Exception as e:  # a reload failure is a finding of the test, not a crash
        return False, f"reloading the adapter failed: {type(e).__name__}: {e}"
