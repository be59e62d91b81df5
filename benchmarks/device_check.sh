#!/usr/bin/env bash
# The one prepared accelerator check for issues 4 and 5: the cross-entropy matrix at the
# GPU shape (8192 x 131072, float32 and bfloat16) and the fused linear cross-entropy at
# the GPU target shape (8192 x 4096 x 131072, bfloat16), side by side with their
# baselines, as two result files.
#
#   bash benchmarks/device_check.sh      # on the device machine, from the repository root
#
# It installs nothing: the device machines come with jax (CUDA), flax and optax, and
# jaxce runs from this tree (PYTHONPATH). Results go to $OUT when set (the device tool
# brings that folder back), else to benchmarks/results. Each benchmark has its own time
# limit, so a slow or failing one still leaves the other's results. For a dry run on CPU:
#   CE_SHAPES=512x4096 LINEAR_SHAPES=256x64x4096 REPEATS=2 OUT=/tmp/dc bash benchmarks/device_check.sh
# (tests/test_bench_smoke.py runs it so, on tiny shapes).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"
repeats=()
if [ -n "${REPEATS:-}" ]; then repeats=(--repeats "$REPEATS"); fi
status=0

"$py" -c "import jax, optax; print('jax', jax.__version__, 'optax', optax.__version__, jax.devices())" \
  || exit 1

timeout "${CE_TIMEOUT:-300}" "$py" benchmarks/bench_ce.py \
  --shapes "${CE_SHAPES:-8192x131072}" --dtypes float32,bfloat16 --no-plot \
  --out "$out" --name ce-device "${repeats[@]}" \
  || { echo "bench_ce.py failed or ran out of time (rc $?)"; status=1; }

timeout "${LINEAR_TIMEOUT:-240}" "$py" benchmarks/bench_linear.py \
  --shapes "${LINEAR_SHAPES:-8192x4096x131072}" --dtypes bfloat16 --variants forward,recompute,auto --heads nobias \
  --out "$out" --name linear-device "${repeats[@]}" \
  || { echo "bench_linear.py failed or ran out of time (rc $?)"; status=1; }

ls -l "$out"
exit "$status"
