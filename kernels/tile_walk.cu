// Tile-sparse GEMM that walks each block row's kept tiles: Y[M,N] = act(X[M,K] W^T + bias) + residual.
//
// Why a second design: the union kernels (tile_gemm.cu, tile_wgmma.cu) multiply a whole group of
// block rows over the union of their tile columns, so with scattered masks they do nearly dense
// work. Here nothing absent is ever multiplied:
// - A CTA owns BM tokens and keeps all of their K columns resident in shared memory ("X
//   stationary"), loaded once in 64-column phases (cp.async, one mbarrier per phase, so the walk
//   starts as soon as its first columns arrive).
// - Each warp takes work units (one block row's 16-feature slice) from a shared counter and walks
//   that block row's kept tiles in bitmap order: the W fragments come straight from the file's
//   tile values in global memory (32-bit loads, one step ahead), the X fragments from shared
//   memory (ldmatrix), products with mma.sync m16n8k16 and fp32 accumulation.
// - The epilogue (bias, GELU, residual) is applied when a unit is done, so every output is written
//   exactly once and no workspace is needed.
// Because X is never re-read per group of features, L2 traffic is the kept tiles once per token
// block plus X once per feature part: it falls with the density.
// Requirements (checked on the host): K % 8 == 0, ldx % 8 == 0, 16-byte aligned X, 4-byte aligned
// tile values, BM * 2 * grid_cols * TW + 8 * (phases) + 16 bytes of shared memory
// (runtime::cuda::walk::walk_smem_bytes).
#define ETK_THREADS 512
#define ETK_PHASE_COLS 64

namespace etk {

using namespace ek;

// Steps through the kept tiles of one block row in bitmap order, TW/16 k16 steps per tile, and
// yields for each step its 16-column block of X and the address of its W rows. 32-bit tile
// indices (a grid never holds 2^32 tiles) keep the per-step work to a few instructions.
template <int TH, int TW>
struct Walker {
    RowBits row;
    int q;                     // k16 step inside the current tile
    int kb;                    // 16-column block of X of the current step
    const unsigned short* wp;  // W values of the current step (tile start + 16 q)

    __device__ __forceinline__ void init(const u64* bm, int br, int grid_cols, const unsigned short* wrow) {
        row.init(bm, br, grid_cols);
        q = TW / 16 - 1;
        wp = wrow - TH * TW + 16 * (TW / 16 - 1);  // as if at the last step of tile -1
    }

