// Tile-sparse GEMM with the weights as register operands of the warpgroup MMA (sm_90a), for tiles
// 16x16, 64x16, 128x16, 32x32 and 64x64: Y[M,N] = act(X[M,K] W^T + bias) + residual.
//
// The roles of tile_tma.cu are swapped: the CTA computes Y^T for 128 output features x BT = 192 tokens,
// the features on the MMA's M side and the tokens on its N side. So the weights never need a
// shared-memory layout the MMA reads: each warp loads its 16 features' rows of a 16-column slice
// from the tile as it lies in the file (rows of 2 x TW bytes) with ldmatrix into an A fragment, and
// X, the B operand, is copied by TMA in 128-byte rows (128-byte swizzle) whenever a stage's union
// columns are contiguous (16-column boxes with the 32-byte swizzle otherwise).
// - Persistent: each CTA takes a contiguous run of output tiles (Schedule), so the producer fills
//   the ring for the next tile while the consumers store the current one.
// - Producer (warp 8): per stage, the weights of all the group's block rows in one TMA box when
//   every row keeps the stage's four tiles at the same place in a weight whose rows all keep the
//   same number of tiles (density 1, grouped masks: the host plans it, rs_plan.rs), written with the 128-byte
//   swizzle so that ldmatrix reads it without bank conflicts (sw128); otherwise, for 16-column
//   tiles, one bulk copy (cp.async.bulk, no tensor map) per block row that keeps all four (they are
//   consecutive in the file), else one per kept tile, and for wider tiles one box per kept tile
//   (swizzled too: their rows of 64 or 128 bytes would put an ldmatrix phase's eight rows on two
//   or one bank group); absent tiles are not copied at all. The number of copies, not
//   their bytes, bounded the weights' side. It alone reads the group's stage plans (StagePlan:
//   what to copy, from where, how many bytes; computed on the host at upload and copied into
//   shared memory when the feature group changes), so that a stage costs it one shared-memory
//   load, and it tells the consumers what they need per stage (StageInfo).
// - Consumers (warps 0-7): warpgroup c owns features 64c .. 64c+63 of the group, warp w of it 16 of
//   them; an absent tile is a zero fragment. wgmma m64nBTk16 with A from registers, B from shared
//   memory, one stage of products in flight: two sets of A fragments alternate, and a stage's
//   buffers are released once the next stage's products are issued and its own are done. With
//   64x64 tiles a warpgroup's features are one tile, whose 128-byte rows land swizzled: the
//   K-major layout wgmma reads from shared memory, so A goes by descriptor too (mma_stage_ss: faster,
//   and fewer registers).
// - Epilogue: bias, GELU and the residual (fetched by TMA into the staging buffer during the
//   tile's products, read back with ldmatrix .trans in the accumulators' layout) in f32, rounded
//   once, transposed into the staging buffer with stmatrix (.trans) and stored by TMA, which
//   proceeds while the next tile's products run.
// Requirements (checked on the host): K % 8 == 0, N % 8 == 0; X, Y and the residual 16-byte
// aligned; tile width 16.
#define ETR_BN 128
#define ETR_THREADS 288  // two consumer warpgroups and one producer warp
// Work of an output tile's epilogue in stages of a 64-column stage, for the balanced schedule
// (the host's RS_TILE_COST counts the same).
#define ETR_TILE_COST 3
// Feature groups the balanced schedule counts (more: equal runs of tiles).
#define ETR_MAX_GROUPS 512
// Stages in the ring (rs_smem_bytes counts the same).
#define ETR_STAGES 4

