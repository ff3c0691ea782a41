// The union of non-empty tile columns of a group of R block rows, shared by the union kernels
// (tile_gemm.cu, tile_wgmma.cu, tile_tma.cu, tile_rs.cu); the loader prepends this file (after
// common.cuh) to them.
#define ETS_MAX_GRID_COLS 512

namespace ek {

// Shared-memory lists of one CTA's group of R block rows.
template <int R_>
struct UnionMeta {
    static constexpr int R = R_;  // block rows per CTA group
    unsigned char fullmask[ETS_MAX_GRID_COLS];
    unsigned short jpos[ETS_MAX_GRID_COLS];
    unsigned short ucol[ETS_MAX_GRID_COLS];
    unsigned char umask[ETS_MAX_GRID_COLS];
    unsigned short kidx[R][ETS_MAX_GRID_COLS];
    u32 rowoff[R];
    int U;
};

// Waits for the THREADS threads that build a union list: the whole CTA, or one warp.
template <int THREADS>
__device__ __forceinline__ void union_sync() {
    if (THREADS == 32) __syncwarp();
    else __syncthreads();
}

// Builds the union list of non-empty tile columns for the group of block rows from br0, and for
// every (row, union column) the kept-tile index relative to the row's start. Run by THREADS
// threads (the CTA or one warp), tid = 0 .. THREADS - 1.
template <int R, int THREADS>
__device__ void build_union(UnionMeta<R>& md, const u64* bitmap, const u32* row_offsets, int grid_rows,
                            int grid_cols, int br0, int tid) {
    const int lane = tid & 31, warp = tid >> 5;
    for (int bc = tid; bc < grid_cols; bc += THREADS) {
        u32 m = 0;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            int br = br0 + r;
            if (br < grid_rows) {
                u64 t = static_cast<u64>(br) * grid_cols + bc;
                if ((bitmap[t >> 6] >> (t & 63)) & 1ull) m |= 1u << r;
            }
        }
        md.fullmask[bc] = static_cast<unsigned char>(m);
    }
    if (tid < R) md.rowoff[tid] = (br0 + tid < grid_rows) ? row_offsets[br0 + tid] : 0u;
    union_sync<THREADS>();
    const u32 lt = (1u << lane) - 1u;
    if (warp == 0) {
        int base = 0;
        for (int c0 = 0; c0 < grid_cols; c0 += 32) {
            int bc = c0 + lane;
            u32 m = bc < grid_cols ? md.fullmask[bc] : 0u;
            u32 bal = __ballot_sync(0xffffffffu, m != 0);
            int pos = base + __popc(bal & lt);
            if (m) {
                md.ucol[pos] = static_cast<unsigned short>(bc);
                md.umask[pos] = static_cast<unsigned char>(m);
                md.jpos[bc] = static_cast<unsigned short>(pos);
            }
            base += __popc(bal);
        }
        if (lane == 0) md.U = base;
    }
    union_sync<THREADS>();
    for (int r = warp; r < R; r += THREADS / 32) {
        int base = 0;
        for (int c0 = 0; c0 < grid_cols; c0 += 32) {
            int bc = c0 + lane;
            bool bit = bc < grid_cols && ((md.fullmask[bc] >> r) & 1u);
            u32 bal = __ballot_sync(0xffffffffu, bit);
            if (bit) md.kidx[r][md.jpos[bc]] = static_cast<unsigned short>(base + __popc(bal & lt));
            base += __popc(bal);
        }
    }
    union_sync<THREADS>();
}

}  // namespace ek
