// SAGA's CUDA kernels (sm_80, sm_90). Meaning: the NumPy twins in saga/kernels/cuda.py.
#include "saga_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

thread_local char g_error[256] = "";

int fail(cudaError_t err, const char* where) {
    std::snprintf(g_error, sizeof g_error, "%s: %s", where, cudaGetErrorString(err));
    return static_cast<int>(err);
}

#define SAGA_TRY(expr)                                      \
    do {                                                    \
        cudaError_t err_ = (expr);                          \
        if (err_ != cudaSuccess) return fail(err_, #expr);  \
    } while (0)

// Device memory freed on every exit path.
template <typename T>
struct DevBuf {
    T* ptr = nullptr;
    ~DevBuf() { if (ptr) cudaFree(ptr); }
    cudaError_t alloc(int64_t count) {
        return cudaMalloc(reinterpret_cast<void**>(&ptr), sizeof(T) * (count > 0 ? count : 1));
    }
};

struct Stream {
    cudaStream_t s = nullptr;
    ~Stream() { if (s) cudaStreamDestroy(s); }
};

struct Event {
    cudaEvent_t e = nullptr;
    ~Event() { if (e) cudaEventDestroy(e); }
};

struct Pinned {
    void* ptr = nullptr;
    ~Pinned() { if (ptr) cudaFreeHost(ptr); }
};

constexpr int kBlock = 1024;

struct Best {
    double score, last;
    int64_t depth, idx;
};

__device__ bool better(const Best& a, const Best& b) {
    if (b.idx < 0) return a.idx >= 0;
    if (a.idx < 0) return false;
    if (a.score != b.score) return a.score > b.score;
    if (a.last != b.last) return a.last < b.last;
    if (a.depth != b.depth) return a.depth > b.depth;
    return a.idx < b.idx;
}

// One launch, one block: reduce the two maxima, score every candidate, reduce the best.
__global__ void walru_best_kernel(const double* la, const double* rp, const double* sz,
                                  const int64_t* dp, int64_t n, double now, double alpha,
                                  double beta, double gamma, double* scores, int64_t* best) {
    __shared__ double s_age[kBlock];
    __shared__ double s_size[kBlock];
    __shared__ Best s_best[kBlock];
    const int t = threadIdx.x;
    double top_age = 0.0, top_size = -INFINITY;
    for (int64_t i = t; i < n; i += blockDim.x) {
        top_age = fmax(top_age, fmax(now - la[i], 0.0));
        top_size = fmax(top_size, sz[i]);
    }
    s_age[t] = top_age;
    s_size[t] = top_size;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) {
            s_age[t] = fmax(s_age[t], s_age[t + stride]);
            s_size[t] = fmax(s_size[t], s_size[t + stride]);
        }
        __syncthreads();
    }
    top_age = s_age[0];
    top_size = s_size[0];
    Best mine{0.0, 0.0, 0, -1};
    for (int64_t i = t; i < n; i += blockDim.x) {
        const double r = top_age > 0.0 ? fmax(now - la[i], 0.0) / top_age : 0.0;
        const double s = top_size > 0.0 ? sz[i] / top_size : 0.0;
        const double score = __dadd_rn(__dadd_rn(__dmul_rn(alpha, r),
                                                 __dmul_rn(beta, __dsub_rn(1.0, rp[i]))),
                                       __dmul_rn(gamma, s));
        scores[i] = score;
        const Best c{score, la[i], dp[i], i};
        if (better(c, mine)) mine = c;
    }
    s_best[t] = mine;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride && better(s_best[t + stride], s_best[t])) s_best[t] = s_best[t + stride];
        __syncthreads();
    }
    if (t == 0) *best = s_best[0].idx;
}

// One warp per session: lanes compare 32 positions at a time, the first mismatch ends it.
__global__ void prefix_overlap_kernel(const int64_t* query, int64_t q, const int64_t* flat,
                                      const int64_t* off, int64_t sessions, int64_t* out) {
    const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (warp >= sessions) return;
    const int64_t* row = flat + off[warp];
    const int64_t len = min(q, off[warp + 1] - off[warp]);
    int64_t result = len;
    for (int64_t base = 0; base < len; base += 32) {
        const int64_t j = base + lane;
        const bool miss = j < len && row[j] != query[j];
        const unsigned ballot = __ballot_sync(0xffffffffu, miss);
        if (ballot) {
            result = base + __ffs(ballot) - 1;
            break;
        }
    }
    if (lane == 0) out[warp] = result;
}

