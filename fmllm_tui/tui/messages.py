"""Messages that background workers post to the UI (post_message is thread-safe)."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class ChecksEvent(Message):
    """One event from the child ``fmllm-check``'s report stream (collected, start or result)."""

    def __init__(self, serial: int, event: dict[str, Any]) -> None:
        super().__init__()
        self.serial = serial
        self.event = event


class ChecksEnded(Message):
    """The child ``fmllm-check`` exited and its stream is drained."""

    def __init__(self, serial: int, returncode: int | None, stderr: str) -> None:
        super().__init__()
        self.serial = serial
        self.returncode = returncode
        self.stderr = stderr


class ChecksChanged(Message):
    """The app's check state changed: ``check_id`` is the one row to redraw, None for all."""

    def __init__(self, check_id: str | None = None) -> None:
        super().__init__()
        self.check_id = check_id


class ConfigWritten(Message):
    """The config file was changed by a fix, a preset, a memory edit or an undo."""


class GpuSample(Message):
    """One NVML reading (about 1 Hz): newest replaces any still queued."""

    def __init__(self, sample: dict[str, Any]) -> None:
        super().__init__()
        self.sample = sample

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSample)


class RunUpdate(Message):
    """New data from the followed training run (metrics, log lines, state); newest wins."""

    def __init__(self, snapshot: Any) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunUpdate)
