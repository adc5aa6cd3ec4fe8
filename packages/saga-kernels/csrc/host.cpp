// SAGA's host kernels: C++17 (+ OpenMP when built with it), zero-copy over NumPy arrays.
//
// Each function's meaning is its NumPy/Python twin in saga/kernels/*.py; the tests compare them.
// Arrays come in as contiguous 1-D views of the exact dtype (.noconvert(): a wrong dtype is a
// TypeError, never a silent copy). Bad values raise std::invalid_argument -> ValueError.

#include "cache_core.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#ifdef SAGA_OPENMP
#include <omp.h>
#endif

namespace nb = nanobind;

namespace {

using F64In = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I64In = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F64Out = nb::ndarray<nb::numpy, double, nb::ndim<1>>;
using I64Out = nb::ndarray<nb::numpy, int64_t, nb::ndim<1>>;

constexpr double kInf = std::numeric_limits<double>::infinity();

// Hot loops get an AVX2 clone picked at load time on CPUs that have it (IEEE results are the
// same: -ffp-contract=off keeps FMA out, and division and max are exact in either width).
#if defined(__x86_64__) && defined(__GNUC__)
#define SAGA_X86 1
#include <immintrin.h>
#else
#define SAGA_X86 0
#endif
#if SAGA_X86 && !defined(__clang__)
#define SAGA_SIMD __attribute__((target_clones("avx2", "default")))
#else
#define SAGA_SIMD
#endif
// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 20;

template <typename T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> owned(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return nb::ndarray<nb::numpy, T, nb::ndim<1>>(heap->data(), {heap->size()}, owner);
}

void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
}

int threads() {
#ifdef SAGA_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// ---------------------------------------------------------------- WA-LRU victim selection

struct Cand {
    double score;
    double last;
    int64_t depth;
    int64_t idx;
};

// Best victim first: highest score, then least recently used, then deepest, then input order
// (exactly numpy.lexsort((-depth, last_access, -score)), which is stable).
inline bool better(const Cand& a, const Cand& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.last != b.last) return a.last < b.last;
    if (a.depth != b.depth) return a.depth > b.depth;
    return a.idx < b.idx;
}


struct Maxima {
    double top_age, top_size;
    int64_t bad_at;  // < n: the fast pass saw a NaN, a negative depth or an infinite now
};

// One streaming pass. max(now - la, 0) over all equals max(now - min(la), 0) exactly (rounding
// is monotone), so only min(la) is needed. NaN in reuse_prob shows up later as a NaN score.
Maxima walru_maxima_scalar(const double* la, const double* sz, const int64_t* dp, int64_t n,
                           double now) {
    double lo = kInf, hi = -kInf;
    int64_t nans = 0, dmin = 0;
    for (int64_t i = 0; i < n; ++i) {
        lo = la[i] < lo ? la[i] : lo;
        hi = sz[i] > hi ? sz[i] : hi;
        nans += (la[i] != la[i]) + (sz[i] != sz[i]);
        dmin = dp[i] < dmin ? dp[i] : dmin;
    }
    return {n ? std::max(now - lo, 0.0) : 0.0, hi, nans > 0 || dmin < 0 || std::isinf(now) ? 0 : n};
}