namespace etr {

using namespace ek;

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

// Shared memory of the transposed output: BT token rows of 64 features (128 bytes), the eight
// 16-byte chunks of a row XOR-swizzled by (row & 7) so that stmatrix's eight rows hit distinct banks.
__device__ __forceinline__ u32 out_chunk(u32 base, int row, int chunk) {
    return base + static_cast<u32>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

constexpr u32 STAGE_W_BYTES = ETR_BN * 64 * 2;  // a weight stage: 64 columns of the group's 128 features

// 128-byte lines of one TH x TW tile as it lies in the file.
__host__ __device__ constexpr int tile_lines(int th, int tw) { return th * tw * 2 / 128; }

template <int BT>
struct Ring {
    // Four stages of 40 KiB and the output staging buffer, which must outlive the ring's reuse
    // (the next output tile's stages arrive while this one is stored).
    static constexpr int STAGES = ETR_STAGES;
    static constexpr u32 SLOT_X = BT * 32;           // one 16-column X slice
    static constexpr u32 STAGE_X = SLOTS * SLOT_X;  // = BT rows x 128 bytes
    static constexpr u32 STAGE_W = STAGE_W_BYTES;
    static constexpr u32 OUT = ETR_BN * BT * 2;      // the output tile, two 64-feature halves
};

// What the producer tells the consumers about a stage (they never read the stage plans, which the
// producer replaces when its next output tile belongs to another feature group).
struct StageInfo {
    u32 kept;   // bit 4r + s: block row r keeps the tile of slot s
    u32 flags;  // STAGE_*
};
constexpr u32 STAGE_CONTIG = 1;  // X came as one 64-column box (128-byte swizzle)
constexpr u32 STAGE_LAST = 2;    // the output tile's last stage
constexpr u32 STAGE_EMPTY = 4;   // no product (the group keeps no tile in this K range)
constexpr u32 STAGE_W_SW128 = 8; // the weights came with the 128-byte swizzle
constexpr u32 STAGE_W_BOXED = 16; // the weights come as one box (the producer's plan only)

// A weight row's 16-byte chunk in a stage written with the 128-byte swizzle: chunk c of 128-byte
// line l lies at chunk c ^ (l & 7) (the stage is 1024-byte aligned). Tiles 16 columns wide have
// 32-byte rows, so unswizzled the eight rows one ldmatrix phase reads fall on four bank groups
// twice (a 2-way conflict on every A fragment load); swizzled they fall on eight.
__device__ __forceinline__ u32 sw128(u32 addr) { return addr ^ ((addr >> 3) & 0x70u); }

// The producer's plan of one stage of a group, computed on the host when the weight is uploaded
// (rs_plan.rs: the layout below, 64 bytes little-endian) and copied into shared memory when the
// producer's next output tile belongs to another group, so that a stage costs it one
// shared-memory load. Planning each stage from the union list would take a dozen dependent loads
// per stage, comparable to the stage's products, and the consumers would wait for it.
struct __align__(16) StagePlan {
    u32 kept;                    // bit 4r + s: block row r keeps the tile of slot s
    u32 wbytes;                  // bytes of the stage's weights
    u32 flags;                   // STAGE_CONTIG, STAGE_W_SW128, STAGE_W_BOXED
    u32 wline;                   // a boxed stage's box coordinate (128-byte lines into its block rows)
    unsigned short xcol[SLOTS];  // X column of each slot (the first only for a contiguous stage; K: zeros)
    u32 stages;                  // in a group's first plan: the group's stages
    u32 reserved;
    u32 first[8];                // block row r's first kept tile in the stage (index into the values)
};
// The host reserves ETS_MAX_GRID_COLS / SLOTS plans of 64 bytes (rs_smem_bytes, RS_PLAN_BYTES).
static_assert(sizeof(StagePlan) == 64, "rs_smem_bytes and rs_plan.rs count 64 bytes a stage plan");

// Copies `n` plans (16-byte pieces from lane = 0 .. 31 of one warp, all in flight at once) and waits
// for this lane's copies; the caller syncs the warp before reading.
__device__ __forceinline__ void copy_plans(StagePlan* dst, const StagePlan* __restrict__ src, int n, int lane) {
    const u32 d = static_cast<u32>(__cvta_generic_to_shared(dst));
    const char* s = reinterpret_cast<const char*>(src);
    for (int i = lane; i < n * 4; i += 32)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d + 16 * i), "l"(s + 16 * i) : "memory");
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// The `nb` (1 .. 64) bits of the tile bitmap from bit t.
__device__ __forceinline__ u64 bitmap_bits(const u64* __restrict__ bitmap, u64 t, int nb) {
    const u64 word = t >> 6;
    const int sh = static_cast<int>(t & 63);
    u64 v = __ldg(bitmap + word) >> sh;
    if (sh != 0 && sh + nb > 64) v |= __ldg(bitmap + word + 1) << (64 - sh);
    return nb == 64 ? v : v & ((1ull << nb) - 1ull);
}

// The work of each feature group's output tiles as prefix sums over the G groups: cum[g] = the
// work of the groups before g, a group's work being its stages (its union of tile columns, UPS per
// stage) plus ETR_TILE_COST for the tile's epilogue. One warp (lane = 0 .. 31); the caller syncs.
template <int R, int TW>
__device__ void group_work(u32* cum, const u64* __restrict__ bitmap, int grid_rows, int grid_cols, int G, int lane) {
    constexpr int UPS = 64 / TW;
    u32 base = 0;
    for (int g0 = 0; g0 < G; g0 += 32) {
        const int g = g0 + lane;
        u32 w = 0;
        if (g < G) {
            u32 U = 0;
            for (int c0 = 0; c0 < grid_cols; c0 += 64) {
                const int nb = grid_cols - c0 < 64 ? grid_cols - c0 : 64;
                u64 m = 0;
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    const int br = g * R + r;
                    if (br < grid_rows) m |= bitmap_bits(bitmap, static_cast<u64>(br) * grid_cols + c0, nb);
                }
                U += __popcll(m);
            }
            w = (U + UPS - 1) / UPS + ETR_TILE_COST;
        }
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u32 v = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += v;
        }
        if (g < G) cum[g + 1] = base + w;
        base += __shfl_sync(0xffffffffu, w, 31);
    }
    if (lane == 0) cum[0] = 0;
}

