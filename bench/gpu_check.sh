#!/bin/sh
# One PPO iteration, one reward-model step and one DPO step on a CUDA GPU (107M-parameter model):
# samples/s and peak GPU memory. Arguments go to bench/gpu_check.py (--device, --dtype, --model,
# --gradient-checkpointing, --smoke; `--device cpu --smoke` for a quick check without a GPU).
#
#   bench/gpu_check.sh                       # on a GPU host, from the repository root
#   PYTHON=/path/to/python bench/gpu_check.sh --device cpu --smoke --model DIR
#
# Needs torch (a CUDA build for a GPU), transformers, peft, tokenizers, safetensors, pydantic,
# pydantic-settings and httpx; where no index is reachable, install them from carried wheels first:
#   pip install --no-index --find-links WHEELS_DIR -e .
set -eu
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
missing=$("$PYTHON" - <<'PY'
import importlib.util
needed = ["torch", "transformers", "peft", "tokenizers", "safetensors", "pydantic", "pydantic_settings", "httpx"]
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))
PY
)
if [ -n "$missing" ]; then
    echo "bench/gpu_check.sh: $PYTHON lacks: $missing (pip install --no-index --find-links WHEELS_DIR ...)" >&2
    exit 1
fi
export TOKENIZERS_PARALLELISM=false
exec "$PYTHON" -m bench.gpu_check "$@"
