// Tile-sparse GEMM: Y[M,N] = act(X[M,K] * W^T + bias) + residual.
//
// W is N x K in the .ets tile layout, read straight from the uploaded file bytes:
//   bitmap (u64 words, bit t set when tile t = br*grid_cols + bc is kept),
//   row_offsets (u32[grid_rows+1]), values (kept tiles, TH*TW row-major each).
// One CTA owns BM tokens x BN output features (a group of BN/TH block rows). It walks the tile
// columns that are non-empty for any row of the group (the union list, built in shared memory
// from the bitmap), loads the X slice of each such column once (cp.async, multi-stage), and
// issues tensor-core mma (m16n8k16, fp32 accumulate) only for tiles that are present.
// Requirements (checked on the host): K % 8 == 0, ldx % 8 == 0, 16-byte aligned X and values,
// grid_cols <= ETS_MAX_GRID_COLS.
#define ETS_BM 128
#define ETS_BN 128
#define ETS_KC 64
#define ETS_STAGES 3
#define ETS_THREADS 256

namespace ets {

using namespace ek;

// A stage holds rows of KC=64 halves (8 chunks of 16 bytes); chunks are XOR-swizzled by row so
// that ldmatrix over 8 consecutive rows hits 8 different bank groups.
__device__ __forceinline__ u32 swz(int row, int chunk) {
    return static_cast<u32>(row * (ETS_KC * 2) + ((chunk ^ (row & 7)) << 4));
}

template <int TH, int TW>
using Meta = UnionMeta<ETS_BN / TH>;

// Per-thread constants of the stage loads. Thread t copies 16-byte chunk (t & 7) of rows
// t/8 + 32i (i = 0..3) of both the X and the W stage, so the slot, the column inside the tile
// and the shared-memory offsets are fixed for the whole kernel.
template <typename T, int TH, int TW>
struct LoadPlan {
    static constexpr int CPT = TW / 8;  // 16-byte chunks per tile row
    int s, colin, row0;
    u32 dst0;
    const T* xsrc[4];
    bool xrow_ok[4];

    __device__ __forceinline__ void init(const T* X, int M, int ldx, int m0) {
        const int tid = threadIdx.x, ch = tid & 7;
        s = ch / CPT;
        colin = (ch % CPT) * 8;
        row0 = tid >> 3;
        dst0 = swz(row0, ch);  // rows row0 + 32i share (row & 7), so the offset only moves by 32i rows
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + row0 + 32 * i;
            xrow_ok[i] = m < M;
            xsrc[i] = X + static_cast<size_t>(xrow_ok[i] ? m : 0) * ldx;  // + column k at each stage
        }
    }

    __device__ __forceinline__ void load(const Meta<TH, TW>& md, u32 xs, u32 ws, const T* X, const T* values, int K,
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
        for (int i = 0; i < 4; ++i) {
            const int n = row0 + 32 * i;
            const int r = n / TH, ir = n % TH;
            const bool p = (um >> r) & 1u;
            const size_t tile = static_cast<size_t>(md.rowoff[r]) + md.kidx[r][jj];
            const T* src = values + tile * (TH * TW) + ir * TW + colin;
            cp_async16(ws + dst0 + i * 32 * (ETS_KC * 2), p ? src : values, p);
        }
    }
};

__device__ __forceinline__ void load_a(u32 xa, int warp_m, int lane, int kk, u32 (&af)[4][4]) {
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
        int row = warp_m * 64 + mi * 16 + (lane & 15);
        int ch = kk * 2 + (lane >> 4);
        ldmatrix_x4(xa + swz(row, ch), af[mi][0], af[mi][1], af[mi][2], af[mi][3]);
    }
}

__device__ __forceinline__ void load_b(u32 wa, int warp_n, int lane, int kk, int h, u32 (&bf)[4]) {
    int mat = lane >> 3;
    int n = warp_n * 32 + h * 16 + (lane & 7) + (mat >> 1) * 8;
    int ch = kk * 2 + (mat & 1);
    ldmatrix_x4(wa + swz(n, ch), bf[0], bf[1], bf[2], bf[3]);
}

