// Local correlation (FlowNet-style cost volume).
//
// output[n, k, h, w] = (1 / C) * sum_c a[n, c, h, w] * b[n, c, h + dy_k, w + dx_k], 0 where the shifted
// position falls outside the map. Displacements dy_k, dx_k in {-d, -d + s, ..., d} (d = max_displacement,
// s = stride), k = iy * D + ix with D = 2 d / s + 1 (dy outer, dx inner).
// Layouts (contiguous): a, b, grad_a, grad_b (N, C, H, W); output, grad_output (N, D * D, H, W).
// Every kernel gathers (one writer per output cell), so none needs atomics.
typedef SCALAR_T scalar_t;

// One thread per (n, k, h, w).
extern "C" __global__ void correlation_forward(
    const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, scalar_t* __restrict__ output,
    long long batch, long long channels, long long height, long long width, long long max_displacement,
    long long stride) {
  const long long side = 2 * max_displacement / stride + 1;
  const long long plane_size = height * width;
  const long long total = batch * side * side * plane_size;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long p = index % plane_size;
    const long long k = (index / plane_size) % (side * side);
    const long long n = index / (plane_size * side * side);
    const long long h = p / width, w = p % width;
    const long long hh = h + (k / side) * stride - max_displacement;
    const long long ww = w + (k % side) * stride - max_displacement;
    scalar_t sum = 0;
    if (hh >= 0 && hh < height && ww >= 0 && ww < width) {
      for (long long c = 0; c < channels; ++c) {
        sum += a[(n * channels + c) * plane_size + p] * b[(n * channels + c) * plane_size + hh * width + ww];
      }
    }
    output[index] = sum / (scalar_t)channels;
  }
}

// One thread per (n, c, h, w) of a: grad_a = (1 / C) * sum_k grad_output[n, k, h, w] * b[n, c, p + delta_k].
extern "C" __global__ void correlation_backward_a(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ b, scalar_t* __restrict__ grad_a,
    long long batch, long long channels, long long height, long long width, long long max_displacement,
    long long stride) {
  const long long side = 2 * max_displacement / stride + 1;
  const long long plane_size = height * width;
  const long long total = batch * channels * plane_size;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long p = index % plane_size;
    const long long n = index / (channels * plane_size);
    const long long h = p / width, w = p % width;
    const scalar_t* b_plane = b + (index / plane_size) * plane_size;
    scalar_t sum = 0;
    for (long long k = 0; k < side * side; ++k) {
      const long long hh = h + (k / side) * stride - max_displacement;
      const long long ww = w + (k % side) * stride - max_displacement;
      if (hh < 0 || hh >= height || ww < 0 || ww >= width) continue;
      sum += grad_output[(n * side * side + k) * plane_size + p] * b_plane[hh * width + ww];
    }
    grad_a[index] = sum / (scalar_t)channels;
  }
}

// One thread per (n, c, h, w) of b: b[p] met a[p - delta_k] in output (k, p - delta_k), so
// grad_b = (1 / C) * sum_k grad_output[n, k, p - delta_k] * a[n, c, p - delta_k].
extern "C" __global__ void correlation_backward_b(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ a, scalar_t* __restrict__ grad_b,
    long long batch, long long channels, long long height, long long width, long long max_displacement,
    long long stride) {
  const long long side = 2 * max_displacement / stride + 1;
  const long long plane_size = height * width;
  const long long total = batch * channels * plane_size;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long p = index % plane_size;
    const long long n = index / (channels * plane_size);
    const long long h = p / width, w = p % width;
    const scalar_t* a_plane = a + (index / plane_size) * plane_size;
    scalar_t sum = 0;
    for (long long k = 0; k < side * side; ++k) {
      const long long hh = h - ((k / side) * stride - max_displacement);
      const long long ww = w - ((k % side) * stride - max_displacement);
      if (hh < 0 || hh >= height || ww < 0 || ww >= width) continue;
      sum += grad_output[(n * side * side + k) * plane_size + hh * width + ww] * a_plane[hh * width + ww];
    }
    grad_b[index] = sum / (scalar_t)channels;
  }
}
