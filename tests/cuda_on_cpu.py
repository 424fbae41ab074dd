"""Run tinynorm.kernels' CUDA source itself on the CPU, one OS thread per CUDA thread.

The kernel code is compiled unchanged as C++20 behind a small shim: ``__syncthreads`` is a
``std::barrier`` over the block's threads, ``__shfl_xor_sync`` exchanges through a buffer
between two barriers of the warp, ``__shared__`` is a function ``static`` (one block runs at
a time, so it is the block's shared memory), ``threadIdx``/``blockIdx`` are thread-locals.
A launch starts blockDim threads that walk the grid's blocks in order, all of them
meeting at a barrier between blocks.

So the real indexing, loops, barriers and reduction order run, on real threads; built
with ThreadSanitizer, a missing barrier shows up as a reported data race. What it cannot
show is what only the GPU has: the memory model of a real warp, NVRTC's own code
generation, timing.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from cuda_emulator import EmulatedKernel, EmulatedModule, parse_signatures
from tinynorm.kernels import _cuda

SHIM = r"""
#include <barrier>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#include <math.h>
#include <algorithm>
using std::min;

struct Dim3 { unsigned x = 0, y = 0, z = 0; };
static thread_local Dim3 threadIdx, blockIdx;
static Dim3 blockDim, gridDim;
static std::barrier<>* block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static double shuffle_slots[1024];

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

template <typename T> T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    const unsigned tid = threadIdx.x + threadIdx.y * blockDim.x;
    const unsigned warp = tid / 32, lane = tid % 32;
    shuffle_slots[tid] = static_cast<double>(v);  // float and double round-trip exactly
    warp_barriers[warp]->arrive_and_wait();
    const T other = static_cast<T>(shuffle_slots[warp * 32 + (lane ^ lane_mask)]);
    warp_barriers[warp]->arrive_and_wait();       // nobody overwrites a slot still being read
    return other;
}

inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

template <typename Body>
void run_grid(unsigned gx, unsigned gy, unsigned bx, unsigned by, Body body) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, by, 1};
    const unsigned threads = bx * by;
    std::barrier<> sync(threads), between_blocks(threads);
    block_barrier = &sync;
    warp_barriers.clear();
    for (unsigned w = 0; w < (threads + 31) / 32; ++w)
        warp_barriers.emplace_back(new std::barrier<>(32));
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            threadIdx = {t % bx, t / bx, 0};
            for (unsigned y = 0; y < gy; ++y)
                for (unsigned x = 0; x < gx; ++x) {
                    blockIdx = {x, y, 0};
                    body();
                    between_blocks.arrive_and_wait();  // shared statics: one block at a time
                }
        });
    for (auto& th : pool) th.join();
}
"""

CTYPE_OF = {"float": ctypes.c_float, "double": ctypes.c_double}


def compiler():
    """The C++ compiler to use, or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


def _launchers(source) -> str:
    """One extern "C" launcher per instantiation; args[i] points at the i-th value, as
    cuLaunchKernel's kernelParams do."""
    out = []
    for name, params in parse_signatures(source.code).items():
        for ctype in _cuda.CTYPES.values():
            casts = []
            for i, (_, base, pointer, const) in enumerate(params):
                t = ctype if base == "T" else base
                t = f"{'const ' if const else ''}{t}{'*' if pointer else ''}"
                casts.append(f"*({t}*)args[{i}]")
            out.append(
                f'extern "C" void launch_{name}_{ctype}(unsigned gx, unsigned gy, unsigned bx,'
                f' unsigned by, void** args) {{\n'
                f"    run_grid(gx, gy, bx, by, [&] {{ {name}<{ctype}>"
                f"({', '.join(casts)}); }});\n}}")
    return "\n".join(out)


_libraries: dict = {}


def build(source):
    """The shared library of ``source`` (a kernels Source) compiled for the CPU, cached by
    content in a temporary folder for the life of the process."""
    text = SHIM + source.code + "\n" + _launchers(source)
    flags = ["-std=c++20", "-O1", "-g", "-pthread", "-shared", "-fPIC", "-w",
             "-ffp-contract=off"]
    key = hashlib.sha256((text + " ".join(flags)).encode()).hexdigest()[:16]
    if key not in _libraries:
        folder = tempfile.mkdtemp(prefix="tinynorm-cuda-on-cpu-")
        cpp, lib = os.path.join(folder, f"{source.name}.cpp"), os.path.join(folder, f"{key}.so")
        with open(cpp, "w") as f:
            f.write(text)
        done = subprocess.run([compiler(), *flags, cpp, "-o", lib], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"compiling {source.name} for the CPU failed:\n"
                               f"{done.stderr[-3000:]}")
        _libraries[key] = ctypes.CDLL(lib)
    return _libraries[key]