#if SAGA_X86
// The same pass four lanes at a time (the compiler will not vectorise a NaN-aware min/max).
// vminpd/vmaxpd keep the accumulator when the new value is NaN; NaNs are flagged separately.
__attribute__((target("avx2"))) Maxima walru_maxima_avx2(const double* la, const double* sz,
                                                         const int64_t* dp, int64_t n,
                                                         double now) {
    __m256d vlo = _mm256_set1_pd(kInf), vhi = _mm256_set1_pd(-kInf), vnan = _mm256_setzero_pd();
    __m256i vneg = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const __m256d a = _mm256_loadu_pd(la + i), s = _mm256_loadu_pd(sz + i);
        vlo = _mm256_min_pd(a, vlo);
        vhi = _mm256_max_pd(s, vhi);
        vnan = _mm256_or_pd(vnan, _mm256_or_pd(_mm256_cmp_pd(a, a, _CMP_UNORD_Q),
                                               _mm256_cmp_pd(s, s, _CMP_UNORD_Q)));
        vneg = _mm256_or_si256(vneg, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dp + i)));
    }
    alignas(32) double lo4[4], hi4[4];
    alignas(32) int64_t neg4[4];
    _mm256_store_pd(lo4, vlo);
    _mm256_store_pd(hi4, vhi);
    _mm256_store_si256(reinterpret_cast<__m256i*>(neg4), vneg);
    const Maxima tail = walru_maxima_scalar(la + i, sz + i, dp + i, n - i, now);
    double lo = std::min(std::min(lo4[0], lo4[1]), std::min(lo4[2], lo4[3]));
    for (int64_t j = i; j < n; ++j) lo = std::min(lo, la[j]);
    const double hi = std::max(std::max(std::max(hi4[0], hi4[1]), std::max(hi4[2], hi4[3])),
                               tail.top_size);
    const bool bad = _mm256_movemask_pd(vnan) != 0 || ((neg4[0] | neg4[1] | neg4[2] | neg4[3]) < 0) ||
                     tail.bad_at < n - i || std::isinf(now);
    return {n ? std::max(now - lo, 0.0) : 0.0, hi, bad ? 0 : n};
}

// Index of the first of scores[from, to) that is not below `threshold` (or is NaN); `to` if none.
__attribute__((target("avx2"))) int64_t next_contender_avx2(const double* sc, int64_t from,
                                                            int64_t to, double threshold) {
    const __m256d t = _mm256_set1_pd(threshold);
    int64_t i = from;
    for (; i + 4 <= to; i += 4) {
        const int m = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(sc + i), t, _CMP_NLT_UQ));
        if (m) return i + __builtin_ctz(static_cast<unsigned>(m));
    }
    for (; i < to; ++i)
        if (!(sc[i] < threshold)) return i;
    return to;
}
const bool kHaveAvx2 = __builtin_cpu_supports("avx2");
#endif

Maxima walru_maxima(const double* la, const double* sz, const int64_t* dp, int64_t n, double now) {
#if SAGA_X86
    if (kHaveAvx2) return walru_maxima_avx2(la, sz, dp, n, now);
#endif
    return walru_maxima_scalar(la, sz, dp, n, now);
}

int64_t next_contender(const double* sc, int64_t from, int64_t to, double threshold) {
#if SAGA_X86
    if (kHaveAvx2) return next_contender_avx2(sc, from, to, threshold);
#endif
    for (int64_t i = from; i < to; ++i)
        if (!(sc[i] < threshold)) return i;
    return to;
}

// First candidate with a NaN input, a NaN age or a negative depth (n if none): the slow path
// that names it, run only when a fast pass saw something wrong.
int64_t walru_first_bad(const double* la, const double* rp, const double* sz, const int64_t* dp,
                        int64_t n, double now) {
    for (int64_t j = 0; j < n; ++j) {
        const double age = std::max(now - la[j], 0.0);
        if (std::isnan(la[j]) || std::isnan(rp[j]) || std::isnan(sz[j]) || std::isnan(age) ||
            dp[j] < 0)
            return j;
    }
    return n;
}

// score = alpha * R + beta * (1 - p) + gamma * S, in the twin's order of operations (no FMA).
template <bool kSize>
SAGA_SIMD void walru_scores(const double* la, const double* rp, const double* sz, int64_t n,
                            double now, double age_div, double size_div, double alpha,
                            double beta, double gamma, double* out) {
    for (int64_t i = 0; i < n; ++i) {
        const double r = std::max(now - la[i], 0.0) / age_div;
        const double s = kSize ? sz[i] / size_div : 0.0;
        out[i] = alpha * r + beta * (1.0 - rp[i]) + gamma * s;
    }
}