// Every tile of the stage is present for this warp: no branches, and the fragments of the next
// k16 step are loaded before the products of the current one are issued.
template <bool BF16>
__device__ __forceinline__ void dense_stage(float (&acc)[4][4][4], u32 xa, u32 wa, int warp_m, int warp_n, int lane) {
    u32 af[2][4][4], bf[2][2][4];
    load_a(xa, warp_m, lane, 0, af[0]);
    load_b(wa, warp_n, lane, 0, 0, bf[0][0]);
    load_b(wa, warp_n, lane, 0, 1, bf[0][1]);
#pragma unroll
    for (int kk = 0; kk < ETS_KC / 16; ++kk) {
        const int cur = kk & 1, nxt = cur ^ 1;
        if (kk + 1 < ETS_KC / 16) {
            load_a(xa, warp_m, lane, kk + 1, af[nxt]);
            load_b(wa, warp_n, lane, kk + 1, 0, bf[nxt][0]);
            load_b(wa, warp_n, lane, kk + 1, 1, bf[nxt][1]);
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                mma16816<BF16>(acc[mi][h * 2 + 0], af[cur][mi], &bf[cur][h][0]);
                mma16816<BF16>(acc[mi][h * 2 + 1], af[cur][mi], &bf[cur][h][2]);
            }
    }
}

// Some tiles are absent: skip the fragments and products of absent (k16 step, n16 half) pairs.
template <bool BF16>
__device__ __forceinline__ void sparse_stage(float (&acc)[4][4][4], u32 xa, u32 wa, int warp_m, int warp_n, int lane,
                                             u32 pres) {
#pragma unroll
    for (int kk = 0; kk < ETS_KC / 16; ++kk) {
        const u32 p = (pres >> (2 * kk)) & 3u;
        if (!p) continue;
        u32 af[4][4];
        load_a(xa, warp_m, lane, kk, af);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            if (!((p >> h) & 1u)) continue;
            u32 bf[4];
            load_b(wa, warp_n, lane, kk, h, bf);
#pragma unroll
            for (int mi = 0; mi < 4; ++mi) {
                mma16816<BF16>(acc[mi][h * 2 + 0], af[mi], &bf[0]);
                mma16816<BF16>(acc[mi][h * 2 + 1], af[mi], &bf[2]);
            }
        }
    }
}

