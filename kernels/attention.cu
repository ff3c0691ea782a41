// Fused multi-head self-attention over packed sequences of different lengths, on tensor cores.
//
// Input: Q, K and V as three f16 matrices of `tokens` rows with row stride `ld` (head h in columns
// [h * D, (h + 1) * D), W = heads * D). Q, K and V may be three buffers (ld = W) or the column
// blocks of one [tokens, 3W] matrix (ld = 3W). Sequence s owns rows cu[s]..cu[s + 1]: no padding
// rows exist and no key outside a query's own sequence is read. Output: ctx [tokens, W] f16.
//
// Biases (f32, W values each, null when the projection already added them) never touch K or V
// tiles, so the tiles are copied from global to shared memory as they are:
// - Q's bias is added once, when a warp takes its Q fragments into registers (with the softmax
//   scale log2(e) / sqrt(D) folded in);
// - K's bias adds q . b_k to every score of a query row; the softmax cancels any per-row
//   constant, so it is not read at all;
// - V's bias: the probabilities of a row sum to 1, so sum_j p_j (v_j + b_v) = sum_j p_j v_j + b_v
//   and it is added to the normalised output.
//
// One CTA of WARPS warps per (BQ-query block, head, sequence); each warp owns MT consecutive tiles
// of 16 query rows (BQ = 16 * WARPS * MT). K and V tiles of 64 keys are double-buffered and
// loaded with 16-byte cp.async (rows past the sequence zero-filled), so the copy of the next K
// (V) tile overlaps the math on the current one. Scores S = Q K^T and the update O += P V use
// mma.sync m16n8k16 (f16 in, fp32 accumulate), K fragments through ldmatrix and V fragments
// through ldmatrix.trans; the softmax is computed online in fp32 in the base-2 domain, so S and P
// never leave registers.
#include <cuda_fp16.h>

typedef unsigned int u32;

namespace attn {

constexpr int BK = 64;  // keys per staged tile
#define ATTN_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(u32& r0, u32& r1, u32& r2, u32& r3, const __half* p) {
    const u32 addr = static_cast<u32>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32& r0, u32& r1, u32& r2, u32& r3, const __half* p) {
    const u32 addr = static_cast<u32>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// 16 bytes from global to shared memory; src_bytes 0 writes 16 zero bytes and reads nothing
// (`src` must still be a valid address).
__device__ __forceinline__ void cp_async16(__half* dst, const __half* src, int src_bytes) {
    const u32 addr = static_cast<u32>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src), "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// 2^x with denormal results flushed to zero (probabilities that small do not change a row).
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<u32*>(&h);
}

// Starts copying rows [r0, r0 + ROWS) of one D-wide column block of a sequence of `len` rows
// (len >= 1; `src` points at its row 0, column block start) into shared memory with row stride
// LDS; rows past the sequence become zeros (so that masked keys meet zeros in V, never stale
// values).
template <int D, int LDS, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(__half* dst, const __half* src, int r0, int len, int ld) {
    constexpr int CHUNKS = D / 8;
    constexpr int STEP = THREADS / CHUNKS;  // rows per pass of all threads
    static_assert(THREADS % CHUNKS == 0 && ROWS % STEP == 0, "tile chunks must divide over the threads");
    const int r = threadIdx.x / CHUNKS, c = (threadIdx.x % CHUNKS) * 8;
#pragma unroll
    for (int it = 0; it < ROWS / STEP; ++it) {
        const int row = r0 + r + it * STEP;
        const bool in = row < len;
        cp_async16(dst + (r + it * STEP) * LDS + c, src + (in ? static_cast<size_t>(row) * ld + c : 0), in ? 16 : 0);
    }
}

// Q fragments of the warp's MT row tiles, with Q's bias added and scaled by `scale` (rounded to
// f16 once).
template <int D, int LDS, int MT>
__device__ __forceinline__ void load_q(u32 (&qa)[MT][D / 16][4], const __half* sQ, const float* bq, int col,
                                       float scale, int row0, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const __half* qs = sQ + (row0 + mt * 16 + g) * LDS + 2 * t;
#pragma unroll
        for (int kc = 0; kc < D / 16; ++kc) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                // a0: (g, 2t), a1: (g + 8, 2t), a2: (g, 2t + 8), a3: (g + 8, 2t + 8).
                const int c = kc * 16 + (r >> 1) * 8;
                float2 f = __half22float2(*reinterpret_cast<const __half2*>(qs + (r & 1) * 8 * LDS + c));
                if (bq) {
                    f.x += bq[col + c + 2 * t];
                    f.y += bq[col + c + 2 * t + 1];
                }
                qa[mt][kc][r] = pack_half2(f.x * scale, f.y * scale);
            }
        }
    }
}

