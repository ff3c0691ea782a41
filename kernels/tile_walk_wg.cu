// Row walk with Hopper warpgroup MMA (wgmma, sm_90a) for 64x64 tiles:
// Y[M,N] = act(X[M,K] W^T + bias) + residual.
//
// The same plan as tile_walk.cu (X resident in shared memory, kept tiles walked row by row,
// nothing multiplied for an absent tile), with products issued as m64n64k16 wgmma that read both
// operands from shared memory, so a tile costs the tensor cores' time and not the load/store
// pipe's (which bounds the mma.sync walk):
// - A CTA owns BM = 128 tokens (two warpgroups, 64 tokens each) and a contiguous share of the
//   block rows. X is loaded once, in 64-column phases (cp.async, one mbarrier per phase), into
//   blocks of 128 rows x 128 bytes in the hardware's 128-byte swizzle.
// - The kept tiles of the CTA's block rows are contiguous in the file's values, so the W side is
//   one stream: a ring of 4 tile buffers (8 KiB each, same swizzle) filled by cp.async two tiles
//   ahead, each buffer with its own mbarrier (no cp.async groups, so waiting for a tile never
//   waits for X). For each tile both warpgroups issue 4 wgmma (k16 steps) with the X block of the
//   tile's column and go on without waiting: two tiles' products stay in flight (a buffer is
//   refilled only once the products two tiles back are done), so the tensor cores never drain
//   between tiles. The epilogue runs when a block row's tiles are done.
// Requirements (checked on the host): sm_90, 64x64 tiles, K % 8 == 0, 16-byte aligned X and
// values, 1 KiB + grid_cols * (16 KiB + 8) + 4 * (8 KiB + 8) + 16 bytes of shared memory.

#define EKW_BM 128
#define EKW_THREADS 256
#define EKW_STAGES 4
#define EKW_XBLOCK (EKW_BM * 128)  // one 64-column block of X
#define EKW_TILE (64 * 128)        // one 64x64 tile

