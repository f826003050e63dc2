#!/usr/bin/env bash
# GPU smoke wrapper (bench/gpu_smoke.py). On the bare GPU machine, where snakemake, lm-eval and datasets are
# missing, it installs the wheels of .whl/ (bench/gpu_smoke_wheels.sh) into /tmp/site first; where they are
# importable already (this project's environment) it installs nothing. Results go to $OUT (default smoke-out/).
#   bash bench/gpu_smoke.sh                        # CUDA, bf16
#   bash bench/gpu_smoke.sh --device cpu --tiny    # the same code path on micro sizes, on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import snakemake, lm_eval, datasets" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$PWD/smoke-out}
mkdir -p "$OUT"
python3 bench/gpu_smoke.py --out "$OUT" "$@" 2>&1 | tee "$OUT/console.txt"
