// SAGA's value ranking (saga-policy's ETAPolicy): each candidate block's value per byte and
// second, and the k lowest-valued candidates, best victim first. The NumPy twin in
// src/saga/kernels/value_rank.py defines the meaning; this module must equal it bit for bit
// (built with -ffp-contract=off, operations in the twin's order).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace nb = nanobind;

namespace {

using F64In = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64In = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F64Out = nb::ndarray<nb::numpy, double, nb::ndim<1>>;
using I64Out = nb::ndarray<nb::numpy, int64_t, nb::ndim<1>>;

void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
}

template <typename T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return nb::ndarray<nb::numpy, T, nb::ndim<1>>(heap->data(), {heap->size()}, owner);
}

// value = p * saved / (size * max(next_use - now, min_until)),
// saved = B * (dense + attn * (depth * B + B / 2)): the twin's expression, term by term.
void values(const double* nu, const double* p, const int64_t* d, int64_t n, double now,
            double b, double dense, double attn, double size, double min_until, double* out) {
    const double half = b / 2.0;
    for (int64_t i = 0; i < n; ++i) {
        const double ctx = static_cast<double>(d[i]) * b + half;
        const double saved = b * (dense + attn * ctx);
        const double until = std::max(nu[i] - now, min_until);
        out[i] = p[i] * saved / (size * until);
    }
}

// Best victim first: lowest value, then deepest, then least recently used, then input order.
struct Less {
    const double* v;
    const int64_t* d;
    const double* la;
    bool operator()(int64_t a, int64_t b) const {
        if (v[a] != v[b]) return v[a] < v[b];
        if (d[a] != d[b]) return d[a] > d[b];
        if (la[a] != la[b]) return la[a] < la[b];
        return a < b;
    }
};

std::pair<F64Out, I64Out> eta_select(F64In next_use, F64In reuse_prob, I64In depth,
                                     F64In last_access, double now, int64_t k, double block_tokens,
                                     double dense_flops, double attn_flops, double size_bytes,
                                     double min_until) {
    const int64_t n = static_cast<int64_t>(next_use.shape(0));
    require(static_cast<int64_t>(reuse_prob.shape(0)) == n &&
                static_cast<int64_t>(depth.shape(0)) == n &&
                static_cast<int64_t>(last_access.shape(0)) == n,
            "eta_select: next_use, reuse_prob, depth and last_access must have one length");
    require(!std::isnan(now), "eta_select: now is NaN; pass the current time in seconds");
    require(k >= 0, "eta_select: k must be >= 0");
    require(std::isfinite(block_tokens) && block_tokens > 0 && std::isfinite(dense_flops) &&
                dense_flops >= 0 && std::isfinite(attn_flops) && attn_flops >= 0 &&
                std::isfinite(size_bytes) && size_bytes > 0 && std::isfinite(min_until) &&
                min_until > 0,
            "eta_select: block_tokens, size_bytes and min_until must be finite and > 0, "
            "dense_flops and attn_flops finite and >= 0");
    const double* nu = next_use.data();
    const double* p = reuse_prob.data();
    const int64_t* d = depth.data();
    const double* la = last_access.data();
    for (int64_t i = 0; i < n; ++i) {
        if (std::isnan(nu[i]) || std::isnan(nu[i] - now) || !(p[i] >= 0.0 && p[i] <= 1.0) ||
            d[i] < 0 || std::isnan(la[i]))
            throw std::invalid_argument(
                "eta_select: bad input at candidate " + std::to_string(i) +
                " (next_use and last_access must be numbers, next_use - now not NaN, "
                "reuse_prob in [0, 1], depth >= 0)");
    }
    std::vector<double> val(static_cast<size_t>(n));
    values(nu, p, d, n, now, block_tokens, dense_flops, attn_flops, size_bytes, min_until,
           val.data());
    const int64_t kk = std::min(k, n);
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = i;
    const Less less{val.data(), d, la};
    if (kk < n && kk > 0) std::nth_element(idx.begin(), idx.begin() + (kk - 1), idx.end(), less);
    std::sort(idx.begin(), idx.begin() + kk, less);
    idx.resize(static_cast<size_t>(kk));
    return {to_numpy(std::move(val)), to_numpy(std::move(idx))};
}

}  // namespace

NB_MODULE(_value_rank, m) {
    m.doc() = "SAGA's value ranking (ETA eviction): values and the k best victims";
    m.attr("BUILD_INFO") = SAGA_BUILD_INFO;
    m.def("eta_select", &eta_select, nb::arg("next_use"), nb::arg("reuse_prob"),
          nb::arg("depth"), nb::arg("last_access"), nb::arg("now"), nb::arg("k"),
          nb::arg("block_tokens"), nb::arg("dense_flops"), nb::arg("attn_flops"),
          nb::arg("size_bytes"), nb::arg("min_until"));
}
