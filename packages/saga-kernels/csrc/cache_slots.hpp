// The slot-level moves under the native cache core (as saga-policy's cache_slots.py under its
// CacheManager): the state, victim selection, swaps, drops and parent links every operation is
// made of. CacheCore (cache_core.cpp) adds the operations themselves.
#pragma once

#include "cache_order.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace saga_cache {

namespace nb = nanobind;

using I64Col = nb::ndarray<int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F64Col = nb::ndarray<double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I8Col = nb::ndarray<int8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Hashes = std::vector<int64_t>;
using OptCol = std::optional<nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>>;

constexpr int8_t kFree = 0, kHbm = 1, kDram = 2;
constexpr int64_t kNoParent = -1;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

class SlotBook {
public:
    int64_t slot_of(int64_t h) const {
        auto it = index_.find(h);
        return it == index_.end() ? -1 : it->second;
    }
    int64_t slot_for(int64_t h, const char* op) const {
        auto it = index_.find(h);
        if (it == index_.end())
            throw std::invalid_argument(std::string(op) + ": block " + std::to_string(h) +
                                        " is not cached; check contains() first");
        return it->second;
    }

protected:
    struct Cols {
        F64Col last_access; I64Col ref_count; F64Col pinned_until; I8Col tier; I64Col depth;
        I64Col parent; I64Col children_hbm; I64Col children_dram; I64Col hits;
        F64Col reuse_prob; F64Col steps_to_exec; F64Col next_use; F64Col size_tokens;
    };

    void unique(const Hashes& hs, const char* op) const {
        if (hs.size() < 2) return;
        std::vector<int64_t> sorted(hs);
        std::sort(sorted.begin(), sorted.end());
        if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
            throw std::invalid_argument(std::string(op) +
                                        ": a block hash appears twice in one sequence; chained "
                                        "hashes are unique per position");
    }

    std::vector<int64_t> lookup(const Hashes& hs, const char* op) const {
        std::vector<int64_t> out;
        out.reserve(hs.size());
        for (int64_t h : hs) out.push_back(slot_for(h, op));
        return out;
    }

    std::vector<int64_t> evictable_in(int8_t tier, double now, const std::vector<int64_t>* excl) {
        ++epoch_;
        if (excl)
            for (int64_t s : *excl) mark_[s] = epoch_;
        std::vector<int64_t> out;
        for (int64_t s = 0; s < n_; ++s)
            if (tier_[s] == tier && ref_[s] == 0 && pin_[s] <= now && mark_[s] != epoch_)
                out.push_back(s);
        return out;
    }

    double prefix_tokens(int64_t s) const {
        double hint = hint_[3][s];
        return std::isnan(hint) ? static_cast<double>(depth_[s] + 1) *
                                      static_cast<double>(block_tokens_)
                                : hint;
    }

    // The candidates ranked by the policy's keys, best victim first (as numpy.lexsort would).
    std::vector<Keyed> keyed(const Policy& p, const std::vector<int64_t>& cands, double now) const {
        const int64_t n = static_cast<int64_t>(cands.size());
        std::vector<Keyed> ks(n);
        if (p.order == Order::WALRU) {
            std::vector<double> age(n), size(n);
            double top_age = 0.0, top_size = 0.0;
            for (int64_t i = 0; i < n; ++i) {
                age[i] = std::max(now - la_[cands[i]], 0.0);
                size[i] = prefix_tokens(cands[i]);
                top_age = i ? std::max(top_age, age[i]) : age[i];
                top_size = i ? std::max(top_size, size[i]) : size[i];
            }
            for (int64_t i = 0; i < n; ++i) {
                int64_t s = cands[i];
                double r = top_age > 0.0 ? age[i] / top_age : 0.0;
                double z = top_size > 0.0 ? size[i] / top_size : 0.0;
                double reuse = std::isnan(hint_[0][s]) ? 0.5 : hint_[0][s];
                double score = p.alpha * r + p.beta * (1.0 - reuse) + p.gamma * z;
                ks[i] = {-score, la_[s], -static_cast<double>(depth_[s]), i};
            }
            return ks;
        }
        for (int64_t i = 0; i < n; ++i) {
            int64_t s = cands[i];
            double d = -static_cast<double>(depth_[s]);
            switch (p.order) {
                case Order::Access: ks[i] = {la_[s], 0.0, 0.0, i}; break;
                case Order::AccessDeep: ks[i] = {la_[s], d, 0.0, i}; break;
                case Order::Steps: {
                    double st = hint_[1][s];
                    ks[i] = {-(std::isnan(st) ? kInf : st), la_[s], d, i};
                    break;
                }
                case Order::NextUse: ks[i] = {-hint_[2][s], d, la_[s], i}; break;
                default: break;
            }
        }
        return ks;
    }

