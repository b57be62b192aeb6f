#!/usr/bin/env bash
# Runs fmllm-check's real GPU paths (NVML, torch CUDA build, bitsandbytes 4-bit probe) on the
# GPU machine and saves what they printed. Usage (device): bash bench/gpu_checks.sh
set -u
OUT=${OUT:-./bench_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
bash "$(dirname "$0")/stage_package.sh" /tmp/site
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
  python3 -c "import torch, transformers, peft, accelerate, bitsandbytes; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| bitsandbytes', bitsandbytes.__version__)"
} 2>&1 | tee "$OUT/gpu_env.txt"
echo "--- bnb probe"; python3 -P -m fmllm_tui.probes bnb --dtype bfloat16 | tee "$OUT/bnb_probe.json"
echo "--- fmllm-check on the shipped config (real NVML)"
/usr/bin/time -f "wall %e s" python3 -P -m fmllm_tui.cli_check --offline 2>&1 | tee "$OUT/check_human.txt"
python3 -P -m fmllm_tui.cli_check --offline --json > "$OUT/check.json"; echo "exit $?"
