// Tile-sparse GEMM with the weights as register operands of the warpgroup MMA (sm_90a), for tiles
// 16 columns wide (16x16, 64x16, 128x16): Y[M,N] = act(X[M,K] W^T + bias) + residual.
//
// The roles of tile_tma.cu are swapped: the CTA computes Y^T for 128 output features x BT = 256 tokens,
// the features on the MMA's M side and the tokens on its N side. So the weights never need a
// shared-memory layout the MMA reads: each warp loads its 16 features' tile of a 16-column slice
// from the tile as it lies in the file (16 rows of 32 bytes) with ldmatrix into an A fragment, and
// X, the B operand, is copied by TMA in 128-byte rows (128-byte swizzle) whenever a stage's union
// columns are contiguous (16-column boxes with the 32-byte swizzle otherwise).
// - Producer (warp 8): per stage, one bulk copy (cp.async.bulk, no tensor map) per block row when it
//   keeps all four of the stage's tiles (they are consecutive in the file), else one per kept tile;
//   absent tiles are not copied at all. The stage's byte count is summed over the warp first.
// - Consumers (warps 0-7): warpgroup c owns features 64c .. 64c+63 of the group, warp w of it 16 of
//   them; an absent tile is a zero fragment. wgmma m64nBTk16 with A from registers, B from shared
//   memory; the stage is released once its products are done (the A registers are read
//   asynchronously, so the next stage's fragments wait for that anyway).
// - Epilogue: bias and GELU in f32 registers, rounded to the output type, transposed through shared
//   memory with stmatrix (.trans), then each row of 64 features of a token written with 16-byte
//   stores; the residual is added there (to the rounded value: one extra rounding, within a half
//   unit of the last place of the output type).
// Requirements (checked on the host): K % 8 == 0; X 16-byte aligned; tile width 16.
#define ETR_BN 128
#define ETR_THREADS 288  // two consumer warpgroups and one producer warp