template <int D, int WARPS, int MT>
__device__ void attention(const __half* q, const __half* k, const __half* v, int ld, const float* bq,
                          const float* bv, const int* cu, int heads, float scale_log2, __half* ctx) {
    constexpr int THREADS = WARPS * 32;
    constexpr int BQ = 16 * WARPS * MT;
    constexpr int LDS = D + 8;  // padded row: conflict-free ldmatrix, 16-byte aligned rows
    constexpr int KC = D / 16;  // k-chunks of Q K^T
    constexpr int DT = D / 8;   // n-tiles of the output
    static_assert(KC % 2 == 0, "K fragments are loaded two k-chunks at a time");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __half* sQ = reinterpret_cast<__half*>(smem_raw);
    __half* sK = sQ + BQ * LDS;      // two buffers of BK rows
    __half* sV = sK + 2 * BK * LDS;  // two buffers of BK rows

    const int s = blockIdx.z, h = blockIdx.y;
    const int base = cu[s], len = cu[s + 1] - base;
    const int q0 = blockIdx.x * BQ;
    if (q0 >= len) return;
    const int W = heads * D, col = h * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = warp * 16 * MT;  // the warp's first row within the block
    // A warp whose rows all lie past the sequence still copies tiles and meets every barrier.
    const bool active = q0 + row0 < len;

    // Row 0 of this sequence and head in Q, K and V.
    const size_t head0 = static_cast<size_t>(base) * ld + col;
    q += head0;
    k += head0;
    v += head0;
    load_tile<D, LDS, BQ, THREADS>(sQ, q, q0, len, ld);
    load_tile<D, LDS, BK, THREADS>(sK, k, 0, len, ld);
    cp_async_commit();
    load_tile<D, LDS, BK, THREADS>(sV, v, 0, len, ld);
    cp_async_commit();

    u32 qa[MT][KC][4];
    cp_async_wait<1>();  // Q and the first K tile have landed; the first V tile may be in flight
    __syncthreads();
    if (active) load_q<D, LDS, MT>(qa, sQ, bq, col, scale_log2, row0, lane);
    float o[MT][DT][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int d = 0; d < DT; ++d) o[mt][d][0] = o[mt][d][1] = o[mt][d][2] = o[mt][d][3] = 0.f;
        m[mt][0] = m[mt][1] = ATTN_NEG_INF;
        l[mt][0] = l[mt][1] = 0.f;
    }

    for (int kb = 0, j = 0; kb < len; kb += BK, ++j) {
        const __half* cK = sK + (j & 1) * BK * LDS;
        const __half* cV = sV + (j & 1) * BK * LDS;
        if (j > 0) {
            cp_async_wait<1>();  // this tile's K has landed; its V may be in flight
            __syncthreads();     // ... for every thread, and every warp is done with the other buffers
        }
        if (kb + BK < len) load_tile<D, LDS, BK, THREADS>(sK + ((j + 1) & 1) * BK * LDS, k, kb + BK, len, ld);
        cp_async_commit();

        float sc[MT][8][4];
        if (active) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) sc[mt][nt][0] = sc[mt][nt][1] = sc[mt][nt][2] = sc[mt][nt][3] = 0.f;
            // K fragments: matrices (8 keys) x (dims +0, +8, +16, +24) give b0, b1 of two k-chunks.
            const __half* krow = cK + (lane & 7) * LDS + (lane >> 3) * 8;
#pragma unroll
            for (int kc = 0; kc < KC; kc += 2) {
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    u32 b0, b1, b2, b3;
                    ldmatrix_x4(b0, b1, b2, b3, krow + nt * 8 * LDS + kc * 16);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma16816(sc[mt][nt], qa[mt][kc], b0, b1);
                        mma16816(sc[mt][nt], qa[mt][kc + 1], b2, b3);
                    }
                }
            }
            if (kb + BK > len) {  // the sequence's last tile: keys past its end score -inf
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const int key = kb + nt * 8 + 2 * t;
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            if (key + e >= len) sc[mt][nt][e] = sc[mt][nt][2 + e] = ATTN_NEG_INF;
                        }
                }
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                float mx0 = ATTN_NEG_INF, mx1 = ATTN_NEG_INF;
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    mx0 = fmaxf(mx0, fmaxf(sc[mt][nt][0], sc[mt][nt][1]));
                    mx1 = fmaxf(mx1, fmaxf(sc[mt][nt][2], sc[mt][nt][3]));
                }
