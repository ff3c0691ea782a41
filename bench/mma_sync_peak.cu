// Peak throughput of mma.sync.m16n8k16 (f16 in, f32 accumulate), the instruction the attention
// kernel runs on: every warp issues independent MMAs on register operands (no memory traffic),
// 8 accumulators deep. Build and run on the GPU: nvcc -O3 -arch=sm_90 bench/mma_sync_peak.cu -o p && ./p
#include <cstdio>
#include <cuda_runtime.h>

__global__ void peak(float* out, int iters) {
    unsigned a0 = threadIdx.x, a1 = a0 * 3, a2 = a0 * 5, a3 = a0 * 7, b0 = a0 * 11, b1 = a0 * 13;
    float c[8][4] = {};
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
            asm volatile(
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                "{%0,%1,%2,%3};\n"
                : "+f"(c[j][0]), "+f"(c[j][1]), "+f"(c[j][2]), "+f"(c[j][3])
                : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
    float s = 0.f;
    for (int j = 0; j < 8; ++j) s += c[j][0] + c[j][1] + c[j][2] + c[j][3];
    if (s == 1.2345f) out[0] = s;
}

int main() {
    int sms;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    float* out;
    cudaMalloc(&out, 4);
    const int iters = 20000;
    for (int warps : {4, 8, 16}) {
        const int blocks = sms * 4;
        peak<<<blocks, warps * 32>>>(out, 100);
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0);
        cudaEventCreate(&e1);
        cudaEventRecord(e0);
        peak<<<blocks, warps * 32>>>(out, iters);
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        const double flops = 2.0 * 16 * 8 * 16 * 8.0 * iters * warps * blocks;
        printf("mma.sync m16n8k16 f16->f32 peak: %d warps x %d blocks: %.0f TFLOPS\n", warps, blocks,
               flops / ms / 1e9);
    }
    return 0;
}
