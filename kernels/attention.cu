// Fused multi-head self-attention over packed sequences of different lengths, on tensor cores.
//
// Input: Q, K and V as three f16 matrices of `tokens` rows with row stride `ld` (head h in columns
// [h * D, (h + 1) * D), W = heads * D), each with an optional f32 bias of W values added as tiles
// are staged (null when the projection already added it). Q, K and V may be three buffers
// (ld = W) or the column blocks of one [tokens, 3W] matrix (ld = 3W). Sequence s owns rows
// cu[s]..cu[s + 1]: no padding rows exist and no key outside a query's own sequence is read.
// Output: ctx [tokens, W] f16.
//
// One CTA of 4 warps per (64-query block, head, sequence); each warp owns 16 query rows. Scores
// S = Q K^T and the update O += P V use mma.sync m16n8k16 (f16 in, fp32 accumulate); the softmax is
// computed online in fp32 in the base-2 domain (scores pre-scaled by log2(e) / sqrt(D)), so S and P
// never leave registers.
#include <cuda_fp16.h>

typedef unsigned int u32;

namespace attn {

constexpr int BQ = 64;  // queries per CTA
constexpr int BK = 64;  // keys per staged tile
constexpr int THREADS = 128;
#define ATTN_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32& r0, u32& r1, u32& r2, u32& r3, const __half* p) {
    const u32 addr = static_cast<u32>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<u32*>(&h);
}

// Stages rows [r0, r0 + 64) of one D-wide column block of the sequence starting at row `base`
// (len rows) of `src` into shared memory with row stride LDS, bias added; rows past the sequence
// are zero (so that masked keys meet zeros in V, never stale values).
template <int D, int LDS>
__device__ __forceinline__ void stage(__half* dst, const __half* src, const float* bias, int base, int r0, int len,
                                      int ld, int col) {
    constexpr int CHUNKS = D / 8;
    for (int i = threadIdx.x; i < BK * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r0 + r < len) {
            v = *reinterpret_cast<const uint4*>(src + static_cast<size_t>(base + r0 + r) * ld + col + c);
            if (bias) {
                __half2* h = reinterpret_cast<__half2*>(&v);
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    float2 f = __half22float2(h[k]);
                    f.x += bias[col + c + 2 * k];
                    f.y += bias[col + c + 2 * k + 1];
                    h[k] = __floats2half2_rn(f.x, f.y);
                }
            }
        }
        *reinterpret_cast<uint4*>(dst + r * LDS + c) = v;
    }
}

template <int D>
__device__ void attention(const __half* q, const __half* k, const __half* v, int ld, const float* bq,
                          const float* bk, const float* bv, const int* cu, int heads, float scale_log2,
                          __half* ctx) {
    constexpr int LDS = D + 8;  // padded row: conflict-free fragment loads, 16-byte aligned rows
    constexpr int KC = D / 16;  // k-chunks of Q K^T
    constexpr int DT = D / 8;   // n-tiles of the output
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __half* sQ = reinterpret_cast<__half*>(smem_raw);
    __half* sK = sQ + BQ * LDS;
    __half* sV = sK + BK * LDS;

    const int s = blockIdx.z, h = blockIdx.y;
    const int base = cu[s], len = cu[s + 1] - base;
    const int q0 = blockIdx.x * BQ;
    if (q0 >= len) return;
    const int W = heads * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;

    stage<D, LDS>(sQ, q, bq, base, q0, len, ld, h * D);
    __syncthreads();
    u32 qa[KC][4];
    {
        const __half* qs = sQ + (warp * 16 + g) * LDS + 2 * t;
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
            qa[kc][0] = *reinterpret_cast<const u32*>(qs + kc * 16);
            qa[kc][1] = *reinterpret_cast<const u32*>(qs + 8 * LDS + kc * 16);
            qa[kc][2] = *reinterpret_cast<const u32*>(qs + kc * 16 + 8);
            qa[kc][3] = *reinterpret_cast<const u32*>(qs + 8 * LDS + kc * 16 + 8);
        }
    }
    float o[DT][4];
