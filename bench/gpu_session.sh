#!/usr/bin/env bash
# One device call of a GPU session (issues 19, 20, 22): installs the wheels, lays fmllm out as the
# wheel does, records the machine, then runs one part within the device's 10-minute limit.
#
#   bash bench/gpu_session.sh resume                 # bench_resume_gpu.py alone: A, B, C, D (~8 min)
#   bash bench/gpu_session.sh matrix MATRIX [PRED]   # bench_runner_gpu.py --matrix: the error table
#                                                    # against PRED (predicted before: a file, or a
#                                                    # stem whose _h100/_h200 file matches the card)
#   bash bench/gpu_session.sh unsloth                # bench_unsloth_gpu.py side by side (~9 min)
#
# Here, before the call: `bash ../shared/device/fetch-wheels.sh` (wheels in .whl/; `unsloth` needs
# `bash ../shared/device/unsloth-wheels.sh` too, in .whl2/), then the device tool's `run` with
# carry [".whl"] (or [".whl2"]) and this command. Everything lands in $OUT.
set -u
cd "$(dirname "$0")/.."
part=${1:-}
case "$part" in resume|matrix|unsloth) ;; *)
    echo "usage: bash bench/gpu_session.sh resume | matrix MATRIX [PRED] | unsloth" >&2; exit 2 ;;
esac
OUT=${OUT:-./bench_out}; mkdir -p "$OUT"
budget=${BUDGET_S:-560}
t0=$(date +%s)
left() { echo $(( budget - ($(date +%s) - t0) )); }

export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } > "$OUT/machine.txt" 2>&1

install_fmllm() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "wheel install failed: run fetch-wheels.sh here first"; exit 9; }
    bash bench/stage_package.sh /tmp/site
    python3 -c "import torch, transformers, peft, accelerate, bitsandbytes; print('torch', torch.__version__, \
'| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, \
'| bitsandbytes', bitsandbytes.__version__)" >> "$OUT/machine.txt" 2>&1
}

case "$part" in
resume)
    install_fmllm
    timeout "$(left)" python3 -P bench/bench_resume_gpu.py --timeout 200 > "$OUT/resume.log" 2>&1
    echo "resume rc=$? in $(( $(date +%s) - t0 )) s"; tail -30 "$OUT/resume.log" ;;
matrix)
    matrix=${2:?"matrix needs a matrix file (bench/gpu_runs/*_matrix_*.json)"}
    pred=${3:-}
    if [ -n "$pred" ] && [ ! -f "$pred" ]; then
        case "$gpu" in *H200*) pred="${pred}_h200.json" ;; *) pred="${pred}_h100.json" ;; esac
    fi
    install_fmllm
    timeout "$(left)" python3 -P bench/bench_runner_gpu.py --matrix "$matrix" ${pred:+--predicted "$pred"} \
        --budget-s "$(( $(left) - 30 ))" > "$OUT/matrix.log" 2>&1
    echo "matrix rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "^\[bench" "$OUT/matrix.log" | tail -50 ;;
unsloth)
    python3 bench/bench_unsloth_gpu.py --install .whl2 || { echo "unsloth install failed: run unsloth-wheels.sh here first"; exit 9; }
    export UNSLOTH_DISABLE_STATISTICS=1
    timeout "$(left)" python3 -P bench/bench_unsloth_gpu.py --budget-s "$(( $(left) - 30 ))" 2>&1 | tee "$OUT/unsloth.log" \
        | grep -v "^\[bench" | tail -60 ;;
esac
