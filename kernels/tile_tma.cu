// Tile-sparse GEMM fed by the Tensor Memory Accelerator (TMA, sm_90a):
// Y[M,N] = act(X[M,K] W^T + bias) + residual, W tile-encoded.
//
// A CTA owns 128 or 256 tokens (BM) x 128 output features (a group of 128/TH block rows) and walks
// the union of the group's non-empty tile columns, 64 columns per stage, as tile_wgmma.cu does. What
// differs is who moves the bytes: one producer warp issues TMA copies into a ring of stages (3 at
// BM = 128, two CTAs per multiprocessor; 4 at BM = 256, one) and two consumer warpgroups only wait
// on mbarriers and issue wgmma, so loads, products and (with two CTAs) the epilogue overlap.
//
// Copies are 16-column slices, written by TMA with the 32-byte swizzle, so one layout serves all
// tile shapes and the union's columns need not be contiguous (64-column tiles: see WIDE below):
// - X: a 2-D tensor map (K, M); box 16 x BM rows lands as BM rows of 32 bytes. When a stage's union
//   columns are 64 contiguous columns, a second map copies them in one 64 x BM box with the
//   128-byte swizzle instead.
// - W: a 3-D tensor map over the kept tiles (TW, TH, kept); box 16 x TH x 1 is one tile's slice,
//   placed at row (block row in the group) * TH of the slot, so a slot holds 128 features x 16.
//   For 16-column tiles of a weight whose block rows all keep the same number of tiles, a 4-D map
//   (16, TH, block rows, tiles of a row) copies a stage whose four union columns every row of the
//   group keeps at the same place as one box in that same layout (see stage_boxed): one copy per
//   stage instead of 32 for 16x16 tiles.
// An absent tile (or a column past the union, or a block row past the grid) is loaded from tile
// index `kept`, outside the map: TMA fills the box with zeros without reading memory, and the
// barrier's byte count is the same for every stage.
// Requirements (checked on the host): K % 8 == 0; X, Y and the values 16-byte aligned.
#define ETT_BN 128
#define ETT_THREADS 288  // two consumer warpgroups and one producer warp

