// Tensor Memory Accelerator (TMA), bulk-copy and mbarrier helpers shared by the TMA-fed kernels (tile_tma.cu,
// tile_rs.cu); the loader prepends this file (after common.cuh, union.cuh and wgmma.cuh) to them.
// TMA copies and mbarrier transaction counts exist from sm_90 on; built for another target the
// helpers compile to nothing (the kernels trap there, see wgmma.cuh).

namespace ek {

// The driver's CUtensorMap: 128 opaque bytes, 64-byte aligned, passed by value as __grid_constant__.
struct __align__(64) TensorMap {
    u64 opaque[16];
};

__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
#if ETW_WGMMA
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}

__device__ __forceinline__ void mbar_arrive(u32 bar) {
#if ETW_WGMMA
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}

// Makes the barriers' initialisation visible to the async proxy (TMA) before first use.
__device__ __forceinline__ void fence_barrier_init() {
#if ETW_WGMMA
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// Fetches a tensor map into the descriptor cache ahead of its first copy.
__device__ __forceinline__ void tma_prefetch(const TensorMap* map) {
#if ETW_WGMMA
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<u64>(map)) : "memory");
#endif
}

__device__ __forceinline__ void tma_load_2d(u32 dst, const TensorMap* map, int c0, int c1, u32 bar) {
#if ETW_WGMMA
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
        "[%4];\n" ::"r"(dst),
        "l"(reinterpret_cast<u64>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
#endif
}

// An L2 policy for copies whose data L2 need not keep: their lines are the first evicted.
__device__ __forceinline__ u64 l2_evict_first_policy() {
    u64 p = 0;
#if ETW_WGMMA
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
#endif
    return p;
}

// tma_load_2d with an L2 policy (l2_evict_first_policy).
__device__ __forceinline__ void tma_load_2d_hint(u32 dst, const TensorMap* map, int c0, int c1, u32 bar, u64 policy) {
#if ETW_WGMMA
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, "
        "{%2, %3}], [%4], %5;\n" ::"r"(dst),
        "l"(reinterpret_cast<u64>(map)), "r"(c0), "r"(c1), "r"(bar), "l"(policy)
        : "memory");
#endif
}

__device__ __forceinline__ void tma_load_3d(u32 dst, const TensorMap* map, int c0, int c1, int c2, u32 bar) {
#if ETW_WGMMA
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
        "%4}], [%5];\n" ::"r"(dst),
        "l"(reinterpret_cast<u64>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
        : "memory");
#endif
}

__device__ __forceinline__ void tma_load_4d(u32 dst, const TensorMap* map, int c0, int c1, int c2, int c3, u32 bar) {
#if ETW_WGMMA
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
        "%4, %5}], [%6];\n" ::"r"(dst),
        "l"(reinterpret_cast<u64>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
        : "memory");
#endif
}

// A bulk copy of `bytes` contiguous bytes (no tensor map) into shared memory, counted by `bar`.
__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
#if ETW_WGMMA
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
#endif
}

// TMA store of a shared-memory box to global memory, and the waits on this thread's stores.
__device__ __forceinline__ void tma_store_2d(const TensorMap* map, int c0, int c1, u32 src) {
#if ETW_WGMMA
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(
                     reinterpret_cast<u64>(map)),
                 "r"(c0), "r"(c1), "r"(src)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// The shared memory of this thread's earlier stores has been read (it may be written again).
__device__ __forceinline__ void tma_store_wait_read() {
#if ETW_WGMMA
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
#endif
}
// This thread's earlier stores are complete.
__device__ __forceinline__ void tma_store_wait_all() {
#if ETW_WGMMA
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

__device__ __forceinline__ u64 global_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

// Waits for the phase of parity `parity`: try_wait lets the hardware suspend the thread for a while
// instead of spinning on issue slots the producer needs. A phase still open after two seconds is
// a bug: trap (the launch fails with an error) rather than hang the device.
__device__ __forceinline__ void mbar_wait_suspend(u32 bar, u32 parity) {
#if ETW_WGMMA
    u64 start = 0;
    for (u32 spins = 0;; ++spins) {
        u32 ok;
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(ok)
            : "r"(bar), "r"(parity)
            : "memory");
        if (ok) return;
        if ((spins & 255u) == 0) {
            const u64 now = global_ns();
            if (start == 0) start = now;
            else if (now - start > 2000000000ull) __trap();
        }
    }
#endif
}

// Shared-memory matrix descriptor: K-major, 32-byte swizzle (rows of 16 halves), 8-row groups
// 256 bytes apart.
__device__ __forceinline__ u64 desc_sw32(u32 addr) {
    u64 d = static_cast<u64>((addr & 0x3FFFF) >> 4);
    d |= static_cast<u64>(1) << 16;         // leading byte offset (unused for swizzled K-major)
    d |= static_cast<u64>(256 >> 4) << 32;  // stride byte offset
    d |= static_cast<u64>(3) << 62;         // 32-byte swizzle
    return d;
}

constexpr int SLOTS = 4;  // 16-column slices per 64-column stage

// Whether stage g's union columns are 64 contiguous columns of X: then X comes in one 64-column
// box with the 128-byte swizzle (128-byte rows: a quarter of the copies of four 16-column slices).
template <int TW>
__device__ __forceinline__ bool stage_contiguous(const unsigned short* ucol, int U, int j0) {
    constexpr int UPS = 64 / TW;
    if (UPS == 1) return j0 < U;
    return j0 + UPS - 1 < U && ucol[j0 + UPS - 1] == ucol[j0] + UPS - 1;
}

// One copy per stage for the weights. When every block row of a weight keeps `wcnt` tiles, block
// row br starts at tile br * wcnt, and a tensor map with that row pitch copies a stage of all of a
// group's rows in one box, wherever the rows keep the stage's tiles at the same place: one copy
// per stage instead of one per block row (or tile), which is what bounds 16-column tiles.
// Whether the group's rows from br0 start where that map puts them (host: wcnt = 0 when the kept
// count is not a multiple of the block rows).
template <int R>
__device__ __forceinline__ bool rows_uniform(const UnionMeta<R>& md, int br0, int grid_rows, int wcnt) {
    if (wcnt <= 0) return false;
    bool ok = true;
#pragma unroll
    for (int r = 0; r < R; ++r)
        if (br0 + r < grid_rows && md.rowoff[r] != static_cast<u32>(br0 + r) * static_cast<u32>(wcnt)) ok = false;
    return ok;
}

// Whether every row of the group (that exists) keeps all UPS union columns from j0 (a stage's) at
// the same index in its row (density 1, or masks that keep the same columns in a group): then the
// stage is the box at (that index, br0). Rows past the matrix come from the box as zeros.
template <int R, int UPS = SLOTS>
__device__ __forceinline__ bool stage_boxed(const UnionMeta<R>& md, int br0, int grid_rows, int U, int j0) {
    if (j0 + UPS > U) return false;
    const int live_rows = grid_rows - br0 < R ? grid_rows - br0 : R;
    const u32 live = (1u << live_rows) - 1u;
    bool ok = true;
#pragma unroll
    for (int s = 0; s < UPS; ++s)
        if ((md.umask[j0 + s] & live) != live) ok = false;
#pragma unroll
    for (int r = 1; r < R; ++r)
        if (r < live_rows && md.kidx[r][j0] != md.kidx[0][j0]) ok = false;
    return ok;
}

}  // namespace ek
