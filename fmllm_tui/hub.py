"""Can fmllm get this model? Hub, cache or local folder, told in plain words.

``check_model(model_id)`` answers with a ``ModelStatus``: where the model is (a local folder,
the Hub, the local Hugging Face cache), or exactly why it can't be had: gated without a token,
a token without access, an invalid token, not found (with did-you-mean ids), Hub unreachable,
missing from the cache while offline, an invalid id, an unknown revision. ``resolve_config``
returns the model's config.json from the best source available (local, Hub, cache, or the
shipped catalogue).

huggingface_hub is imported lazily. Settings are read from the environment at call time
(HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE), so a changed environment is
honoured even after huggingface_hub was imported. Only config.json is ever downloaded. The
token never appears in any message: every text field is masked before it is returned.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from fmllm_tui import catalogue
from fmllm_tui.redact import mask_text

HUB_WEB = "https://huggingface.co"
LOGIN_CMD = "hf auth login"
KINDS = ("local_dir", "hub", "cache", "gated_no_token", "gated_no_access", "invalid_token",
         "not_found", "unreachable", "offline_missing", "invalid_id", "revision_not_found")
_REPO_ID_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$", re.ASCII)  # the Hub's ids are ASCII
# Files that are pickles but not model weights.
_NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "adapter_model.bin")


@dataclass
class ModelStatus:
    """What fmllm found out about one model id (the token never appears in any field)."""

    model_id: str
    kind: str
    ok: bool
    message: str
    remedy: str | None = None
    suggestions: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    has_safetensors: bool | None = None
    pickle_only: bool | None = None
    files: list[str] = field(default_factory=list)
    auto_map: dict[str, Any] | None = None
    gated: str | bool | None = None
    revision: str | None = None
    commit: str | None = None
    location: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output."""
        return asdict(self)