namespace etr {

using namespace ek;

__device__ __forceinline__ void bulk_copy(u32 dst, const void* src, u32 bytes, u32 bar) {
#if ETW_WGMMA
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
#endif
}

__device__ __forceinline__ void stmatrix_x4_trans(u32 addr, u32 r0, u32 r1, u32 r2, u32 r3) {
#if ETW_WGMMA
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
#endif
}

template <typename T>
__device__ __forceinline__ u32 pack2(float a, float b) {
    Pair<T> p;
    p.v[0] = Conv<T>::from_f(a);
    p.v[1] = Conv<T>::from_f(b);
    return p.u;
}

// Barrier among COUNT threads on hardware barrier ID (0 is __syncthreads).
template <int ID, int COUNT>
__device__ __forceinline__ void named_barrier() {
    asm volatile("bar.sync %0, %1;\n" ::"n"(ID), "n"(COUNT) : "memory");
}

// out = round(a + r) for the two values packed in each 32-bit word of a and r.
template <typename T>
__device__ __forceinline__ u32 add_pair(u32 a, u32 r) {
    Pair<T> pa, pr;
    pa.u = a;
    pr.u = r;
    return pack2<T>(Conv<T>::to_f(pa.v[0]) + Conv<T>::to_f(pr.v[0]), Conv<T>::to_f(pa.v[1]) + Conv<T>::to_f(pr.v[1]));
}

// Shared memory of the transposed output: BT token rows of 64 features (128 bytes), the eight
// 16-byte chunks of a row XOR-swizzled by (row & 7) so that stmatrix's eight rows hit distinct banks.
__device__ __forceinline__ u32 out_chunk(u32 base, int row, int chunk) {
    return base + static_cast<u32>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

template <int BT>
struct Ring {
    static constexpr int STAGES = 4;
    static constexpr u32 SLOT_X = BT * 32;           // one 16-column X slice
    static constexpr u32 STAGE_X = SLOTS * SLOT_X;  // = BT rows x 128 bytes
    static constexpr u32 STAGE_W = ETR_BN * 64 * 2;  // four 16-column tiles per 16 features
};

template <typename T, bool BF16, int TH, int BT>
__device__ void body(const TensorMap* tmx, const TensorMap* tmx_wide, int M, int K, const u64* __restrict__ bitmap,
                     const u32* __restrict__ row_offsets, const T* __restrict__ values, int N, int grid_rows,
                     int grid_cols, const float* __restrict__ bias, const T* __restrict__ residual, int gelu,
                     T* __restrict__ Y, int ldy, float* __restrict__ ws) {
    using RG = Ring<BT>;
    constexpr int STAGES = RG::STAGES;
    constexpr int R = ETR_BN / TH;   // block rows per group
    constexpr u32 TILE = TH * 32;    // bytes of one TH x 16 tile
    constexpr int NACC = BT / 2;     // m64 x BT accumulators per thread
#if !ETW_WGMMA
    __trap();
#endif
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 raw = smem_addr(smem_raw);
    const u32 pad = ((raw + 1023u) & ~1023u) - raw;
    unsigned char* smem = smem_raw + pad;
    const u32 xs_base = raw + pad, ws_base = xs_base + STAGES * RG::STAGE_X;
    const u32 full_bar = ws_base + STAGES * RG::STAGE_W, empty_bar = full_bar + 8 * STAGES;
    UnionMeta<R>& md = *reinterpret_cast<UnionMeta<R>*>(smem + STAGES * (RG::STAGE_X + RG::STAGE_W) + 16 * STAGES);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = blockIdx.x * ETR_BN, m0 = blockIdx.y * BT;
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full_bar + 8 * s, 1);
            mbar_init(empty_bar + 8 * s, 2);
        }
        fence_barrier_init();
    }
    build_union<R, ETR_THREADS>(md, bitmap, row_offsets, grid_rows, grid_cols, blockIdx.x * R);
    const int U = md.U;
    const int G = (U + SLOTS - 1) / SLOTS;
    const int gbeg = static_cast<int>((static_cast<long long>(G) * blockIdx.z) / gridDim.z);
    const int gend = static_cast<int>((static_cast<long long>(G) * (blockIdx.z + 1)) / gridDim.z);
    const int GL = gend - gbeg;

    if (warp == 8) {
        // Producer. Lane r < R: block row r's tiles of the stage; lanes R .. R + 3: X.
        for (int g = 0; g < GL; ++g) {
            const int b = g % STAGES;
            if (g >= STAGES) mbar_wait_suspend(empty_bar + 8 * b, ((g / STAGES) - 1) & 1);
            const int j0 = (gbeg + g) * SLOTS;
            const bool contig = stage_contiguous<16>(md.ucol, U, j0);
            const u32 bar = full_bar + 8 * b;
            u32 kept_bits = 0;  // slots s whose tile block row `lane` keeps
            if (lane < R) {
#pragma unroll
                for (int s = 0; s < SLOTS; ++s)
                    if (j0 + s < U && ((md.umask[j0 + s] >> lane) & 1u)) kept_bits |= 1u << s;
            }
            u32 bytes = static_cast<u32>(__popc(kept_bits)) * TILE;
            if (lane == 0) bytes += RG::STAGE_X;
            bytes = __reduce_add_sync(0xffffffffu, bytes);
            if (lane == 0) mbar_arrive_expect_tx(bar, bytes);
            __syncwarp();
            if (lane < R && kept_bits) {
                const int r = lane;
                const u32 dst = ws_base + b * RG::STAGE_W + r * SLOTS * TILE;
                // The row's kept tiles among the stage's columns are consecutive in the file.
                const int s0 = __ffs(kept_bits) - 1;
                const T* src = values + (static_cast<size_t>(md.rowoff[r]) + md.kidx[r][j0 + s0]) * (TH * 16);
                if (kept_bits == 0xFu) {
                    bulk_copy(dst, src, SLOTS * TILE, bar);
                } else {
                    int t = 0;
#pragma unroll
                    for (int s = 0; s < SLOTS; ++s)
                        if ((kept_bits >> s) & 1u) bulk_copy(dst + s * TILE, src + (t++) * (TH * 16), TILE, bar);
                }
            } else if (lane >= R && lane < R + SLOTS) {
                const int s = lane - R;
                if (contig) {
                    if (s == 0) tma_load_2d(xs_base + b * RG::STAGE_X, tmx_wide, static_cast<int>(md.ucol[j0]) * 16, m0, bar);
                } else {
                    const int j = j0 + s;
                    const int k = j < U ? static_cast<int>(md.ucol[j]) * 16 : K;  // K: zeros
                    tma_load_2d(xs_base + b * RG::STAGE_X + s * RG::SLOT_X, tmx, k, m0, bar);
                }
            }
        }
        return;
    }

    // Consumers: warp w of warpgroup c multiplies features f = 64c + 16w .. + 15 of the group.
    const int wg = warp >> 2;
    const int frow = wg * 64 + (warp & 3) * 16;  // first feature of the warp within the group
    const int r = frow / TH, ir = frow % TH;      // its block row in the group, row in the tile
    // ldmatrix.x4 row addresses: lanes 0-15 rows 0-15 of columns 0-7, lanes 16-31 of columns 8-15.
    const u32 lane_off = static_cast<u32>((ir + (lane & 15)) * 32 + (lane >> 4) * 16);
    float acc[NACC];