    std::vector<int64_t> select(const Policy& p, int8_t tier, const std::vector<int64_t>& cands,
                                int64_t k, double now) {
        const int64_t n = static_cast<int64_t>(cands.size());
        k = std::min(k, n);
        std::vector<int64_t> out;
        if (k <= 0) return out;
        std::vector<Keyed> ks = keyed(p, cands, now);
        if (!p.leaves_only) {
            std::partial_sort(ks.begin(), ks.begin() + k, ks.end(), rank_less);
            out.reserve(k);
            for (int64_t i = 0; i < k; ++i) out.push_back(cands[ks[i].pos]);
            return out;
        }
        return leaves_first(ks, cands, tier, k);
    }

    // Greedy: take the best-ranked current leaf, repeat; with no leaf left, the best-ranked one.
    std::vector<int64_t> leaves_first(std::vector<Keyed>& ks, const std::vector<int64_t>& cands,
                                      int8_t tier, int64_t k) {
        const int64_t n = static_cast<int64_t>(cands.size());
        std::vector<int64_t> need(n);
        std::vector<char> alive(n, 1);
        for (int64_t i = 0; i < n; ++i) {
            int64_t s = cands[i];
            pos_[s] = i;
            need[i] = ch_hbm_[s] + (tier_[s] == kHbm ? 0 : ch_dram_[s]);
        }
        auto worse = [&](int64_t a, int64_t b) { return rank_less(ks[b], ks[a]); };
        std::vector<int64_t> leaves, all;
        for (int64_t i = 0; i < n; ++i)
            if (need[i] == 0) leaves.push_back(i);
        std::make_heap(leaves.begin(), leaves.end(), worse);
        std::vector<int64_t> out;
        out.reserve(k);
        bool all_built = false;
        while (static_cast<int64_t>(out.size()) < k) {
            int64_t i = -1;
            if (!leaves.empty()) {
                std::pop_heap(leaves.begin(), leaves.end(), worse);
                i = leaves.back();
                leaves.pop_back();
            } else {
                if (!all_built) {
                    all.resize(n);
                    std::iota(all.begin(), all.end(), 0);
                    std::make_heap(all.begin(), all.end(), worse);
                    all_built = true;
                }
                while (!all.empty() && i < 0) {
                    std::pop_heap(all.begin(), all.end(), worse);
                    int64_t j = all.back();
                    all.pop_back();
                    if (alive[j]) i = j;
                }
                if (i < 0) break;
            }
            alive[i] = 0;
            out.push_back(cands[i]);
            int64_t par = par_[cands[i]];
            if (par != kNoParent && pos_[par] >= 0 && alive[pos_[par]]) {
                int64_t j = pos_[par];
                if (--need[j] == 0) {
                    leaves.push_back(j);
                    std::push_heap(leaves.begin(), leaves.end(), worse);
                }
            }
        }
        for (int64_t s : cands) pos_[s] = -1;
        return out;
    }

