"""fmllm's health checks, written as pytest tests (run `pytest checks/` or `fmllm-check`)."""
