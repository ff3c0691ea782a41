// Shared by the tile kernels. Not compiled on its own: the runtime's loader prepends this file to
// tile_gemm.cu, tile_wgmma.cu, tile_tma.cu, tile_rs.cu, tile_walk.cu and tile_walk_wg.cu before NVRTC compiles them (the
// sources are embedded in the binary, so there is no include path to resolve at run time).
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef unsigned int u32;
typedef unsigned long long u64;

namespace ek {

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    int n = valid ? 16 : 0;  // src-size 0 zero-fills the 16 bytes
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32 (&r)[4]) { ldmatrix_x4(addr, r[0], r[1], r[2], r[3]); }

// The transposed load: thread t receives the matrix elements stmatrix .trans would take from it.
__device__ __forceinline__ void ldmatrix_x4_trans(u32 addr, u32 (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// D += A * B on tensor cores, m16n8k16, fp32 accumulation; B given as its two registers.
template <bool BF16>
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
    if (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float* c, const u32* a, const u32* b) {
    mma16816<BF16>(c, a, b[0], b[1]);
}

template <typename T>
struct Conv;
template <>
struct Conv<__half> {
    static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
};
template <>
struct Conv<__nv_bfloat16> {
    static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
union Pair {
    T v[2];
    u32 u;
    __device__ Pair() {}
};

// Not inlined: epilogues are unrolled many times per thread and erff is long.
__device__ __noinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// Applies the epilogue (bias, GELU, residual) to outputs (m, n) and (m, n + 1) and stores them,
// as one 32-bit store when both exist and the row pitch keeps them aligned.
template <typename T>
__device__ __forceinline__ void store_pair(float v0, float v1, int m, int n, int M, int N, const float* bias,
                                           const T* residual, int gelu, T* Y, int ldy) {
    if (m >= M || n >= N) return;
    const bool two = n + 1 < N;
    const size_t at = static_cast<size_t>(m) * ldy + n;
    if (bias) {
        v0 += bias[n];
        if (two) v1 += bias[n + 1];
    }
    if (gelu) {
        v0 = gelu_erf(v0);
        if (two) v1 = gelu_erf(v1);
    }
    if (residual) {
        v0 += Conv<T>::to_f(residual[at]);
        if (two) v1 += Conv<T>::to_f(residual[at + 1]);
    }
    if (two && (ldy & 1) == 0) {
        Pair<T> pr;
        pr.v[0] = Conv<T>::from_f(v0);
        pr.v[1] = Conv<T>::from_f(v1);
        *reinterpret_cast<u32*>(Y + at) = pr.u;
    } else {
        Y[at] = Conv<T>::from_f(v0);
        if (two) Y[at + 1] = Conv<T>::from_f(v1);
    }
}

// Split K: stores the partial sums of outputs (m, n) and (m, n + 1) into this split's f32 slice
// (plain stores, no atomics: the finishing kernel adds the slices), as one 8-byte store when both
// exist and the row pitch keeps them aligned.
__device__ __forceinline__ void store_partial_pair(float* wz, float v0, float v1, int m, int n, int M, int N, int ldy) {
    if (m >= M || n >= N) return;
    float* dst = wz + static_cast<size_t>(m) * ldy + n;
    if (n + 1 < N && (ldy & 1) == 0) {
        *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
    } else {
        dst[0] = v0;
        if (n + 1 < N) dst[1] = v1;
    }
}

// mbarrier phases signalled by cp.async completion (sm_80 and later).
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}

// The barrier's pending count drops by one when all of this thread's earlier cp.async are done.
__device__ __forceinline__ void cp_async_arrive(u32 bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];\n" ::"r"(bar) : "memory");
}

// True once the phase of parity `parity` of the barrier at `bar` has completed.
__device__ __forceinline__ bool mbar_done(u32 bar, u32 parity) {
    u32 ok;
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.test_wait.parity.shared.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
    return ok != 0;
}

// Waits for the phase of parity `parity`. A phase that never completes is a bug: trap (the launch
// fails with an error) rather than hang the device.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    for (u32 spins = 0; !mbar_done(bar, parity); ++spins) {
        if (spins > (1u << 28)) __trap();
    }
}

__device__ __forceinline__ void mbar_wait0(u32 bar) { mbar_wait(bar, 0); }

// Tile columns of one block row's kept tiles, in bitmap order (32-bit tile indices: a grid never
// holds 2^32 tiles).
struct RowBits {
    const u64* bitmap;
    u32 word, last_word, t0, t_end;
    u64 bits;

    __device__ __forceinline__ void load_word() {
        u64 w = bitmap[word];
        const u32 lo = word * 64u;
        if (t0 > lo) w &= ~0ull << (t0 - lo);
        if (t_end - lo < 64u) w &= (1ull << (t_end - lo)) - 1ull;
        bits = w;
    }
    __device__ __forceinline__ void init(const u64* bm, int br, int grid_cols) {
        bitmap = bm;
        t0 = static_cast<u32>(br) * static_cast<u32>(grid_cols);
        t_end = t0 + static_cast<u32>(grid_cols);
        word = t0 >> 6;
        last_word = (t_end - 1u) >> 6;
        load_word();
    }
    // The next kept tile's column, or -1.
    __device__ __forceinline__ int next() {
        while (bits == 0) {
            if (word == last_word) return -1;
            ++word;
            load_word();
        }
        const u32 b = static_cast<u32>(__ffsll(static_cast<long long>(bits))) - 1u;
        bits &= bits - 1;
        return static_cast<int>(word * 64u + b - t0);
    }
};

}  // namespace ek