    // Swap victims to DRAM (dropping DRAM victims for room) or drop them; returns swapped.
    int64_t evict_hbm(const std::vector<int64_t>& victims, double now, int64_t& dropped) {
        if (victims.empty()) return 0;
        const int64_t nv = static_cast<int64_t>(victims.size());
        make_dram_room(nv, now, nullptr, dropped);
        const int64_t n_swap = std::min(nv, dram_ - used_[kDram]);
        const int64_t n_drop = nv - n_swap;
        drop(std::vector<int64_t>(victims.begin(), victims.begin() + n_drop), dropped);
        move(std::vector<int64_t>(victims.begin() + n_drop, victims.end()), kDram);
        return n_swap;
    }

    void make_dram_room(int64_t blocks, double now, const std::vector<int64_t>* excl,
                        int64_t& dropped) {
        if (dram_ == 0) return;
        const int64_t short_by = blocks - (dram_ - used_[kDram]);
        if (short_by <= 0) return;
        std::vector<int64_t> cands = evictable_in(kDram, now, excl);
        drop(select(dram_policy_, kDram, cands, short_by, now), dropped);
    }

    void count_child(int64_t s, int64_t sign) {
        int64_t p = par_[s];
        if (p == kNoParent) return;
        if (tier_[s] == kHbm) ch_hbm_[p] += sign;
        else if (tier_[s] == kDram) ch_dram_[p] += sign;
    }

    void move(const std::vector<int64_t>& slots, int8_t tier) {
        for (int64_t s : slots) {
            count_child(s, -1);
            --used_[tier_[s]];
            ++used_[tier];
            tier_[s] = tier;
            count_child(s, +1);
        }
    }

    void drop(const std::vector<int64_t>& slots, int64_t& dropped) {
        if (slots.empty()) return;
        for (int64_t s : slots) count_child(s, -1);
        bool orphans = false;
        for (int64_t s : slots) {
            --used_[tier_[s]];
            orphans = orphans || ch_hbm_[s] != 0 || ch_dram_[s] != 0;
        }
        if (orphans) {  // children outside the batch lose their parent link
            ++epoch_;
            for (int64_t s : slots) mark_[s] = epoch_;
            for (int64_t s = 0; s < n_; ++s)
                if (par_[s] != kNoParent && mark_[par_[s]] == epoch_) par_[s] = kNoParent;
        }
        for (int64_t s : slots) {
            la_[s] = 0.0; ref_[s] = 0; pin_[s] = -kInf; tier_[s] = kFree; depth_[s] = 0;
            par_[s] = kNoParent; ch_hbm_[s] = 0; ch_dram_[s] = 0; hits_[s] = 0;
            hint_[0][s] = kNaN; hint_[1][s] = kNaN; hint_[2][s] = kInf; hint_[3][s] = kNaN;
            index_.erase(hash_of_[s]);
            born_[s] = -1;
            free_.push_back(s);
        }
        dropped += static_cast<int64_t>(slots.size());
    }

    void link_chain(const std::vector<int64_t>& seq) {
        const int64_t m = static_cast<int64_t>(seq.size());
        for (int64_t i = 0; i < m; ++i) {
            int64_t s = seq[i];
            int64_t want = i ? seq[i - 1] : kNoParent;
            if (par_[s] != want) {
                count_child(s, -1);
                par_[s] = want;
                count_child(s, +1);
            }
            depth_[s] = i;
        }
    }

    int64_t hbm_, dram_, block_tokens_, n_ = 0;
    Policy policy_, dram_policy_;
    Cols cols_;  // keeps the NumPy arrays alive
    double *la_ = nullptr, *pin_ = nullptr;
    int64_t *ref_ = nullptr, *depth_ = nullptr, *par_ = nullptr, *ch_hbm_ = nullptr,
            *ch_dram_ = nullptr, *hits_ = nullptr;
    int8_t* tier_ = nullptr;
    double* hint_[4] = {nullptr, nullptr, nullptr, nullptr};
    std::unordered_map<int64_t, int64_t> index_;
    std::vector<int64_t> hash_of_, born_, free_, mark_, pos_;
    int64_t used_[3] = {0, 0, 0};
    int64_t clock_ = 0, epoch_ = 0;
};

}  // namespace saga_cache
