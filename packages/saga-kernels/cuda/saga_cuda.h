// C API of SAGA's CUDA kernels. Host pointers in and out; each call manages its device memory
// and streams. Every function returns 0 on success, else a CUDA error code; saga_cuda_error()
// names the last failure. The Python module saga.kernels._cuda binds these.
#pragma once
#include <cstdint>

extern "C" {
int saga_cuda_device_count();
const char* saga_cuda_error();
int saga_cuda_device_name(char* out, int len);

// WA-LRU scoring + arg-best in one launch: scores[n] and the best victim's index (-1 if n == 0).
int saga_cuda_walru_best(const double* last_access, const double* reuse_prob,
                         const double* size_tokens, const int64_t* depth, int64_t n, double now,
                         double alpha, double beta, double gamma, double* scores, int64_t* best,
                         float* kernel_ms);

// Batched prefix overlap: out[i] = common-prefix length of query and session i.
int saga_cuda_prefix_overlap(const int64_t* query, int64_t q, const int64_t* flat, int64_t m,
                             const int64_t* offsets, int64_t sessions, int64_t* out);

// KV migration between pools: dst[dst_idx[i]] = src[src_idx[i]] (blocks of block_bytes).
int saga_cuda_kv_migrate(const uint8_t* src, int64_t src_blocks, uint8_t* dst,
                         int64_t dst_blocks, int64_t block_bytes, const int64_t* src_idx,
                         const int64_t* dst_idx, int64_t count);

// Paged-pool compaction: live blocks move to the front in order, the rest is zeroed;
// new_index[b] = new position of block b, -1 if dead.
int saga_cuda_compact(uint8_t* pool, int64_t blocks, int64_t block_bytes, const uint8_t* live,
                      int64_t* new_index);

// KV prefetch: blocks idx of a host pool, staged in pinned memory, copied to the device on a
// separate stream while a compute kernel runs on another; out gets them back for checking.
int saga_cuda_prefetch(const uint8_t* host_pool, int64_t blocks, int64_t block_bytes,
                       const int64_t* idx, int64_t count, uint8_t* out);

// Host-to-device bandwidth in GB/s: a plain cudaMemcpyAsync from pinned memory, the same on a
// separate stream while compute runs (the prefetch path), and from pageable memory.
int saga_cuda_bandwidth(int64_t bytes, int iters, double* pinned_gbps, double* overlapped_gbps,
                        double* pageable_gbps);
}