#pragma unroll
    for (int d = 0; d < DT; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float m0 = ATTN_NEG_INF, m1 = ATTN_NEG_INF, l0 = 0.f, l1 = 0.f;

    for (int kb = 0; kb < len; kb += BK) {
        __syncthreads();  // every warp is done with the previous K and V tiles
        stage<D, LDS>(sK, k, bk, base, kb, len, ld, h * D);
        stage<D, LDS>(sV, v, bv, base, kb, len, ld, h * D);
        __syncthreads();
        float sc[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
            const __half* ks = sK + (nt * 8 + g) * LDS + 2 * t;
#pragma unroll
            for (int kc = 0; kc < KC; ++kc) {
                const u32 b0 = *reinterpret_cast<const u32*>(ks + kc * 16);
                const u32 b1 = *reinterpret_cast<const u32*>(ks + kc * 16 + 8);
                mma16816(sc[nt], qa[kc], b0, b1);
            }
        }
        float mx0 = ATTN_NEG_INF, mx1 = ATTN_NEG_INF;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const int key = kb + nt * 8 + 2 * t;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const bool valid = key + e < len;
                sc[nt][e] = valid ? sc[nt][e] * scale_log2 : ATTN_NEG_INF;
                sc[nt][2 + e] = valid ? sc[nt][2 + e] * scale_log2 : ATTN_NEG_INF;
                mx0 = fmaxf(mx0, sc[nt][e]);
                mx1 = fmaxf(mx1, sc[nt][2 + e]);
            }
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        // Key 0 of every sequence is valid, so the running maxima are finite after the first tile.
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
        const float c0 = exp2f(m0 - n0), c1 = exp2f(m1 - n1);
        m0 = n0;
        m1 = n1;
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            sc[nt][0] = exp2f(sc[nt][0] - n0);
            sc[nt][1] = exp2f(sc[nt][1] - n0);
            sc[nt][2] = exp2f(sc[nt][2] - n1);
            sc[nt][3] = exp2f(sc[nt][3] - n1);
            s0 += sc[nt][0] + sc[nt][1];
            s1 += sc[nt][2] + sc[nt][3];
        }
        l0 = l0 * c0 + s0;
        l1 = l1 * c1 + s1;
#pragma unroll
        for (int d = 0; d < DT; ++d) {
            o[d][0] *= c0;
            o[d][1] *= c0;
            o[d][2] *= c1;
            o[d][3] *= c1;
        }
#pragma unroll
        for (int kc = 0; kc < BK / 16; ++kc) {
            u32 pa[4];
            pa[0] = pack_half2(sc[2 * kc][0], sc[2 * kc][1]);
            pa[1] = pack_half2(sc[2 * kc][2], sc[2 * kc][3]);
            pa[2] = pack_half2(sc[2 * kc + 1][0], sc[2 * kc + 1][1]);
            pa[3] = pack_half2(sc[2 * kc + 1][2], sc[2 * kc + 1][3]);
            const int mi = lane >> 3;
            const __half* vrow = sV + (kc * 16 + (lane & 7) + (mi & 1) * 8) * LDS + (mi >> 1) * 8;
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                u32 b0, b1, b2, b3;
                ldmatrix_x4_trans(b0, b1, b2, b3, vrow + dp * 16);
                mma16816(o[2 * dp], pa, b0, b1);
                mma16816(o[2 * dp + 1], pa, b2, b3);
            }
        }
    }
    // Row sums: each of the quad's four threads holds a part.
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
#pragma unroll
    for (int d = 0; d < DT; ++d) {
        const int col = h * D + d * 8 + 2 * t;
        if (r0 < len)
            *reinterpret_cast<__half2*>(ctx + static_cast<size_t>(base + r0) * W + col) =
                __floats2half2_rn(o[d][0] * i0, o[d][1] * i0);
        if (r1 < len)
            *reinterpret_cast<__half2*>(ctx + static_cast<size_t>(base + r1) * W + col) =
                __floats2half2_rn(o[d][2] * i1, o[d][3] * i1);
    }
}

}  // namespace attn

#define ETS_ATTENTION(D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(attn::THREADS)                                            \
        attn_fwd_d##D##_f16(const __half* q, const __half* k, const __half* v, int ld, const float* bq,     \
                            const float* bk, const float* bv, const int* cu, int heads, float scale_log2,   \
                            __half* ctx) {                                                                 \
        attn::attention<D>(q, k, v, ld, bq, bk, bv, cu, heads, scale_log2, ctx);                           \
    }

ETS_ATTENTION(32)
ETS_ATTENTION(64)
ETS_ATTENTION(128)