template <typename T, bool BF16, int TH, int TW>
__device__ void tile_gemm_body(const T* __restrict__ X, int M, int K, int ldx,
                               const u64* __restrict__ bitmap, const u32* __restrict__ row_offsets,
                               const T* __restrict__ values, int N, int grid_rows, int grid_cols,
                               const float* __restrict__ bias, const T* __restrict__ residual,
                               int gelu, T* __restrict__ Y, int ldy, float* __restrict__ ws) {
    constexpr int S = ETS_KC / TW;
    constexpr int STAGE_BYTES = ETS_BM * ETS_KC * 2;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* xs = smem;
    unsigned char* wsm = smem + ETS_STAGES * STAGE_BYTES;
    Meta<TH, TW>& md = *reinterpret_cast<Meta<TH, TW>*>(smem + 2 * ETS_STAGES * STAGE_BYTES);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp >> 2, warp_n = warp & 3;
    const int n0 = blockIdx.x * ETS_BN, m0 = blockIdx.y * ETS_BM;
    const int br0 = blockIdx.x * Meta<TH, TW>::R;

    build_union<Meta<TH, TW>::R, ETS_THREADS>(md, bitmap, row_offsets, grid_rows, grid_cols, br0, threadIdx.x);
    const int U = md.U;
    const int G = (U + S - 1) / S;
    // Split-K (small token counts): blockIdx.z takes a contiguous share of the stages and adds
    // its partial sums into the f32 workspace; a second kernel applies the epilogue.
    const int gbeg = static_cast<int>((static_cast<long long>(G) * blockIdx.z) / gridDim.z);
    const int gend = static_cast<int>((static_cast<long long>(G) * (blockIdx.z + 1)) / gridDim.z);
    const int GL = gend - gbeg;

    LoadPlan<T, TH, TW> plan;
    plan.init(X, M, ldx, m0);
    const u32 xs_base = smem_addr(xs), ws_base = smem_addr(wsm);

    float acc[4][4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;

#pragma unroll
    for (int s = 0; s < ETS_STAGES - 1; ++s) {
        if (s < GL) plan.load(md, xs_base + s * STAGE_BYTES, ws_base + s * STAGE_BYTES, X, values, K, gbeg + s);
        cp_async_commit();
    }
    // Block rows of the warp's two n16 halves (feature offsets warp_n*32 + h*16).
    const int r0 = (warp_n * 32) / TH, r1 = (warp_n * 32 + 16) / TH;

    for (int gi = 0; gi < GL; ++gi) {
        cp_async_wait<ETS_STAGES - 2>();
        __syncthreads();
        {
            int gn = gi + ETS_STAGES - 1;
            if (gn < GL) {
                int b = gn % ETS_STAGES;
                plan.load(md, xs_base + b * STAGE_BYTES, ws_base + b * STAGE_BYTES, X, values, K, gbeg + gn);
            }
            cp_async_commit();
        }
        const int g = gbeg + gi;
        const int buf = gi % ETS_STAGES;
        const u32 xa = smem_addr(xs + buf * STAGE_BYTES);
        const u32 wa = smem_addr(wsm + buf * STAGE_BYTES);
        // Warp-uniform presence bits of this stage: bit 2*kk+h for k16 step kk and n16 half h.
        u32 pres = 0;
#pragma unroll
        for (int kk = 0; kk < ETS_KC / 16; ++kk) {
            const int j = g * S + (kk * 16) / TW;
            const u32 um = j < U ? md.umask[j] : 0u;
            pres |= (((um >> r0) & 1u) | (((um >> r1) & 1u) << 1)) << (2 * kk);
        }
        if (pres == 0xFFu) {
            dense_stage<BF16>(acc, xa, wa, warp_m, warp_n, lane);
        } else if (pres) {
            sparse_stage<BF16>(acc, xa, wa, warp_m, warp_n, lane, pres);
        }
    }
    cp_async_wait<0>();

    if (ws) {
        // Split-K: plain stores of this split's partial sums into its own slice [z][M][N]
        // (atomics on shared addresses were the bottleneck); the finishing kernel adds the slices.
        float* wz = ws + static_cast<size_t>(blockIdx.z) * M * ldy;
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh)
                    store_partial_pair(wz, acc[mi][ni][hh * 2], acc[mi][ni][hh * 2 + 1],
                                       m0 + warp_m * 64 + mi * 16 + (lane >> 2) + hh * 8,
                                       n0 + warp_n * 32 + ni * 8 + (lane & 3) * 2, M, N, ldy);
        return;
    }

    // Fused epilogue straight from the accumulators; pairs of outputs are stored together.
#pragma unroll
    for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
                store_pair<T>(acc[mi][ni][hh * 2], acc[mi][ni][hh * 2 + 1],
                              m0 + warp_m * 64 + mi * 16 + (lane >> 2) + hh * 8,
                              n0 + warp_n * 32 + ni * 8 + (lane & 3) * 2, M, N, bias, residual, gelu, Y, ldy);
}

}  // namespace ets

#define ETS_TILE_GEMM(NAME, T, BF, TH, TW)                                                        \
    extern "C" __global__ void __launch_bounds__(ETS_THREADS, 2)                                   \
        NAME(const T* X, int M, int K, int ldx, const u64* bitmap, const u32* row_offsets,         \
             const T* values, int N, int grid_rows, int grid_cols, const float* bias,             \
             const T* residual, int gelu, T* Y, int ldy, float* ws) {                              \
        ets::tile_gemm_body<T, BF, TH, TW>(X, M, K, ldx, bitmap, row_offsets, values, N, grid_rows, \
                                           grid_cols, bias, residual, gelu, Y, ldy, ws);           \
    }

ETS_TILE_GEMM(tile_gemm_f16_16x16, __half, false, 16, 16)
ETS_TILE_GEMM(tile_gemm_f16_32x32, __half, false, 32, 32)
ETS_TILE_GEMM(tile_gemm_f16_64x64, __half, false, 64, 64)
ETS_TILE_GEMM(tile_gemm_bf16_16x16, __nv_bfloat16, true, 16, 16)
ETS_TILE_GEMM(tile_gemm_bf16_32x32, __nv_bfloat16, true, 32, 32)
ETS_TILE_GEMM(tile_gemm_bf16_64x64, __nv_bfloat16, true, 64, 64)
ETS_TILE_GEMM(tile_gemm_f16_64x16, __half, false, 64, 16)
ETS_TILE_GEMM(tile_gemm_f16_128x16, __half, false, 128, 16)
ETS_TILE_GEMM(tile_gemm_bf16_64x16, __nv_bfloat16, true, 64, 16)
ETS_TILE_GEMM(tile_gemm_bf16_128x16, __nv_bfloat16, true, 128, 16)
