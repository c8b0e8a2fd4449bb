// Deformable convolution (DCNv1, with the DCNv2 modulation mask optional): the sampling parts.
//
// The convolution itself is a matmul of the sampled "columns" with the weight, done by torch (cuBLAS)
// in ops/deform_conv.py; these kernels only sample (im2col) and scatter gradients back (col2im).
//
// Layouts (all contiguous):
//   input   (N, C, H, W)
//   offset  (N, offset_groups * 2 * KH * KW, H_out, W_out); channel (g * KH*KW + k) * 2 + {0: dy, 1: dx}
//   mask    (N, offset_groups * KH * KW, H_out, W_out);     channel g * KH*KW + k   (ignored if !has_mask)
//   columns (N, C, KH * KW, H_out * W_out)
// Input channel c belongs to offset group c / (C / offset_groups).
// Sampling position of tap k = (i, j) at output (ho, wo):
//   y = ho * stride_h - pad_h + i * dilation_h + dy,  x = wo * stride_w - pad_w + j * dilation_w + dx,
// read bilinearly; positions with y <= -1, y >= H, x <= -1 or x >= W read 0, and corners outside the map
// contribute 0 (torchvision.ops.deform_conv2d's semantics).
typedef SCALAR_T scalar_t;

__device__ __forceinline__ scalar_t pixel_or_zero(const scalar_t* plane, long long height, long long width,
                                                  long long y, long long x) {
  return (y >= 0 && y < height && x >= 0 && x < width) ? plane[y * width + x] : (scalar_t)0;
}

__device__ __forceinline__ scalar_t bilinear(const scalar_t* plane, long long height, long long width,
                                             scalar_t y, scalar_t x) {
  if (y <= (scalar_t)-1 || y >= (scalar_t)height || x <= (scalar_t)-1 || x >= (scalar_t)width) return 0;
  const long long y0 = (long long)floor(y);
  const long long x0 = (long long)floor(x);
  const scalar_t ly = y - (scalar_t)y0, lx = x - (scalar_t)x0;
  const scalar_t hy = 1 - ly, hx = 1 - lx;
  return hy * hx * pixel_or_zero(plane, height, width, y0, x0) +
         hy * lx * pixel_or_zero(plane, height, width, y0, x0 + 1) +
         ly * hx * pixel_or_zero(plane, height, width, y0 + 1, x0) +
         ly * lx * pixel_or_zero(plane, height, width, y0 + 1, x0 + 1);
}

// One thread per (n, c, k, l): columns[n, c, k, l] = mask * bilinear(input[n, c], y, x).
extern "C" __global__ void deform_im2col(
    const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
    const scalar_t* __restrict__ mask, long long has_mask, scalar_t* __restrict__ columns,
    long long batch, long long channels, long long height, long long width,
    long long kernel_h, long long kernel_w, long long stride_h, long long stride_w,
    long long pad_h, long long pad_w, long long dilation_h, long long dilation_w,
    long long out_h, long long out_w, long long offset_groups) {
  const long long taps = kernel_h * kernel_w;
  const long long positions = out_h * out_w;
  const long long total = batch * channels * taps * positions;
  const long long channels_per_group = channels / offset_groups;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long l = index % positions;
    const long long k = (index / positions) % taps;
    const long long c = (index / (positions * taps)) % channels;
    const long long n = index / (positions * taps * channels);
    const long long g = c / channels_per_group;
    const long long ho = l / out_w, wo = l % out_w;
    const long long i = k / kernel_w, j = k % kernel_w;
    const scalar_t* offset_nk = offset + ((n * offset_groups + g) * taps + k) * 2 * positions;
    const scalar_t y = (scalar_t)(ho * stride_h - pad_h + i * dilation_h) + offset_nk[l];
    const scalar_t x = (scalar_t)(wo * stride_w - pad_w + j * dilation_w) + offset_nk[positions + l];
    const scalar_t modulation = has_mask ? mask[((n * offset_groups + g) * taps + k) * positions + l] : 1;
    columns[index] = modulation * bilinear(input + (n * channels + c) * height * width, height, width, y, x);
  }
}

