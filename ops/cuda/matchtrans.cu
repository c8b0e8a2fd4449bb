// MatchTrans (STMN) kernels: the three displacement primitives of ops/matchtrans.py.
//
// With a table of D integer displacements d = (dy, dx) (row-major (D, 2) int64), maps laid out
// (N, C, H, W) contiguous and zero padding outside the map:
//   matchtrans_correlate             out[n, d, p] = sum_c first[n, c, p] * second[n, c, p + d]
//   matchtrans_aggregate             out[n, c, p] = sum_d first[n, d, p] * second[n, c, p + d]
//   matchtrans_aggregate_transposed  out[n, c, q] = sum_d first[n, d, q - d] * second[n, c, q - d]
// Forward: A = correlate(query, key); out = aggregate(Gamma, value).
// Backward: dquery = aggregate(dA, key); dkey = aggregate_transposed(dA, query);
//           dGamma = correlate(dout, value); dvalue = aggregate_transposed(Gamma, dout).
// Every output cell is written by exactly one thread (the transposed form gathers instead of
// scattering), so no atomics are needed and the results are deterministic.
// One thread per output cell, grid-stride loops, 64-bit indices; all sizes are arguments.
typedef SCALAR_T scalar_t;

// `channels` is C of `first`/`second` for correlate, and Cv of `second` (= of out) for the aggregates.
extern "C" __global__ void matchtrans_correlate(const scalar_t* __restrict__ first,
                                                const scalar_t* __restrict__ second,
                                                const long long* __restrict__ displacements,
                                                scalar_t* __restrict__ out, long long batch,
                                                long long channels, long long height, long long width,
                                                long long num_displacements) {
  const long long plane = height * width;
  const long long total = batch * num_displacements * plane;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long x = index % width;
    const long long y = (index / width) % height;
    const long long d = (index / plane) % num_displacements;
    const long long n = index / (plane * num_displacements);
    const long long sy = y + displacements[2 * d];
    const long long sx = x + displacements[2 * d + 1];
    scalar_t acc = 0;
    if (sy >= 0 && sy < height && sx >= 0 && sx < width) {
      const scalar_t* a = first + n * channels * plane + y * width + x;
      const scalar_t* b = second + n * channels * plane + sy * width + sx;
      for (long long c = 0; c < channels; ++c) {
        acc += a[c * plane] * b[c * plane];
      }
    }
    out[index] = acc;
  }
}

extern "C" __global__ void matchtrans_aggregate(const scalar_t* __restrict__ first,
                                                const scalar_t* __restrict__ second,
                                                const long long* __restrict__ displacements,
                                                scalar_t* __restrict__ out, long long batch,
                                                long long channels, long long height, long long width,
                                                long long num_displacements) {
  const long long plane = height * width;
  const long long total = batch * channels * plane;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long x = index % width;
    const long long y = (index / width) % height;
    const long long c = (index / plane) % channels;
    const long long n = index / (plane * channels);
    const scalar_t* weights = first + n * num_displacements * plane + y * width + x;
    const scalar_t* values = second + (n * channels + c) * plane;
    scalar_t acc = 0;
    for (long long d = 0; d < num_displacements; ++d) {
      const long long sy = y + displacements[2 * d];
      const long long sx = x + displacements[2 * d + 1];
      if (sy >= 0 && sy < height && sx >= 0 && sx < width) {
        acc += weights[d * plane] * values[sy * width + sx];
      }
    }
    out[index] = acc;
  }
}

extern "C" __global__ void matchtrans_aggregate_transposed(const scalar_t* __restrict__ first,
                                                           const scalar_t* __restrict__ second,
                                                           const long long* __restrict__ displacements,
                                                           scalar_t* __restrict__ out, long long batch,
                                                           long long channels, long long height,
                                                           long long width, long long num_displacements) {
  const long long plane = height * width;
  const long long total = batch * channels * plane;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long x = index % width;
    const long long y = (index / width) % height;
    const long long c = (index / plane) % channels;
    const long long n = index / (plane * channels);
    const scalar_t* weights = first + n * num_displacements * plane;
    const scalar_t* values = second + (n * channels + c) * plane;
    scalar_t acc = 0;
    for (long long d = 0; d < num_displacements; ++d) {
      // Output cell q = (y, x) received from the position p = q - d that looked at it.
      const long long py = y - displacements[2 * d];
      const long long px = x - displacements[2 * d + 1];
      if (py >= 0 && py < height && px >= 0 && px < width) {
        acc += weights[d * plane + py * width + px] * values[py * width + px];
      }
    }
    out[index] = acc;
  }
}
