"""Writing a fixed config safely: lock, backup, temp file, fsync, validate, atomic replace; undo.

The write path, in order (each step can fail and leave the original untouched):

1. resolve a symlinked config to its target (the link stays a link; the target is rewritten);
2. refuse a read-only file or folder with a clear message;
3. take an exclusive ``flock`` on ``.<name>.fmllm-lock`` next to the target; a second fmllm
   waits up to ``lock_timeout`` seconds, then refuses naming the holder's pid (the kernel drops
   the lock when a process dies, so a crash never leaves a stale lock). The holder removes the
   file while it still holds the lock, so none lingers in the person's folder; a waiter that
   then gets the lock of the removed file sees it is no longer the one at the path and retries;
4. load the config, refuse if its bytes differ from ``expected_raw`` (changed since planning);
5. render and verify the new text (``fixes.engine``); nothing to do -> nothing is written;
6. write the backup (``<name>.bak``, or ``<name>.bak.<timestamp>`` when that exists) through a
   temp file, fsync, rename;
7. write the new text to a temp file in the same folder, fsync, set the original mode (and owner
   when root), re-load and validate that file, check the original was not changed meanwhile,
   ``os.replace`` it over the original, fsync the folder.

A kill at any moment leaves either the old or the new file (``os.replace`` is atomic); at worst a
``.<name>.*.fmllm-tmp`` file is left, which the next write removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fmllm_tui.config import ConfigError, LoadedConfig, load_config
from fmllm_tui.findings import Change

from .engine import diff as make_diff
from .engine import encode, render
from .errors import FixError

TMP_SUFFIX = ".fmllm-tmp"
MAX_TIMESTAMPED_BACKUPS = 20  # older timestamped backups are pruned; <name>.bak is never pruned


@dataclass
class ApplyResult:
    """What ``apply_changes`` did (or, for a dry run, would do)."""

    diff: str
    backup_path: Path | None
    changed: bool
    path: Path | None = None  # the file written (a symlink's target)
    applied: list[Change] = field(default_factory=list)
    new_raw: bytes | None = None
    dry_run: bool = False


# --------------------------------------------------------------------------------------------
# Small file-system helpers
# --------------------------------------------------------------------------------------------


def _os_message(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    return e.strerror or str(e)


def resolve_target(path: str | os.PathLike[str]) -> Path:
    """The real file behind ``path`` (symlinks followed); FixError for a dangling link."""
    p = Path(path)
    target = Path(os.path.realpath(p))
    if p.is_symlink() and not target.exists():
        raise FixError(f"{p} is a symbolic link to {target}, which does not exist", path=p)
    return target


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some file systems cannot open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _cleaned_up(tmp: str | Path, what: str, path: Path | None = None) -> Iterator[None]:
    """Run the block that uses the temporary file ``tmp``; if it fails in any way, remove ``tmp``
    (never leave a half-done file behind) and turn an OSError into a FixError: ``what``, and why."""
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise FixError(f"{what}: {_os_message(e)}", path=path) from None
        raise


def _write_temp(folder: Path, name: str, data: bytes, mode: int) -> Path:
    """A fully written, fsynced file with ``mode`` in ``folder``; FixError on any failure."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise FixError(
            f"cannot create a temporary file in {folder}: {_os_message(e)}",
            hint="fmllm writes the new config next to the old one, then swaps them; free space or fix the folder's permissions",
        ) from None
    with _cleaned_up(tmp, f"cannot write {folder / name}"):
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    return Path(tmp)


