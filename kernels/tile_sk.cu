// `sk`: the split kernel for small token counts (any architecture with tensor cores).
//
// With few tokens the other families have few output tiles, so most multiprocessors idle while
// a handful of CTAs walk whole block rows. Here the unit of work is a short run of one block row's
// kept tiles (at most ESK_STEPS 16-column steps) for one 16-feature slice of that row, planned on
// the host at upload so that every unit has about the same work; a warp takes one unit for 32
// tokens. Units that share a slice add their fp32 partial sums: each writes its partial to the
// workspace, and the last of them to finish (counted by an atomic per slice and token block)
// sums all partials in unit order, so the result does not depend on which unit ran first
// (deterministic), then applies the epilogue once and stores Y. A slice held by one unit skips
// the workspace and stores straight from its registers.
//
// Operands come straight from global memory (the weights in the file's tile layout, X row-major)
// into mma.sync fragments, with no shared memory. The 16 columns of a step are permuted the same
// way in both operands: thread t (quad q = t % 4) holds columns 4q..4q+3 in place of the
// fragment's 2q, 2q+1, 2q+8, 2q+9, so every operand load is one 8-byte load.
//
// Plan entry (two uint4 per unit, see `tile/sk_plan.rs`): x = slice (16-feature row of the
// output), y = first kept tile, z = tiles | index within the slice << 16, w = units of the slice;
// then the tiles' columns as eight u16. Counters (one u32 per slice and token block) start at
// zero and each slice's last unit sets its counter back to zero, so launches need no clearing.

#define ESK_WARPS 4
#define ESK_TB 32
#define ESK_STEPS 8
#define ESK_MAX_TB 16

namespace esk {
using namespace ek;

__device__ __forceinline__ uint2 ldg8(const void* p) { return __ldg(reinterpret_cast<const uint2*>(p)); }

// The partial sums of a warp's 16 features x 32 tokens: acc[token block of 16][feature block of
// 8][fragment register].
typedef float Acc[2][2][4];

// Loads the operands of a unit's steps (zero where a step is past the unit's tiles, a token past
// M or a column past K) and multiplies them into acc.
template <bool BF16, int TH, int TW, typename T>
__device__ __forceinline__ void sk_products(const T* __restrict__ X, int M, int K, const T* __restrict__ wbase,
                                            uint4 cw, int tiles, int tok0, int lane, Acc& acc) {
    constexpr int KS = TW / 16;
    const int g = lane >> 2, q = lane & 3;
    const u32 cols[4] = {cw.x, cw.y, cw.z, cw.w};
    uint2 wf[ESK_STEPS][2];
    uint2 xf[ESK_STEPS][2][2];
#pragma unroll
    for (int s = 0; s < ESK_STEPS; ++s) {
        const int ti = s / KS, kk = s % KS;
        wf[s][0] = wf[s][1] = make_uint2(0u, 0u);
#pragma unroll
        for (int i = 0; i < 2; ++i) xf[s][i][0] = xf[s][i][1] = make_uint2(0u, 0u);
        if (ti < tiles) {
            const int col = static_cast<int>((cols[ti >> 1] >> (16 * (ti & 1))) & 0xffffu);
            const T* wt = wbase + static_cast<size_t>(ti) * (TH * TW) + kk * 16 + 4 * q;
            wf[s][0] = ldg8(wt + g * TW);
            wf[s][1] = ldg8(wt + (g + 8) * TW);
            const int kc = col * TW + kk * 16 + 4 * q;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int tok = tok0 + i * 16 + h * 8 + g;
                    if (tok < M && kc < K) xf[s][i][h] = ldg8(X + static_cast<size_t>(tok) * K + kc);
                }
            }
        }
    }
