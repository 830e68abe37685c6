#!/usr/bin/env bash
# GPU smoke test (bench/gpu_smoke.py): one line per check, at most 10 minutes on one GPU.
# usage: bash bench/gpu_smoke.sh [--cpu] [--only CHECK ...]   (from anywhere; runs in the checkout)
# On the GPU machine, python3 holds a CUDA build of torch; the packages it lacks travel as wheels in .gpu-smoke/whl
# (written here by `python bench/gpu_smoke.py --prepare`), installed into /tmp/gpu-smoke-site, never over the image.
set -u
cd "$(dirname "$0")/.." || exit 1
site=/tmp/gpu-smoke-site
# The wheels are for an interpreter without this project's packages (the GPU image's); a project venv has them.
if ! "${PYTHON:-python3}" -c "import optuna" 2>/dev/null && compgen -G ".gpu-smoke/whl/*.whl" >/dev/null; then
    "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .gpu-smoke/whl/*.whl || exit 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu_smoke.py "$@"
