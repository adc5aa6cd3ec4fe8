// Python bindings of the CUDA kernels (compiled by the host compiler; the kernels live in
// cuda/kernels.cu behind a C API). Errors from CUDA raise RuntimeError naming the call.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "saga_cuda.h"

namespace nb = nanobind;

namespace {

using F64In = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64In = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using U8In = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Pool = nb::ndarray<uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using PoolIn = nb::ndarray<const uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

template <typename T, size_t D = 1>
nb::ndarray<nb::numpy, T> owned(std::vector<T>&& v, std::initializer_list<size_t> shape) {
    auto* heap = new std::vector<T>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return nb::ndarray<nb::numpy, T>(heap->data(), shape, owner);
}

void check(int rc) {
    if (rc != 0) throw std::runtime_error(std::string("CUDA: ") + saga_cuda_error());
}

void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
}

std::string device_name() {
    char buf[256] = "";
    check(saga_cuda_device_name(buf, sizeof buf));
    return buf;
}

std::tuple<nb::ndarray<nb::numpy, double>, int64_t, double> walru_best(
        F64In la, F64In rp, F64In sz, I64In dp, double now, double alpha, double beta,
        double gamma) {
    const int64_t n = static_cast<int64_t>(la.shape(0));
    require(static_cast<int64_t>(rp.shape(0)) == n && static_cast<int64_t>(sz.shape(0)) == n &&
                static_cast<int64_t>(dp.shape(0)) == n,
            "walru_best: arrays must have one length");
    std::vector<double> scores(static_cast<size_t>(n));
    int64_t best = -1;
    float ms = 0.0f;
    {
        nb::gil_scoped_release nogil;
        check(saga_cuda_walru_best(la.data(), rp.data(), sz.data(), dp.data(), n, now, alpha,
                                   beta, gamma, scores.data(), &best, &ms));
    }
    return {owned(std::move(scores), {static_cast<size_t>(n)}), best, static_cast<double>(ms)};
}

nb::ndarray<nb::numpy, int64_t> prefix_overlap(I64In query, I64In flat, I64In offsets) {
    const int64_t s = static_cast<int64_t>(offsets.shape(0)) - 1;
    require(s >= 0, "prefix_overlap: offsets needs at least one entry (0)");
    std::vector<int64_t> out(static_cast<size_t>(s));
    {
        nb::gil_scoped_release nogil;
        check(saga_cuda_prefix_overlap(query.data(), static_cast<int64_t>(query.shape(0)),
                                       flat.data(), static_cast<int64_t>(flat.shape(0)),
                                       offsets.data(), s, out.data()));
    }
    return owned(std::move(out), {static_cast<size_t>(s)});
}

void kv_migrate(PoolIn src, Pool dst, I64In src_idx, I64In dst_idx) {
    require(src.shape(1) == dst.shape(1), "kv_migrate: src and dst blocks differ in size");
    require(src_idx.shape(0) == dst_idx.shape(0), "kv_migrate: index arrays differ in length");
    nb::gil_scoped_release nogil;
    check(saga_cuda_kv_migrate(src.data(), static_cast<int64_t>(src.shape(0)), dst.data(),
                               static_cast<int64_t>(dst.shape(0)),
                               static_cast<int64_t>(src.shape(1)), src_idx.data(),
                               dst_idx.data(), static_cast<int64_t>(src_idx.shape(0))));
}

nb::ndarray<nb::numpy, int64_t> compact(Pool pool, U8In live) {
    const int64_t blocks = static_cast<int64_t>(pool.shape(0));
    require(static_cast<int64_t>(live.shape(0)) == blocks, "compact: live must have one flag a block");
    std::vector<int64_t> index(static_cast<size_t>(blocks));
    {
        nb::gil_scoped_release nogil;
        check(saga_cuda_compact(pool.data(), blocks, static_cast<int64_t>(pool.shape(1)),
                                live.data(), index.data()));
    }
    return owned(std::move(index), {static_cast<size_t>(blocks)});
}

void prefetch(PoolIn host_pool, I64In idx, Pool out) {
    require(out.shape(0) == idx.shape(0) && out.shape(1) == host_pool.shape(1),
            "prefetch: out must be (len(idx), block_bytes)");
    nb::gil_scoped_release nogil;
    check(saga_cuda_prefetch(host_pool.data(), static_cast<int64_t>(host_pool.shape(0)),
                             static_cast<int64_t>(host_pool.shape(1)), idx.data(),
                             static_cast<int64_t>(idx.shape(0)), out.data()));
}

std::tuple<double, double, double> bandwidth(int64_t bytes, int iters) {
    require(bytes > 0 && iters > 0, "bandwidth: bytes and iters must be positive");
    double pinned = 0, overlapped = 0, pageable = 0;
    nb::gil_scoped_release nogil;
    check(saga_cuda_bandwidth(bytes, iters, &pinned, &overlapped, &pageable));
    return {pinned, overlapped, pageable};
}

}  // namespace

NB_MODULE(_cuda, m) {
    m.doc() = "SAGA CUDA kernels; see saga.kernels.cuda for their twins.";
    m.attr("BUILD_INFO") = SAGA_CUDA_INFO;
    m.def("device_count", &saga_cuda_device_count, "CUDA devices visible (0 without a GPU).");
    m.def("device_name", &device_name);
    m.def("walru_best", &walru_best, nb::arg("last_access").noconvert(),
          nb::arg("reuse_prob").noconvert(), nb::arg("size_tokens").noconvert(),
          nb::arg("depth").noconvert(), nb::arg("now"), nb::arg("alpha"), nb::arg("beta"),
          nb::arg("gamma"));
    m.def("prefix_overlap", &prefix_overlap, nb::arg("query").noconvert(),
          nb::arg("flat").noconvert(), nb::arg("offsets").noconvert());
    m.def("kv_migrate", &kv_migrate, nb::arg("src").noconvert(), nb::arg("dst").noconvert(),
          nb::arg("src_idx").noconvert(), nb::arg("dst_idx").noconvert());
    m.def("compact", &compact, nb::arg("pool").noconvert(), nb::arg("live").noconvert());
    m.def("prefetch", &prefetch, nb::arg("host_pool").noconvert(), nb::arg("idx").noconvert(),
          nb::arg("out").noconvert());
    m.def("bandwidth", &bandwidth, nb::arg("bytes"), nb::arg("iters"));
}
