"""Exit codes shared by every fmllm command line tool (documented in the README)."""

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of fmllm-check, fmllm-run and fmllm-tui."""

    OK = 0  # nothing failed (warnings allowed)
    FAILED = 1  # a check failed / a run failed
    USAGE = 2  # bad command line, unreadable or invalid config
    CRASHED = 3  # a check crashed or could not run
    INTERRUPTED = 130  # Ctrl-C
