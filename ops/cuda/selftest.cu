// Trivial kernels that exercise ops/_kernels.py (NVRTC compile, CuPy launch, CPU shim) without
// depending on any real op. Not used by any op.
typedef SCALAR_T scalar_t;

// y[i] = alpha * x[i] + y[i] for i < n (grid-stride loop, 64-bit indices).
extern "C" __global__ void axpy(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, scalar_t alpha,
                                long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    y[i] = alpha * x[i] + y[i];
  }
}

// total[0] += sum_i x[i]: every thread adds into one cell, so it needs atomicAdd on a GPU.
extern "C" __global__ void atomic_sum(const scalar_t* __restrict__ x, scalar_t* __restrict__ total,
                                      long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    atomicAdd(total, x[i]);
  }
}