#pragma unroll
                for (int off = 1; off < 4; off <<= 1) {
                    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
                    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
                }
                // Key 0 of every sequence is valid, so the running maxima are finite after the
                // first tile.
                const float n0 = fmaxf(m[mt][0], mx0), n1 = fmaxf(m[mt][1], mx1);
                const float c0 = exp2_ftz(m[mt][0] - n0), c1 = exp2_ftz(m[mt][1] - n1);
                m[mt][0] = n0;
                m[mt][1] = n1;
                float s0 = 0.f, s1 = 0.f;
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    sc[mt][nt][0] = exp2_ftz(sc[mt][nt][0] - n0);
                    sc[mt][nt][1] = exp2_ftz(sc[mt][nt][1] - n0);
                    sc[mt][nt][2] = exp2_ftz(sc[mt][nt][2] - n1);
                    sc[mt][nt][3] = exp2_ftz(sc[mt][nt][3] - n1);
                    s0 += sc[mt][nt][0] + sc[mt][nt][1];
                    s1 += sc[mt][nt][2] + sc[mt][nt][3];
                }
                l[mt][0] = l[mt][0] * c0 + s0;
                l[mt][1] = l[mt][1] * c1 + s1;
#pragma unroll
                for (int d = 0; d < DT; ++d) {
                    o[mt][d][0] *= c0;
                    o[mt][d][1] *= c0;
                    o[mt][d][2] *= c1;
                    o[mt][d][3] *= c1;
                }
            }
        }

        cp_async_wait<1>();  // this tile's V has landed; the next K may be in flight
        __syncthreads();
        if (kb + BK < len) load_tile<D, LDS, BK, THREADS>(sV + ((j + 1) & 1) * BK * LDS, v, kb + BK, len, ld);
        cp_async_commit();

        if (active) {
            const int mi = lane >> 3;
            const __half* vrow = cV + ((lane & 7) + (mi & 1) * 8) * LDS + (mi >> 1) * 8;
#pragma unroll
            for (int kc = 0; kc < BK / 16; ++kc) {
                u32 pa[MT][4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    pa[mt][0] = pack_half2(sc[mt][2 * kc][0], sc[mt][2 * kc][1]);
                    pa[mt][1] = pack_half2(sc[mt][2 * kc][2], sc[mt][2 * kc][3]);
                    pa[mt][2] = pack_half2(sc[mt][2 * kc + 1][0], sc[mt][2 * kc + 1][1]);
                    pa[mt][3] = pack_half2(sc[mt][2 * kc + 1][2], sc[mt][2 * kc + 1][3]);
                }
#pragma unroll
                for (int dp = 0; dp < D / 16; ++dp) {
                    u32 b0, b1, b2, b3;
                    ldmatrix_x4_trans(b0, b1, b2, b3, vrow + kc * 16 * LDS + dp * 16);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma16816(o[mt][2 * dp], pa[mt], b0, b1);
                        mma16816(o[mt][2 * dp + 1], pa[mt], b2, b3);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();  // no copy may outlive the block (the last groups are empty)
    if (!active) return;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        // Row sums: each of the quad's four threads holds a part.
        float l0 = l[mt][0], l1 = l[mt][1];
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            l0 += __shfl_xor_sync(0xffffffffu, l0, off);
            l1 += __shfl_xor_sync(0xffffffffu, l1, off);
        }
        const float i0 = 1.0f / l0, i1 = 1.0f / l1;
        const int r0 = q0 + row0 + mt * 16 + g, r1 = r0 + 8;
#pragma unroll
        for (int d = 0; d < DT; ++d) {
            const int c = col + d * 8 + 2 * t;
            const float2 b = bv ? make_float2(bv[c], bv[c + 1]) : make_float2(0.f, 0.f);
            if (r0 < len)
                *reinterpret_cast<__half2*>(ctx + static_cast<size_t>(base + r0) * W + c) =
                    __floats2half2_rn(o[mt][d][0] * i0 + b.x, o[mt][d][1] * i0 + b.y);
            if (r1 < len)
                *reinterpret_cast<__half2*>(ctx + static_cast<size_t>(base + r1) * W + c) =
                    __floats2half2_rn(o[mt][d][2] * i1 + b.x, o[mt][d][3] * i1 + b.y);
        }
    }
}

}  // namespace attn

// attn_fwd_d{D}_w{WARPS}m{MT}_f16: head size D, WARPS warps of MT 16-row tiles each, registers
// capped so that MINB blocks fit an SM. Built with 64 queries a block (4 warps of one row tile):
// blocks of 128 queries (8 warps, or 4 warps of two row tiles) were never faster, from one
// sequence of 128 tokens to one of 4,096 (bench/RESULTS.md, GPU encoder).
#define ETS_ATTENTION(D, WARPS, MT, MINB)                                                                   \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, MINB)                                          \
        attn_fwd_d##D##_w##WARPS##m##MT##_f16(const __half* q, const __half* k, const __half* v, int ld,    \
                                              const float* bq, const float* bv, const int* cu, int heads,   \
                                              float scale_log2, __half* ctx) {                              \
        attn::attention<D, WARPS, MT>(q, k, v, ld, bq, bv, cu, heads, scale_log2, ctx);                      \
    }

ETS_ATTENTION(32, 4, 1, 4)
ETS_ATTENTION(64, 4, 1, 3)
ETS_ATTENTION(128, 4, 1, 2)
