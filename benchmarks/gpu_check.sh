#!/usr/bin/env bash
# The one script a GPU session runs for the issue "GPU through CuPy" (see README, "On a GPU"):
#
#   1. tests/test_gpu.py and tests/test_gpu_emulated.py under --backend cupy: fused kernels
#      == reference (float64 1e-12, float32 1e-5), bit-identical reruns, PyTorch CUDA parity,
#      NVRTC compile/spill checks;
#   2. benchmarks/gpu.py: the fwd+bwd table against PyTorch CUDA and the unfused CuPy path,
#      and the verdict on the targets;
#   3. the norm_speed demo at the seed's shape (100, 2048, 4096) with --backend cupy;
#   4. every demo in --quick mode with --backend cupy;
#   5. the whole test suite under --backend cupy.
#
# Most important first, each step under its own time limit (seconds, overridable below), so
# that a slow step cannot starve the others and the whole run stays inside one 10-minute
# device call. Logs go to $OUT (set by the device tool) or tinynorm-out/gpu; a summary is
# printed last and written to summary.txt. Run from anywhere:
#
#   bash benchmarks/gpu_check.sh            # PYTHON=python3 by default (the device image's)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-tinynorm-out/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
# Measured on an H100 (2026-11-27): 43, 85, 15, 19 s; the whole suite about 270 s, which a
# 140 s limit cut at half. The defaults sum to 560 s, inside one 600 s device call.
T_TESTS="${T_TESTS:-60}" T_BENCH="${T_BENCH:-110}" T_SPEED="${T_SPEED:-30}" T_DEMOS="${T_DEMOS:-40}"
T_SUITE="${T_SUITE:-320}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# A cold kernel cache, so that the benchmark's first-call time includes the NVRTC compile.
export CUPY_CACHE_DIR="$(mktemp -d)"
export MPLBACKEND=Agg
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rs --backend cupy)
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    PYTEST+=(--timeout=120)  # one hung test must not eat the budget
fi

{
    date -u
    nvidia-smi -L 2>&1 || echo "nvidia-smi: not found"
    "$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0])
for name in ("numpy", "cupy", "torch", "hypothesis", "pytest"):
    try:
        mod = __import__(name)
        print(name, mod.__version__)
    except Exception as err:  # noqa: BLE001
        print(name, "unavailable:", err)
try:
    import cupy
    print("cupy sees", cupy.cuda.runtime.getDeviceCount(), "GPU(s); NVRTC",
          cupy.cuda.nvrtc.getVersion())
    import torch
    print("torch.cuda.is_available():", torch.cuda.is_available())
except Exception as err:  # noqa: BLE001
    print("GPU check failed:", err)
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

declare -a SUMMARY
step() {  # step NAME LIMIT LOG COMMAND...
    local name="$1" limit="$2" log="$3"
    shift 3
    echo "=== $name (limit ${limit}s) ==="
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$log"
    local rc=${PIPESTATUS[0]}
    local verdict="ok"
    [ "$rc" -ne 0 ] && verdict="FAILED (exit $rc)"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="TIMED OUT after ${limit}s (partial log)"
    SUMMARY+=("$(printf '%-34s %5ss  %s  -> %s' "$name" "$((SECONDS - t0))" "$verdict" "$log")")
}

step "1. fused kernels vs reference" "$T_TESTS" gpu_tests.log \
    "${PYTEST[@]}" tests/test_gpu.py tests/test_gpu_emulated.py
step "2. benchmark" "$T_BENCH" bench.log "$PY" benchmarks/gpu.py --out "$OUT/bench.txt"
step "3. norm_speed --backend cupy" "$T_SPEED" norm_speed_cupy.log \
    "$PY" -m demos norm_speed --backend cupy --out "$(mktemp -d)"
step "4. demos --quick --backend cupy" "$T_DEMOS" demos_cupy.log \
    "$PY" -m demos all --quick --backend cupy --out "$(mktemp -d)"
step "5. whole suite --backend cupy" "$T_SUITE" suite_cupy.log \
    "${PYTEST[@]}" --durations=10 tests \
    --ignore=tests/test_gpu.py --ignore=tests/test_gpu_emulated.py  # step 1 ran those

{
    echo "=== summary ($(date -u)) ==="
    printf '%s\n' "${SUMMARY[@]}"
    echo
    echo "--- test results ---"
    grep -hE "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$OUT/gpu_tests.log" "$OUT/suite_cupy.log" 2>/dev/null | head -40
    echo
    echo "--- benchmark verdict ---"
    sed -n '/^verdict/,$p' "$OUT/bench.txt" 2>/dev/null || echo "(no benchmark table)"
    echo
    echo "--- norm_speed verdict ---"
    grep -h "Verdict" "$OUT/norm_speed_cupy.log" 2>/dev/null || echo "(no verdict)"
} | tee "$OUT/summary.txt"