namespace ett {

using namespace ek;

constexpr u32 SLOT_W = ETT_BN * 32;      // bytes of one W slice (128 features x 32 bytes)
constexpr u32 STAGE_W = SLOTS * SLOT_W;  // = 128 features x 128 bytes

// Stages of the ring: 3 with 128-token CTAs (two CTAs per multiprocessor), 4 with 256 (one).
template <int BM>
struct Ring {
    static constexpr int STAGES = BM == 128 ? 3 : 4;
    static constexpr u32 SLOT_X = BM * 32;           // one 16-column X slice
    static constexpr u32 STAGE_X = SLOTS * SLOT_X;  // = BM rows x 128 bytes
    static constexpr int HALVES = BM / 128;         // m64 blocks per consumer warpgroup
};

// 64-column tiles (64x64) are copied whole-row: each tile's 64 x TH in one box with the 128-byte
// swizzle (WIDE); narrower tiles in 16-column slices with the 32-byte swizzle.
template <typename T, bool BF16, int TH, int TW, int BM>
__device__ void body(const TensorMap* tmx, const TensorMap* tmx_wide, const TensorMap* tmw, const TensorMap* tmw_rows,
                     int wcnt, int M, int K,
                     const u64* __restrict__ bitmap, const u32* __restrict__ row_offsets, int kept, int N,
                     int grid_rows, int grid_cols, const float* __restrict__ bias, const T* __restrict__ residual,
                     int gelu, T* __restrict__ Y, int ldy, float* __restrict__ ws) {
    using RG = Ring<BM>;
    constexpr int STAGES = RG::STAGES;
    constexpr int R = ETT_BN / TH;  // block rows per group
    constexpr int UPS = 64 / TW;     // union columns per stage
    constexpr int SPU = TW / 16;     // 16-column slices per union column
    constexpr int NACC = ETT_BN / 2;
    constexpr bool WIDE = TW == 64;
    constexpr int NWB = WIDE ? R : SLOTS * R;  // W copies per stage
#if !ETW_WGMMA
    __trap();
#endif
    const AlignedSmem aligned = aligned_dynamic_smem();
    unsigned char* smem = aligned.ptr;
    const u32 xs_base = aligned.addr, ws_base = xs_base + STAGES * RG::STAGE_X;
    const u32 full_bar = ws_base + STAGES * STAGE_W, empty_bar = full_bar + 8 * STAGES;
    UnionMeta<R>& md = *reinterpret_cast<UnionMeta<R>*>(smem + STAGES * (RG::STAGE_X + STAGE_W) + 16 * STAGES);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = blockIdx.x * ETT_BN, m0 = blockIdx.y * BM;
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full_bar + 8 * s, 1);   // the producer's arrive (with the stage's byte count)
            mbar_init(empty_bar + 8 * s, 2);  // one arrive per consumer warpgroup
        }
        fence_barrier_init();
    }
    // (build_union ends with a CTA barrier, which also publishes the barriers' initialisation.)
    build_union<R, ETT_THREADS>(md, bitmap, row_offsets, grid_rows, grid_cols, blockIdx.x * R, threadIdx.x);
    const int U = md.U;
    const int G = (U + UPS - 1) / UPS;
    const int gbeg = static_cast<int>((static_cast<long long>(G) * blockIdx.z) / gridDim.z);
    const int gend = static_cast<int>((static_cast<long long>(G) * (blockIdx.z + 1)) / gridDim.z);
    const int GL = gend - gbeg;
    // 16-column tiles whose block rows keep the same number of tiles: a stage of weights in one box
    // of tmw_rows (16 columns, TH rows, R block rows, SLOTS tiles) where the group allows it.
    const bool group_boxed = TW == 16 && rows_uniform<R>(md, blockIdx.x * R, grid_rows, wcnt);

    if (warp == 8) {
        // Producer: lane q < NWB copies one W box (slot q / R, block row q % R), the next SLOTS
        // lanes (wrapping over the warp) the X slices, or the first of them the whole 64 columns.
        for (int g = 0; g < GL; ++g) {
            const int b = g % STAGES;
            if (g >= STAGES) mbar_wait_suspend(empty_bar + 8 * b, ((g / STAGES) - 1) & 1);
            if (lane == 0) mbar_arrive_expect_tx(full_bar + 8 * b, RG::STAGE_X + STAGE_W);
            __syncwarp();
            const int j0 = (gbeg + g) * UPS;
            const bool contig = stage_contiguous<TW>(md.ucol, U, j0);
            const bool boxed = group_boxed && stage_boxed<R>(md, blockIdx.x * R, grid_rows, U, j0);
            if (boxed && lane == 0)
                tma_load_4d(ws_base + b * STAGE_W, tmw_rows, 0, 0, blockIdx.x * R, md.kidx[0][j0], full_bar + 8 * b);
            for (int q = boxed ? lane + NWB : lane; q < NWB + SLOTS; q += 32) {
                const bool is_w = q < NWB;
                const int s = is_w ? q / R : q - NWB;
                const int j = j0 + s / SPU;               // union column
                const int sub = WIDE ? 0 : (s % SPU) * 16;  // first column of the copy in the tile
                const bool jok = j < U;
                const u32 bar = full_bar + 8 * b;
                if (is_w) {
                    const int r = q % R;
                    int tile = kept;  // outside the map: zeros
                    if (jok && ((md.umask[j] >> r) & 1u)) tile = static_cast<int>(md.rowoff[r] + md.kidx[r][j]);
                    const u32 dst = WIDE ? ws_base + b * STAGE_W + r * TH * 128
                                         : ws_base + b * STAGE_W + s * SLOT_W + r * TH * 32;
                    tma_load_3d(dst, tmw, sub, 0, tile, bar);
                } else if (contig) {
                    if (s == 0) tma_load_2d(xs_base + b * RG::STAGE_X, tmx_wide, static_cast<int>(md.ucol[j0]) * TW, m0, bar);
                } else {
                    const int k = jok ? static_cast<int>(md.ucol[j]) * TW + sub : K;  // K: zeros
                    tma_load_2d(xs_base + b * RG::STAGE_X + s * RG::SLOT_X, tmx, k, m0, bar);
                }
            }
        }
        return;
    }

    // Consumers: warpgroup wg multiplies tokens wg * BM/2 .. (wg + 1) * BM/2 - 1 (one or two m64
    // blocks) by the stage's 128 features.
    const int wg = warp >> 2;
    float acc[RG::HALVES][NACC];
#pragma unroll
    for (int h = 0; h < RG::HALVES; ++h)