// Copies whole blocks, 8 bytes a thread when the block size allows it.
__global__ void move_blocks_kernel(const uint8_t* src, uint8_t* dst, int64_t block_bytes,
                                   const int64_t* src_idx, const int64_t* dst_idx, int64_t count) {
    const int64_t b = blockIdx.y + static_cast<int64_t>(blockIdx.z) * gridDim.y;
    if (b >= count) return;
    const uint8_t* from = src + src_idx[b] * block_bytes;
    uint8_t* to = dst + dst_idx[b] * block_bytes;
    if (block_bytes % 8 == 0) {
        const int64_t words = block_bytes / 8;
        for (int64_t w = blockIdx.x * blockDim.x + threadIdx.x; w < words;
             w += static_cast<int64_t>(gridDim.x) * blockDim.x)
            reinterpret_cast<uint64_t*>(to)[w] = reinterpret_cast<const uint64_t*>(from)[w];
    } else {
        for (int64_t w = blockIdx.x * blockDim.x + threadIdx.x; w < block_bytes;
             w += static_cast<int64_t>(gridDim.x) * blockDim.x)
            to[w] = from[w];
    }
}

__global__ void busy_kernel(float* x, int64_t n, int rounds) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    for (int r = 0; r < rounds; ++r) v = v * 0.999f + 0.001f;
    x[i] = v;
}

int launch_moves(const uint8_t* d_src, uint8_t* d_dst, int64_t block_bytes,
                 const int64_t* d_src_idx, const int64_t* d_dst_idx, int64_t count,
                 cudaStream_t stream) {
    if (count == 0) return 0;
    const int64_t words = block_bytes % 8 == 0 ? block_bytes / 8 : block_bytes;
    const unsigned gx = static_cast<unsigned>(std::min<int64_t>((words + 255) / 256, 64));
    const unsigned gy = static_cast<unsigned>(std::min<int64_t>(count, 65535));
    const unsigned gz = static_cast<unsigned>((count + gy - 1) / gy);
    move_blocks_kernel<<<dim3(gx, gy, gz), 256, 0, stream>>>(d_src, d_dst, block_bytes, d_src_idx,
                                                             d_dst_idx, count);
    SAGA_TRY(cudaGetLastError());
    return 0;
}

}  // namespace

extern "C" {

int saga_cuda_device_count() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear: no driver or no device is not an error here
        return 0;
    }
    return count;
}

const char* saga_cuda_error() { return g_error; }

int saga_cuda_device_name(char* out, int len) {
    cudaDeviceProp prop{};
    SAGA_TRY(cudaGetDeviceProperties(&prop, 0));
    std::snprintf(out, static_cast<size_t>(len), "%s (sm_%d%d)", prop.name, prop.major,
                  prop.minor);
    return 0;
}

int saga_cuda_walru_best(const double* la, const double* rp, const double* sz,
                         const int64_t* dp, int64_t n, double now, double alpha, double beta,
                         double gamma, double* scores, int64_t* best, float* kernel_ms) {
    *best = -1;
    if (n == 0) return 0;
    DevBuf<double> d_la, d_rp, d_sz, d_sc;
    DevBuf<int64_t> d_dp, d_best;
    SAGA_TRY(d_la.alloc(n));
    SAGA_TRY(d_rp.alloc(n));
    SAGA_TRY(d_sz.alloc(n));
    SAGA_TRY(d_sc.alloc(n));
    SAGA_TRY(d_dp.alloc(n));
    SAGA_TRY(d_best.alloc(1));
    SAGA_TRY(cudaMemcpy(d_la.ptr, la, sizeof(double) * n, cudaMemcpyHostToDevice));
    SAGA_TRY(cudaMemcpy(d_rp.ptr, rp, sizeof(double) * n, cudaMemcpyHostToDevice));
    SAGA_TRY(cudaMemcpy(d_sz.ptr, sz, sizeof(double) * n, cudaMemcpyHostToDevice));
    SAGA_TRY(cudaMemcpy(d_dp.ptr, dp, sizeof(int64_t) * n, cudaMemcpyHostToDevice));
    Event start, stop;
    SAGA_TRY(cudaEventCreate(&start.e));
    SAGA_TRY(cudaEventCreate(&stop.e));
    SAGA_TRY(cudaEventRecord(start.e));
    walru_best_kernel<<<1, kBlock>>>(d_la.ptr, d_rp.ptr, d_sz.ptr, d_dp.ptr, n, now, alpha, beta,
                                     gamma, d_sc.ptr, d_best.ptr);
    SAGA_TRY(cudaGetLastError());
    SAGA_TRY(cudaEventRecord(stop.e));
    SAGA_TRY(cudaEventSynchronize(stop.e));
    SAGA_TRY(cudaEventElapsedTime(kernel_ms, start.e, stop.e));
    SAGA_TRY(cudaMemcpy(scores, d_sc.ptr, sizeof(double) * n, cudaMemcpyDeviceToHost));
    SAGA_TRY(cudaMemcpy(best, d_best.ptr, sizeof(int64_t), cudaMemcpyDeviceToHost));
    return 0;
}