def _remove_stale_temps(target: Path) -> None:
    """Temp files a killed fmllm left behind (only ever called while holding the lock)."""
    for leftover in target.parent.glob(f".{target.name}.*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _check_writable(target: Path) -> os.stat_result:
    try:
        st = target.stat()
    except FileNotFoundError:
        raise FixError(
            "no such file", path=target, hint="pass the path of your config.yaml with --config PATH"
        ) from None
    except OSError as e:
        raise FixError(f"cannot read the file: {_os_message(e)}", path=target) from None
    # Root passes os.access for anything, so a file with no write bits at all counts as read-only too.
    if not os.access(target, os.W_OK) or not st.st_mode & 0o222:
        raise FixError(
            f"the config file is read-only (mode {stat.filemode(st.st_mode)})",
            path=target,
            hint=f"make it writable (chmod u+w {target}) or copy it and pass --config COPY",
        )
    folder = target.parent
    dst = folder.stat()
    if not os.access(folder, os.W_OK | os.X_OK) or not dst.st_mode & 0o222:
        raise FixError(
            f"the folder {folder} is read-only: fmllm writes a backup and a temporary file next to the config",
            path=target,
            hint=f"make the folder writable (chmod u+w {folder}) or copy the config elsewhere and pass --config COPY",
        )
    return st


@contextlib.contextmanager
def config_lock(target: Path, timeout: float = 10.0) -> Iterator[None]:
    """Exclusive lock for changing ``target``; waits up to ``timeout`` s, then FixError.

    The lock file exists only while it is held: the holder unlinks it before letting go, and a
    process counts as holding only when the file it locked is still the one at the path.
    """
    lock_path = target.parent / f".{target.name}.fmllm-lock"
    start = time.monotonic()
    while True:
        fd = _open_lock_file(lock_path, target)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - start >= timeout:
                        holder = ""
                        with contextlib.suppress(OSError, ValueError):
                            holder = f" (pid {int(lock_path.read_text().split()[0])})"
                        raise FixError(
                            f"another fmllm process{holder} is changing this config; waited {timeout:g} s",
                            path=target,
                            hint="run again when it has finished (the lock goes away with that process)",
                        ) from None
                    time.sleep(0.05)
            if _is_file_at(fd, lock_path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder before us removed this file as it let go: lock the one there now
    try:
        with contextlib.suppress(OSError):
            os.pwrite(fd, f"{os.getpid():<12d}\n".encode(), 0)  # fixed width: no truncate needed
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)  # only while holding it: no one else can have the file at the path now
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open_lock_file(lock_path: Path, target: Path) -> int:
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as denied:
        try:
            return os.open(lock_path, os.O_RDONLY)  # someone else's lock file: flock works read-only
        except OSError:
            raise FixError(
                f"cannot create the lock file {lock_path}: {_os_message(denied)}",
                path=target,
                hint=f"fmllm needs to write in {target.parent}; check its owner and mode: ls -ld {target.parent}",
            ) from None
    except OSError as e:
        raise FixError(f"cannot create the lock file {lock_path}: {_os_message(e)}", path=target) from None


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path`` (not removed, not replaced)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def list_backups(path: str | os.PathLike[str]) -> list[Path]:
    """fmllm's backups of a config, oldest first (the last one is what ``undo`` restores)."""
    target = resolve_target(path)
    base = target.name + ".bak"
    found = []
    for p in target.parent.glob(f"{glob_escape(base)}*"):
        if p.name == base or (p.name.startswith(base + ".") and not p.name.endswith(TMP_SUFFIX)):
            with contextlib.suppress(OSError):
                found.append((p.stat().st_mtime_ns, p.name, p))
    return [p for _, _, p in sorted(found)]


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _write_backup(target: Path, data: bytes, mode: int) -> Path:
    """Backup of the current bytes: <name>.bak, or <name>.bak.<timestamp> when that exists."""
    tmp = _write_temp(target.parent, target.name, data, mode)
    with _cleaned_up(tmp, f"cannot write the backup next to {target}", target):
        dest = target.with_name(target.name + ".bak")
        if dest.exists() or dest.is_symlink():
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            dest = target.with_name(f"{target.name}.bak.{stamp}")
            n = 1
            while dest.exists() or dest.is_symlink():
                n += 1
                dest = target.with_name(f"{target.name}.bak.{stamp}-{n}")
        os.replace(tmp, dest)  # under the lock no other fmllm picks the same name
    _fsync_dir(target.parent)
    _prune_backups(target)
    return dest


def _prune_backups(target: Path) -> None:
    stamped = [p for p in list_backups(target) if p.name != target.name + ".bak"]
    for old in stamped[: max(0, len(stamped) - MAX_TIMESTAMPED_BACKUPS)]:
        with contextlib.suppress(OSError):
            old.unlink()


def _replace(target: Path, data: bytes, st: os.stat_result | None, *, expected: bytes | None, validate: Callable[[Path], None] | None) -> None:
    """Atomically put ``data`` at ``target`` (mode and owner kept), or raise and change nothing."""
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o644
    tmp = _write_temp(target.parent, target.name, data, mode)
    with _cleaned_up(tmp, "cannot replace the config", target):
        if st is not None and (st.st_uid != os.geteuid() or st.st_gid != os.getegid()):
            with contextlib.suppress(OSError):
                os.chown(tmp, st.st_uid, st.st_gid)  # works for root; others keep their own
        if validate is not None:
            validate(tmp)
        now: bytes | None
        try:
            now = target.read_bytes()
        except FileNotFoundError:
            now = None
        if now != expected:
            raise FixError(
                "the config file was changed by another program while fmllm was writing it; fmllm kept that version",
                path=target,
                hint="run the fix again; it will start from the file as it is now",
            )
        os.replace(tmp, target)
    _fsync_dir(target.parent)


def _load(target: Path) -> LoadedConfig:
    try:
        return load_config(target)
    except ConfigError as e:
        raise FixError.from_config_error(e, hint="fix the config by hand first; fmllm only edits a config it can read") from None


def _validator(data: bytes) -> Callable[[Path], None]:
    def validate(tmp: Path) -> None:
        try:
            written = load_config(tmp)
        except ConfigError as e:
            raise FixError.from_config_error(e, lead="the written config did not validate; the original was kept:") from None
        if written.raw != data:
            raise FixError("the written config did not read back as written; the original was kept", path=tmp)

    return validate


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def apply_changes(
    path: str | os.PathLike[str],
    changes: list[Change],
    *,
    dry_run: bool = False,
    expected_raw: bytes | None = None,
    lock_timeout: float = 10.0,
) -> ApplyResult:
    """Apply ``changes`` (in order) to the config at ``path``; see the module doc for the steps.

    ``dry_run`` renders, verifies and diffs without writing anything (not even a lock file).
    ``expected_raw``: the bytes the changes were planned from; if the file differs now, refuse.
    Raises FixError with a person-facing message; the original is untouched on any failure.
    """
    target = resolve_target(path)
    if dry_run:
        loaded = _load(target)
        _check_expected(loaded, expected_raw)
        new_text, applied = render(loaded, changes)
        return ApplyResult(make_diff(loaded, new_text), None, new_text != loaded.text, target, applied, encode(loaded, new_text), True)
    st = _check_writable(target)
    with config_lock(target, lock_timeout):
        _remove_stale_temps(target)
        loaded = _load(target)
        _check_expected(loaded, expected_raw)
        new_text, applied = render(loaded, changes)
        if new_text == loaded.text:
            return ApplyResult("", None, False, target, [], loaded.raw)
        data = encode(loaded, new_text)
        backup = _write_backup(target, loaded.raw, stat.S_IMODE(st.st_mode))
        try:
            _replace(target, data, st, expected=loaded.raw, validate=_validator(data))
        except BaseException:
            with contextlib.suppress(OSError):
                backup.unlink()  # the file is unchanged, so this backup would only mislead undo
            raise
        return ApplyResult(make_diff(loaded, new_text), backup, True, target, applied, data)


def _check_expected(loaded: LoadedConfig, expected_raw: bytes | None) -> None:
    if expected_raw is not None and loaded.raw != expected_raw:
        raise FixError(
            "the config file changed since fmllm read it (saved in an editor?), so the planned fix may no longer fit",
            path=loaded.path,
            hint="run the check and the fix again",
        )


def _restore(target: Path, backup: Path, *, expected: bytes | None, lock_timeout: float) -> Path:
    with config_lock(target, lock_timeout):
        _remove_stale_temps(target)
        try:
            data = backup.read_bytes()
        except OSError as e:
            raise FixError(f"cannot read the backup {backup}: {_os_message(e)}", path=target) from None
        if not data.strip():
            raise FixError(f"the backup {backup} is empty; not restoring it", path=target)
        try:
            current: bytes | None = target.read_bytes()
            st: os.stat_result | None = target.stat()
        except FileNotFoundError:
            current, st = None, backup.stat()
        if expected is not None and current != expected:
            raise FixError(
                f"the config was changed after fmllm wrote it, so it was not restored; the backup is {backup}",
                path=target,
                hint=f"compare them and copy by hand: diff {backup} {target}",
            )
        if current is not None and current != data:
            # What undo replaces is kept too, so an undo can be undone by hand.
            undone = _write_temp(target.parent, target.name, current, stat.S_IMODE(st.st_mode) if st else 0o600)
            try:
                os.replace(undone, target.with_name(target.name + ".undone"))
            except OSError as e:
                with contextlib.suppress(OSError):
                    undone.unlink()
                raise FixError(f"cannot keep a copy of the current config: {_os_message(e)}", path=target) from None
        _replace(target, data, st, expected=current, validate=None)
        with contextlib.suppress(OSError):
            backup.unlink()
        _fsync_dir(target.parent)
        return backup


def undo(path: str | os.PathLike[str], *, lock_timeout: float = 10.0) -> Path:
    """Restore the newest backup fmllm made of ``path``; returns the backup used.

    The restored backup is removed (so a second undo goes one step further back) and the text
    it replaced is kept as ``<name>.undone``. FixError when there is no backup.
    """
    target = resolve_target(path)
    backups = list_backups(target)
    if not backups:
        raise FixError(
            f"no backup to restore: fmllm keeps {target.name}.bak (and timestamped ones) next to the config "
            "each time it changes it, and there is none",
            path=target,
        )
    if target.exists():
        _check_writable(target)
    return _restore(target, backups[-1], expected=None, lock_timeout=lock_timeout)


@contextlib.contextmanager
def temporarily_applied(path: str | os.PathLike[str], changes: list[Change], *, lock_timeout: float = 10.0) -> Iterator[ApplyResult]:
    """Apply ``changes`` for the duration of a ``with`` block, then restore the original.

    The shape of the guide's run scripts (``--preset NAME --test``): back up, switch, run,
    restore. The original is restored only if the file still holds what fmllm wrote.
    """
    result = apply_changes(path, changes, lock_timeout=lock_timeout)
    try:
        yield result
    finally:
        if result.changed and result.backup_path is not None and result.path is not None:
            _restore(result.path, result.backup_path, expected=result.new_raw, lock_timeout=lock_timeout)