class CpuThreadsKernel(EmulatedKernel):
    """The launch checks of EmulatedKernel, then the compiled CUDA source on CPU threads."""

    def execute(self, named, grid, block, args):
        ctype = _cuda.CTYPES[self.dtype]
        values = []
        for (_, base, pointer, _), arg in zip(self.params, args):
            if pointer:
                values.append(ctypes.c_void_p(np.asarray(arg).ctypes.data))
            elif base == "int":
                values.append(ctypes.c_int32(int(arg)))
            else:
                values.append(CTYPE_OF[ctype if base == "T" else base](float(arg)))
        slots = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        grid = tuple(grid) + (1,) * (2 - len(grid))
        block = tuple(block) + (1,) * (2 - len(block))
        launch = getattr(self.module.library, f"launch_{self.name}_{ctype}")
        launch(ctypes.c_uint(grid[0]), ctypes.c_uint(grid[1]), ctypes.c_uint(block[0]),
               ctypes.c_uint(block[1]), slots)


class CpuThreadsModule(EmulatedModule):
    """CuPy's RawModule, compiling the CUDA source for CPU threads instead of the GPU."""

    kernel_class = CpuThreadsKernel

    def __init__(self, code, options, name_expressions):
        super().__init__(code, options, name_expressions)
        source = next(s for s in _sources() if s.code == code)
        self.library = build(source)


def _sources():
    from tinynorm import kernels

    return kernels.SOURCES


# ---- a data-race check under ThreadSanitizer ----------------------------------------------
# ThreadSanitizer cannot be loaded into this Python (static TLS), so the race check is a
# program of its own: every instantiation launched once on small arrays with the geometry
# the wrappers use. Values do not matter here (correctness is checked through Python above);
# what matters is that every shared-memory access is ordered by a barrier.
RACE_SIZES = {"rows": 5, "n": 300, "chunks": 3, "rows_per_chunk": 2}


def _geometry(name):
    rows, n = RACE_SIZES["rows"], RACE_SIZES["n"]
    if name.endswith("norm_param_grad_partials"):  # LayerNorm's dγ/dβ and RMSNorm's dγ
        return (-(-n // _cuda.PARTIAL_TILE), RACE_SIZES["chunks"]), (_cuda.PARTIAL_TILE,
                                                                     _cuda.PARTIAL_STRANDS)
    if name.endswith("norm_param_grad_sum"):
        return (-(-n // 256), 1), (256, 1)
    return (rows, 1), (_cuda.row_threads(n), 1)


def race_check_program(source) -> str:
    calls = []
    for name, params in parse_signatures(source.code).items():
        (gx, gy), (bx, by) = _geometry(name)
        for ctype in _cuda.CTYPES.values():
            args, buffers = [], []
            for pname, base, pointer, _ in params:
                t = ctype if base == "T" else base
                if pointer:  # allocated before the launch, outside the threads
                    buffers.append(f"{t}* {pname} = buffer<{t}>();")
                    args.append(pname)
                elif base == "int":
                    args.append(str(RACE_SIZES[pname]))
                else:
                    args.append(f"({t})1e-5")
            calls.append(f"    {{ {' '.join(buffers)}\n      run_grid({gx}, {gy}, {bx}, {by}, "
                         f"[&] {{ {name}<{ctype}>({', '.join(args)}); }}); }}")
    main = "\n".join([
        "template <typename T> T* buffer() {",
        "    static std::vector<std::vector<T>> keep;",
        "    keep.emplace_back(1 << 14);",
        "    for (size_t i = 0; i < keep.back().size(); ++i) keep.back()[i] = T(1 + i % 7) / 8;",
        "    return keep.back().data();",
        "}",
        "int main() {", *calls, "    return 0;", "}"])
    return SHIM + source.code + "\n" + main


def run_race_check(source, code=None):
    """(exit code, ThreadSanitizer's report) of ``source`` (or ``code``) built with
    -fsanitize=thread and run; exit code 66 means a race was reported."""
    folder = tempfile.mkdtemp(prefix="tinynorm-tsan-")
    cpp, exe = os.path.join(folder, "race.cpp"), os.path.join(folder, "race")
    with open(cpp, "w") as f:
        f.write(code if code is not None else race_check_program(source))
    done = subprocess.run([compiler(), "-std=c++20", "-O1", "-g", "-pthread", "-w",
                           "-fsanitize=thread", cpp, "-o", exe], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"building the race check failed:\n{done.stderr[-3000:]}")
    env = dict(os.environ, TSAN_OPTIONS="exitcode=66 halt_on_error=0")
    run = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=300)
    return run.returncode, run.stderr