    // Advances to the next k16 step; false when the row is exhausted.
    __device__ __forceinline__ bool next() {
        if (TW > 16 && q + 1 < TW / 16) {
            ++q;
            ++kb;
            wp += 16;
            return true;
        }
        // RowBits::next inlined by hand: a -1 sentinel here made the compiler keep more registers.
        while (row.bits == 0) {
            if (row.word == row.last_word) return false;
            ++row.word;
            row.load_word();
        }
        const u32 b = static_cast<u32>(__ffsll(static_cast<long long>(row.bits))) - 1u;
        row.bits &= row.bits - 1;
        kb = static_cast<int>(row.word * 64u + b - row.t0) * (TW / 16);
        wp += TH * TW - 16 * q;
        q = 0;
        return true;
    }
};

// The W fragments of one k16 step: features (sub-row start + h*8 + lane/4), k pairs 2*(lane%4)
// and +8; `p` already includes the lane's offset.
template <int TW>
__device__ __forceinline__ void load_w(u32 (&b)[4], const unsigned short* p) {
    b[0] = __ldg(reinterpret_cast<const u32*>(p));
    b[1] = __ldg(reinterpret_cast<const u32*>(p + 8));
    b[2] = __ldg(reinterpret_cast<const u32*>(p + 8 * TW));
    b[3] = __ldg(reinterpret_cast<const u32*>(p + 8 * TW + 8));
}

// The epilogue of token tile MI and the following ones, unrolled by recursion so that every
// accumulator index is a compile-time constant (a loop here left the array in local memory).
template <int MI, int MT>
struct EpilogueRows {
    template <typename T>
    static __device__ __forceinline__ void run(const float (&acc)[MT][2][4], int m, int n, int M, int N,
                                               const float* bias, const T* residual, int gelu, T* Y, int ldy) {
        const int mm = m + MI * 16;
        store_pair<T>(acc[MI][0][0], acc[MI][0][1], mm, n, M, N, bias, residual, gelu, Y, ldy);
        store_pair<T>(acc[MI][0][2], acc[MI][0][3], mm + 8, n, M, N, bias, residual, gelu, Y, ldy);
        store_pair<T>(acc[MI][1][0], acc[MI][1][1], mm, n + 8, M, N, bias, residual, gelu, Y, ldy);
        store_pair<T>(acc[MI][1][2], acc[MI][1][3], mm + 8, n + 8, M, N, bias, residual, gelu, Y, ldy);
        EpilogueRows<MI + 1, MT>::template run<T>(acc, m, n, M, N, bias, residual, gelu, Y, ldy);
    }
};
template <int MT>
struct EpilogueRows<MT, MT> {
    template <typename T>
    static __device__ __forceinline__ void run(const float (&)[MT][2][4], int, int, int, int, const float*, const T*,
                                               int, T*, int) {}
};

// X sits in shared memory as 16-column blocks of BM rows x 32 bytes, so a step's fragments are
// at fixed offsets from one base. The two 16-byte halves of a row swap on rows with bit 2 set:
// the 8 rows an ldmatrix reads then cover all 32 banks.
template <int BM>
__device__ __forceinline__ u32 x_offset(int row, int chunk8) {
    return static_cast<u32>((chunk8 >> 1) * (BM * 32) + row * 32 + (((chunk8 & 1) ^ ((row >> 2) & 1)) << 4));
}

// One k16 step on X block `kb`: wait until its load phase (4 blocks) has landed, then MT x 2
// products. The fragments are all loaded before the products so their latencies overlap.
template <bool BF16, int MT, int BM>
__device__ __forceinline__ void walk_step(float (&acc)[MT][2][4], u32 a_lane, u32 bars, int& ready, int kb,
                                          const u32 (&b)[4]) {
    const int p = kb >> 2;
    while (ready <= p) {
        mbar_wait0(bars + ready * 8);
        ++ready;
    }
    const u32 base = a_lane + static_cast<u32>(kb) * (BM * 32);
    u32 a[MT][4];
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) ldmatrix_x4(base + mi * 512, a[mi]);
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
        mma16816<BF16>(acc[mi][0], a[mi], b[0], b[1]);
        mma16816<BF16>(acc[mi][1], a[mi], b[2], b[3]);
    }
}

