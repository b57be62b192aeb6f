"""fmllm-tui: the Textual interface (the only package besides cli_tui that imports Textual)."""