// The output tiles of CTA `c` out of `P`: a contiguous run of the T = groups x token blocks tiles,
// numbered feature group first, so a CTA fetches a group's stage plans rarely (numbered token block
// first, every tile of a run is another group: 9-27% slower at 16384 tokens, and still slower with
// the next group's plans fetched ahead). Where each CTA has one tile at most (the host's
// SCHED_TOKEN_MAJOR) the numbering only decides which CTA takes which tile, and token block first
// was 5-13% faster at 4096 tokens, N = 768 (the CTAs that read the same X rows then have
// neighbouring indices). Equal runs of tiles, or (balance) runs of equal work: with masks below
// density 1 the groups' unions, hence their tiles' stages, differ, and equal runs left the CTAs
// with the largest unions last (at 64x64 density 0.5, CTA 0 was done after 70% of the kernel's
// time). The host asks for balance only where runs are long (cuts at equal work leave up to one
// tile of slack per run) and the groups' work differs: runs that no longer line up on token
// blocks across groups cost X's reuse in L2.
// A cursor walks the run (the divisions are 64-bit calls, done once).
constexpr int SCHED_BALANCE = 1;     // runs of equal work
constexpr int SCHED_TOKEN_MAJOR = 2; // tiles numbered token block first
constexpr int SCHED_X_STREAM = 4;    // X's copies marked evict-first in L2
struct Schedule {
    long long beg, end;
    int MB;  // token blocks
    int NG;  // feature groups
    bool token_major;
    __device__ Schedule(int M, int N, int BT, int flags) {
        MB = (M + BT - 1) / BT;
        NG = (N + ETR_BN - 1) / ETR_BN;
        token_major = (flags & SCHED_TOKEN_MAJOR) != 0;
        const long long T = static_cast<long long>(NG) * MB;
        beg = T * blockIdx.x / gridDim.x;
        end = T * (blockIdx.x + 1) / gridDim.x;
    }
    // Runs of equal work: tiles weighted by their group's work (cum: G + 1 prefix sums, see
    // group_work), CTA c taking the tiles whose work starts in [W c / P, W (c + 1) / P).
    __device__ void balance(const u32* cum, int G) {
        const u64 W = static_cast<u64>(cum[G]) * MB;
        beg = first_from(cum, G, W * blockIdx.x / gridDim.x);
        end = first_from(cum, G, W * (blockIdx.x + 1) / gridDim.x);
    }
    // The first tile whose work starts at x or later (tile g MB + b starts at cum[g] MB + b w_g).
    __device__ long long first_from(const u32* cum, int G, u64 x) const {
        if (static_cast<u64>(cum[G]) * MB <= x) return static_cast<long long>(G) * MB;
        int lo = 0, hi = G;  // cum[lo] MB <= x < cum[hi] MB
        while (hi - lo > 1) {
            const int mid = (lo + hi) >> 1;
            if (static_cast<u64>(cum[mid]) * MB <= x) lo = mid;
            else hi = mid;
        }
        const u64 off = x - static_cast<u64>(cum[lo]) * MB, w = cum[lo + 1] - cum[lo];
        return static_cast<long long>(lo) * MB + static_cast<long long>((off + w - 1) / w);
    }
    struct Cursor {
        int group, block;  // the tile's feature group and token block
        __device__ void next(const Schedule& s) {
            if (s.token_major) {
                if (++group == s.NG) group = 0, ++block;
            } else if (++block == s.MB) {
                block = 0, ++group;
            }
        }
    };
    __device__ Cursor first() const {
        if (token_major) return Cursor{static_cast<int>(beg % NG), static_cast<int>(beg / NG)};
        return Cursor{static_cast<int>(beg / MB), static_cast<int>(beg % MB)};
    }
};