# ---- environment ---------------------------------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline(offline: bool | None = None) -> bool:
    """Offline when asked to, or when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set."""
    if offline is not None:
        return offline
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    """The Hub URL in use: HF_ENDPOINT, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or HUB_WEB).rstrip("/")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _token() -> str | None:
    """The token huggingface_hub would send, read now: HF_TOKEN, else the saved login, else None."""
    if _truthy(os.environ.get("HF_HUB_DISABLE_IMPLICIT_TOKEN")):
        return None
    env = (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or "").strip()
    if env:
        return env
    if os.environ.get("HF_TOKEN_PATH"):
        path = Path(os.environ["HF_TOKEN_PATH"]).expanduser()
    elif os.environ.get("HF_HOME"):
        path = Path(os.environ["HF_HOME"]).expanduser() / "token"
    else:
        from huggingface_hub import constants

        path = Path(constants.HF_TOKEN_PATH)
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


# ---- id syntax -----------------------------------------------------------------------------
def _looks_like_path(model_id: str) -> bool:
    """A path by its form (absolute, ./, ../, ~, a drive letter), whether or not it exists."""
    return model_id.startswith(("/", "./", "../", "~", ".\\", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", model_id))


def validate_model_id(model_id: str) -> str | None:
    """Why ``model_id`` is not a valid Hub id, in plain words; None when it is valid."""
    if not model_id:
        return "the model id is empty"
    if model_id != model_id.strip():
        return "the model id has spaces at its start or end"
    if any(c.isspace() for c in model_id):
        return "the model id contains spaces"
    if "//" in model_id:
        return "the model id has an empty part ('//')"
    if model_id.count("/") > 1:
        return "a Hub id has at most one '/' (organisation/name)"
    if model_id.startswith("/") or model_id.endswith("/"):
        return "the model id starts or ends with '/'"
    if "--" in model_id or ".." in model_id:
        return "'--' and '..' are not allowed in Hub ids"
    if model_id.endswith(".git"):
        return "a Hub id cannot end with '.git'"
    if len(model_id.rsplit("/", 1)[-1]) > 96:
        return "the model name is longer than 96 characters"
    if not _REPO_ID_RE.match(model_id):
        bad = sorted({c for c in model_id if not ((c.isascii() and c.isalnum()) or c in "/_.-")})
        if bad:
            import unicodedata

            named = [f"{c!r} ({unicodedata.name(c, f'U+{ord(c):04X}')}, at position {model_id.index(c) + 1})"
                     if not c.isascii() else repr(c) for c in bad]
            lookalike = any(not c.isascii() and c.isalpha() for c in bad)
            return (f"the model id contains characters the Hub doesn't allow: {', '.join(named)}"
                    + ("; a letter that looks Latin but is not: retype it" if lookalike else ""))
        return "each part of a Hub id must start with a letter or digit"
    return None


# ---- files -> weights ----------------------------------------------------------------------
def weight_summary(files: list[str]) -> tuple[bool, bool]:
    """(has_safetensors, pickle_only) for a list of repo-relative file names (top level only)."""
    top = [f for f in files if "/" not in f]
    safetensors = any(f.endswith(".safetensors") and not f.startswith("adapter_model") for f in top)
    pickles = any(f.endswith((".bin", ".pt", ".pth")) and f not in _NOT_WEIGHTS
                  and not f.startswith("rng_state") for f in top)
    return safetensors, (pickles and not safetensors)


def _weights_note(files: list[str], has_st: bool, pickle_only: bool) -> str:
    if has_st:
        return "safetensors weights"
    if pickle_only:
        return "weights only as pickle files (.bin/.pt/.pth), which load slower and can run code"
    if any(f.endswith(".gguf") for f in files):
        return "only GGUF files, which transformers can't fine-tune"
    return "no weight files"


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return None, f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path} could not be read ({e.__class__.__name__}: {e})"
    if not isinstance(data, dict):
        return None, f"{path} does not hold a JSON object"
    return data, None


def _adapter_base(config: dict[str, Any] | None) -> str | None:
    base = (config or {}).get("base_model_name_or_path")
    return base if isinstance(base, str) and base else None


# ---- the check ------------------------------------------------------------------------------
def check_model(model_id: str, *, revision: str | None = None, offline: bool | None = None,
                timeout: float = 10.0) -> ModelStatus:
    """Find out whether ``model_id`` (a Hub id or a local folder) can be used, and if not, why."""
    return _scrub(_check(model_id, revision, offline, timeout), _token())


def _scrub(status: ModelStatus, token: str | None) -> ModelStatus:
    """Mask the token in every text field, and anything token-like in the prose fields."""
    secrets = [s for s in (token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN"))
               if s and len(s) >= 4]

    def exact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    for f in fields(status):
        value = getattr(status, f.name)
        if f.name in ("message", "remedy") and isinstance(value, str):
            setattr(status, f.name, mask_text(value, secrets))
        elif isinstance(value, str):
            # Ids and file names keep their spelling unless they contain the token itself.
            setattr(status, f.name, exact(value))
        elif isinstance(value, list):
            setattr(status, f.name, [exact(v) if isinstance(v, str) else v for v in value])
    return status


def _check(model_id: str, revision: str | None, offline: bool | None, timeout: float) -> ModelStatus:
    if not isinstance(model_id, str):
        return ModelStatus(str(model_id), "invalid_id", False,
                           f"the model id must be text, got {type(model_id).__name__}",
                           remedy=_ID_REMEDY)
    try:
        local = Path(model_id).expanduser()
    except RuntimeError:  # "~someone/x" for an unknown user
        local = Path(model_id)
    if model_id.strip() and local.is_dir():
        return _check_local(model_id, local)
    if _looks_like_path(model_id.strip()):
        return ModelStatus(model_id, "not_found", False,
                           f"there is no folder at {model_id}",
                           remedy="point base_model_name at the folder that holds config.json and the weights, "
                                  "or use a Hub id such as Qwen/Qwen2.5-7B-Instruct")
    problem = validate_model_id(model_id)
    if problem:
        stripped = model_id.strip()
        sugg = catalogue.suggest_ids(re.sub(r"\s+", "", stripped).replace("//", "/")) if stripped else []
        if stripped != model_id and validate_model_id(stripped) is None:
            sugg = [stripped, *[s for s in sugg if s != stripped]][:3]
        return ModelStatus(model_id, "invalid_id", False, f"{model_id!r} is not a valid model id: {problem}",
                           remedy=_ID_REMEDY, suggestions=sugg)
    if is_offline(offline):
        return _check_cache(model_id, revision, offline_reason=_offline_reason(offline))
    return _check_hub(model_id, revision, timeout)


_ID_REMEDY = ("use a Hub id like 'organisation/name' (e.g. Qwen/Qwen2.5-7B-Instruct) "
              "or the path of a local folder that holds config.json")


def _offline_reason(offline: bool | None) -> str:
    if offline:
        return "offline mode was asked for"
    return "HF_HUB_OFFLINE is set" if _truthy(os.environ.get("HF_HUB_OFFLINE")) else "TRANSFORMERS_OFFLINE is set"


def _check_local(model_id: str, folder: Path) -> ModelStatus:
    # Top level only: a mistaken folder (a home directory) must not be walked.
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    has_st, pickle_only = weight_summary(files)
    status = ModelStatus(model_id, "local_dir", False, "", files=files, has_safetensors=has_st,
                         pickle_only=pickle_only, location=str(folder.resolve()))
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        if (folder / "adapter_config.json").is_file():
            acfg, _ = _read_json(folder / "adapter_config.json")
            base = _adapter_base(acfg)
            status.message = (f"{folder} holds a LoRA adapter, not a full model"
                              + (f" (its base model is {base})" if base else ""))
            status.remedy = (f"set base_model_name to {base} and load this adapter on top of it"
                             if base else "set base_model_name to the model this adapter was trained from")
        else:
            status.message = f"{folder} has no config.json, so it is not a transformers model folder"
            status.remedy = "point base_model_name at the folder that holds config.json and the weights"
        return status
    config, err = _read_json(cfg_path)
    if config is None:
        status.message = err or f"{cfg_path} could not be read"
        status.remedy = f"fix or re-download {cfg_path}"
        return status
    status.config = config
    status.auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else None
    status.ok = has_st or pickle_only
    note = _weights_note(files, has_st, pickle_only)
    status.message = f"local folder {folder} with config.json and {note}"
    if not status.ok:
        status.remedy = "copy the weight files (*.safetensors) into the folder, or save the model there with save_pretrained()"
    elif pickle_only:
        status.remedy = "optional: convert to safetensors (load and save_pretrained(safe_serialization=True))"
    return status


# ---- cache ---------------------------------------------------------------------------------
def _cached_snapshot(model_id: str, revision: str | None) -> tuple[Path | None, bool]:
    """(snapshot folder holding config.json, whether any revision of the repo is cached)."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    repo_dir = cache / f"models--{model_id.replace('/', '--')}"
    hit = try_to_load_from_cache(model_id, "config.json", cache_dir=str(cache), revision=revision)
    if isinstance(hit, str):
        return Path(hit).parent, True
    return None, repo_dir.is_dir()


