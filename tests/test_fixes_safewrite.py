"""Safe writes: backup, atomic replace, permissions, symlinks, locking, undo, and bad input.

Tests run as root, and root may write read-only files and folders. So read-only cases are
tested twice: as root (fmllm refuses files/folders without write bits: a check on the mode) and
in a child process switched to uid 65534 (nobody), where the OS really denies the write. The
write-failure paths (full disk, failed rename, a concurrent edit mid-write) are injected by
monkeypatching the os functions fixes.safewrite calls.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import fmllm_tui.fixes as fixes
import pytest
from fmllm_tui.fixes import FixError, apply_changes, undo
from fmllm_tui.fixes import safewrite as sw

from fmllm_tui.config import ConfigError, load_config
from fmllm_tui.findings import Change

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "config.yaml").read_bytes()
SEQ = "fine_tuning.training.max_seq_length"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "config.yaml"
    p.write_bytes(SHIPPED)
    return p


def seq(n: int) -> list[Change]:
    return [Change(key=SEQ, to=n)]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def leftovers(folder: Path) -> list[str]:
    return [n for n in names(folder) if n.endswith(sw.TMP_SUFFIX)]


# -- the normal path --------------------------------------------------------------------------


def test_apply_writes_backup_then_new_text(cfg: Path) -> None:
    result = apply_changes(cfg, seq(512), expected_raw=SHIPPED)
    assert result.changed and result.backup_path == cfg.with_name("config.yaml.bak")
    assert result.backup_path.read_bytes() == SHIPPED
    assert load_config(cfg).view.training.max_seq_length == 512
    assert "-    max_seq_length: 1024" in result.diff and "+    max_seq_length: 512" in result.diff
    assert leftovers(cfg.parent) == []


def test_second_backup_is_timestamped_and_undo_walks_back(cfg: Path) -> None:
    first = apply_changes(cfg, seq(512)).backup_path
    mid = cfg.read_bytes()
    second = apply_changes(cfg, seq(256)).backup_path
    assert first.name == "config.yaml.bak"
    assert second.name.startswith("config.yaml.bak.") and second.read_bytes() == mid
    assert fixes.list_backups(cfg) == [first, second]
    latest = cfg.read_bytes()
    assert undo(cfg) == second and cfg.read_bytes() == mid
    assert cfg.with_name("config.yaml.undone").read_bytes() == latest  # nothing is lost
    assert undo(cfg) == first and cfg.read_bytes() == SHIPPED
    with pytest.raises(FixError, match="no backup"):
        undo(cfg)


def test_idempotent_second_apply_writes_nothing(cfg: Path) -> None:
    apply_changes(cfg, seq(512))
    before = (names(cfg.parent), cfg.stat().st_mtime_ns)
    again = apply_changes(cfg, seq(512))
    assert not again.changed and again.backup_path is None and again.diff == ""
    assert (names(cfg.parent), cfg.stat().st_mtime_ns) == before


def test_dry_run_writes_nothing(cfg: Path) -> None:
    before = (names(cfg.parent), cfg.stat().st_mtime_ns)
    result = apply_changes(cfg, seq(512), dry_run=True)
    assert result.dry_run and result.changed and result.backup_path is None
    assert result.diff.startswith("--- a/config.yaml\n+++ b/config.yaml\n")
    assert (names(cfg.parent), cfg.stat().st_mtime_ns) == before
    assert cfg.read_bytes() == SHIPPED


def test_diff_masks_secrets(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_bytes(SHIPPED.replace(b"fmllm:\n", b"hub:\n  token: hf_abcdefghijklmnopqrstu\n  api_key: s3cr3t-value\nfmllm:\n"))
    result = apply_changes(p, [Change(key="fmllm.minimal_test_steps", to=20)], dry_run=True)
    assert "minimal_test_steps: 20" in result.diff
    assert "hf_abcdefghijklmnopqrstu" not in result.diff and "s3cr3t-value" not in result.diff


def test_permissions_are_kept(cfg: Path) -> None:
    os.chmod(cfg, 0o640)
    apply_changes(cfg, seq(512))
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
    assert stat.S_IMODE(cfg.with_name("config.yaml.bak").stat().st_mode) == 0o640


def test_symlink_is_written_through_to_its_target(tmp_path: Path) -> None:
    real_dir = tmp_path / "shared"
    real_dir.mkdir()
    target = real_dir / "base.yaml"
    target.write_bytes(SHIPPED)
    link = tmp_path / "config.yaml"
    link.symlink_to(target)
    result = apply_changes(link, seq(512))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert load_config(target).view.training.max_seq_length == 512
    assert result.backup_path == real_dir / "base.yaml.bak"
    undo(link)
    assert target.read_bytes() == SHIPPED and link.is_symlink()


def test_bom_is_kept(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + SHIPPED)
    apply_changes(p, seq(512))
    assert p.read_bytes().startswith(b"\xef\xbb\xbf# fmllm example config")


# -- bad input ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FixError, match="no such file") as e:
        apply_changes(tmp_path / "nope.yaml", seq(512))
    assert "did not change" in e.value.render()
    with pytest.raises(FixError, match="no such file"):
        apply_changes(tmp_path / "nope.yaml", seq(512), dry_run=True)


def test_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "config.yaml"
    link.symlink_to(tmp_path / "gone.yaml")
    with pytest.raises(FixError, match="symbolic link"):
        apply_changes(link, seq(512))


def test_invalid_yaml_is_refused_with_its_location(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    bad = SHIPPED.replace(b"  lora:\n", b"  lora: [\n")
    p.write_bytes(bad)
    with pytest.raises(FixError) as e:
        apply_changes(p, seq(512))
    text = e.value.render()
    assert f"{p}:" in text and "invalid YAML" in text and "did not change" in text
    assert p.read_bytes() == bad and [n for n in names(tmp_path) if not n.endswith("-lock")] == ["config.yaml"]


def test_changed_since_read_is_refused(cfg: Path) -> None:
    planned_from = cfg.read_bytes()
    cfg.write_bytes(SHIPPED.replace(b"minimal_test_steps: 10", b"minimal_test_steps: 11"))
    edited = cfg.read_bytes()
    with pytest.raises(FixError, match="changed since fmllm read it"):
        apply_changes(cfg, seq(512), expected_raw=planned_from)
    assert cfg.read_bytes() == edited


def test_changed_during_write_is_detected(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone saves the file after fmllm read it but before the rename: fmllm must not clobber."""
    real = sw._validator

    def validator(data: bytes):
        check = real(data)

        def validate(tmp: Path) -> None:
            check(tmp)
            cfg.write_bytes(SHIPPED + b"# saved by an editor\n")  # the concurrent edit

        return validate

    monkeypatch.setattr(sw, "_validator", validator)
    with pytest.raises(FixError, match="changed by another program"):
        apply_changes(cfg, seq(512))
    assert cfg.read_bytes() == SHIPPED + b"# saved by an editor\n"
    assert names(cfg.parent) == ["config.yaml"]  # no backup, no temp file, no lock file left