// One stage of products for a warp: its A fragments from the stage's tiles (zero where absent),
// then four m64nBTk16 MMAs over the stage's 64 columns, committed as one group.
// A block row's stage holds its 64/TW tiles as they lie in the file (TH rows of 2*TW bytes each):
// slot s is 16 columns of tile s / SPT.
template <bool BF16, int BT, int TH, int TW>
__device__ __forceinline__ void mma_stage(float* acc, u32 (&a)[SLOTS][4], u32 wrow, u32 kept4, bool contig,
                                          bool wswz, u32 xb) {
    constexpr int SPT = TW / 16;
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) {
        if ((kept4 >> s) & 1u) {
            const u32 at = wrow + (s / SPT) * (TH * TW * 2) + (s % SPT) * 32;
            ldmatrix_x4(wswz ? sw128(at) : at, a[s]);
        } else {
            a[s][0] = a[s][1] = a[s][2] = a[s][3] = 0u;
        }
    }
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) {
        const u64 db = contig ? desc_sw128(xb) + 2 * s : desc_sw32(xb + s * Ring<BT>::SLOT_X);
        wgmma_rs<BF16, BT>(acc, a[s], db);
    }
    wgmma_commit();
}

// One stage of products of a warpgroup whose 64 features are one 64x64 tile of the stage: both
// operands from shared memory (the tile's rows are 128 bytes with the 128-byte swizzle, the layout
// wgmma reads), so no ldmatrix and no A registers.
template <bool BF16, int BT>
__device__ __forceinline__ void mma_stage_ss(float* acc, u32 wtile, bool contig, u32 xb) {
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) {
        const u64 db = contig ? desc_sw128(xb) + 2 * s : desc_sw32(xb + s * Ring<BT>::SLOT_X);
        wgmma_ss_n192<BF16>(acc, desc_sw128(wtile) + 2 * s, db);
    }
    wgmma_commit();
}

// The epilogue's rounding of a warp's accumulators (plus bias b0/b1, GELU, residual already in
// the staging buffer) into the transposed staging buffer at `out`. GELU and RES: 1 or 0 fixed at
// compile time, -1 decided at run time (do_gelu, do_res). The kernel instantiates each kind
// separately: with the run-time choices inside one unrolled loop, the code a tile
// executed was a quarter of the code it fetched, and instruction fetch ("no instruction") was the
// loop's largest stall at low density.
template <typename T, int BT, int GELU, int RES>
__device__ __forceinline__ void stage_output(const float* acc, u32 out, int warp, int lane, float b0, float b1,
                                             bool gelu_rt, bool res_rt) {
    const bool do_gelu = GELU < 0 ? gelu_rt : GELU != 0;
    const bool do_res = RES < 0 ? res_rt : RES != 0;
    const int mat = lane >> 3, mrow = lane & 7;  // stmatrix: lane gives row mrow of matrix mat
#pragma unroll
    for (int j = 0; j < BT / 8; j += 2) {
        // Matrix mat = (n8 block j + mat/2, features + 8*(mat%2)); transposed, its row mrow is
        // token 8(j + mat/2) + mrow, 8 features from 16*(warp%4) + 8*(mat%2).
        const int token = 8 * (j + (mat >> 1)) + mrow;
        const int chunk = (warp & 3) * 2 + (mat & 1);
        const u32 at = out_chunk(out, token, chunk);
        u32 rr[4] = {0u, 0u, 0u, 0u};
        if (do_res) ldmatrix_x4_trans(at, rr);  // the residual in the same fragment layout
        u32 p[4];
#pragma unroll
        for (int qq = 0; qq < 2; ++qq) {
            float v[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                v[e] = acc[4 * (j + qq) + e] + ((e >> 1) ? b1 : b0);
                if (do_gelu) v[e] = gelu_erf(v[e]);
            }
            if (do_res) {
                Pair<T> lo, hi;
                lo.u = rr[2 * qq];
                hi.u = rr[2 * qq + 1];
                v[0] += Conv<T>::to_f(lo.v[0]);
                v[1] += Conv<T>::to_f(lo.v[1]);
                v[2] += Conv<T>::to_f(hi.v[0]);
                v[3] += Conv<T>::to_f(hi.v[1]);
            }
            p[2 * qq] = pack2<T>(v[0], v[1]);      // features fa: tokens t, t+1
            p[2 * qq + 1] = pack2<T>(v[2], v[3]);  // features fa+8
        }
        stmatrix_x4_trans(at, p[0], p[1], p[2], p[3]);
    }
}

