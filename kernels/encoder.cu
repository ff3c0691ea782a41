// Elementwise and row kernels of the encoder's forward pass, on packed f16 activations
// ([tokens, width], no padding rows): embeddings with their LayerNorm, bias + activation after a
// projection, bias + residual + LayerNorm after the attention output and FFN output projections,
// and pooling (mean or [CLS], optionally L2-normalised) per sequence. Arithmetic is fp32.
#include <cuda_fp16.h>

typedef unsigned int u32;

namespace enc {

// Activation codes shared with the host: 0 none, 1 GELU (erf), 2 GELU (tanh), 3 ReLU, 4 tanh.
__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
    case 1:
        return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 2: {
        const float c = 0.7978845608028654f;
        return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
    }
    case 3:
        return x > 0.f ? x : 0.f;
    case 4:
        return tanhf(x);
    default:
        return x;
    }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();  // red may still be read by a previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    float s = 0.f;
    for (int w = 0; w < warps; ++w) s += red[w];
    return s;
}

// LayerNorm of the row held in `row` (fp32 shared memory, H values) into out (f16).
__device__ __forceinline__ void layer_norm_row(const float* row, int H, const float* gamma, const float* beta,
                                               float eps, __half* out, float* red) {
    float s = 0.f;
    for (int j = threadIdx.x; j < H; j += blockDim.x) s += row[j];
    const float mean = block_sum(s, red) / H;
    float q = 0.f;
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        const float d = row[j] - mean;
        q += d * d;
    }
    const float inv = rsqrtf(block_sum(q, red) / H + eps);
    for (int j = threadIdx.x; j < H; j += blockDim.x)
        out[j] = __float2half_rn((row[j] - mean) * inv * gamma[j] + beta[j]);
}

}  // namespace enc

// One block per token: x[t] = LN(word[ids[t]] + pos[positions[t]] + type[types[t]]).
// Dynamic shared memory: H floats.
extern "C" __global__ void enc_embed_ln_f16(const u32* ids, const u32* types, const u32* positions,
                                            const __half* word, const __half* pos, const __half* type,
                                            const float* gamma, const float* beta, float eps, int H,
                                            __half* x) {
    extern __shared__ float row[];
    __shared__ float red[32];
    const size_t t = blockIdx.x;
    const __half* w = word + static_cast<size_t>(ids[t]) * H;
    const __half* p = pos + static_cast<size_t>(positions[t]) * H;
    const __half* y = type + static_cast<size_t>(types[t]) * H;
    for (int j = threadIdx.x; j < H; j += blockDim.x)
        row[j] = __half2float(w[j]) + __half2float(p[j]) + __half2float(y[j]);
    __syncthreads();
    enc::layer_norm_row(row, H, gamma, beta, eps, x + t * H, red);
}

// One block per token: out[t] = LN(in[t] + bias + residual[t]); `in` may be null (a layer whose
// heads were all pruned contributes only its output bias). `out` may alias `residual` or `in`:
// each block reads its row completely before writing it. Dynamic shared memory: H floats.
extern "C" __global__ void enc_bias_residual_ln_f16(const __half* in, const float* bias, const __half* residual,
                                                    const float* gamma, const float* beta, float eps, int H,
                                                    __half* out) {
    extern __shared__ float row[];
    __shared__ float red[32];
    const size_t off = static_cast<size_t>(blockIdx.x) * H;
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        float v = __half2float(residual[off + j]) + (bias ? bias[j] : 0.f);
        if (in) v += __half2float(in[off + j]);
        row[j] = v;
    }
    __syncthreads();
    enc::layer_norm_row(row, H, gamma, beta, eps, out + off, red);
}

// y[m, n] = act(y[m, n] + bias[n]) in place over [M, N] (bias may be null).
extern "C" __global__ void enc_bias_act_f16(__half* y, const float* bias, int M, int N, int act) {
    const size_t total = static_cast<size_t>(M) * N;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int n = static_cast<int>(i % N);
        float v = __half2float(y[i]) + (bias ? bias[n] : 0.f);
        y[i] = __float2half_rn(enc::activate(v, act));
    }
}

// y[m, n] = x[m, n] + bias[n] into f32 (classifier logits and other small outputs).
extern "C" __global__ void enc_bias_to_f32_f16(const __half* x, const float* bias, int M, int N, float* y) {
    const size_t total = static_cast<size_t>(M) * N;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int n = static_cast<int>(i % N);
        y[i] = __half2float(x[i]) + (bias ? bias[n] : 0.f);
    }
}

// One block per sequence s (rows cu[s]..cu[s+1] of x): mean over its rows (mode 0) or its first
// row (mode 1), L2-normalised when `normalize`; written as f32 to out32 and/or f16 to out16
// (either may be null). Dynamic shared memory: H floats.
extern "C" __global__ void enc_pool_f16(const __half* x, const int* cu, int H, int mode, int normalize,
                                        float* out32, __half* out16) {
    extern __shared__ float acc[];
    __shared__ float red[32];
    const int s = blockIdx.x;
    const int r0 = cu[s], r1 = cu[s + 1];
    const int rows = mode == 1 ? (r1 > r0 ? 1 : 0) : r1 - r0;
    const float scale = rows > 0 ? 1.0f / rows : 0.f;
    float sq = 0.f;
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        float v = 0.f;
        for (int r = 0; r < rows; ++r) v += __half2float(x[static_cast<size_t>(r0 + r) * H + j]);
        v *= scale;
        acc[j] = v;
        sq += v * v;
    }
    float norm = 1.f;
    if (normalize) {
        const float total = enc::block_sum(sq, red);
        norm = 1.0f / fmaxf(sqrtf(total), 1e-12f);
    }
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        const float v = acc[j] * norm;
        if (out32) out32[static_cast<size_t>(s) * H + j] = v;
        if (out16) out16[static_cast<size_t>(s) * H + j] = __float2half_rn(v);
    }
}
