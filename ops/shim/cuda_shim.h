// CPU shim for vodbench's CUDA kernels.
//
// Lets the UNCHANGED text of an `ops/cuda/<op>.cu` file compile with g++ as C++ so that its
// `extern "C" __global__` kernels can run on a machine without a GPU (see ops/_kernels.py,
// `shim_library` / `shim_launch`). The generated launch wrappers loop over the grid and the block
// sequentially, setting `blockIdx` / `threadIdx` before each call, so one "thread" runs at a time.
//
// What this deliberately supports: the CUDA built-in index variables, the function qualifiers,
// `atomicAdd` (trivially atomic here, as threads never overlap) and the math functions the kernels
// use (float and double overloads, as in CUDA's C++ device library).
// What it deliberately does NOT provide: `__syncthreads`, `__shared__`, warp intrinsics. Kernels that
// use them fail to compile under the shim, which is the point: a sequential shim cannot emulate barriers
// honestly, so vodbench kernels are written without them (grid-stride loops + atomics only).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct vodbench_shim_dim3 {
  unsigned int x;
  unsigned int y;
  unsigned int z;
};

// One translation unit per op library, so `inline` variables give one definition per library;
// `thread_local` keeps them correct should a wrapper ever be called from several host threads.
inline thread_local vodbench_shim_dim3 threadIdx = {0, 0, 0};
inline thread_local vodbench_shim_dim3 blockIdx = {0, 0, 0};
inline thread_local vodbench_shim_dim3 blockDim = {1, 1, 1};
inline thread_local vodbench_shim_dim3 gridDim = {1, 1, 1};

// Threads run one after another, so a plain read-modify-write is atomic. Returns the old value,
// like CUDA's atomicAdd.
template <typename T>
inline T atomicAdd(T* address, T value) {
  T old = *address;
  *address = old + value;
  return old;
}

// Read-only cache load: a plain load on the CPU.
template <typename T>
inline T __ldg(const T* address) {
  return *address;
}

// Math functions: CUDA's device library overloads them for float and double; <cmath>'s std::
// overloads do the same on the host.
using std::abs;
using std::ceil;
using std::exp;
using std::fabs;
using std::floor;
using std::fmax;
using std::fmin;
using std::log;
using std::pow;
using std::round;
using std::sqrt;
using std::tanh;

// CUDA's integer and floating min/max are overloaded free functions in device code.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
