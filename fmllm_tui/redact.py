"""Masking secrets in everything fmllm prints, writes or shows.

A value is secret when its key names a secret (token, key, secret, password, credential, …) in
any section, known or not, or when it looks like a Hugging Face token (``hf_…``).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_SECRET_KEY = re.compile(
    r"(token|secret|passw(or)?d|passwd|credential|api[_-]?key|apikey|private[_-]?key|access[_-]?key|"
    r"auth|^key$|_key$|-key$|session[_-]?id|cookie|dsn|connection[_-]?string)",
    re.IGNORECASE,
)
# Keys that contain "key" or "token" but are not secrets.
_NOT_SECRET = {"max_tokens", "pad_token", "eos_token", "bos_token", "unk_token", "num_tokens",
               "tokenizer", "tokenizer_name", "key", "sort_key", "token_count", "max_new_tokens",
               "add_special_tokens", "special_tokens"}
HF_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
_URL_CRED_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)
_BEARER_RE = re.compile(r"(?i)(authorization:\s*bearer\s+|bearer\s+)([A-Za-z0-9._~+/=-]{8,})")


def is_secret_key(key: str) -> bool:
    k = str(key)
    if k.lower() in _NOT_SECRET:
        return False
    return bool(_SECRET_KEY.search(k))


def mask_text(text: str, extra_secrets: list[str] | None = None) -> str:
    """Mask tokens and credentials inside free text (log lines, messages, diffs)."""
    out = HF_TOKEN_RE.sub("hf_" + MASK, text)
    out = _URL_CRED_RE.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", out)
    out = _BEARER_RE.sub(lambda m: m.group(1) + MASK, out)
    for s in extra_secrets or []:
        if s and len(s) >= 4:
            out = out.replace(s, MASK)
    return out


def mask_data(obj: Any, _key: str | None = None) -> Any:
    """Copy of a nested dict/list with secret-named values replaced by ``***``."""
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_key(str(k)) and obj[k] not in (None, "") and not isinstance(obj[k], (dict, list))
                    else mask_data(v, str(k))) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_data(v, _key) for v in obj]
    if isinstance(obj, str):
        return mask_text(obj)
    return obj


def secret_values(obj: Any) -> list[str]:
    """Every scalar value under a secret-named key (to mask them where they appear as text)."""
    found: list[str] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if is_secret_key(str(k)) and isinstance(v, (str, int)) and not isinstance(v, bool):
                    s = str(v)
                    if len(s) >= 4:
                        found.append(s)
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(obj)
    return found
