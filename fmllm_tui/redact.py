"""Masking secrets in everything fmllm prints, writes or shows.

A value is secret when its key names a secret (token, key, secret, password, credential, …) in
any section, known or not, or when it looks like a known token (``hf_…``, ``sk-…``, ``ghp_…``, …),
a URL's password or a bearer token. In a command line (:func:`mask_argv`) the value after a
secret-named flag (``--hf-token X``, ``--api_key=X``) is one too.
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
# Other well-known token formats, by their documented prefixes: OpenAI/Anthropic (sk-, sk-proj-,
# sk-ant-), Stripe (sk_live_, rk_test_), GitHub (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_),
# GitLab (glpat-), Slack (xoxb-, xoxp-, ...), AWS access key ids (AKIA, ASIA), Google API keys
# (AIza), Weights & Biases v1 keys (wandb_v1_). The prefix stays, so a reader sees which kind it was.
_TOKEN_FORMATS = re.compile(
    r"\b(?P<prefix>sk-(?:proj-|ant-)?|[sr]k_(?:live|test)_|gh[pousr]_|github_pat_|glpat-|xox[abposr]-|wandb_v1_)"
    r"(?P<body>[A-Za-z0-9][A-Za-z0-9_-]{15,})"
    r"|\b(?P<aws>(?:AKIA|ASIA)[0-9A-Z]{16})\b|\b(?P<gcp>AIza[0-9A-Za-z_-]{35})"
)
# The password runs to the last '@' before the host (it may hold '@' and '/' itself).
_URL_CRED_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^\s]*)@(?=[^@\s]*(?:\s|$))",
                          re.I)
_BEARER_RE = re.compile(r"(?i)(authorization:\s*bearer\s+|bearer\s+)([A-Za-z0-9._~+/=-]{8,})")


# "tokens" (plural) names a count or a length (planned_tokens_per_example, tokens_per_second)
# unless a secret's kind comes with it (api_tokens, auth_tokens, access_tokens, ...).
_TOKEN_COUNT = re.compile(r"tokens", re.IGNORECASE)
_SECRET_TOKENS = re.compile(r"(api|auth|access|secret|bearer|refresh|hf|id)[_-]?tokens", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    k = str(key)
    if k.lower() in _NOT_SECRET:
        return False
    hits = {m.group(0).lower() for m in _SECRET_KEY.finditer(k)}
    if hits == {"token"} and _TOKEN_COUNT.search(k) and not _SECRET_TOKENS.search(k):
        return False
    return bool(hits)


def mask_text(text: str, extra_secrets: list[str] | None = None) -> str:
    """Mask tokens and credentials inside free text (log lines, messages, diffs)."""
    out = HF_TOKEN_RE.sub("hf_" + MASK, text)
    out = _TOKEN_FORMATS.sub(lambda m: (m.group("prefix") or (m.group("aws") or m.group("gcp"))[:4]) + MASK, out)
    out = _URL_CRED_RE.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", out)
    out = _BEARER_RE.sub(lambda m: m.group(1) + MASK, out)
    for s in extra_secrets or []:
        if s and len(s) >= 4:
            out = out.replace(s, MASK)
    return out


def mask_data(obj: Any, _secret: bool = False) -> Any:
    """Copy of a nested dict/list with secret-named values replaced by ``***``: every value under
    a secret-named key, lists and sections of them included (``credentials: [...]``)."""
    if isinstance(obj, dict):
        return {k: mask_argv(v) if _is_command(k, v) and not _secret else mask_data(v, _secret or is_secret_key(str(k)))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_data(v, _secret) for v in obj]
    if _secret and obj not in (None, "") and not isinstance(obj, bool):
        return MASK
    if isinstance(obj, str):
        return mask_text(obj)
    return obj


# A list under such a key is a command line (fmllm.train_command, run.json's argv): the value after
# a secret-named flag is a secret there too.
_COMMAND_KEY = re.compile(r"(command|cmd|argv)$", re.IGNORECASE)


def _is_command(key: Any, value: Any) -> bool:
    return isinstance(value, list) and bool(_COMMAND_KEY.search(str(key))) and all(isinstance(a, str) for a in value)


def secret_values(obj: Any) -> list[str]:
    """Every scalar value under a secret-named key (to mask them where they appear as text)."""
    found: list[str] = []

    def walk(o: Any, secret: bool) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, secret or is_secret_key(str(k)))
        elif isinstance(o, list):
            for v in o:
                walk(v, secret)
        elif secret and isinstance(o, (str, int)) and not isinstance(o, bool) and len(str(o)) >= 4:
            found.append(str(o))

    walk(obj, False)
    return found


def _flag_name(arg: str) -> str | None:
    """'hf_token' for '--hf-token' or '--hf_token=...'; None when ``arg`` is not a long/short flag."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    return arg.lstrip("-").split("=", 1)[0].replace("-", "_")


def mask_argv(argv: list[str]) -> list[str]:
    """A copy of a command line with its secrets masked: known token formats anywhere, and the
    value of a secret-named flag (``--token X``, ``--api-key=X``; not ``--max_new_tokens 5``)."""
    out: list[str] = []
    after_secret_flag = False
    for arg in (str(a) for a in argv):
        name = _flag_name(arg)
        if after_secret_flag and name is None:
            out.append(MASK)
            after_secret_flag = False
            continue
        after_secret_flag = False
        if name is not None and is_secret_key(name):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=" + MASK)
                continue
            after_secret_flag = True
        out.append(mask_text(arg))
    return out
