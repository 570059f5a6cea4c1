#!/usr/bin/env bash
# GPU decode benchmark (issue 23), by hand on a host with an NVIDIA GPU:
#   bash bench/gpu.sh [N] [--cpu-rehearsal] [--out PATH]
# N cameras per codec (default 8: 8 H.264 + 8 H.265 at 1080p25). Figures go to
# .cache/bench/gpu.json (or --out). Exit 0: every target met; 1: a target missed or a leg
# failed; 77: no GPU/driver (nothing measured); 124: the 8-minute limit passed.
# --cpu-rehearsal runs the same plumbing small and without a GPU (the cuda leg falls back).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[[ -x $python ]] || python=python3
# the script bounds every wait itself (450 s in all); this is the backstop, SIGKILL 10 s later
exec timeout --kill-after=10 480 "$python" -m bench.gpu "$@"