std::pair<F64Out, I64Out> walru_select(F64In last_access, F64In reuse_prob, F64In size_tokens,
                                       I64In depth, double now, int64_t k, double alpha,
                                       double beta, double gamma) {
    const int64_t n = static_cast<int64_t>(last_access.shape(0));
    require(static_cast<int64_t>(reuse_prob.shape(0)) == n &&
                static_cast<int64_t>(size_tokens.shape(0)) == n &&
                static_cast<int64_t>(depth.shape(0)) == n,
            "walru_select: last_access, reuse_prob, size_tokens and depth must have one length");
    require(!std::isnan(now), "walru_select: now is NaN; pass the current time in seconds");
    require(k >= 0, "walru_select: k must be >= 0");
    for (auto [name, w] : {std::pair{"alpha", alpha}, {"beta", beta}, {"gamma", gamma}})
        require(!std::isnan(w) && w >= 0.0,
                std::string("walru_select: weight ") + name + " must be a non-negative number");
    const double* la = last_access.data();
    const double* rp = reuse_prob.data();
    const double* sz = size_tokens.data();
    const int64_t* dp = depth.data();

    // Pass 1: the two maxima that normalise recency and size, and the input check.
    const Maxima mx = walru_maxima(la, sz, dp, n, now);
    auto reject_bad = [&]() {
        const int64_t at = walru_first_bad(la, rp, sz, dp, n, now);
        if (at < n)
            throw std::invalid_argument(
                "walru_select: NaN or negative depth at candidate " + std::to_string(at) +
                " (last_access, reuse_prob and size_tokens must be numbers, depth >= 0; map an "
                "unknown reuse hint to a prior before calling)");
    };
    if (mx.bad_at < n) reject_bad();  // or now = ±inf, which is fine unless it meets la = now

    // Pass 2, in cache-sized chunks: the chunk's scores (branch-free, vectorised), then the
    // chunk's candidates against a bounded heap of the k best under `better`.
    std::vector<double> scores(static_cast<size_t>(n));
    const bool size_on = mx.top_size > 0.0;
    // An all-zero age column divides by 1 and stays 0, exactly as the twin's zeros.
    const double age_div = mx.top_age > 0.0 ? mx.top_age : 1.0;
    const int64_t kk = std::min(k, n);
    double* sc = scores.data();
    bool nan_score = false;
    std::vector<Cand> heap;
    heap.reserve(static_cast<size_t>(kk));
    constexpr int64_t kChunk = 2048;
    // When k is a large share of n a heap churns; select by a k-th-score threshold instead.
    const bool wide = kk * 16 >= n;
    for (int64_t lo = 0; lo < n; lo += kChunk) {
        const int64_t len = std::min(kChunk, n - lo);
        if (size_on)
            walru_scores<true>(la + lo, rp + lo, sz + lo, len, now, age_div, mx.top_size, alpha,
                               beta, gamma, sc + lo);
        else
            walru_scores<false>(la + lo, rp + lo, sz + lo, len, now, age_div, 1.0, alpha, beta,
                                gamma, sc + lo);
        const int64_t end = lo + len;
        if (wide) {  // scores only here; the selection below
            for (int64_t i = lo; i < end; ++i) nan_score |= sc[i] != sc[i];
            continue;
        }
        for (int64_t i = lo; i < end; ++i) {
            // Most candidates lose on the score alone: skip to the next one that does not
            // (a NaN score is a contender here and is caught below).
            if (kk > 0 && static_cast<int64_t>(heap.size()) == kk) {
                i = next_contender(sc, i, end, heap.front().score);
                if (i == end) break;
            }
            if (std::isnan(sc[i])) {
                nan_score = true;
                continue;
            }
            if (kk == 0) continue;
            const Cand c{sc[i], la[i], dp[i], i};
            if (static_cast<int64_t>(heap.size()) < kk) {
                heap.push_back(c);
                std::push_heap(heap.begin(), heap.end(), better);
            } else if (better(c, heap.front())) {
                std::pop_heap(heap.begin(), heap.end(), better);
                heap.back() = c;
                std::push_heap(heap.begin(), heap.end(), better);
            }
        }
    }
    if (nan_score) {
        reject_bad();
        throw std::invalid_argument(
            "walru_select: a score is NaN (infinite last_access or size_tokens?)");
    }
    std::vector<Cand>& kept = heap;
    if (wide && kk > 0) {
        // Every candidate scoring at least the k-th best score (ties included), ranked.
        std::vector<double> tmp(sc, sc + n);
        std::nth_element(tmp.begin(), tmp.begin() + (kk - 1), tmp.end(), std::greater<double>());
        const double kth = tmp[static_cast<size_t>(kk - 1)];
        for (int64_t i = 0; i < n; ++i)
            if (sc[i] >= kth) kept.push_back(Cand{sc[i], la[i], dp[i], i});
        std::partial_sort(kept.begin(), kept.begin() + kk, kept.end(), better);
        kept.resize(static_cast<size_t>(kk));
    } else {
        std::sort(kept.begin(), kept.end(), better);
    }
    std::vector<int64_t> order(static_cast<size_t>(kk));
    for (int64_t j = 0; j < kk; ++j) order[static_cast<size_t>(j)] = kept[static_cast<size_t>(j)].idx;
    return {owned(std::move(scores)), owned(std::move(order))};
}