def _snapshot_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def cached_model_ids() -> list[str]:
    """Model repos present in the local Hugging Face cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache_dir())
    except (CacheNotFound, OSError, ValueError):
        return []
    return sorted(r.repo_id for r in info.repos if r.repo_type == "model")


def _check_cache(model_id: str, revision: str | None, *, offline_reason: str) -> ModelStatus:
    snap, repo_cached = _cached_snapshot(model_id, revision)
    rev = revision or "main"
    if snap is None:
        where = hub_cache_dir()
        if repo_cached:
            msg = f"{model_id} is in the cache at {where}, but not its config.json at revision {rev!r} ({offline_reason})"
        else:
            msg = f"{model_id} is not in the Hugging Face cache at {where} ({offline_reason})"
        known = catalogue.canonical_id(model_id)
        suggestions: list[str] = []
        if not known:
            suggestions = catalogue.rank_ids(model_id, [*cached_model_ids(), *catalogue.known_model_ids()])
        elif known != model_id:
            suggestions = [known]
        if not known and suggestions:
            # Likely a typo: offline, fmllm cannot tell, so it does not send anyone to download it.
            remedy = (f"check the id: fmllm does not know {model_id!r} and cannot ask the Hub offline; did you mean "
                      f"{suggestions[0]}? If the id is right, download it while online (`hf download {model_id}`)")
        else:
            remedy = (f"download it while online (`hf download {model_id}`), "
                      "or turn offline mode off (unset HF_HUB_OFFLINE / drop --offline)")
        return ModelStatus(model_id, "offline_missing", False, msg, remedy=remedy,
                           suggestions=suggestions, revision=revision)
    files = _snapshot_files(snap)
    has_st, pickle_only = weight_summary(files)
    config, err = _read_json(snap / "config.json")
    status = ModelStatus(model_id, "cache", False, "", config=config, files=files,
                         has_safetensors=has_st, pickle_only=pickle_only, revision=revision,
                         commit=snap.name, location=str(snap))
    if config is None:
        status.message = err or "the cached config.json could not be read"
        status.remedy = f"download it again while online: `hf download {model_id} config.json --force-download`"
        return status
    status.auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else None
    status.ok = has_st or pickle_only
    note = _weights_note(files, has_st, pickle_only)
    status.message = f"{model_id} is in the local cache with config.json and {note} ({offline_reason})"
    if not status.ok:
        status.message = (f"{model_id}: only config.json is in the local cache, not the weights "
                          f"({offline_reason})")
        status.remedy = f"download the weights while online: `hf download {model_id}`"
    return status


# ---- hub -----------------------------------------------------------------------------------
def _network_errors() -> tuple[type[BaseException], ...]:
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    return (httpx2.TransportError, OfflineModeIsEnabled, ConnectionError, TimeoutError)


def _unreachable(model_id: str, exc: BaseException, endpoint: str) -> ModelStatus:
    detail = str(exc).splitlines()[0] if str(exc) else ""
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
                  if os.environ.get(k)), None)
    kind_word = "timed out" if "timeout" in exc.__class__.__name__.lower() else "failed"
    msg = (f"the Hugging Face Hub at {endpoint} could not be reached (connection {kind_word}: "
           f"{exc.__class__.__name__}{': ' + detail if detail else ''})")
    if proxy:
        msg += f"; a proxy is set ({proxy})"
    return ModelStatus(model_id, "unreachable", False, msg,
                       remedy=("check the network or proxy (HTTPS_PROXY), or set HF_ENDPOINT to a reachable "
                               "mirror; if the model is already in your cache, run with --offline "
                               "(HF_HUB_OFFLINE=1)"),
                       suggestions=[])


def _hub_suggestions(api: Any, model_id: str) -> list[str]:
    """Did-you-mean ids from a Hub search, falling back to the catalogue."""
    name = model_id.rsplit("/", 1)[-1]
    m = catalogue._SIZE_RE.search(name)
    head = name[:m.start()].rstrip("-_. ") if m else name.split("-")[0]
    if len(head) < 3:
        head = name
    found: list[str] = []
    try:
        for info in api.list_models(search=head, limit=100, sort="downloads"):
            found.append(info.id)
    except Exception:  # search is a nicety: any failure falls back to the catalogue
        found = []
    ranked = catalogue.rank_ids(model_id, found) if found else []
    return ranked or catalogue.suggest_ids(model_id)


T = TypeVar("T")
_Handlers = tuple[tuple[type[BaseException], Callable[[BaseException], ModelStatus]], ...]


def _call_hub(call: Callable[[], T], model_id: str, endpoint: str, revision: str | None,
              handlers: _Handlers) -> tuple[T | None, ModelStatus | None]:
    """Run one Hub call; return (its result, None) or (None, what its failure means to the person).

    `handlers` give this call's own meanings, tried in order (a missing revision, a gated repo...);
    any other Hub HTTP error and any network failure read the same for every call, so they live here.
    """
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return call(), None
    except Exception as exc:
        for exc_type, handle in handlers:
            if isinstance(exc, exc_type):
                return None, handle(exc)
        if isinstance(exc, HfHubHTTPError):
            return None, _http_error(model_id, exc, endpoint, revision)
        if isinstance(exc, _network_errors()):
            return None, _unreachable(model_id, exc, endpoint)
        raise


def _gated_on_download(status: ModelStatus, exc: BaseException, token: str | None) -> ModelStatus:
    """config.json refused as gated after model_info answered: keep what model_info told."""
    gated = _gated(status.model_id, exc, token, status.revision)
    gated.files, gated.has_safetensors, gated.pickle_only = status.files, status.has_safetensors, status.pickle_only
    gated.commit, gated.gated = status.commit, status.gated or gated.gated
    # The person can't download it, but a config cached earlier still serves planning.
    snap, _ = _cached_snapshot(status.model_id, status.revision)
    if snap is not None:
        gated.config, _ = _read_json(snap / "config.json")
        gated.auto_map = (gated.config or {}).get("auto_map")
    return gated


def _check_hub(model_id: str, revision: str | None, timeout: float) -> ModelStatus:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    token = _token()
    api = HfApi(endpoint=endpoint, token=token or False)
    page = f"{HUB_WEB}/{model_id}"
    info, failed = _call_hub(
        lambda: api.model_info(model_id, revision=revision, timeout=timeout), model_id, endpoint, revision,
        ((OfflineModeIsEnabled, lambda exc: _check_cache(
            model_id, revision,
            offline_reason="huggingface_hub is in offline mode (HF_HUB_OFFLINE was set at start-up)")),
         (RevisionNotFoundError, lambda exc: ModelStatus(
             model_id, "revision_not_found", False, f"{model_id} exists, but has no revision {revision!r}",
             remedy=f"use an existing branch, tag or commit (see {page}/tree/main), or drop the revision",
             revision=revision)),
         (GatedRepoError, lambda exc: _gated(model_id, exc, token, revision)),
         (RepositoryNotFoundError, lambda exc: _not_found(api, model_id, token, revision))))
    if failed is not None:
        return failed

    files = [s.rfilename for s in info.siblings] if info.siblings is not None else []
    has_st, pickle_only = weight_summary(files) if info.siblings is not None else (None, None)
    status = ModelStatus(model_id, "hub", False, "", files=files, has_safetensors=has_st,
                         pickle_only=pickle_only, gated=info.gated, revision=revision,
                         commit=info.sha, location=f"{endpoint}/{model_id}")
    if info.siblings is not None and "config.json" not in files:
        return _no_config_on_hub(status, files, revision, timeout)
    def revision_missing(exc: BaseException) -> ModelStatus:
        status.kind, status.message = "revision_not_found", f"{model_id} has no revision {revision!r}"
        return status

    def bad_json(exc: BaseException) -> ModelStatus:
        status.message = f"{model_id}: its config.json is not valid JSON ({exc})"
        status.remedy = f"report it to the model's authors ({page}); pick another revision meanwhile"
        return status

    # ValueError is no Hub or network error, so trying it before them keeps the old except order's meaning.
    config, failed = _call_hub(
        lambda: _download_config(model_id, revision, endpoint, token, timeout), model_id, endpoint, revision,
        ((GatedRepoError, lambda exc: _gated_on_download(status, exc, token)),
         (RevisionNotFoundError, revision_missing),
         (RemoteEntryNotFoundError, lambda exc: _no_config_on_hub(status, files, revision, timeout)),
         (ValueError, bad_json)))
    if failed is not None:
        return failed
    status.config = config
    status.auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else None
    status.ok = bool(has_st or pickle_only)
    note = _weights_note(files, bool(has_st), bool(pickle_only))
    gate = " (gated; your token has access)" if info.gated else ""
    status.message = f"{model_id} is on the Hub{gate} with config.json and {note}"
    if not status.ok:
        status.remedy = f"pick a repo that ships safetensors weights; see the files at {page}/tree/main"
    elif pickle_only:
        status.remedy = "optional: look for a safetensors version of this model (search the Hub for its name)"
    return status


def _download_config(model_id: str, revision: str | None, endpoint: str, token: str | None,
                     timeout: float) -> dict[str, Any]:
    """Fetch config.json alone (into the HF cache) and parse it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    # A HEAD first: hf_hub_download would quietly serve a cached copy of a gated file.
    url = hf_hub_url(model_id, "config.json", revision=revision, endpoint=endpoint)
    get_hf_file_metadata(url, token=token or False, timeout=timeout, endpoint=endpoint)
    path = hf_hub_download(model_id, "config.json", revision=revision, endpoint=endpoint,
                           token=token or False, cache_dir=str(hub_cache_dir()), etag_timeout=timeout)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("config.json does not hold a JSON object")
    return data