int saga_cuda_prefix_overlap(const int64_t* query, int64_t q, const int64_t* flat, int64_t m,
                             const int64_t* offsets, int64_t sessions, int64_t* out) {
    if (sessions == 0) return 0;
    DevBuf<int64_t> d_q, d_flat, d_off, d_out;
    SAGA_TRY(d_q.alloc(q));
    SAGA_TRY(d_flat.alloc(m));
    SAGA_TRY(d_off.alloc(sessions + 1));
    SAGA_TRY(d_out.alloc(sessions));
    if (q) SAGA_TRY(cudaMemcpy(d_q.ptr, query, sizeof(int64_t) * q, cudaMemcpyHostToDevice));
    if (m) SAGA_TRY(cudaMemcpy(d_flat.ptr, flat, sizeof(int64_t) * m, cudaMemcpyHostToDevice));
    SAGA_TRY(cudaMemcpy(d_off.ptr, offsets, sizeof(int64_t) * (sessions + 1),
                        cudaMemcpyHostToDevice));
    const int64_t threads = sessions * 32;
    const unsigned grid = static_cast<unsigned>((threads + 255) / 256);
    prefix_overlap_kernel<<<grid, 256>>>(d_q.ptr, q, d_flat.ptr, d_off.ptr, sessions, d_out.ptr);
    SAGA_TRY(cudaGetLastError());
    SAGA_TRY(cudaMemcpy(out, d_out.ptr, sizeof(int64_t) * sessions, cudaMemcpyDeviceToHost));
    return 0;
}

int saga_cuda_kv_migrate(const uint8_t* src, int64_t src_blocks, uint8_t* dst,
                         int64_t dst_blocks, int64_t block_bytes, const int64_t* src_idx,
                         const int64_t* dst_idx, int64_t count) {
    DevBuf<uint8_t> d_src, d_dst;
    DevBuf<int64_t> d_si, d_di;
    SAGA_TRY(d_src.alloc(src_blocks * block_bytes));
    SAGA_TRY(d_dst.alloc(dst_blocks * block_bytes));
    SAGA_TRY(d_si.alloc(count));
    SAGA_TRY(d_di.alloc(count));
    SAGA_TRY(cudaMemcpy(d_src.ptr, src, src_blocks * block_bytes, cudaMemcpyHostToDevice));
    SAGA_TRY(cudaMemcpy(d_dst.ptr, dst, dst_blocks * block_bytes, cudaMemcpyHostToDevice));
    if (count) {
        SAGA_TRY(cudaMemcpy(d_si.ptr, src_idx, sizeof(int64_t) * count, cudaMemcpyHostToDevice));
        SAGA_TRY(cudaMemcpy(d_di.ptr, dst_idx, sizeof(int64_t) * count, cudaMemcpyHostToDevice));
    }
    if (int rc = launch_moves(d_src.ptr, d_dst.ptr, block_bytes, d_si.ptr, d_di.ptr, count, 0))
        return rc;
    SAGA_TRY(cudaMemcpy(dst, d_dst.ptr, dst_blocks * block_bytes, cudaMemcpyDeviceToHost));
    return 0;
}

int saga_cuda_compact(uint8_t* pool, int64_t blocks, int64_t block_bytes, const uint8_t* live,
                      int64_t* new_index) {
    std::vector<int64_t> from, to;
    for (int64_t b = 0; b < blocks; ++b) {
        new_index[b] = live[b] ? static_cast<int64_t>(from.size()) : -1;
        if (live[b]) {
            to.push_back(static_cast<int64_t>(from.size()));
            from.push_back(b);
        }
    }
    const int64_t count = static_cast<int64_t>(from.size());
    DevBuf<uint8_t> d_pool, d_out;
    DevBuf<int64_t> d_from, d_to;
    SAGA_TRY(d_pool.alloc(blocks * block_bytes));
    SAGA_TRY(d_out.alloc(blocks * block_bytes));
    SAGA_TRY(d_from.alloc(count));
    SAGA_TRY(d_to.alloc(count));
    SAGA_TRY(cudaMemcpy(d_pool.ptr, pool, blocks * block_bytes, cudaMemcpyHostToDevice));
    SAGA_TRY(cudaMemset(d_out.ptr, 0, blocks * block_bytes));
    if (count) {
        SAGA_TRY(cudaMemcpy(d_from.ptr, from.data(), sizeof(int64_t) * count,
                            cudaMemcpyHostToDevice));
        SAGA_TRY(cudaMemcpy(d_to.ptr, to.data(), sizeof(int64_t) * count, cudaMemcpyHostToDevice));
    }
    if (int rc = launch_moves(d_pool.ptr, d_out.ptr, block_bytes, d_from.ptr, d_to.ptr, count, 0))
        return rc;
    SAGA_TRY(cudaMemcpy(pool, d_out.ptr, blocks * block_bytes, cudaMemcpyDeviceToHost));
    return 0;
}

