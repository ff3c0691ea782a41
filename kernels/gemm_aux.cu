// Helpers around the dense (cuBLAS) path: the fused epilogue applied after a cuBLAS GEMM, the
// gather of kept input columns (`cols` encoding), the scatter of kept output rows (`rows`
// encoding), and the expansion of a tile-encoded weight into a dense matrix on the device.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef unsigned int u32;
typedef unsigned long long u64;

namespace ets {
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// Y[m, n] = act(src(m, n) + bias[n]) + residual[m, n], where src is Yc[m, inv[n]] when the
// output row n of W is kept (inv[n] >= 0), zero when it is pruned, or Y itself when inv is null.
template <typename T>
__device__ void epilogue_body(T* Y, int M, int N, const T* Yc, int ldc, const int* inv, const float* bias,
                              const T* residual, int gelu) {
    size_t total = static_cast<size_t>(M) * N;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        int m = static_cast<int>(i / N), n = static_cast<int>(i % N);
        float v;
        if (inv) {
            int c = inv[n];
            v = c >= 0 ? to_f(Yc[static_cast<size_t>(m) * ldc + c]) : 0.f;
        } else {
            v = to_f(Y[i]);
        }
        if (bias) v += bias[n];
        if (gelu) v = gelu_erf(v);
        if (residual) v += to_f(residual[i]);
        Y[i] = from_f<T>(v);
    }
}

// The same epilogue in place on Y, eight values per thread with 16-byte loads and stores. The
// host launches it only when N is a multiple of 8 and Y and the residual are 16-byte aligned.
template <typename T>
__device__ void epilogue_vec8_body(T* Y, int M, int N, const float* bias, const T* residual, int gelu) {
    const int nv = N / 8;
    const size_t total = static_cast<size_t>(M) * nv;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const int n0 = static_cast<int>(i % nv) * 8;
        uint4 y = reinterpret_cast<const uint4*>(Y)[i];
        uint4 r = make_uint4(0, 0, 0, 0);
        if (residual) r = reinterpret_cast<const uint4*>(residual)[i];
        T* yv = reinterpret_cast<T*>(&y);
        const T* rv = reinterpret_cast<const T*>(&r);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float v = to_f(yv[j]);
            if (bias) v += bias[n0 + j];
            if (gelu) v = gelu_erf(v);
            if (residual) v += to_f(rv[j]);
            yv[j] = from_f<T>(v);
        }
        reinterpret_cast<uint4*>(Y)[i] = y;
    }
}

// Y = act(sum of the split slices + bias) + residual from the f32 split-K workspace [splits][M][N].
template <typename T>
__device__ void splitk_finish_body(const float* ws, int splits, int M, int N, const float* bias, const T* residual,
                                   int gelu, T* Y) {
    size_t total = static_cast<size_t>(M) * N;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        int n = static_cast<int>(i % N);
        float v = 0.f;
        for (int z = 0; z < splits; ++z) v += ws[static_cast<size_t>(z) * total + i];
        if (bias) v += bias[n];
        if (gelu) v = gelu_erf(v);
        if (residual) v += to_f(residual[i]);
        Y[i] = from_f<T>(v);
    }
}

// Xc[m, c] = X[m, idx[c]]
template <typename T>
__device__ void gather_cols_body(const T* X, int M, int K, const u32* idx, int kc, T* Xc) {
    size_t total = static_cast<size_t>(M) * kc;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        int m = static_cast<int>(i / kc), c = static_cast<int>(i % kc);
        Xc[i] = X[static_cast<size_t>(m) * K + idx[c]];
    }
}

// One CTA per block row: W (N x K, zeroed beforehand) receives every kept tile of that row.
template <typename T>
__device__ void densify_body(const u64* bitmap, const u32* row_offsets, const T* values, int N, int K, int th,
                             int tw, int grid_cols, T* W) {
    __shared__ int cols[1024];
    __shared__ int count;
    const int br = blockIdx.x;
    const int lane = threadIdx.x & 31;
    const u32 k0 = row_offsets[br];
    for (int c0 = 0; c0 < grid_cols; c0 += 1024) {
        if (threadIdx.x < 32) {
            int base = 0;
            for (int c = c0; c < c0 + 1024 && c < grid_cols; c += 32) {
                int bc = c + lane;
                bool bit = false;
                if (bc < grid_cols) {
                    u64 t = static_cast<u64>(br) * grid_cols + bc;
                    bit = (bitmap[t >> 6] >> (t & 63)) & 1ull;
                }
                u32 bal = __ballot_sync(0xffffffffu, bit);
                if (bit) cols[base + __popc(bal & ((1u << lane) - 1u))] = bc;
                base += __popc(bal);
            }
            if (lane == 0) count = base;
        }
        __syncthreads();
        int prior = 0;
        // tiles before this chunk in the row
        for (int c = 0; c < c0; ++c) {
            u64 t = static_cast<u64>(br) * grid_cols + c;
            prior += static_cast<int>((bitmap[t >> 6] >> (t & 63)) & 1ull);
        }
        const int n_el = count * th * tw;
        for (int e = threadIdx.x; e < n_el; e += blockDim.x) {
            int q = e / (th * tw), w = e % (th * tw);
            int r = br * th + w / tw, k = cols[q] * tw + w % tw;
            if (r < N && k < K) W[static_cast<size_t>(r) * K + k] = values[static_cast<size_t>(k0 + prior + q) * th * tw + w];
        }
        __syncthreads();
    }
}
}  // namespace ets

#define ETS_AUX(SUF, T)                                                                               \
    extern "C" __global__ void epilogue_##SUF(T* Y, int M, int N, const T* Yc, int ldc, const int* inv, \
                                              const float* bias, const T* residual, int gelu) {       \
        ets::epilogue_body<T>(Y, M, N, Yc, ldc, inv, bias, residual, gelu);                           \
    }                                                                                                 \
    extern "C" __global__ void epilogue_vec8_##SUF(T* Y, int M, int N, const float* bias, const T* residual, \
                                                   int gelu) {                                        \
        ets::epilogue_vec8_body<T>(Y, M, N, bias, residual, gelu);                                    \
    }                                                                                                 \
    extern "C" __global__ void splitk_finish_##SUF(const float* ws, int splits, int M, int N, const float* bias, \
                                                  const T* residual, int gelu, T* Y) {                 \
        ets::splitk_finish_body<T>(ws, splits, M, N, bias, residual, gelu, Y);                        \
    }                                                                                                 \
    extern "C" __global__ void gather_cols_##SUF(const T* X, int M, int K, const u32* idx, int kc, T* Xc) { \
        ets::gather_cols_body<T>(X, M, K, idx, kc, Xc);                                               \
    }                                                                                                 \
    extern "C" __global__ void densify_tiles_##SUF(const u64* bitmap, const u32* row_offsets, const T* values, \
                                                   int N, int K, int th, int tw, int grid_cols, T* W) { \
        ets::densify_body<T>(bitmap, row_offsets, values, N, K, th, tw, grid_cols, W);                \
    }

ETS_AUX(f16, __half)
ETS_AUX(bf16, __nv_bfloat16)