template <typename T, bool BF16, int TH, int TW, int BM>
__device__ void tile_walk_body(const T* __restrict__ X, int M, int K, int ldx, const u64* __restrict__ bitmap,
                               const u32* __restrict__ row_offsets, const T* __restrict__ values, int N,
                               int grid_rows, int grid_cols, const float* __restrict__ bias,
                               const T* __restrict__ residual, int gelu, T* __restrict__ Y, int ldy) {
    constexpr int MT = BM / 16;   // m16 token tiles per unit
    constexpr int SUB = TH / 16;  // 16-feature units per block row
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31;
    const int kt = grid_cols * TW;                // padded K: every tile column is resident
    const int phases = (kt + ETK_PHASE_COLS - 1) / ETK_PHASE_COLS;
    const u32 xs = smem_addr(smem);
    const u32 bars = xs + static_cast<u32>(BM * kt * 2);
    int* counter = reinterpret_cast<int*>(smem + BM * kt * 2 + phases * 8);

    const int m0 = blockIdx.y * BM;
    const int br_beg = static_cast<int>((static_cast<long long>(grid_rows) * blockIdx.x) / gridDim.x);
    const int br_end = static_cast<int>((static_cast<long long>(grid_rows) * (blockIdx.x + 1)) / gridDim.x);

    if (tid == 0) {
        for (int p = 0; p < phases; ++p) mbar_init(bars + p * 8, ETK_THREADS);
        *counter = 0;
    }
    __syncthreads();

    // Issue every X load now, phase by phase; columns past K (tile padding) and rows past M are
    // zero-filled so that padded tiles multiply zeros, never stale shared memory.
    for (int p = 0; p < phases; ++p) {
        const int c_beg = p * (ETK_PHASE_COLS / 8), c_end = min(kt / 8, c_beg + ETK_PHASE_COLS / 8);
        const int per_row = c_end - c_beg;
        for (int i = tid; i < BM * per_row; i += ETK_THREADS) {
            const int r = i / per_row, c = c_beg + i % per_row;
            const bool ok = m0 + r < M && c * 8 < K;
            const T* src = ok ? X + static_cast<size_t>(m0 + r) * ldx + c * 8 : X;
            cp_async16(xs + x_offset<BM>(r, c), src, ok);
        }
        cp_async_arrive(bars + p * 8);
    }

    const int units = (br_end - br_beg) * SUB;
    int ready = 0;  // phases this warp has seen complete (the walk only moves right)
    const u32 a_lane = xs + x_offset<BM>(lane & 15, lane >> 4);
    // Lane offset of the W fragments inside a step's 16 x 16 block (row lane/4, column 2*(lane%4)).
    const unsigned short* vals = reinterpret_cast<const unsigned short*>(values) + (lane >> 2) * TW + (lane & 3) * 2;

    float acc[MT][2][4];
    for (;;) {
        int u = 0;
        if (lane == 0) u = atomicAdd(counter, 1);
        u = __shfl_sync(0xffffffffu, u, 0);
        if (u >= units) break;
        const int br = br_beg + u / SUB, sub = u % SUB;
        const size_t row_base = static_cast<size_t>(row_offsets[br]);
        const unsigned short* wrow = vals + row_base * (TH * TW) + sub * 16 * TW;

#pragma unroll
        for (int a = 0; a < MT; ++a)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[a][h][c] = 0.f;

        Walker<TH, TW> it;
        it.init(bitmap, br, grid_cols, wrow);

        // Two fragment buffers in turn: the loads of the next step are in flight while the
        // products of the current one issue.
        u32 fa[4], fb[4];
        if (it.next()) {
            int kba = it.kb;
            load_w<TW>(fa, it.wp);
            for (;;) {
                const bool more_b = it.next();
                const int kbb = it.kb;
                if (more_b) load_w<TW>(fb, it.wp);
                walk_step<BF16, MT, BM>(acc, a_lane, bars, ready, kba, fa);
                if (!more_b) break;
                const bool more_a = it.next();
                kba = it.kb;
                if (more_a) load_w<TW>(fa, it.wp);
                walk_step<BF16, MT, BM>(acc, a_lane, bars, ready, kbb, fb);
                if (!more_a) break;
            }
        }

        // Epilogue: token rows mi*16 + lane/4 (+8), features sub-row + h*8 + 2*(lane%4) (+1).
        const int nb = br * TH + sub * 16 + (lane & 3) * 2;
        EpilogueRows<0, MT>::template run<T>(acc, m0 + (lane >> 2), nb, M, N, bias, residual, gelu, Y, ldy);
    }
    // No thread leaves with its copies still landing in shared memory.
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

}  // namespace etk

#define ETS_TILE_WALK(NAME, T, BF, TH, TW, BM)                                                          \
    extern "C" __global__ void __launch_bounds__(ETK_THREADS, 1)                                        \
        NAME(const T* X, int M, int K, int ldx, const u64* bitmap, const u32* row_offsets, const T* values, \
             int N, int grid_rows, int grid_cols, const float* bias, const T* residual, int gelu, T* Y,     \
             int ldy) {                                                                                 \
        etk::tile_walk_body<T, BF, TH, TW, BM>(X, M, K, ldx, bitmap, row_offsets, values, N, grid_rows,  \
                                               grid_cols, bias, residual, gelu, Y, ldy);                \
    }

#define ETS_TILE_WALK_BMS(T, E, BF, TH, TW)                                 \
    ETS_TILE_WALK(tile_walk_##E##_##TH##x##TW##_bm128, T, BF, TH, TW, 128) \
    ETS_TILE_WALK(tile_walk_##E##_##TH##x##TW##_bm64, T, BF, TH, TW, 64)   \
    ETS_TILE_WALK(tile_walk_##E##_##TH##x##TW##_bm32, T, BF, TH, TW, 32)

ETS_TILE_WALK_BMS(__half, f16, false, 16, 16)
ETS_TILE_WALK_BMS(__half, f16, false, 32, 32)
ETS_TILE_WALK_BMS(__half, f16, false, 64, 64)
ETS_TILE_WALK_BMS(__half, f16, false, 64, 16)
ETS_TILE_WALK_BMS(__half, f16, false, 128, 16)
ETS_TILE_WALK_BMS(__nv_bfloat16, bf16, true, 16, 16)
ETS_TILE_WALK_BMS(__nv_bfloat16, bf16, true, 32, 32)
ETS_TILE_WALK_BMS(__nv_bfloat16, bf16, true, 64, 64)
ETS_TILE_WALK_BMS(__nv_bfloat16, bf16, true, 64, 16)
ETS_TILE_WALK_BMS(__nv_bfloat16, bf16, true, 128, 16)
