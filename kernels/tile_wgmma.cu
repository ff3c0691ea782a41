// Tile-sparse GEMM with Hopper warpgroup MMA (wgmma, sm_90a): Y[M,N] = act(X[M,K] W^T + bias) + residual.
//
// Same input layout and CTA decomposition as tile_gemm.cu (a CTA owns BM=128 tokens x BN output
// features, walks the union of non-empty tile columns of its BN/TH block rows, cp.async loads into
// a multi-stage ring), but the products are issued by two warpgroups (64 tokens each) as
// m64nBNk16 wgmma reading both operands from shared memory. Each stage row is 64 halves = 128 bytes,
// 16-byte chunks XOR-swizzled by (row & 7): exactly the hardware's 128-byte swizzle, so the
// descriptors need no repacking. Absent tiles are zero-filled (no global traffic) and multiplied;
// the group size BN (64 or 128) is chosen per weight on the host so the union stays small.
// Requirements (checked on the host): K % 8 == 0, 16-byte aligned X and values, grid_cols <= 512.
#define ETS_BM 128
#define ETS_KC 64
#define ETS_THREADS 256

namespace etw {

using namespace ek;

__device__ __forceinline__ u32 swz(int row, int chunk) {
    return static_cast<u32>(row * (ETS_KC * 2) + ((chunk ^ (row & 7)) << 4));
}

template <int BN, int TH>
using Meta = UnionMeta<BN / TH>;

// Per-thread constants of the stage loads: thread t copies 16-byte chunk (t & 7) of X rows
// t/8 + 32i (i < 4) and of W rows t/8 + 32i (i < BN/32).
template <typename T, int BN, int TH, int TW>
struct LoadPlan {
    static constexpr int CPT = TW / 8;  // 16-byte chunks per tile row
    static constexpr int NW = BN / 32;
    int s, colin, row0;
    u32 dst0;
    const T* xsrc[4];
    bool xrow_ok[4];

    __device__ __forceinline__ void init(const T* X, int M, int ldx, int m0) {
        const int tid = threadIdx.x, ch = tid & 7;
        s = ch / CPT;
        colin = (ch % CPT) * 8;
        row0 = tid >> 3;
        dst0 = swz(row0, ch);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + row0 + 32 * i;
            xrow_ok[i] = m < M;
            xsrc[i] = X + static_cast<size_t>(xrow_ok[i] ? m : 0) * ldx;
        }
    }

    __device__ __forceinline__ void load(const Meta<BN, TH>& md, u32 xs, u32 ws, const T* X, const T* values, int K,
                                         int g) const {
        constexpr int S = ETS_KC / TW;
        const int j = g * S + s;
        const bool jok = j < md.U;
        const int jj = jok ? j : 0;
        const int k = static_cast<int>(md.ucol[jj]) * TW + colin;
        const bool kok = jok && k < K;
        const u32 um = jok ? md.umask[jj] : 0u;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const bool ok = kok && xrow_ok[i];
            cp_async16(xs + dst0 + i * 32 * (ETS_KC * 2), ok ? xsrc[i] + k : X, ok);
        }
#pragma unroll
        for (int i = 0; i < NW; ++i) {
            const int n = row0 + 32 * i;
            const int r = n / TH, ir = n % TH;
            const bool p = (um >> r) & 1u;
            const size_t tile = static_cast<size_t>(md.rowoff[r]) + md.kidx[r][jj];
            const T* src = values + tile * (TH * TW) + ir * TW + colin;
            cp_async16(ws + dst0 + i * 32 * (ETS_KC * 2), p ? src : values, p);
        }
    }
};