// The two consumer warpgroups (warps 0-7): products, epilogue and stores of the CTA's output tiles.
template <typename T, bool BF16, int TH, int TW, int BT>
__device__ __forceinline__ void consumers(const Schedule& sched, const TensorMap* tmres,
                                          const TensorMap* tmy, int M, int N, const float* __restrict__ bias,
                                          const T* __restrict__ residual, int gelu, float* __restrict__ ws,
                                          u32 xs_base, u32 ws_base, u32 out_base,
                                          u32 full_bar, u32 empty_bar, u32 res_bar, const StageInfo* info) {
    using RG = Ring<BT>;
    constexpr int STAGES = RG::STAGES;
    constexpr int NACC = BT / 2;
    constexpr bool BIAS_EARLY = TW == 64;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // Warp w of warpgroup c multiplies features f = 64c + 16w .. + 15 of the group.
    const int wg = warp >> 2;
    const bool leader = (tid & 127) == 0;
    const int frow = wg * 64 + (warp & 3) * 16;  // first feature of the warp within the group
    const int r = frow / TH, ir = frow % TH;      // its block row in the group, row in the tile
    // The warpgroup's block rows: RW from rw0 (one when the tiles are 64 rows or more).
    constexpr int RW = TH >= 64 ? 1 : 64 / TH;
    const int rw0 = (wg * 64) / TH;
    // ldmatrix.x4 row addresses: lanes 0-15 rows 0-15 of columns 0-7, lanes 16-31 of columns 8-15.
    const u32 lane_off = static_cast<u32>((ir + (lane & 15)) * (TW * 2) + (lane >> 4) * 16);
    const u32 out = out_base + wg * (BT * 128);  // this warpgroup's BT tokens x 64 features
    const u32 my_res_bar = res_bar + 8 * wg;
    const bool use_res = residual != nullptr && ws == nullptr;
    if (leader) {
        tma_prefetch(tmy);
        if (use_res) tma_prefetch(tmres);
    }
    // Two sets of A fragments: a stage's are loaded while the previous stage's products still
    // read the other set (the MMA reads A registers asynchronously).
    u32 afrag0[SLOTS][4], afrag1[SLOTS][4];
    float acc[NACC];
    int q = 0, pend = -1;
    int nm = 0;  // stages this warpgroup multiplied (their A fragment sets alternate)
    u32 res_phase = 0;
    Schedule::Cursor cur = sched.first();
    for (long long t = sched.beg; t < sched.end; ++t, cur.next(sched)) {
        const int group = cur.group, m0 = cur.block * BT;
        const int n0 = group * ETR_BN;
        const bool wg_live = n0 + wg * 64 < N;  // some of this warpgroup's features exist
#pragma unroll
        for (int a = 0; a < NACC; ++a) acc[a] = 0.f;
        bool res_issued = false;
        // Accumulators of m64nBTk16: this thread holds features fa = frow + lane/4 and fa + 8, tokens
        // 8j + 2*(lane%4) (+1) in acc[4j .. 4j+3] = (fa, t), (fa, t+1), (fa+8, t), (fa+8, t+1).
        const int fa = n0 + frow + (lane >> 2);
        float b0 = 0.f, b1 = 0.f;
        // The bias's latency (a global load at the epilogue's start: all eight warps waited for
        // it) is hidden behind the tile's products.
        if (BIAS_EARLY && bias && ws == nullptr) {
            if (fa < N) b0 = __ldg(bias + fa);
            if (fa + 8 < N) b1 = __ldg(bias + fa + 8);
        }
        for (int g = 0;; ++g, ++q) {
            const int b = q % STAGES;
            mbar_wait_suspend(full_bar + 8 * b, (q / STAGES) & 1);
            const StageInfo inf = info[b];
            const bool last = (inf.flags & STAGE_LAST) != 0;
            // The residual tile is fetched once this tile's products are under way (the staging
            // buffer is free once the previous tile's store has read it).
            if (use_res && wg_live && leader && !res_issued && (g == 1 || last)) {
                tma_store_wait_read();
                mbar_arrive_expect_tx(my_res_bar, BT * 128);
                tma_load_2d(out, tmres, n0 + wg * 64, m0, my_res_bar);
                res_issued = true;
            }
            // A stage none of the warpgroup's block rows keeps a tile of is not multiplied (the
            // same answer in its four warps; skipping single slots made ptxas serialise the MMAs).
            u32 wg_kept = 0;
#pragma unroll
            for (int i = 0; i < RW; ++i) wg_kept |= (inf.kept >> (4 * (rw0 + i))) & 0xFu;
            const bool mult = !(inf.flags & STAGE_EMPTY) && wg_kept != 0;
            if (mult) {
                const u32 kept4 = (inf.kept >> (4 * r)) & 0xFu;
                const bool contig = (inf.flags & STAGE_CONTIG) != 0;
                const bool wswz = (inf.flags & STAGE_W_SW128) != 0;
                const u32 wrow = ws_base + b * RG::STAGE_W + r * (TH * 128) + lane_off;
                const u32 xb = xs_base + b * RG::STAGE_X;
                if (TW == 64 && BT == 192)
                    mma_stage_ss<BF16, BT>(acc, ws_base + b * RG::STAGE_W + rw0 * (TH * 128), contig, xb);
                else if (nm & 1) mma_stage<BF16, BT, TH, TW>(acc, afrag1, wrow, kept4, contig, wswz, xb);
                else mma_stage<BF16, BT, TH, TW>(acc, afrag0, wrow, kept4, contig, wswz, xb);
                ++nm;
            }
            // The previously multiplied stage's products are done: release its buffers. Every warp
            // arrives once it is done with a stage (a stage without products does not make the
            // warpgroup's warps wait for each other, and its StageInfo must stay until all have
            // read it). A stage this warpgroup does not multiply is released at once, and so is
            // the one still pending (after all products are done): held back, it could be the slot
            // the producer needs for the next stage this warpgroup waits for.
            if (mult) wgmma_wait<1>();
            else wgmma_wait<0>();
            if (pend >= 0 && lane == 0) mbar_arrive(empty_bar + 8 * pend);
            pend = mult ? b : -1;
            if (!mult && lane == 0) mbar_arrive(empty_bar + 8 * b);
            if (last) {
                ++q;
                break;
            }
        }
        if (!BIAS_EARLY && bias && ws == nullptr) {
            if (fa < N) b0 = __ldg(bias + fa);
            if (fa + 8 < N) b1 = __ldg(bias + fa + 8);
        }
        wgmma_wait<0>();
        if (pend >= 0 && lane == 0) mbar_arrive(empty_bar + 8 * pend);
        pend = -1;

        if (ws) {
            float* wz = ws + static_cast<size_t>(blockIdx.z) * M * N;
#pragma unroll
            for (int j = 0; j < BT / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int f = fa + (e >> 1) * 8, m = m0 + j * 8 + (lane & 3) * 2 + (e & 1);
                    if (f < N && m < M) wz[static_cast<size_t>(m) * N + f] = acc[4 * j + e];
                }
            continue;
        }
        if (ws || !wg_live) continue;
        // The staging buffer is free: the previous store has read it (the leader waited, then
        // the warpgroup's barrier), or the residual tile has landed in it.
        if (leader) tma_store_wait_read();
        if (wg == 0) named_barrier<2, 128>();
        else named_barrier<3, 128>();
        if (use_res) {
            mbar_wait_suspend(my_res_bar, res_phase);
            res_phase ^= 1u;
        }
        // Straight-line copies of the loop for the epilogues without GELU (bias only: the
        // benchmark's case and the attention's projections; bias and residual: the projections
        // back to the hidden size), so the code a tile runs is dense. GELU keeps the loop with
        // run-time choices (a copy of its own makes ptxas spill at 168 registers).
        if (!gelu && !use_res) stage_output<T, BT, 0, 0>(acc, out, warp, lane, b0, b1, false, false);
        else if (!gelu) stage_output<T, BT, 0, 1>(acc, out, warp, lane, b0, b1, false, true);
        else stage_output<T, BT, -1, -1>(acc, out, warp, lane, b0, b1, gelu != 0, use_res);
        // The generic-proxy writes are made visible to the TMA store, which one thread issues once
        // the warpgroup's writes are done; it clips rows past M and features past N.
        fence_async_smem();
        if (wg == 0) named_barrier<2, 128>();
        else named_barrier<3, 128>();
        if (leader) tma_store_2d(tmy, n0 + wg * 64, m0, out);
    }
    if (leader) tma_store_wait_all();
}

