// LSTS sampling kernels (ops/lsts_sampling.py): bilinear sampling at K fractional locations shared by
// all positions. Maps are (N, C, H, W) contiguous, locations (K, 2) of (dy, dx), zero padding outside.
//
//   lsts_sample_dot        out[n, k, p] = sum_c first[n, c, p] * S(source[n, c], p + loc_k)
//   lsts_sample_aggregate  out[n, c, p] = sum_k weights[n, k, p] * S(source[n, c], p + loc_k)
//   lsts_sample_scatter    backward of  L = sum_{n,k,p} weights[n, k, p] <first(p), S(source, p + loc_k)>:
//                          grad_source += dL/dsource (atomicAdd to the four corners), and the location
//                          gradient of each (n, k, p) into partial[n, k, p, 0:2] (summed by the caller)
// with S the bilinear sample. Forward: s = dot(query, key); out = aggregate(S, value).
// Backward: dquery = aggregate(ds, key); dS = dot(dout, value); dkey, dloc += scatter(ds, query, key);
// dvalue, dloc += scatter(S, dout, value).
// Grid-stride loops, 64-bit indices, sizes as arguments, no shared memory or barriers.
typedef SCALAR_T scalar_t;

// The four bilinear corners of a fractional position: offsets into a (H, W) plane (-1 when the corner
// lies outside), weights, and the derivatives of the weights with respect to dy and dx.
struct BilinearCorners {
  long long offset[4];
  scalar_t weight[4];
  scalar_t weight_dy[4];
  scalar_t weight_dx[4];
};

__device__ __forceinline__ BilinearCorners bilinear_corners(scalar_t py, scalar_t px, long long height,
                                                            long long width) {
  BilinearCorners corners;
  const scalar_t fy0 = floor(py);
  const scalar_t fx0 = floor(px);
  const long long y0 = (long long)fy0;
  const long long x0 = (long long)fx0;
  const scalar_t ty = py - fy0;  // fractional parts in [0, 1)
  const scalar_t tx = px - fx0;
  const scalar_t one = 1;
  // Corner order: (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).
  corners.weight[0] = (one - ty) * (one - tx);
  corners.weight[1] = (one - ty) * tx;
  corners.weight[2] = ty * (one - tx);
  corners.weight[3] = ty * tx;
  corners.weight_dy[0] = -(one - tx);
  corners.weight_dy[1] = -tx;
  corners.weight_dy[2] = one - tx;
  corners.weight_dy[3] = tx;
  corners.weight_dx[0] = -(one - ty);
  corners.weight_dx[1] = one - ty;
  corners.weight_dx[2] = -ty;
  corners.weight_dx[3] = ty;
  for (int corner = 0; corner < 4; ++corner) {
    const long long y = y0 + (corner >> 1);
    const long long x = x0 + (corner & 1);
    corners.offset[corner] = (y >= 0 && y < height && x >= 0 && x < width) ? y * width + x : -1;
  }
  return corners;
}

__device__ __forceinline__ scalar_t sample_plane(const scalar_t* plane, const BilinearCorners& corners) {
  scalar_t value = 0;
  for (int corner = 0; corner < 4; ++corner) {
    if (corners.offset[corner] >= 0) value += corners.weight[corner] * plane[corners.offset[corner]];
  }
  return value;
}

extern "C" __global__ void lsts_sample_dot(const scalar_t* __restrict__ first,
                                           const scalar_t* __restrict__ source,
                                           const scalar_t* __restrict__ locations,
                                           scalar_t* __restrict__ out, long long batch, long long channels,
                                           long long height, long long width, long long num_locations) {
  const long long plane = height * width;
  const long long total = batch * num_locations * plane;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long x = index % width;
    const long long y = (index / width) % height;
    const long long k = (index / plane) % num_locations;
    const long long n = index / (plane * num_locations);
    const BilinearCorners corners =
        bilinear_corners(y + locations[2 * k], x + locations[2 * k + 1], height, width);
    const scalar_t* first_cell = first + n * channels * plane + y * width + x;
    const scalar_t* source_planes = source + n * channels * plane;
    scalar_t acc = 0;
    for (long long c = 0; c < channels; ++c) {
      acc += first_cell[c * plane] * sample_plane(source_planes + c * plane, corners);
    }
    out[index] = acc;
  }
}

extern "C" __global__ void lsts_sample_aggregate(const scalar_t* __restrict__ weights,
                                                 const scalar_t* __restrict__ source,
                                                 const scalar_t* __restrict__ locations,
                                                 scalar_t* __restrict__ out, long long batch,
                                                 long long channels, long long height, long long width,
                                                 long long num_locations) {
  const long long plane = height * width;
  const long long total = batch * channels * plane;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long x = index % width;
    const long long y = (index / width) % height;
    const long long c = (index / plane) % channels;
    const long long n = index / (plane * channels);
    const scalar_t* weight_cell = weights + n * num_locations * plane + y * width + x;
    const scalar_t* source_plane = source + (n * channels + c) * plane;
    scalar_t acc = 0;
    for (long long k = 0; k < num_locations; ++k) {
      const BilinearCorners corners =
          bilinear_corners(y + locations[2 * k], x + locations[2 * k + 1], height, width);
      acc += weight_cell[k * plane] * sample_plane(source_plane, corners);
    }
    out[index] = acc;
  }
}

// One thread per (n, k, p). grad_source must be zero-initialised by the caller; partial is
// (N, K, H, W, 2) and fully overwritten.
extern "C" __global__ void lsts_sample_scatter(const scalar_t* __restrict__ weights,
                                               const scalar_t* __restrict__ first,
                                               const scalar_t* __restrict__ source,
                                               const scalar_t* __restrict__ locations,
                                               scalar_t* __restrict__ grad_source,
                                               scalar_t* __restrict__ partial, long long batch,
                                               long long channels, long long height, long long width,
                                               long long num_locations) {
  const long long plane = height * width;
  const long long total = batch * num_locations * plane;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long x = index % width;
    const long long y = (index / width) % height;
    const long long k = (index / plane) % num_locations;
    const long long n = index / (plane * num_locations);
    const BilinearCorners corners =
        bilinear_corners(y + locations[2 * k], x + locations[2 * k + 1], height, width);
    const scalar_t weight = weights[index];
    const scalar_t* first_cell = first + n * channels * plane + y * width + x;
    const scalar_t* source_planes = source + n * channels * plane;
    scalar_t* grad_planes = grad_source + n * channels * plane;
    scalar_t grad_dy = 0;
    scalar_t grad_dx = 0;
    for (long long c = 0; c < channels; ++c) {
      const scalar_t upstream = weight * first_cell[c * plane];  // dL/dS(source[n, c], p + loc_k)
      for (int corner = 0; corner < 4; ++corner) {
        const long long offset = corners.offset[corner];
        if (offset < 0) continue;
        const scalar_t corner_value = source_planes[c * plane + offset];
        atomicAdd(grad_planes + c * plane + offset, upstream * corners.weight[corner]);
        grad_dy += upstream * corners.weight_dy[corner] * corner_value;
        grad_dx += upstream * corners.weight_dx[corner] * corner_value;
      }
    }
    partial[2 * index] = grad_dy;
    partial[2 * index + 1] = grad_dx;
  }
}