// ------------------------------------------------------------- Belady next-use over a trace

inline uint64_t mix(uint64_t x) {  // splitmix64 finaliser
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

void check_offsets(const int64_t* off, int64_t count, int64_t total, const char* who) {
    require(count >= 1, std::string(who) + ": offsets needs at least one entry (0)");
    require(off[0] == 0, std::string(who) + ": offsets[0] must be 0");
    for (int64_t i = 1; i < count; ++i)
        require(off[i] >= off[i - 1],
                std::string(who) + ": offsets must be non-decreasing (at " + std::to_string(i) + ")");
    require(off[count - 1] == total,
            std::string(who) + ": offsets[-1] must equal the number of flat entries");
}

F64Out next_use(I64In flat, I64In offsets) {
    const int64_t m = static_cast<int64_t>(flat.shape(0));
    const int64_t r = static_cast<int64_t>(offsets.shape(0)) - 1;
    const int64_t* off = offsets.data();
    const int64_t* b = flat.data();
    check_offsets(off, r + 1, m, "next_use");
    std::vector<double> out(static_cast<size_t>(m));
    {
        nb::gil_scoped_release nogil;
        size_t cap = 16;
        while (cap < 2 * static_cast<size_t>(m)) cap <<= 1;
        std::vector<int64_t> keys(cap);
        std::vector<int64_t> when(cap, -1);  // -1: empty slot
        const size_t mask = cap - 1;
        auto slot = [&](int64_t key) {
            size_t h = mix(static_cast<uint64_t>(key)) & mask;
            while (when[h] >= 0 && keys[h] != key) h = (h + 1) & mask;
            return h;
        };
        for (int64_t i = r - 1; i >= 0; --i) {
            for (int64_t j = off[i]; j < off[i + 1]; ++j) {
                const size_t h = slot(b[j]);
                out[static_cast<size_t>(j)] = when[h] >= 0 ? static_cast<double>(when[h]) : kInf;
            }
            for (int64_t j = off[i]; j < off[i + 1]; ++j) {
                const size_t h = slot(b[j]);
                keys[h] = b[j];
                when[h] = i;
            }
        }
    }
    return owned(std::move(out));
}

// ----------------------------------------------------------- prefix overlap (batched LCP)

I64Out prefix_overlap(I64In query, I64In flat, I64In offsets) {
    const int64_t q = static_cast<int64_t>(query.shape(0));
    const int64_t m = static_cast<int64_t>(flat.shape(0));
    const int64_t s = static_cast<int64_t>(offsets.shape(0)) - 1;
    const int64_t* off = offsets.data();
    check_offsets(off, s + 1, m, "prefix_overlap");
    const int64_t* qv = query.data();
    const int64_t* fv = flat.data();
    std::vector<int64_t> out(static_cast<size_t>(s));
    {
        nb::gil_scoped_release nogil;
#pragma omp parallel for schedule(static) if (m >= kParallelMin)
        for (int64_t i = 0; i < s; ++i) {
            const int64_t* row = fv + off[i];
            const int64_t len = std::min(q, off[i + 1] - off[i]);
            int64_t j = 0;
            while (j < len && row[j] == qv[j]) ++j;
            out[static_cast<size_t>(i)] = j;
        }
    }
    return owned(std::move(out));
}

// ------------------------------------------------------------ sharded session table

// session -> (worker, pinned_until). Each shard has its own lock, so threads that release the
// GIL (the batch calls do) contend only when they touch the same shard.
class SessionTable {
public:
    explicit SessionTable(int64_t shards) {
        require(shards >= 1 && shards <= (1 << 20), "SessionTable: shards must be in [1, 2**20]");
        shards_.reserve(static_cast<size_t>(shards));
        for (int64_t i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
    }

    SessionTable(const SessionTable&) = delete;
    SessionTable& operator=(const SessionTable&) = delete;

    int64_t shards() const { return static_cast<int64_t>(shards_.size()); }

    void set(int64_t session, int64_t worker, double pinned_until) {
        check_entry(worker, pinned_until, 0);
        Shard& sh = shard(session);
        std::lock_guard<std::mutex> lock(sh.mu);
        sh.map[session] = Entry{worker, pinned_until};
    }

    std::optional<std::pair<int64_t, double>> get(int64_t session) {
        Shard& sh = shard(session);
        std::lock_guard<std::mutex> lock(sh.mu);
        auto it = sh.map.find(session);
        if (it == sh.map.end()) return std::nullopt;
        return std::pair{it->second.worker, it->second.pinned_until};
    }

    bool remove(int64_t session) {
        Shard& sh = shard(session);
        std::lock_guard<std::mutex> lock(sh.mu);
        return sh.map.erase(session) > 0;
    }

    int64_t size() {
        int64_t total = 0;
        for (auto& sh : shards_) {
            std::lock_guard<std::mutex> lock(sh->mu);
            total += static_cast<int64_t>(sh->map.size());
        }
        return total;
    }

    void set_many(I64In sessions, I64In workers, F64In pinned_until) {
        const int64_t n = static_cast<int64_t>(sessions.shape(0));
        require(static_cast<int64_t>(workers.shape(0)) == n &&
                    static_cast<int64_t>(pinned_until.shape(0)) == n,
                "SessionTable.set_many: sessions, workers and pinned_until must have one length");
        const int64_t* s = sessions.data();
        const int64_t* w = workers.data();
        const double* p = pinned_until.data();
        for (int64_t i = 0; i < n; ++i) check_entry(w[i], p[i], i);
        nb::gil_scoped_release nogil;
        const Grouped g = group_by_shard(s, n);
        // Grouping is stable, so within a shard entries keep input order and a session listed
        // twice ends with its last entry (like dict.update). One lock per shard touched.
        for (int64_t k = 0; k < shards(); ++k) {
            if (g.start[k] == g.start[k + 1]) continue;
            Shard& sh = *shards_[static_cast<size_t>(k)];
            std::lock_guard<std::mutex> lock(sh.mu);
            for (int64_t j = g.start[k]; j < g.start[k + 1]; ++j) {
                const int64_t i = g.order[static_cast<size_t>(j)];
                sh.map[s[i]] = Entry{w[i], p[i]};
            }
        }
    }

    std::pair<I64Out, F64Out> get_many(I64In sessions) {
        const int64_t n = static_cast<int64_t>(sessions.shape(0));
        const int64_t* s = sessions.data();
        std::vector<int64_t> workers(static_cast<size_t>(n));
        std::vector<double> pinned(static_cast<size_t>(n));
        {
            nb::gil_scoped_release nogil;
            const Grouped g = group_by_shard(s, n);
            const int64_t ns = shards();
            // One lock per shard touched, not one per lookup.
#pragma omp parallel for schedule(dynamic) if (n >= kParallelMin)
            for (int64_t k = 0; k < ns; ++k) {
                if (g.start[k] == g.start[k + 1]) continue;
                Shard& sh = *shards_[static_cast<size_t>(k)];
                std::lock_guard<std::mutex> lock(sh.mu);
                for (int64_t j = g.start[k]; j < g.start[k + 1]; ++j) {
                    const int64_t i = g.order[static_cast<size_t>(j)];
                    auto it = sh.map.find(s[i]);
                    const bool hit = it != sh.map.end();
                    workers[static_cast<size_t>(i)] = hit ? it->second.worker : -1;
                    pinned[static_cast<size_t>(i)] = hit ? it->second.pinned_until : -kInf;
                }
            }
        }
        return {owned(std::move(workers)), owned(std::move(pinned))};
    }

    int64_t expire(double now) {
        require(!std::isnan(now), "SessionTable.expire: now is NaN");
        int64_t gone = 0;
        nb::gil_scoped_release nogil;
        for (auto& sh : shards_) {
            std::lock_guard<std::mutex> lock(sh->mu);
            for (auto it = sh->map.begin(); it != sh->map.end();) {
                if (it->second.pinned_until <= now) {
                    it = sh->map.erase(it);
                    ++gone;
                } else {
                    ++it;
                }
            }
        }
        return gone;
    }

private:
    struct Entry {
        int64_t worker;
        double pinned_until;
    };
    struct Shard {
        std::mutex mu;
        std::unordered_map<int64_t, Entry> map;
    };
    std::vector<std::unique_ptr<Shard>> shards_;

    size_t shard_index(int64_t session) const {
        return mix(static_cast<uint64_t>(session)) % shards_.size();
    }

    Shard& shard(int64_t session) { return *shards_[shard_index(session)]; }

    struct Grouped {
        std::vector<int64_t> order;  // input positions, grouped by shard, stable
        std::vector<int64_t> start;  // shard k's positions: order[start[k], start[k + 1])
    };

    // A counting sort of the batch by shard.
    Grouped group_by_shard(const int64_t* keys, int64_t n) const {
        const size_t ns = shards_.size();
        std::vector<uint32_t> which(static_cast<size_t>(n));
        Grouped g{std::vector<int64_t>(static_cast<size_t>(n)), std::vector<int64_t>(ns + 1, 0)};
        for (int64_t i = 0; i < n; ++i) {
            which[static_cast<size_t>(i)] = static_cast<uint32_t>(shard_index(keys[i]));
            ++g.start[which[static_cast<size_t>(i)] + 1];
        }
        for (size_t k = 0; k < ns; ++k) g.start[k + 1] += g.start[k];
        std::vector<int64_t> fill(g.start.begin(), g.start.end() - 1);
        for (int64_t i = 0; i < n; ++i)
            g.order[static_cast<size_t>(fill[which[static_cast<size_t>(i)]]++)] = i;
        return g;
    }

    static void check_entry(int64_t worker, double pinned_until, int64_t at) {
        require(worker >= 0, "SessionTable: worker must be >= 0 (entry " + std::to_string(at) + ")");
        require(!std::isnan(pinned_until),
                "SessionTable: pinned_until is NaN (entry " + std::to_string(at) +
                    "); use -inf for not pinned");
    }
};

}  // namespace

NB_MODULE(_ext, m) {
    m.doc() = "SAGA host kernels (C++17, OpenMP when built with it); see saga.kernels.";
    m.attr("BUILD_INFO") = SAGA_BUILD_INFO;
#ifdef SAGA_OPENMP
    m.attr("OPENMP") = true;
#else
    m.attr("OPENMP") = false;
#endif
    m.def("max_threads", &threads, "Threads a parallel kernel may use.");
    m.def("walru_select", &walru_select, nb::arg("last_access").noconvert(),
          nb::arg("reuse_prob").noconvert(), nb::arg("size_tokens").noconvert(),
          nb::arg("depth").noconvert(), nb::arg("now"), nb::arg("k"), nb::arg("alpha"),
          nb::arg("beta"), nb::arg("gamma"),
          "WA-LRU scores of n candidates and the indices of the k best victims, best first.");
    m.def("next_use", &next_use, nb::arg("flat").noconvert(), nb::arg("offsets").noconvert(),
          "For each block reference, the index of the next request that uses it (inf if none).");
    m.def("prefix_overlap", &prefix_overlap, nb::arg("query").noconvert(),
          nb::arg("flat").noconvert(), nb::arg("offsets").noconvert(),
          "Length of the common prefix of query with each session's block hashes.");
    nb::class_<SessionTable>(m, "SessionTable")
        .def(nb::init<int64_t>(), nb::arg("shards") = 64)
        .def_prop_ro("shards", &SessionTable::shards)
        .def("set", &SessionTable::set, nb::arg("session"), nb::arg("worker"),
             nb::arg("pinned_until"))
        .def("get", &SessionTable::get, nb::arg("session"))
        .def("remove", &SessionTable::remove, nb::arg("session"))
        .def("__len__", &SessionTable::size)
        .def("set_many", &SessionTable::set_many, nb::arg("sessions").noconvert(),
             nb::arg("workers").noconvert(), nb::arg("pinned_until").noconvert())
        .def("get_many", &SessionTable::get_many, nb::arg("sessions").noconvert())
        .def("expire", &SessionTable::expire, nb::arg("now"));
    saga_cache::bind(m);
}