#pragma unroll
    for (int s = 0; s < ESK_STEPS; ++s) {
        if (s / KS >= tiles) continue;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            if (tok0 + i * 16 >= M) continue;
            const u32 a[4] = {xf[s][i][0].x, xf[s][i][1].x, xf[s][i][0].y, xf[s][i][1].y};
            mma16816<BF16>(acc[i][0], a, wf[s][0].x, wf[s][0].y);
            mma16816<BF16>(acc[i][1], a, wf[s][1].x, wf[s][1].y);
        }
    }
}

// Publishes this unit's partial and, when it is the slice's last unit to finish, replaces acc by
// the sum of all the slice's partials in unit order. Returns false when another unit finishes
// the slice.
__device__ __forceinline__ bool sk_reduce(Acc& acc, float* ws, u32* counter, int item, int first_item,
                                          int item_stride, int index, int parts, int lane) {
    float4* ws4 = reinterpret_cast<float4*>(ws);
    float4* mine = ws4 + static_cast<size_t>(item) * 128 + lane;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
        const float* a = acc[v >> 1][v & 1];
        __stcg(mine + v * 32, make_float4(a[0], a[1], a[2], a[3]));
    }
    __threadfence();
    __syncwarp();
    u32 prev = 0;
    if (lane == 0) prev = atomicAdd(counter, 1u);
    prev = __shfl_sync(0xffffffffu, prev, 0);
    if (prev + 1 != static_cast<u32>(parts)) return false;
    __threadfence();
    Acc sum = {};
    for (int p = 0; p < parts; ++p) {
        if (p == index) {
#pragma unroll
            for (int v = 0; v < 16; ++v) sum[v >> 3][(v >> 2) & 1][v & 3] += acc[v >> 3][(v >> 2) & 1][v & 3];
        } else {
            const float4* src = ws4 + static_cast<size_t>(first_item + p * item_stride) * 128 + lane;
#pragma unroll
            for (int v = 0; v < 4; ++v) {
                const float4 f = __ldcg(src + v * 32);
                float* s = sum[v >> 1][v & 1];
                s[0] += f.x;
                s[1] += f.y;
                s[2] += f.z;
                s[3] += f.w;
            }
        }
    }
#pragma unroll
    for (int v = 0; v < 16; ++v) acc[v >> 3][(v >> 2) & 1][v & 3] = sum[v >> 3][(v >> 2) & 1][v & 3];
    // Every unit of the slice has counted: the next launch finds the counter at zero.
    if (lane == 0) atomicExch(counter, 0u);
    return true;
}

// The epilogue's inputs for a warp's outputs, loaded before the products so that their latency
// hides under the products and the reduction: the bias of its features and the residual of its
// outputs (zero where absent).
struct EpIn {
    float b[2][2];        // [feature block][pair]
    float r[2][2][2][2];  // [token block][row half][feature block][pair]
};

template <typename T>
__device__ __forceinline__ void sk_epilogue_inputs(EpIn& e, const float* bias, const T* residual, int tok0, int n0,
                                                   int g, int M, int N) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int p = 0; p < 2; ++p) {
            const int n = n0 + j * 8 + p;
            e.b[j][p] = (bias && n < N) ? bias[n] : 0.f;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int m = tok0 + i * 16 + h * 8 + g;
                    e.r[i][h][j][p] = (residual && m < M && n < N)
                                          ? Conv<T>::to_f(residual[static_cast<size_t>(m) * N + n])
                                          : 0.f;
                }
            }
        }
    }
}

// Bias, GELU, residual, one rounding, and the store of a warp's outputs (as one 32-bit store per
// pair where both exist and the row pitch keeps them aligned).
template <typename T>
__device__ __forceinline__ void sk_store(const Acc& acc, const EpIn& e, int gelu, T* Y, int tok0, int n0, int g,
                                         int M, int N) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int m = tok0 + i * 16 + h * 8 + g, n = n0 + j * 8;
                if (m >= M || n >= N) continue;
                float v0 = acc[i][j][2 * h] + e.b[j][0];
                float v1 = acc[i][j][2 * h + 1] + e.b[j][1];
                if (gelu) {
                    v0 = gelu_erf(v0);
                    v1 = gelu_erf(v1);
                }
                v0 += e.r[i][h][j][0];
                v1 += e.r[i][h][j][1];
                T* at = Y + static_cast<size_t>(m) * N + n;
                const bool two = n + 1 < N;
                if (two && (N & 1) == 0) {
                    Pair<T> pr;
                    pr.v[0] = Conv<T>::from_f(v0);
                    pr.v[1] = Conv<T>::from_f(v1);
                    *reinterpret_cast<u32*>(at) = pr.u;
                } else {
                    at[0] = Conv<T>::from_f(v0);
                    if (two) at[1] = Conv<T>::from_f(v1);
                }
            }
        }
    }
}