int saga_cuda_prefetch(const uint8_t* host_pool, int64_t blocks, int64_t block_bytes,
                       const int64_t* idx, int64_t count, uint8_t* out) {
    (void)blocks;
    const int64_t bytes = count * block_bytes;
    if (bytes == 0) return 0;
    Pinned staging;
    SAGA_TRY(cudaHostAlloc(&staging.ptr, bytes, cudaHostAllocDefault));
    auto* stage = static_cast<uint8_t*>(staging.ptr);
    for (int64_t i = 0; i < count; ++i)
        std::memcpy(stage + i * block_bytes, host_pool + idx[i] * block_bytes, block_bytes);
    DevBuf<uint8_t> d_kv;
    DevBuf<float> d_work;
    const int64_t work = 1 << 20;
    SAGA_TRY(d_kv.alloc(bytes));
    SAGA_TRY(d_work.alloc(work));
    SAGA_TRY(cudaMemset(d_work.ptr, 0, sizeof(float) * work));
    Stream copy, compute;
    SAGA_TRY(cudaStreamCreateWithFlags(&copy.s, cudaStreamNonBlocking));
    SAGA_TRY(cudaStreamCreateWithFlags(&compute.s, cudaStreamNonBlocking));
    busy_kernel<<<static_cast<unsigned>(work / 256), 256, 0, compute.s>>>(d_work.ptr, work, 256);
    SAGA_TRY(cudaGetLastError());
    SAGA_TRY(cudaMemcpyAsync(d_kv.ptr, stage, bytes, cudaMemcpyHostToDevice, copy.s));
    SAGA_TRY(cudaStreamSynchronize(copy.s));
    SAGA_TRY(cudaStreamSynchronize(compute.s));
    SAGA_TRY(cudaMemcpy(out, d_kv.ptr, bytes, cudaMemcpyDeviceToHost));
    return 0;
}

int saga_cuda_bandwidth(int64_t bytes, int iters, double* pinned_gbps, double* overlapped_gbps,
                        double* pageable_gbps) {
    Pinned host;
    SAGA_TRY(cudaHostAlloc(&host.ptr, bytes, cudaHostAllocDefault));
    std::memset(host.ptr, 1, bytes);
    std::vector<uint8_t> pageable(static_cast<size_t>(bytes), 1);
    DevBuf<uint8_t> dev;
    DevBuf<float> d_work;
    const int64_t work = 1 << 22;
    SAGA_TRY(dev.alloc(bytes));
    SAGA_TRY(d_work.alloc(work));
    SAGA_TRY(cudaMemset(d_work.ptr, 0, sizeof(float) * work));
    Stream copy, compute;
    SAGA_TRY(cudaStreamCreateWithFlags(&copy.s, cudaStreamNonBlocking));
    SAGA_TRY(cudaStreamCreateWithFlags(&compute.s, cudaStreamNonBlocking));
    Event a, b;
    SAGA_TRY(cudaEventCreate(&a.e));
    SAGA_TRY(cudaEventCreate(&b.e));
    auto timed = [&](const void* src, bool overlap, double* gbps) -> int {
        SAGA_TRY(cudaMemcpyAsync(dev.ptr, src, bytes, cudaMemcpyHostToDevice, copy.s));  // warm
        SAGA_TRY(cudaStreamSynchronize(copy.s));
        if (overlap)
            busy_kernel<<<static_cast<unsigned>(work / 256), 256, 0, compute.s>>>(
                d_work.ptr, work, 4096 * iters);
        SAGA_TRY(cudaEventRecord(a.e, copy.s));
        for (int i = 0; i < iters; ++i)
            SAGA_TRY(cudaMemcpyAsync(dev.ptr, src, bytes, cudaMemcpyHostToDevice, copy.s));
        SAGA_TRY(cudaEventRecord(b.e, copy.s));
        SAGA_TRY(cudaEventSynchronize(b.e));
        float ms = 0.0f;
        SAGA_TRY(cudaEventElapsedTime(&ms, a.e, b.e));
        SAGA_TRY(cudaStreamSynchronize(compute.s));
        *gbps = static_cast<double>(bytes) * iters / (ms * 1e-3) / 1e9;
        return 0;
    };
    if (int rc = timed(host.ptr, false, pinned_gbps)) return rc;
    if (int rc = timed(host.ptr, true, overlapped_gbps)) return rc;
    if (int rc = timed(pageable.data(), false, pageable_gbps)) return rc;
    return 0;
}

}  // extern "C"