// One thread per (n, c, k, l): scatters grad_columns[n, c, k, l] * mask into the four corners of the
// sampling position in grad_input[n, c] (atomicAdd: taps of many outputs hit the same pixel).
extern "C" __global__ void deform_col2im_input(
    const scalar_t* __restrict__ grad_columns, const scalar_t* __restrict__ offset,
    const scalar_t* __restrict__ mask, long long has_mask, scalar_t* __restrict__ grad_input,
    long long batch, long long channels, long long height, long long width,
    long long kernel_h, long long kernel_w, long long stride_h, long long stride_w,
    long long pad_h, long long pad_w, long long dilation_h, long long dilation_w,
    long long out_h, long long out_w, long long offset_groups) {
  const long long taps = kernel_h * kernel_w;
  const long long positions = out_h * out_w;
  const long long total = batch * channels * taps * positions;
  const long long channels_per_group = channels / offset_groups;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long l = index % positions;
    const long long k = (index / positions) % taps;
    const long long c = (index / (positions * taps)) % channels;
    const long long n = index / (positions * taps * channels);
    const long long g = c / channels_per_group;
    const long long ho = l / out_w, wo = l % out_w;
    const long long i = k / kernel_w, j = k % kernel_w;
    const scalar_t* offset_nk = offset + ((n * offset_groups + g) * taps + k) * 2 * positions;
    const scalar_t y = (scalar_t)(ho * stride_h - pad_h + i * dilation_h) + offset_nk[l];
    const scalar_t x = (scalar_t)(wo * stride_w - pad_w + j * dilation_w) + offset_nk[positions + l];
    if (y <= (scalar_t)-1 || y >= (scalar_t)height || x <= (scalar_t)-1 || x >= (scalar_t)width) continue;
    const scalar_t modulation = has_mask ? mask[((n * offset_groups + g) * taps + k) * positions + l] : 1;
    const scalar_t grad = grad_columns[index] * modulation;
    const long long y0 = (long long)floor(y);
    const long long x0 = (long long)floor(x);
    const scalar_t ly = y - (scalar_t)y0, lx = x - (scalar_t)x0;
    scalar_t* plane = grad_input + (n * channels + c) * height * width;
    for (long long dy = 0; dy <= 1; ++dy) {
      for (long long dx = 0; dx <= 1; ++dx) {
        const long long yy = y0 + dy, xx = x0 + dx;
        if (yy < 0 || yy >= height || xx < 0 || xx >= width) continue;
        const scalar_t weight = (dy ? ly : 1 - ly) * (dx ? lx : 1 - lx);
        atomicAdd(plane + yy * width + xx, weight * grad);
      }
    }
  }
}

// One thread per (n, g, k, l): sums over the channels of offset group g the gradient of the sampled
// value with respect to (dy, dx) and to the mask. Each output cell has exactly one writer.
extern "C" __global__ void deform_col2im_offset_mask(
    const scalar_t* __restrict__ grad_columns, const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask, long long has_mask,
    scalar_t* __restrict__ grad_offset, scalar_t* __restrict__ grad_mask,
    long long batch, long long channels, long long height, long long width,
    long long kernel_h, long long kernel_w, long long stride_h, long long stride_w,
    long long pad_h, long long pad_w, long long dilation_h, long long dilation_w,
    long long out_h, long long out_w, long long offset_groups) {
  const long long taps = kernel_h * kernel_w;
  const long long positions = out_h * out_w;
  const long long total = batch * offset_groups * taps * positions;
  const long long channels_per_group = channels / offset_groups;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const long long l = index % positions;
    const long long k = (index / positions) % taps;
    const long long g = (index / (positions * taps)) % offset_groups;
    const long long n = index / (positions * taps * offset_groups);
    const long long ho = l / out_w, wo = l % out_w;
    const long long i = k / kernel_w, j = k % kernel_w;
    const long long offset_base = ((n * offset_groups + g) * taps + k) * 2 * positions;
    const scalar_t y = (scalar_t)(ho * stride_h - pad_h + i * dilation_h) + offset[offset_base + l];
    const scalar_t x = (scalar_t)(wo * stride_w - pad_w + j * dilation_w) + offset[offset_base + positions + l];
    const long long mask_index = ((n * offset_groups + g) * taps + k) * positions + l;
    const scalar_t modulation = has_mask ? mask[mask_index] : 1;
    scalar_t grad_y = 0, grad_x = 0, grad_modulation = 0;
    if (!(y <= (scalar_t)-1 || y >= (scalar_t)height || x <= (scalar_t)-1 || x >= (scalar_t)width)) {
      const long long y0 = (long long)floor(y);
      const long long x0 = (long long)floor(x);
      const scalar_t ly = y - (scalar_t)y0, lx = x - (scalar_t)x0;
      for (long long c = g * channels_per_group; c < (g + 1) * channels_per_group; ++c) {
        const scalar_t* plane = input + (n * channels + c) * height * width;
        const scalar_t v00 = pixel_or_zero(plane, height, width, y0, x0);
        const scalar_t v01 = pixel_or_zero(plane, height, width, y0, x0 + 1);
        const scalar_t v10 = pixel_or_zero(plane, height, width, y0 + 1, x0);
        const scalar_t v11 = pixel_or_zero(plane, height, width, y0 + 1, x0 + 1);
        const scalar_t grad = grad_columns[((n * channels + c) * taps + k) * positions + l];
        const scalar_t value = (1 - ly) * (1 - lx) * v00 + (1 - ly) * lx * v01 + ly * (1 - lx) * v10 +
                               ly * lx * v11;
        grad_modulation += grad * value;
        grad_y += grad * ((1 - lx) * (v10 - v00) + lx * (v11 - v01));
        grad_x += grad * ((1 - ly) * (v01 - v00) + ly * (v11 - v10));
      }
    }
    grad_offset[offset_base + l] = grad_y * modulation;
    grad_offset[offset_base + positions + l] = grad_x * modulation;
    if (has_mask) grad_mask[mask_index] = grad_modulation;
  }
}