def _no_config_on_hub(status: ModelStatus, files: list[str], revision: str | None,
                      timeout: float) -> ModelStatus:
    mid = status.model_id
    if "adapter_config.json" in files:
        base = None
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(mid, "adapter_config.json", revision=revision, endpoint=hub_endpoint(),
                                   token=_token() or False, cache_dir=str(hub_cache_dir()), etag_timeout=timeout)
            acfg, _ = _read_json(Path(path))
            base = _adapter_base(acfg)
        except Exception:  # the base model name is a nicety
            base = None
        status.message = f"{mid} is a LoRA adapter, not a full model" + (f" (its base model is {base})" if base else "")
        status.remedy = (f"set base_model_name to {base} and load {mid} as an adapter on top"
                         if base else "set base_model_name to the model this adapter was trained from")
    elif any(f.endswith(".gguf") for f in files):
        status.message = f"{mid} holds only GGUF files, which transformers can't fine-tune"
        status.remedy = "use the original (safetensors) repo this GGUF was converted from"
    else:
        status.message = f"{mid} is on the Hub but has no config.json, so transformers can't load it"
        status.remedy = f"check the files at {HUB_WEB}/{mid}/tree/main; pick the repo with config.json and weights"
    return status


def _gated(model_id: str, exc: Any, token: str | None, revision: str | None) -> ModelStatus:
    page = f"{HUB_WEB}/{model_id}"
    code = getattr(getattr(exc, "response", None), "status_code", None)
    if token is None or code == 401:
        return ModelStatus(model_id, "gated_no_token", False,
                           f"{model_id} is gated: its licence must be accepted on the Hub and you must be "
                           "logged in to download it, and no Hugging Face token is set",
                           remedy=f"accept the licence at {page}, then run `{LOGIN_CMD}` (or set HF_TOKEN)",
                           gated=catalogue.gated_status(model_id) or True, revision=revision)
    return ModelStatus(model_id, "gated_no_access", False,
                       f"{model_id} is gated and your token has no access to it yet (licence not accepted, "
                       "or the request is still pending)",
                       remedy=(f"request access at {page} and wait for approval "
                               f"(status: {HUB_WEB}/settings/gated-repos); make sure HF_TOKEN / `{LOGIN_CMD}` "
                               "uses the account that was granted access"),
                       gated=catalogue.gated_status(model_id) or True, revision=revision)


