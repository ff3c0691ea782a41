// Kernels of calibrated pruning on the GPU, all in f32 on packed activations ([tokens, width], no
// padding rows): bias + activation after a projection, bias + residual + LayerNorm after the
// attention output and FFN output projections, attention over packed sequences, and the f64
// accumulation of the per-batch input products. The projections themselves are cuBLAS SGEMMs.
// Every reduction runs in a fixed order, so a run repeats bit for bit on the same device.

#define CALIB_NEG_INF __int_as_float(0xff800000)

namespace calib {

// Activation codes shared with the host: 0 none, 1 GELU (erf), 2 GELU (tanh), 3 ReLU.
__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
    case 1:
        // erfc keeps the relative precision of large negative inputs, as the CPU runtime does.
        return 0.5f * x * erfcf(-x * 0.70710678118654752f);
    case 2: {
        const float c = 0.7978845608028654f;
        return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
    }
    case 3:
        return x > 0.f ? x : 0.f;
    default:
        return x;
    }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024) in a fixed tree order; every
// thread gets the result. `red` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    float s = lane < warps ? red[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

// Maximum over the block, as block_sum.
__device__ __forceinline__ float block_max(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    float s = lane < warps ? red[lane] : CALIB_NEG_INF;
    for (int o = 16; o > 0; o >>= 1) s = fmaxf(s, __shfl_xor_sync(0xffffffffu, s, o));
    return s;
}

}  // namespace calib

// y[m, n] = act(y + bias) in place.
extern "C" __global__ void calib_bias_act_f32(float* y, const float* bias, long long total, int n,
                                              int act) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        y[i] = calib::activate(y[i] + bias[i % n], act);
    }
}

// y[row] = LayerNorm(y[row] + bias + residual[row]) * gamma + beta: one block per row, the row
// held in y while the mean and then the variance are reduced (two passes, as the CPU runtime).
extern "C" __global__ void calib_bias_residual_ln_f32(float* y, const float* bias,
                                                      const float* residual, const float* gamma,
                                                      const float* beta, int n, float eps) {
    __shared__ float red[32];
    float* row = y + (long long)blockIdx.x * n;
    const float* res = residual + (long long)blockIdx.x * n;
    float s = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float v = row[j] + bias[j] + res[j];
        row[j] = v;
        s += v;
    }
    const float mean = calib::block_sum(s, red) / (float)n;
    float q = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float d = row[j] - mean;
        q += d * d;
    }
    const float var = calib::block_sum(q, red) / (float)n;
    const float inv = 1.0f / sqrtf(var + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        row[j] = (row[j] - mean) * inv * gamma[j] + beta[j];
    }
}

// Scaled dot-product attention over packed sequences: block (token t, head h) computes the context
// row of query t in head h over the keys of its own sequence, which starts at token start[t] and
// has len[t] tokens. q, k and v are the three column blocks of `qkv` ([tokens, ld], at 0, width
// and 2 * width); ctx is [tokens, width]. Dynamic shared memory: len[t] scores (the host sizes it
// for the longest sequence) after head_dim query values.
extern "C" __global__ void calib_attention_f32(const float* qkv, float* ctx, const int* start,
                                               const int* len, int ld, int width, int head_dim,
                                               float scale) {
    extern __shared__ float shm[];
    __shared__ float red[32];
    const int t = blockIdx.x, h = blockIdx.y;
    const int s0 = start[t], n = len[t];
    float* qs = shm;
    float* p = shm + head_dim;
    const float* qrow = qkv + (long long)t * ld + h * head_dim;
    for (int j = threadIdx.x; j < head_dim; j += blockDim.x) qs[j] = qrow[j];
    __syncthreads();
    float mx = CALIB_NEG_INF;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float* krow = qkv + (long long)(s0 + j) * ld + width + h * head_dim;
        float acc = 0.f;
        for (int d = 0; d < head_dim; ++d) acc = fmaf(qs[d], krow[d], acc);
        acc *= scale;
        p[j] = acc;
        mx = fmaxf(mx, acc);
    }
    mx = calib::block_max(mx, red);
    float s = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        const float e = expf(p[j] - mx);
        p[j] = e;
        s += e;
    }
    const float inv = 1.0f / calib::block_sum(s, red);
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        const float* vcol = qkv + (long long)s0 * ld + 2 * width + h * head_dim + d;
        float acc = 0.f;
        for (int j = 0; j < n; ++j) acc = fmaf(p[j], vcol[(long long)j * ld], acc);
        ctx[(long long)t * width + h * head_dim + d] = acc * inv;
    }
}

// acc[i] += prod[i] in f64: the per-batch f32 products summed into the statistics.
extern "C" __global__ void calib_add_f64(double* acc, const float* prod, long long total) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        acc[i] += (double)prod[i];
    }
}

// y[i] = value: a test aid that fills output buffers with NaN before they are computed.
extern "C" __global__ void calib_fill_f32(float* y, long long total, float value) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        y[i] = value;
    }
}
