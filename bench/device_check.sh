#!/usr/bin/env bash
# Issue 18's device check on a lent H200, in one short call, both on Keras's JAX backend:
# bench/engine.py (the sparse (c) and dense (d) engines against the batched loop (b), its goal line
# (b)/(d) >= 20x, and --check-cpu: the GPU's dense labels against JAX's CPU labels) and
# bench/throughput.py's in-process mode (its goal line: >= 1,000 real-size models per hour). The
# machine has JAX but no TensorFlow, no Keras, none of this project's other dependencies and no network,
# so they travel as wheels.
#
#   here, once (needs the package index):  bash bench/device_check.sh prepare
#       downloads the missing wheels for CPython 3.12 (the versions of .venv, which the tests pass
#       with) into build/device-check/ (ignored by git) and copies the lab's bd_weights.h5 there.
#   on the device:  run(command="bash bench/device_check.sh run", carry=["build/device-check"], timeout_s=560)
#       installs the wheels offline into /tmp/site and runs both benches; their logs come back in $OUT.
#       MODELS (default 10) and ENGINE (auto|dense|sparse, default auto) size and steer throughput.py,
#       IMAGES (default the lab's 11547) engine.py.
#
# PYTHON and PY_VERSION (default python3, 3.12) let a CPU machine rehearse the check in a venv without
# TensorFlow, with WORK naming a folder of small data files (throughput.py makes lab-size ones where the
# folder has none). Rehearsed so on a 2-core VM (Python 3.11, JAX 0.10.2 on CPU): both ran through.
# One call on the device, estimated (not yet measured there): wheels ~0.5 min, engine.py ~2 min (its
# faces ~1 min), throughput.py ~5 min at 10 models (most of it writing the lab-size data files, on one
# core): with the machine's start, most of a session's 15 minutes of device time, so plan one call.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=build/device-check
PYTHON=${PYTHON:-python3}
WEIGHTS=../shared/csaw/bd_weights.h5
# What the device image lacks (its python3 has numpy, h5py, jax, matplotlib, rich and what these need).
PACKAGES="keras namex optree sqlalchemy alembic mako celery kombu billiard vine amqp click click-didyoumean
  click-plugins click-repl prompt-toolkit wcwidth redis psycopg psycopg-binary pydantic pydantic-core
  pydantic-settings python-dotenv annotated-types typing-inspection platformdirs typer typing-extensions tzlocal"

prepare() {
  rm -rf "$HERE" && mkdir -p "$HERE"
  cp "$WEIGHTS" "$HERE/"
  for name in $PACKAGES; do
    pins+=("$name==$(.venv/bin/python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")")
  done
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$HERE" "${pins[@]}"
  du -sh "$HERE"
}

run() {
  local out=${OUT:-/tmp/device-check-out}
  mkdir -p "$out"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$HERE"/*.whl
  export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
  [ -f "$WEIGHTS" ] || { mkdir -p "$(dirname "$WEIGHTS")" && cp "$HERE/bd_weights.h5" "$WEIGHTS"; }
  nvidia-smi -L || true
  # each bench runs even if the other fails: a device call is too dear to end at the first error
  "$PYTHON" bench/engine.py --skip-eager --check-cpu --images "${IMAGES:-11547}" 2>&1 | tee "$out/engine.log" \
    || echo "engine.py failed" >&2
  "$PYTHON" bench/throughput.py --modes in-process --models "${MODELS:-10}" --engine "${ENGINE:-auto}" \
    --work "${WORK:-/tmp/badnet-prune-bench}" 2>&1 | tee "$out/throughput.log" || echo "throughput.py failed" >&2
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bash bench/device_check.sh prepare|run" >&2; exit 2 ;;
esac