def test_failed_rename_leaves_original(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == cfg:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(sw.os, "replace", replace)
    with pytest.raises(FixError, match="cannot replace the config: Input/output error"):
        apply_changes(cfg, seq(512))
    assert cfg.read_bytes() == SHIPPED
    assert leftovers(cfg.parent) == [] and fixes.list_backups(cfg) == []


def test_failed_backup_leaves_original_and_no_temp_file(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name.startswith(cfg.name + ".bak"):
            raise OSError(errno.EACCES, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(sw.os, "replace", replace)
    with pytest.raises(FixError, match="cannot write the backup next to") as e:
        apply_changes(cfg, seq(512))
    assert e.value.path == str(cfg)
    assert cfg.read_bytes() == SHIPPED
    assert leftovers(cfg.parent) == [] and fixes.list_backups(cfg) == []


def test_full_disk_leaves_original(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sw.os, "fsync", fsync)
    with pytest.raises(FixError, match="no space left on the device"):
        apply_changes(cfg, seq(512))
    assert cfg.read_bytes() == SHIPPED and leftovers(cfg.parent) == []


def test_written_file_that_fails_validation_is_not_used(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path):
        raise ConfigError(path, [])

    monkeypatch.setattr(sw, "load_config", lambda p: broken(p) if str(p).endswith(sw.TMP_SUFFIX) else load_config(p))
    with pytest.raises(FixError, match="did not validate"):
        apply_changes(cfg, seq(512))
    assert cfg.read_bytes() == SHIPPED and leftovers(cfg.parent) == [] and fixes.list_backups(cfg) == []


def test_read_only_file_and_folder_as_root(cfg: Path) -> None:
    os.chmod(cfg, 0o444)
    with pytest.raises(FixError, match="read-only") as e:
        apply_changes(cfg, seq(512))
    assert "chmod u+w" in e.value.render()
    assert cfg.read_bytes() == SHIPPED
    os.chmod(cfg, 0o644)
    os.chmod(cfg.parent, 0o555)
    try:
        with pytest.raises(FixError, match="folder .* is read-only"):
            apply_changes(cfg, seq(512))
    finally:
        os.chmod(cfg.parent, 0o755)
    assert cfg.read_bytes() == SHIPPED


def _as_nobody(fn) -> str:
    """Run ``fn`` in a child process as uid/gid 65534; return the FixError it raised (or "")."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        msg = b""
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
        except FixError as e:
            msg = e.render().encode()
        except BaseException as e:  # anything else is a failure the parent reports
            msg = f"UNEXPECTED {type(e).__name__}: {e}".encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out.decode()


@pytest.fixture
def public_dir():
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another uid")
    d = Path(tempfile.mkdtemp(prefix="fmllm-ro-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_read_only_file_for_a_real_user(public_dir: Path) -> None:
    cfg = public_dir / "config.yaml"
    cfg.write_bytes(SHIPPED)
    os.chmod(cfg, 0o444)
    os.chmod(public_dir, 0o777)  # the folder is writable: only the file is read-only
    msg = _as_nobody(lambda: apply_changes(cfg, seq(512)))
    assert "read-only" in msg and "UNEXPECTED" not in msg
    assert cfg.read_bytes() == SHIPPED


def test_read_only_folder_for_a_real_user(public_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = public_dir / "config.yaml"
    cfg.write_bytes(SHIPPED)
    os.chmod(cfg, 0o666)  # the file is writable, its folder (owned by root, 0755) is not
    msg = _as_nobody(lambda: apply_changes(cfg, seq(512)))
    assert "is read-only" in msg and "UNEXPECTED" not in msg
    # Past the up-front check, the OS itself refuses: that error must read as clearly.
    monkeypatch.setattr(sw, "_check_writable", lambda target: target.stat())
    msg = _as_nobody(lambda: apply_changes(cfg, seq(512)))
    assert "permission denied" in msg and "UNEXPECTED" not in msg
    assert cfg.read_bytes() == SHIPPED and names(public_dir) == ["config.yaml"]


# -- locking -----------------------------------------------------------------------------------


def _hold_lock(cfg: Path, seconds: float) -> tuple[int, int]:
    """Fork a child that holds the config lock for ``seconds``; returns (pid, ready-pipe fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            with sw.config_lock(cfg.resolve(), 1):
                os.write(w, b"x")
                time.sleep(seconds)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    return pid, 0


def test_second_writer_refuses_after_timeout_naming_the_holder(cfg: Path) -> None:
    pid, _ = _hold_lock(cfg, 3)
    try:
        with pytest.raises(FixError, match=rf"another fmllm process \(pid {pid}\)"):
            apply_changes(cfg, seq(512), lock_timeout=0.2)
        assert cfg.read_bytes() == SHIPPED
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_second_writer_waits_for_the_first(cfg: Path) -> None:
    pid, _ = _hold_lock(cfg, 0.3)
    try:
        result = apply_changes(cfg, seq(512), lock_timeout=10)
        assert result.changed
    finally:
        os.waitpid(pid, 0)


def test_concurrent_fix_runs_both_land(cfg: Path) -> None:
    """Two processes fixing different keys at once: the lock serialises them, each re-reads."""
    pids = []
    for change in (seq(512), [Change(key="fmllm.minimal_test_steps", to=3)]):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                apply_changes(cfg, change, lock_timeout=20)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert all(os.waitpid(p, 0)[1] == 0 for p in pids)
    view = load_config(cfg).view
    assert view.training.max_seq_length == 512 and view.fmllm.minimal_test_steps == 3
    assert len(fixes.list_backups(cfg)) == 2


def test_temporarily_applied_keeps_a_config_edited_meanwhile(cfg: Path) -> None:
    with pytest.raises(FixError, match="was not restored"):
        with fixes.temporarily_applied(cfg, seq(512)):
            cfg.write_bytes(cfg.read_bytes() + b"# my edit\n")
    assert cfg.read_bytes().endswith(b"# my edit\n")
    assert fixes.list_backups(cfg)  # the original is still there to restore by hand


def test_temporarily_applied_restores_after_an_error(cfg: Path) -> None:
    with pytest.raises(RuntimeError):
        with fixes.temporarily_applied(cfg, seq(512)):
            raise RuntimeError("training crashed")
    assert cfg.read_bytes() == SHIPPED and fixes.list_backups(cfg) == []