#pragma unroll
        for (int a = 0; a < NACC; ++a) acc[h][a] = 0.f;
    for (int g = 0; g < GL; ++g) {
        const int b = g % STAGES;
        const bool contig = WIDE || stage_contiguous<TW>(md.ucol, U, (gbeg + g) * UPS);
        mbar_wait_suspend(full_bar + 8 * b, (g / STAGES) & 1);
        wgmma_fence();
        const u32 xb = xs_base + b * RG::STAGE_X;
        const u32 wb = ws_base + b * STAGE_W;
#pragma unroll
        for (int h = 0; h < RG::HALVES; ++h) {
            const int row = (wg * RG::HALVES + h) * 64;  // first X row of this m64 block
#pragma unroll
            for (int s = 0; s < SLOTS; ++s) {
                // 128-byte rows: +32 bytes (+2 in the descriptor's address field) per k16 step.
                const u64 da = contig ? desc_sw128(xb + row * 128) + 2 * s : desc_sw32(xb + s * RG::SLOT_X + row * 32);
                const u64 db = WIDE ? desc_sw128(wb) + 2 * s : desc_sw32(wb + s * SLOT_W);
                wgmma_k16<BF16, ETT_BN>(acc[h], da, db);
            }
        }
        wgmma_commit();
        // Keep this stage's products in flight; the previous stage's are done, so its buffer goes
        // back to the producer.
        wgmma_wait<1>();
        if (g > 0 && (tid & 127) == 0) mbar_arrive(empty_bar + 8 * ((g - 1) % STAGES));
    }
    wgmma_wait<0>();

    // Accumulator layout of m64nBNk16: warp (w % 4) of the warpgroup holds rows 16*(w%4) + lane/4
    // (+8), n8 block j in acc[4j .. 4j+3] at columns 8j + 2*(lane%4) (+1).
#pragma unroll
    for (int h = 0; h < RG::HALVES; ++h) {
        const int mrow = m0 + (wg * RG::HALVES + h) * 64 + (warp & 3) * 16 + (lane >> 2);
        if (ws) {
            float* wz = ws + static_cast<size_t>(blockIdx.z) * M * ldy;
#pragma unroll
            for (int j = 0; j < ETT_BN / 8; ++j)
#pragma unroll
                for (int hh = 0; hh < 2; ++hh)
                    store_partial_pair(wz, acc[h][4 * j + hh * 2], acc[h][4 * j + hh * 2 + 1], mrow + hh * 8,
                                       n0 + j * 8 + (lane & 3) * 2, M, N, ldy);
            continue;
        }
#pragma unroll
        for (int j = 0; j < ETT_BN / 8; ++j) {
            const int n = n0 + j * 8 + (lane & 3) * 2;
#pragma unroll
            for (int hh = 0; hh < 2; ++hh)
                store_pair<T>(acc[h][4 * j + hh * 2], acc[h][4 * j + hh * 2 + 1], mrow + hh * 8, n, M, N, bias,
                              residual, gelu, Y, ldy);
        }
    }
}

}  // namespace ett

// 128-token CTAs run two per multiprocessor (3 stages each); 256-token CTAs one (4 stages), reading
// each weight stage once for twice the tokens.
#define ETS_TILE_TMA(NAME, T, BF, TH, TW, BM)                                                        \
    extern "C" __global__ void __launch_bounds__(ETT_THREADS, 256 / BM)                               \
        NAME(const __grid_constant__ ett::TensorMap tmx, const __grid_constant__ ett::TensorMap tmx_wide, \
             const __grid_constant__ ett::TensorMap tmw, const __grid_constant__ ett::TensorMap tmw_rows, \
             int wcnt, int M, int K, const u64* bitmap, const u32* row_offsets, int kept, int N,          \
             int grid_rows, int grid_cols, const float* bias, const T* residual, int gelu, T* Y, int ldy,  \
             float* ws) {                                                                                 \
        ett::body<T, BF, TH, TW, BM>(&tmx, &tmx_wide, &tmw, &tmw_rows, wcnt, M, K, bitmap, row_offsets, kept, N, \
                                     grid_rows, grid_cols, bias, residual, gelu, Y, ldy, ws);         \
    }

#define ETS_TILE_TMA_ALL(TH, TW)                                                        \
    ETS_TILE_TMA(tile_tma_f16_##TH##x##TW##_bm128, __half, false, TH, TW, 128)          \
    ETS_TILE_TMA(tile_tma_bf16_##TH##x##TW##_bm128, __nv_bfloat16, true, TH, TW, 128)   \
    ETS_TILE_TMA(tile_tma_f16_##TH##x##TW##_bm256, __half, false, TH, TW, 256)          \
    ETS_TILE_TMA(tile_tma_bf16_##TH##x##TW##_bm256, __nv_bfloat16, true, TH, TW, 256)

ETS_TILE_TMA_ALL(16, 16)
ETS_TILE_TMA_ALL(32, 32)
ETS_TILE_TMA_ALL(64, 64)
ETS_TILE_TMA_ALL(64, 16)
ETS_TILE_TMA_ALL(128, 16)