template <typename T, bool BF16, int TH, int TW>
__device__ __forceinline__ void sk_body(const T* __restrict__ X, int M, int K, const T* __restrict__ values, int N,
                                        const uint4* __restrict__ plan, int units, int tbs, float* ws, u32* counters,
                                        const float* bias, const T* residual, int gelu, T* Y) {
    constexpr int SUBS = TH / 16;
    constexpr int MAXT = ESK_STEPS / (TW / 16);
    const int lane = threadIdx.x & 31;
    const int item = blockIdx.x * ESK_WARPS + (threadIdx.x >> 5);
    if (item >= units * tbs) return;
    const int u = item / tbs, tb = item - u * tbs;
    const uint4 h = __ldg(plan + 2 * u);
    const uint4 cw = __ldg(plan + 2 * u + 1);
    const int slice = static_cast<int>(h.x);
    const int tiles = min(static_cast<int>(h.z & 0xffffu), MAXT);
    const int index = static_cast<int>(h.z >> 16), parts = static_cast<int>(h.w);
    const int tok0 = tb * ESK_TB;
    const int g = lane >> 2, n0 = slice * 16 + 2 * (lane & 3);
    const T* wbase = values + static_cast<size_t>(h.y) * (TH * TW) + (slice % SUBS) * 16 * TW;
    EpIn e;
    sk_epilogue_inputs<T>(e, bias, residual, tok0, n0, g, M, N);
    Acc acc = {};
    sk_products<BF16, TH, TW>(X, M, K, wbase, cw, tiles, tok0, lane, acc);
    if (parts > 1) {
        u32* counter = counters + static_cast<size_t>(slice) * ESK_MAX_TB + tb;
        const int first_item = (u - index) * tbs + tb;
        if (!sk_reduce(acc, ws, counter, item, first_item, tbs, index, parts, lane)) return;
    }
    sk_store<T>(acc, e, gelu, Y, tok0, n0, g, M, N);
}

}  // namespace esk

#define ETS_TILE_SK(T, E, BF, TH, TW)                                                                         \
    extern "C" __global__ void __launch_bounds__(ESK_WARPS * 32)                                              \
        tile_sk_##E##_##TH##x##TW(const T* X, int M, int K, const T* values, int N, const uint4* plan,         \
                                  int units, int tbs, float* ws, u32* counters, const float* bias,            \
                                  const T* residual, int gelu, T* Y) {                                        \
        esk::sk_body<T, BF, TH, TW>(X, M, K, values, N, plan, units, tbs, ws, counters, bias, residual, gelu, Y); \
    }

ETS_TILE_SK(__half, f16, false, 16, 16)
ETS_TILE_SK(__half, f16, false, 32, 32)
ETS_TILE_SK(__half, f16, false, 64, 64)
ETS_TILE_SK(__half, f16, false, 64, 16)
ETS_TILE_SK(__half, f16, false, 128, 16)
ETS_TILE_SK(__nv_bfloat16, bf16, true, 16, 16)
ETS_TILE_SK(__nv_bfloat16, bf16, true, 32, 32)
ETS_TILE_SK(__nv_bfloat16, bf16, true, 64, 64)
ETS_TILE_SK(__nv_bfloat16, bf16, true, 64, 16)
ETS_TILE_SK(__nv_bfloat16, bf16, true, 128, 16)