template <typename T, bool BF16, int BN, int TH, int TW>
__device__ void body(const T* __restrict__ X, int M, int K, int ldx, const u64* __restrict__ bitmap,
                     const u32* __restrict__ row_offsets, const T* __restrict__ values, int N, int grid_rows,
                     int grid_cols, const float* __restrict__ bias, const T* __restrict__ residual, int gelu,
                     T* __restrict__ Y, int ldy, float* __restrict__ ws) {
    constexpr int S = ETS_KC / TW;
    constexpr int STAGES = BN == 128 ? 3 : 4;
    constexpr int XB = ETS_BM * ETS_KC * 2, WB = BN * ETS_KC * 2;
    constexpr int NACC = BN / 2;
#if !ETW_WGMMA
    __trap();
#endif
    const AlignedSmem aligned = aligned_dynamic_smem();
    unsigned char* smem = aligned.ptr;
    const u32 xs_base = aligned.addr, ws_base = xs_base + STAGES * XB;
    Meta<BN, TH>& md = *reinterpret_cast<Meta<BN, TH>*>(smem + STAGES * (XB + WB));

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * ETS_BM;
    build_union<Meta<BN, TH>::R, ETS_THREADS>(md, bitmap, row_offsets, grid_rows, grid_cols,
                                              blockIdx.x * Meta<BN, TH>::R, threadIdx.x);
    const int U = md.U;
    const int G = (U + S - 1) / S;
    const int gbeg = static_cast<int>((static_cast<long long>(G) * blockIdx.z) / gridDim.z);
    const int gend = static_cast<int>((static_cast<long long>(G) * (blockIdx.z + 1)) / gridDim.z);
    const int GL = gend - gbeg;

    LoadPlan<T, BN, TH, TW> plan;
    plan.init(X, M, ldx, m0);

    float acc[NACC];
#pragma unroll
    for (int a = 0; a < NACC; ++a) acc[a] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < GL) plan.load(md, xs_base + s * XB, ws_base + s * WB, X, values, K, gbeg + s);
        cp_async_commit();
    }
    for (int gi = 0; gi < GL; ++gi) {
        cp_async_wait<STAGES - 2>();
        fence_async_smem();
        // After this barrier every thread's copies of stage gi are visible, and every warpgroup has
        // finished the products of stage gi-1 (wait_group 0 below), so its buffer can be refilled.
        __syncthreads();
        {
            const int gn = gi + STAGES - 1;
            if (gn < GL) {
                const int b = gn % STAGES;
                plan.load(md, xs_base + b * XB, ws_base + b * WB, X, values, K, gbeg + gn);
            }
            cp_async_commit();
        }
        const int buf = gi % STAGES;
        const u32 xa = xs_base + buf * XB + wg * 64 * (ETS_KC * 2);
        const u32 wa = ws_base + buf * WB;
        const u64 da = desc_sw128(xa), db = desc_sw128(wa);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < ETS_KC / 16; ++kk) {
            // +32 bytes per k16 step = +2 in the descriptor's address field.
            wgmma_k16<BF16, BN>(acc, da + 2 * kk, db + 2 * kk);
        }
        wgmma_commit();
        wgmma_wait0();
    }
    cp_async_wait<0>();

    // Accumulator layout of m64nBNk16: warp (w % 4) of the warpgroup holds rows 16*(w%4) + lane/4
    // (+8), n8 block j in acc[4j .. 4j+3] at columns 8j + 2*(lane%4) (+1).
    const int mrow = m0 + wg * 64 + (warp & 3) * 16 + (lane >> 2);
    if (ws) {
        float* wz = ws + static_cast<size_t>(blockIdx.z) * M * ldy;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
                store_partial_pair(wz, acc[4 * j + hh * 2], acc[4 * j + hh * 2 + 1], mrow + hh * 8,
                                   n0 + j * 8 + (lane & 3) * 2, M, N, ldy);
        return;
    }
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh)
            store_pair<T>(acc[4 * j + hh * 2], acc[4 * j + hh * 2 + 1], mrow + hh * 8, n0 + j * 8 + (lane & 3) * 2, M, N,
                          bias, residual, gelu, Y, ldy);
}

}  // namespace etw

#define ETS_TILE_WG(NAME, T, BF, BN, TH, TW)                                                      \
    extern "C" __global__ void __launch_bounds__(ETS_THREADS, 2)                                   \
        NAME(const T* X, int M, int K, int ldx, const u64* bitmap, const u32* row_offsets,         \
             const T* values, int N, int grid_rows, int grid_cols, const float* bias,             \
             const T* residual, int gelu, T* Y, int ldy, float* ws) {                              \
        etw::body<T, BF, BN, TH, TW>(X, M, K, ldx, bitmap, row_offsets, values, N, grid_rows,      \
                                     grid_cols, bias, residual, gelu, Y, ldy, ws);                \
    }

#define ETS_TILE_WG_BOTH(TH, TW)                                                                  \
    ETS_TILE_WG(tile_wg_f16_##TH##x##TW##_bn64, __half, false, 64, TH, TW)                        \
    ETS_TILE_WG(tile_wg_f16_##TH##x##TW##_bn128, __half, false, 128, TH, TW)                      \
    ETS_TILE_WG(tile_wg_bf16_##TH##x##TW##_bn64, __nv_bfloat16, true, 64, TH, TW)                 \
    ETS_TILE_WG(tile_wg_bf16_##TH##x##TW##_bn128, __nv_bfloat16, true, 128, TH, TW)

ETS_TILE_WG_BOTH(16, 16)
ETS_TILE_WG_BOTH(32, 32)
ETS_TILE_WG_BOTH(64, 64)
ETS_TILE_WG_BOTH(64, 16)
ETS_TILE_WG(tile_wg_f16_128x16_bn128, __half, false, 128, 128, 16)
ETS_TILE_WG(tile_wg_bf16_128x16_bn128, __nv_bfloat16, true, 128, 128, 16)