// The producer's wait for a free slot (the q-th stage reuses the slot of stage q - STAGES).
template <int STAGES>
__device__ __forceinline__ void producer_wait(u32 empty, int q) {
    if (q < STAGES) return;
    mbar_wait_suspend(empty, ((q / STAGES) - 1) & 1);
}

template <typename T, bool BF16, int TH, int TW, int BT>
__device__ void body(const TensorMap* tmx, const TensorMap* tmx_wide, const TensorMap* tmy, const TensorMap* tmres,
                     const TensorMap* tmw, const TensorMap* tmw_tile, int plan_stride, int sched_flags, int M, int K, const u64* __restrict__ bitmap, const StagePlan* __restrict__ gplans,
                     const T* __restrict__ values, int N, int grid_rows, int grid_cols, const float* __restrict__ bias,
                     const T* __restrict__ residual, int gelu, float* __restrict__ ws) {
    using RG = Ring<BT>;
    constexpr int STAGES = RG::STAGES;
    constexpr int R = ETR_BN / TH;   // block rows per group
    constexpr int UPS = 64 / TW;     // tile columns per stage
    constexpr u32 SLICE = TH * 32;   // bytes of one TH x 16 slice (a 16-column tile)
#if !ETW_WGMMA
    __trap();
#endif
    const AlignedSmem aligned = aligned_dynamic_smem();
    unsigned char* smem = aligned.ptr;
    const u32 xs_base = aligned.addr, ws_base = xs_base + STAGES * RG::STAGE_X;
    const u32 out_base = ws_base + STAGES * RG::STAGE_W;
    const u32 full_bar = out_base + RG::OUT, empty_bar = full_bar + 8 * STAGES, res_bar = empty_bar + 8 * STAGES;
    const u32 meta_off = STAGES * (RG::STAGE_X + RG::STAGE_W) + RG::OUT + 8 * (2 * STAGES + 2);
    StageInfo* info = reinterpret_cast<StageInfo*>(smem + meta_off);
    StagePlan* plans = reinterpret_cast<StagePlan*>(smem + ((meta_off + sizeof(StageInfo) * STAGES + 15) & ~static_cast<size_t>(15)));
    u32* cum = reinterpret_cast<u32*>(plans + ETS_MAX_GRID_COLS / SLOTS);  // ETR_MAX_GROUPS + 1

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full_bar + 8 * s, 1);
            mbar_init(empty_bar + 8 * s, 8);  // one arrival per consumer warp
        }
        mbar_init(res_bar, 1);
        mbar_init(res_bar + 8, 1);
        fence_barrier_init();
    }
    // Runs of equal work where the host asks for them (never with K splits, which give each CTA
    // one tile).
    const int G = (N + ETR_BN - 1) / ETR_BN;
    const bool balanced = (sched_flags & SCHED_BALANCE) && !(sched_flags & SCHED_TOKEN_MAJOR) &&
                          gridDim.z == 1 && G <= ETR_MAX_GROUPS;
    if (balanced && warp == 0) group_work<R, TW>(cum, bitmap, grid_rows, grid_cols, G, lane);
    __syncthreads();
    Schedule sched(M, N, BT, sched_flags);
    if (balanced) sched.balance(cum, G);

    if (warp == 8) {
        // Producer. Lane 0 issues X's copies and a boxed stage's weights; otherwise lane r < R copies
        // block row r's tiles.
        if (lane == 0) {
            tma_prefetch(tmx);
            tma_prefetch(tmx_wide);
            tma_prefetch(tmw);
            if (TW > 16) tma_prefetch(tmw_tile);
        }
        // X's copies evict first where the host asks (SCHED_X_STREAM; see rs_schedule_flags).
        const bool x_stream = (sched_flags & SCHED_X_STREAM) != 0;
        const u64 x_policy = x_stream ? l2_evict_first_policy() : 0ull;
        int q = 0, cur_group = -1, gbeg = 0, GL = 0;
        Schedule::Cursor cur = sched.first();
        for (long long t = sched.beg; t < sched.end; ++t, cur.next(sched)) {
            const int group = cur.group, m0 = cur.block * BT;
            if (group != cur_group) {
                __syncwarp();  // every lane is done with the previous group's plans
                copy_plans(plans, gplans + static_cast<size_t>(group) * plan_stride, plan_stride, lane);
                __syncwarp();
                cur_group = group;
                const int G = static_cast<int>(plans[0].stages);
                gbeg = static_cast<int>((static_cast<long long>(G) * blockIdx.z) / gridDim.z);
                GL = static_cast<int>((static_cast<long long>(G) * (blockIdx.z + 1)) / gridDim.z) - gbeg;
            }
            for (int g = 0; g < (GL > 0 ? GL : 1); ++g, ++q) {
                const int b = q % STAGES;
                const u32 bar = full_bar + 8 * b;
                if (GL == 0) {
                    producer_wait<STAGES>(empty_bar + 8 * b, q);
                    if (lane == 0) {
                        info[b] = StageInfo{0u, STAGE_LAST | STAGE_EMPTY};
                        mbar_arrive(bar);
                    }
                    continue;
                }
                const StagePlan& pl = plans[gbeg + g];
                const bool boxed = (pl.flags & STAGE_W_BOXED) != 0, contig = (pl.flags & STAGE_CONTIG) != 0;
                const u32 wbytes = pl.wbytes;
                const u32 xbytes = RG::STAGE_X;
                producer_wait<STAGES>(empty_bar + 8 * b, q);
                if (lane == 0) {
                    info[b] = StageInfo{pl.kept, pl.flags | (g == GL - 1 ? STAGE_LAST : 0u)};
                    mbar_arrive_expect_tx(bar, wbytes + xbytes);
                    if (boxed) tma_load_3d(ws_base + b * RG::STAGE_W, tmw, 0, pl.wline, group * R, bar);
                    const u32 xs = xs_base + b * RG::STAGE_X;
                    if (contig) {
                        if (x_stream)
                            tma_load_2d_hint(xs, tmx_wide, pl.xcol[0], m0, bar, x_policy);
                        else
                            tma_load_2d(xs, tmx_wide, pl.xcol[0], m0, bar);
                    } else if (x_stream) {
#pragma unroll
                        for (int s = 0; s < SLOTS; ++s)
                            tma_load_2d_hint(xs + s * RG::SLOT_X, tmx, pl.xcol[s], m0, bar, x_policy);
                    } else {
#pragma unroll
                        for (int s = 0; s < SLOTS; ++s) tma_load_2d(xs + s * RG::SLOT_X, tmx, pl.xcol[s], m0, bar);
                    }
                }
                if (TW > 16 && !boxed && lane == 0) {
                    // One box per kept tile (its lines, 128-byte swizzle), after the expected byte
                    // count: tile column u of block row r.
#pragma unroll
                    for (int r = 0; r < R; ++r)
#pragma unroll
                        for (int u = 0; u < UPS; ++u)
                            if ((pl.kept >> (4 * r + u * (TW / 16))) & 1u) {
                                // The row's kept tiles of the stage are consecutive in the file.
                                const u32 before = __popc((pl.kept >> (4 * r)) & ((1u << (u * (TW / 16))) - 1u)) / (TW / 16);
                                const int line = static_cast<int>(pl.first[r] + before) * tile_lines(TH, TW);
                                tma_load_2d(ws_base + b * RG::STAGE_W + r * (TH * 128) + u * (TH * TW * 2), tmw_tile,
                                            0, line, bar);
                            }
                }
                if (TW == 16 && !boxed) {
                    __syncwarp();  // the rows' copies follow the expected byte count
                    const u32 kept_bits = lane < R ? (pl.kept >> (4 * lane)) & 0xFu : 0u;
                    if (kept_bits) {
                        const int r = lane;
                        const u32 dst = ws_base + b * RG::STAGE_W + r * SLOTS * SLICE;
                        // The row's kept tiles among the stage's columns are consecutive in the file.
                        const T* src = values + static_cast<size_t>(pl.first[r]) * (TH * 16);
                        if (kept_bits == 0xFu) {
                            bulk_copy(dst, src, SLOTS * SLICE, bar);
                        } else {
                            int k = 0;
#pragma unroll
                            for (int s = 0; s < SLOTS; ++s)
                                if ((kept_bits >> s) & 1u) bulk_copy(dst + s * SLICE, src + (k++) * (TH * 16), SLICE, bar);
                        }
                    }
                }
            }
        }
    } else {
        consumers<T, BF16, TH, TW, BT>(sched, tmres, tmy, M, N, bias, residual, gelu, ws, xs_base, ws_base,
                                   out_base, full_bar, empty_bar, res_bar, info);
    }
}


}  // namespace etr