#pragma unroll
    for (int a = 0; a < NACC; ++a) acc[a] = 0.f;
    for (int g = 0; g < GL; ++g) {
        const int b = g % STAGES;
        const int j0 = (gbeg + g) * SLOTS;
        const bool contig = stage_contiguous<16>(md.ucol, U, j0);
        mbar_wait_suspend(full_bar + 8 * b, (g / STAGES) & 1);
        u32 afrag[SLOTS][4];
        const u32 wrow = ws_base + b * RG::STAGE_W + r * SLOTS * TILE + lane_off;
#pragma unroll
        for (int s = 0; s < SLOTS; ++s) {
            const bool kept = j0 + s < U && ((md.umask[j0 + s] >> r) & 1u);
            if (kept) {
                ldmatrix_x4(wrow + s * TILE, afrag[s]);
            } else {
                afrag[s][0] = afrag[s][1] = afrag[s][2] = afrag[s][3] = 0u;
            }
        }
        const u32 xb = xs_base + b * RG::STAGE_X;
        wgmma_fence();
#pragma unroll
        for (int s = 0; s < SLOTS; ++s) {
            const u64 db = contig ? desc_sw128(xb) + 2 * s : desc_sw32(xb + s * RG::SLOT_X);
            wgmma_rs_n256<BF16>(acc, afrag[s], db);
        }
        wgmma_commit();
        wgmma_wait<0>();
        if ((tid & 127) == 0) mbar_arrive(empty_bar + 8 * b);
    }

    // Accumulators of m64nBTk16: this thread holds features fa = frow + lane/4 and fa + 8, tokens
    // 8j + 2*(lane%4) (+1) in acc[4j .. 4j+3] = (fa, t), (fa, t+1), (fa+8, t), (fa+8, t+1).
    const int fa = n0 + frow + (lane >> 2);
    if (ws) {
        float* wz = ws + static_cast<size_t>(blockIdx.z) * M * ldy;
#pragma unroll
        for (int j = 0; j < BT / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int f = fa + (e >> 1) * 8, m = m0 + j * 8 + (lane & 3) * 2 + (e & 1);
                if (f < N && m < M) wz[static_cast<size_t>(m) * ldy + f] = acc[4 * j + e];
            }
        return;
    }
    float b0 = 0.f, b1 = 0.f;
    if (bias) {
        if (fa < N) b0 = bias[fa];
        if (fa + 8 < N) b1 = bias[fa + 8];
    }
    // Every consumer is past its last stage before the ring is reused for the transposed output.
    named_barrier<1, 256>();
    const u32 out = xs_base + wg * (BT * 128);  // this warpgroup's BT x 64 features
    const int mat = lane >> 3, mrow = lane & 7;  // stmatrix: lane gives row mrow of matrix mat