def _not_found(api: Any, model_id: str, token: str | None, revision: str | None) -> ModelStatus:
    suggestions = _hub_suggestions(api, model_id)
    msg = f"{model_id} was not found on the Hub"
    remedy = "check the id's spelling"
    if suggestions:
        remedy = f"did you mean {suggestions[0]}? Set base_model_name to the right id"
    if "/" in model_id and not _looks_like_path(model_id):
        msg += f", and there is no local folder {model_id!r} either"
    if token is None:
        msg += " (if it is a private repo, you need to be logged in to see it)"
        remedy += f"; for a private repo run `{LOGIN_CMD}`"
    else:
        msg += " (or your token can't see it, if it is private)"
    return ModelStatus(model_id, "not_found", False, msg, remedy=remedy, suggestions=suggestions,
                       revision=revision)


def _http_error(model_id: str, exc: Any, endpoint: str, revision: str | None) -> ModelStatus:
    code = getattr(getattr(exc, "response", None), "status_code", None)
    server = getattr(exc, "server_message", None) or ""
    if code == 401 and "Invalid credentials" in (server + str(exc)):
        return ModelStatus(model_id, "invalid_token", False,
                           "the Hub refused your Hugging Face token (invalid, expired or revoked)",
                           remedy=f"create a token at {HUB_WEB}/settings/tokens and run `{LOGIN_CMD}`, "
                                  "or unset HF_TOKEN to go without one",
                           revision=revision)
    short = server.splitlines()[0] if server else ""
    return ModelStatus(model_id, "unreachable", False,
                       f"the Hub at {endpoint} answered with error {code}" + (f" ({short})" if short else ""),
                       remedy="try again in a few minutes; if it persists, use --offline with a cached model "
                              "or set HF_ENDPOINT to a mirror",
                       revision=revision)


# ---- config only ---------------------------------------------------------------------------
_FALLBACK_KINDS = {"gated_no_token", "gated_no_access", "invalid_token", "unreachable", "offline_missing"}


def resolve_config(model_id: str, *, revision: str | None = None,
                   offline: bool | None = None) -> tuple[dict[str, Any] | None, str]:
    """The model's config.json and where it came from: "local", "hub", "cache", "catalogue" or "none".

    Tries the local folder, then the Hub (config.json only), then the local cache, then the
    shipped catalogue; never raises for a person's mistake.
    """
    status = check_model(model_id, revision=revision, offline=offline)
    if status.config is not None:
        source = {"local_dir": "local", "hub": "hub", "cache": "cache"}.get(status.kind, "cache")
        return status.config, source
    # A wrong id or folder must stay an error, not be papered over with a catalogue config.
    if status.kind not in _FALLBACK_KINDS:
        return None, "none"
    try:
        snap, _ = _cached_snapshot(model_id, revision)
    except Exception:
        snap = None
    if snap is not None:
        config, _ = _read_json(snap / "config.json")
        if config is not None:
            return config, "cache"
    arch = catalogue.get_architecture(model_id)
    if arch is not None:
        return arch, "catalogue"
    return None, "none"