// 192 tokens per CTA, one CTA per multiprocessor, persistent: the grid's CTAs share the output
// tiles (see Schedule). The register budget decides BT: with the producer warp, a thread may hold 168
// registers (three warps per scheduler), and 256 tokens (128 accumulators) plus two sets of A
// fragments do not fit: ptxas then serialises the wgmma (C7512). At 192 tokens they do (96).
// Handing the producer's registers to the consumers (setmaxnreg) does not help: ptxas still
// compiles the consumers for the launch's 168.
#define ETS_TILE_RS(NAME, T, BF, TH, TW, BT)                                                                  \
    extern "C" __global__ void __launch_bounds__(ETR_THREADS, 1)                                              \
        NAME(const __grid_constant__ ek::TensorMap tmx, const __grid_constant__ ek::TensorMap tmx_wide,        \
             const __grid_constant__ ek::TensorMap tmy, const __grid_constant__ ek::TensorMap tmres,            \
             const __grid_constant__ ek::TensorMap tmw, const __grid_constant__ ek::TensorMap tmw_tile,         \
             int plan_stride, int sched_flags, int M, int K, const u64* bitmap, const uint4* plans, const T* values, int N,   \
             int grid_rows, int grid_cols, const float* bias, const T* residual, int gelu, float* ws) {          \
        etr::body<T, BF, TH, TW, BT>(&tmx, &tmx_wide, &tmy, &tmres, &tmw, &tmw_tile, plan_stride, sched_flags, M, K, bitmap, \
                                     reinterpret_cast<const etr::StagePlan*>(plans), values, N, grid_rows, grid_cols, \
                                     bias, residual, gelu, ws);                                                    \
    }

#define ETS_TILE_RS_ALL(TH, TW)                                                            \
    ETS_TILE_RS(tile_rs_f16_##TH##x##TW##_bm192, __half, false, TH, TW, 192)               \
    ETS_TILE_RS(tile_rs_bf16_##TH##x##TW##_bm192, __nv_bfloat16, true, TH, TW, 192)

ETS_TILE_RS_ALL(16, 16)
ETS_TILE_RS_ALL(64, 16)
ETS_TILE_RS_ALL(128, 16)
ETS_TILE_RS_ALL(32, 32)
ETS_TILE_RS_ALL(64, 64)

