// Flow warping: output[n, c, h, w] = input[n, c] sampled bilinearly at (h + dy[n, h, w], w + dx[n, h, w]).
//
// Layouts (contiguous): input, grad_input, output (N, C, H, W); flow, grad_flow (N, 2, H, W) with channel
// 0 = dx (along W) and 1 = dy (along H), in pixels of this grid.
// border == 0 ("zeros"): corners outside the map contribute 0.
// border == 1 ("border"): the sampling position is clamped into [0, W-1] x [0, H-1] first; where clamped,
// its derivative is 0 (the rule of torch.nn.functional.grid_sample, padding_mode="border").
typedef SCALAR_T scalar_t;

// Clamps `coordinate` into [0, size - 1] if `border`; sets *derivative to d(result)/d(coordinate).
__device__ __forceinline__ scalar_t clamp_if_border(scalar_t coordinate, long long size, long long border,
                                                    scalar_t* derivative) {
  *derivative = 1;
  if (!border) return coordinate;
  if (coordinate <= (scalar_t)0) {
    *derivative = 0;
    return 0;
  }
  if (coordinate >= (scalar_t)(size - 1)) {
    *derivative = 0;
    return (scalar_t)(size - 1);
  }
  return coordinate;
}

__device__ __forceinline__ scalar_t pixel_or_zero(const scalar_t* plane, long long height, long long width,
                                                  long long y, long long x) {
  return (y >= 0 && y < height && x >= 0 && x < width) ? plane[y * width + x] : (scalar_t)0;
}

// One thread per (n, c, h, w).
extern "C" __global__ void flow_warp_forward(
    const scalar_t* __restrict__ input, const scalar_t* __restrict__ flow, scalar_t* __restrict__ output,
    long long batch, long long channels, long long height, long long width, long long border) {
  const long long plane_size = height * width;
  const long long total = batch * channels * plane_size;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long p = index % plane_size;
    const long long n = index / (channels * plane_size);
    const long long h = p / width, w = p % width;
    scalar_t unused;
    const scalar_t x = clamp_if_border((scalar_t)w + flow[(n * 2) * plane_size + p], width, border, &unused);
    const scalar_t y = clamp_if_border((scalar_t)h + flow[(n * 2 + 1) * plane_size + p], height, border, &unused);
    const long long x0 = (long long)floor(x), y0 = (long long)floor(y);
    const scalar_t lx = x - (scalar_t)x0, ly = y - (scalar_t)y0;
    const scalar_t* plane = input + (index / plane_size) * plane_size;
    output[index] = (1 - ly) * (1 - lx) * pixel_or_zero(plane, height, width, y0, x0) +
                    (1 - ly) * lx * pixel_or_zero(plane, height, width, y0, x0 + 1) +
                    ly * (1 - lx) * pixel_or_zero(plane, height, width, y0 + 1, x0) +
                    ly * lx * pixel_or_zero(plane, height, width, y0 + 1, x0 + 1);
  }
}

// One thread per (n, c, h, w): scatters grad_output into the four corners (atomicAdd: several output
// pixels may sample the same input pixel).
extern "C" __global__ void flow_warp_backward_input(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ flow,
    scalar_t* __restrict__ grad_input, long long batch, long long channels, long long height,
    long long width, long long border) {
  const long long plane_size = height * width;
  const long long total = batch * channels * plane_size;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long p = index % plane_size;
    const long long n = index / (channels * plane_size);
    const long long h = p / width, w = p % width;
    scalar_t unused;
    const scalar_t x = clamp_if_border((scalar_t)w + flow[(n * 2) * plane_size + p], width, border, &unused);
    const scalar_t y = clamp_if_border((scalar_t)h + flow[(n * 2 + 1) * plane_size + p], height, border, &unused);
    const long long x0 = (long long)floor(x), y0 = (long long)floor(y);
    const scalar_t lx = x - (scalar_t)x0, ly = y - (scalar_t)y0;
    scalar_t* plane = grad_input + (index / plane_size) * plane_size;
    const scalar_t grad = grad_output[index];
    for (long long dy = 0; dy <= 1; ++dy) {
      for (long long dx = 0; dx <= 1; ++dx) {
        const long long yy = y0 + dy, xx = x0 + dx;
        if (yy < 0 || yy >= height || xx < 0 || xx >= width) continue;
        atomicAdd(plane + yy * width + xx, (dy ? ly : 1 - ly) * (dx ? lx : 1 - lx) * grad);
      }
    }
  }
}

// One thread per (n, h, w): gradient with respect to (dx, dy), summed over channels (single writer).
extern "C" __global__ void flow_warp_backward_flow(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ flow, scalar_t* __restrict__ grad_flow, long long batch, long long channels,
    long long height, long long width, long long border) {
  const long long plane_size = height * width;
  const long long total = batch * plane_size;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long p = index % plane_size;
    const long long n = index / plane_size;
    const long long h = p / width, w = p % width;
    scalar_t x_derivative, y_derivative;
    const scalar_t x = clamp_if_border((scalar_t)w + flow[(n * 2) * plane_size + p], width, border, &x_derivative);
    const scalar_t y = clamp_if_border((scalar_t)h + flow[(n * 2 + 1) * plane_size + p], height, border,
                                       &y_derivative);
    const long long x0 = (long long)floor(x), y0 = (long long)floor(y);
    const scalar_t lx = x - (scalar_t)x0, ly = y - (scalar_t)y0;
    scalar_t grad_x = 0, grad_y = 0;
    for (long long c = 0; c < channels; ++c) {
      const scalar_t* plane = input + (n * channels + c) * plane_size;
      const scalar_t v00 = pixel_or_zero(plane, height, width, y0, x0);
      const scalar_t v01 = pixel_or_zero(plane, height, width, y0, x0 + 1);
      const scalar_t v10 = pixel_or_zero(plane, height, width, y0 + 1, x0);
      const scalar_t v11 = pixel_or_zero(plane, height, width, y0 + 1, x0 + 1);
      const scalar_t grad = grad_output[(n * channels + c) * plane_size + p];
      grad_x += grad * ((1 - ly) * (v01 - v00) + ly * (v11 - v10));
      grad_y += grad * ((1 - lx) * (v10 - v00) + lx * (v11 - v01));
    }
    grad_flow[(n * 2) * plane_size + p] = grad_x * x_derivative;
    grad_flow[(n * 2 + 1) * plane_size + p] = grad_y * y_derivative;
  }
}