namespace ekw {

using namespace ek;

// Rows of 64 halves (128 bytes), 16-byte chunks XOR-swizzled by (row & 7): the layout wgmma's
// 128-byte swizzle mode reads.
__device__ __forceinline__ u32 sw128(int row, int chunk) {
    return static_cast<u32>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// Tile j of the CTA's stream (`tiles` points at its first tile) into ring buffer `dst`.
template <typename T>
__device__ __forceinline__ void load_tile(u32 dst, const T* tiles, int j) {
    const T* src = tiles + static_cast<size_t>(j) * (64 * 64);
#pragma unroll
    for (int i = 0; i < (64 * 8) / EKW_THREADS; ++i) {
        const int ch = threadIdx.x + i * EKW_THREADS, r = ch >> 3, c = ch & 7;
        cp_async16(dst + sw128(r, c), src + r * 64 + c * 8, true);
    }
}

template <typename T, bool BF16>
__device__ void body(const T* __restrict__ X, int M, int K, int ldx, const u64* __restrict__ bitmap,
                     const u32* __restrict__ row_offsets, const T* __restrict__ values, int N, int grid_rows,
                     int grid_cols, const float* __restrict__ bias, const T* __restrict__ residual, int gelu,
                     T* __restrict__ Y, int ldy) {
#if !ETW_WGMMA
    __trap();
#endif
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // The swizzle is applied to absolute shared addresses: align the X blocks and the ring to 1 KiB.
    const u32 raw = smem_addr(smem_raw);
    const u32 xs = (raw + 1023u) & ~1023u;
    const u32 ring = xs + static_cast<u32>(grid_cols) * EKW_XBLOCK;
    const u32 full = ring + EKW_STAGES * EKW_TILE;  // one barrier per ring buffer
    const u32 bars = full + EKW_STAGES * 8;          // one per X phase

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const int m0 = blockIdx.y * EKW_BM;
    const int br_beg = static_cast<int>((static_cast<long long>(grid_rows) * blockIdx.x) / gridDim.x);
    const int br_end = static_cast<int>((static_cast<long long>(grid_rows) * (blockIdx.x + 1)) / gridDim.x);

    if (tid == 0) {
        for (int s = 0; s < EKW_STAGES; ++s) mbar_init(full + s * 8, EKW_THREADS);
        for (int p = 0; p < grid_cols; ++p) mbar_init(bars + p * 8, EKW_THREADS);
    }
    __syncthreads();

    // The W stream: the CTA's kept tiles, contiguous in the values. Its first tiles go first.
    const T* tiles = values + static_cast<size_t>(row_offsets[br_beg]) * (64 * 64);
    const int ntiles = static_cast<int>(row_offsets[br_end] - row_offsets[br_beg]);
#pragma unroll
    for (int s = 0; s < 2; ++s) {
        if (s < ntiles) {
            load_tile<T>(ring + s * EKW_TILE, tiles, s);
            cp_async_arrive(full + s * 8);
        }
    }

    // X, one 64-column block per phase; rows past M and columns past K are zero-filled.
    for (int p = 0; p < grid_cols; ++p) {
#pragma unroll
        for (int i = 0; i < (EKW_BM * 8) / EKW_THREADS; ++i) {
            const int ch = tid + i * EKW_THREADS, r = ch >> 3, c = ch & 7;
            const int col = p * 64 + c * 8;
            const bool ok = m0 + r < M && col < K;
            cp_async16(xs + p * EKW_XBLOCK + sw128(r, c), ok ? X + static_cast<size_t>(m0 + r) * ldx + col : X, ok);
        }
        cp_async_arrive(bars + p * 8);
    }

    float acc[32];
    int j = 0;      // tile index in the stream
    int ready = 0;  // X phases this thread has seen land
    for (int br = br_beg; br < br_end; ++br) {
#pragma unroll
        for (int a = 0; a < 32; ++a) acc[a] = 0.f;
        RowBits it;
        it.init(bitmap, br, grid_cols);
        for (int bc = it.next(); bc >= 0; bc = it.next(), ++j) {
            // Products of tile j-2 are done in this warpgroup (only j-1's may still run); after
            // the barrier in both, so tile j-2's buffer takes tile j+2. Then wait for tile j's copies
            // (use j / STAGES of its buffer).
            wgmma_wait<1>();
            __syncthreads();
            if (j + 2 < ntiles) {
                const int s = (j + 2) % EKW_STAGES;
                load_tile<T>(ring + s * EKW_TILE, tiles, j + 2);
                cp_async_arrive(full + s * 8);
            }
            mbar_wait(full + (j % EKW_STAGES) * 8, static_cast<u32>((j / EKW_STAGES) & 1));
            fence_async_smem();
            // X block bc: wait for the phases up to it (once per CTA: they land in order), then
            // order those copies before the async proxy.
            if (ready <= bc) {
                while (ready <= bc) mbar_wait0(bars + 8 * ready++);
                fence_async_smem();
            }
            const u64 da = desc_sw128(xs + bc * EKW_XBLOCK + wg * 64 * 128);
            const u64 db = desc_sw128(ring + (j % EKW_STAGES) * EKW_TILE);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) wgmma_k16<BF16, 64>(acc, da + 2 * kk, db + 2 * kk);
            wgmma_commit();
        }
        wgmma_wait0();
        // m64n64 accumulators: warp (w % 4) holds rows 16*(w%4) + lane/4 (+8); n8 block jj in
        // acc[4jj .. 4jj+3] at columns 8jj + 2*(lane%4) (+1).
        const int m = m0 + wg * 64 + (warp & 3) * 16 + (lane >> 2);
        const int n = br * 64 + (lane & 3) * 2;
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) {
            store_pair<T>(acc[4 * jj], acc[4 * jj + 1], m, n + 8 * jj, M, N, bias, residual, gelu, Y, ldy);
            store_pair<T>(acc[4 * jj + 2], acc[4 * jj + 3], m + 8, n + 8 * jj, M, N, bias, residual, gelu, Y, ldy);
        }
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

}  // namespace ekw

#define ETS_TILE_WALK_WG(NAME, T, BF)                                                                    \
    extern "C" __global__ void __launch_bounds__(EKW_THREADS, 1)                                         \
        NAME(const T* X, int M, int K, int ldx, const u64* bitmap, const u32* row_offsets, const T* values, \
             int N, int grid_rows, int grid_cols, const float* bias, const T* residual, int gelu, T* Y,     \
             int ldy) {                                                                                  \
        ekw::body<T, BF>(X, M, K, ldx, bitmap, row_offsets, values, N, grid_rows, grid_cols, bias, residual, \
                         gelu, Y, ldy);                                                                  \
    }

ETS_TILE_WALK_WG(tile_walkwg_f16_64x64, __half, false)
ETS_TILE_WALK_WG(tile_walkwg_bf16_64x64, __nv_bfloat16, true)
