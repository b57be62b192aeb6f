"""fmllm: get a QLoRA fine-tune to fit and run on the GPU you have.

The headless core (config, checks, fixes, memory model, log diagnosis, runner launch) never
imports Textual; modules that need torch import it lazily inside the functions that use it.
"""

__version__ = "0.1.0"