#pragma unroll
    for (int j = 0; j < BT / 8; j += 2) {
        u32 p[4];
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            float v[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                v[e] = acc[4 * (j + q) + e] + ((e >> 1) ? b1 : b0);
                if (gelu) v[e] = gelu_erf(v[e]);
            }
            p[2 * q] = pack2<T>(v[0], v[1]);      // features fa: tokens t, t+1
            p[2 * q + 1] = pack2<T>(v[2], v[3]);  // features fa+8
        }
        // Matrix mat = (n8 block j + mat/2, features + 8*(mat%2)); transposed, its row mrow is
        // token 8(j + mat/2) + mrow, 8 features from 16*(warp%4) + 8*(mat%2).
        const int token = 8 * (j + (mat >> 1)) + mrow;
        const int chunk = (warp & 3) * 2 + (mat & 1);
        stmatrix_x4_trans(out_chunk(out, token, chunk), p[0], p[1], p[2], p[3]);
    }
    if (wg == 0) named_barrier<2, 128>();
    else named_barrier<3, 128>();
    // Write-out: 8 threads per token row (one 16-byte chunk of 8 features each).
    const int wtid = tid & 127;
    const int fbase = n0 + wg * 64;
    const bool vec = (ldy & 7) == 0;
#pragma unroll 4
    for (int i = wtid; i < BT * 8; i += 128) {
        const int row = i >> 3, chunk = i & 7;
        const int m = m0 + row, f = fbase + chunk * 8;
        if (m >= M || f >= N) continue;
        uint4 v = *reinterpret_cast<const uint4*>(smem + (out_chunk(out, row, chunk) - raw - pad));
        const size_t at = static_cast<size_t>(m) * ldy + f;
        if (vec && f + 8 <= N) {
            if (residual) {
                const uint4 rr = *reinterpret_cast<const uint4*>(residual + at);
                v.x = add_pair<T>(v.x, rr.x);
                v.y = add_pair<T>(v.y, rr.y);
                v.z = add_pair<T>(v.z, rr.z);
                v.w = add_pair<T>(v.w, rr.w);
            }
            *reinterpret_cast<uint4*>(Y + at) = v;
        } else {
            const u32 words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                if (f + e >= N) break;
                Pair<T> p;
                p.u = words[e >> 1];
                float o = Conv<T>::to_f(p.v[e & 1]);
                if (residual) o += Conv<T>::to_f(residual[at + e]);
                Y[at + e] = Conv<T>::from_f(o);
            }
        }
    }
}

}  // namespace etr

// 256 tokens per CTA, one CTA per multiprocessor (4 stages). With 128 tokens and two CTAs per
// multiprocessor the register budget (~96 per thread) is too small for the accumulators plus four
// slots of A fragments: ptxas serialised the wgmma and spilled.
#define ETS_TILE_RS(NAME, T, BF, TH, BT)                                                                 \
    extern "C" __global__ void __launch_bounds__(ETR_THREADS, 256 / BT)                                   \
        NAME(const __grid_constant__ ek::TensorMap tmx, const __grid_constant__ ek::TensorMap tmx_wide, int M, \
             int K, const u64* bitmap, const u32* row_offsets, const T* values, int N, int grid_rows,         \
             int grid_cols, const float* bias, const T* residual, int gelu, T* Y, int ldy, float* ws) {       \
        etr::body<T, BF, TH, BT>(&tmx, &tmx_wide, M, K, bitmap, row_offsets, values, N, grid_rows,          \
                                 grid_cols, bias, residual, gelu, Y, ldy, ws);                               \
    }

#define ETS_TILE_RS_ALL(TH)                                                        \
    ETS_TILE_RS(tile_rs_f16_##TH##x16_bm256, __half, false, TH, 256)               \
    ETS_TILE_RS(tile_rs_bf16_##TH##x16_bm256, __nv_bfloat16, true, TH, 256)

ETS_TILE_RS_ALL(16)
ETS_TILE_RS_ALL(64)
ETS_TILE_RS_ALL(128)
