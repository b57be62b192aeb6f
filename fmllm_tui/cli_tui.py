"""fmllm-tui: the Textual interface. Textual is imported only here and in fmllm_tui.tui."""

from __future__ import annotations

import argparse
import sys

from fmllm_tui import __version__
from fmllm_tui.exitcodes import ExitCode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fmllm-tui",
        description="Interactive checks, one-key fixes, memory planning, launch and monitor of a QLoRA fine-tune.",
        epilog="Keys: press ? inside the app. Serve in a browser: textual serve \"fmllm-tui\" (localhost only).",
    )
    p.add_argument("--version", action="version", version=f"fmllm {__version__}")
    p.add_argument("--config", "-c", metavar="PATH", help="config file (default: $FMLLM_CONFIG or ./config.yaml)")
    p.add_argument("--gpu", metavar="NAME", help="plan for this GPU instead of this machine's")
    p.add_argument("--vram", metavar="SIZE", help="plan for this much GPU memory (e.g. 10GiB)")
    p.add_argument("--offline", action="store_true", help="never use the network")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from fmllm_tui.tui.app import run_app
    except ImportError as e:
        print(f"fmllm-tui: the TUI is not available: {e}", file=sys.stderr)
        return ExitCode.CRASHED
    return run_app(args)


if __name__ == "__main__":
    sys.exit(main())
