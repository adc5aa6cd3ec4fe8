// The native cache core: saga-policy's CacheManager (block index, free list, ref counts, tiers,
// pins, parent links and victim selection) over the manager's own BlockTable columns.
//
// The Python CacheManager is the definition; every operation here is a step-by-step
// transliteration of it (same checks in the same order, same error text, same slot order) and a
// stateful test runs both side by side. The NumPy columns are shared, not copied: policies and
// callers that read `CacheManager.table` see this core's writes directly. Operations that fail
// check first and mutate after, as the Python manager does. Bad calls raise
// std::invalid_argument (ValueError), which saga-policy turns into its CacheError.

#include "cache_core.hpp"
#include "cache_slots.hpp"

#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace nb = nanobind;

namespace saga_cache {

class CacheCore : public SlotBook {
public:
    CacheCore(int64_t hbm_blocks, int64_t dram_blocks, int64_t block_tokens, const PolicyArg& policy,
              const PolicyArg& dram_policy, F64Col last_access, I64Col ref_count, F64Col pinned_until,
              I8Col tier, I64Col depth, I64Col parent, I64Col children_hbm,
              I64Col children_dram, I64Col hits, F64Col reuse_prob, F64Col steps_to_exec,
              F64Col next_use, F64Col size_tokens) {
        hbm_ = hbm_blocks;
        dram_ = dram_blocks;
        block_tokens_ = block_tokens;
        policy_ = make_policy(policy);
        dram_policy_ = make_policy(dram_policy);
        cols_ = Cols{last_access, ref_count, pinned_until, tier, depth, parent, children_hbm,
                     children_dram, hits, reuse_prob, steps_to_exec, next_use, size_tokens};
        n_ = hbm_ + dram_;
        for (const auto* a : {&last_access, &pinned_until, &reuse_prob, &steps_to_exec,
                              &next_use, &size_tokens})
            if (static_cast<int64_t>(a->shape(0)) != n_)
                throw std::invalid_argument("CacheCore: a column's length is not the slot count");
        for (const auto* a : {&ref_count, &depth, &parent, &children_hbm, &children_dram, &hits})
            if (static_cast<int64_t>(a->shape(0)) != n_)
                throw std::invalid_argument("CacheCore: a column's length is not the slot count");
        if (static_cast<int64_t>(tier.shape(0)) != n_)
            throw std::invalid_argument("CacheCore: a column's length is not the slot count");
        la_ = last_access.data(); ref_ = ref_count.data(); pin_ = pinned_until.data();
        tier_ = tier.data(); depth_ = depth.data(); par_ = parent.data();
        ch_hbm_ = children_hbm.data(); ch_dram_ = children_dram.data(); hits_ = hits.data();
        hint_[0] = reuse_prob.data(); hint_[1] = steps_to_exec.data();
        hint_[2] = next_use.data(); hint_[3] = size_tokens.data();
        hash_of_.assign(n_, 0);
        born_.assign(n_, -1);
        mark_.assign(n_, 0);
        pos_.assign(n_, -1);
        free_.reserve(n_);
        for (int64_t s = n_ - 1; s >= 0; --s) free_.push_back(s);  // pop_back: low slots first
        index_.reserve(static_cast<size_t>(n_) * 2);
    }

    // ------------------------------------------------------------------ queries

    int64_t size() const { return static_cast<int64_t>(index_.size()); }
    int64_t used(int64_t t) const { return (t == kHbm || t == kDram) ? used_[t] : 0; }
    bool contains(int64_t h) const { return index_.count(h) != 0; }
    std::optional<int64_t> hash_at(int64_t slot) const {
        if (slot < 0 || slot >= n_ || born_[slot] < 0) return std::nullopt;
        return hash_of_[slot];
    }
    std::vector<int64_t> free_list() const { return free_; }

    // Hashes in the order they were cached (a dict's insertion order); tier 0: every tier.
    std::vector<int64_t> hashes(int64_t tier) const {
        std::vector<std::pair<int64_t, int64_t>> rows;
        for (int64_t s = 0; s < n_; ++s)
            if (born_[s] >= 0 && (tier == 0 || tier_[s] == tier)) rows.emplace_back(born_[s], s);
        std::sort(rows.begin(), rows.end());
        std::vector<int64_t> out;
        out.reserve(rows.size());
        for (auto& r : rows) out.push_back(hash_of_[r.second]);
        return out;
    }

    std::vector<int64_t> resident(const Hashes& hs) const {
        std::vector<int64_t> out;
        for (int64_t h : hs)
            if (index_.count(h)) out.push_back(h);
        return out;
    }

    std::tuple<int64_t, int64_t, int64_t> longest_prefix(const Hashes& hs) const {
        int64_t run = 0, dram = 0, first_dram = -1;
        for (int64_t h : hs) {
            auto it = index_.find(h);
            if (it == index_.end()) break;
            if (tier_[it->second] != kHbm) {
                if (first_dram < 0) first_dram = run;
                ++dram;
            }
            ++run;
        }
        return {dram == 0 ? run : first_dram, dram, run};
    }

    // ------------------------------------------------------------------ allocate / release

    // (hit_hbm, hit_dram, new, uncached, evicted, swapped, dropped, pin_breaks, resident)
    std::vector<int64_t> allocate(const Hashes& hs, double now, bool partial, OptCol reuse,
                                  OptCol steps, OptCol next_use, OptCol size) {
        unique(hs, "allocate");
        const int64_t n = static_cast<int64_t>(hs.size());
        if (n == 0) return std::vector<int64_t>(9, 0);
        const OptCol* cols[4] = {&reuse, &steps, &next_use, &size};
        for (int c = 0; c < 4; ++c)
            if (cols[c]->has_value() && static_cast<int64_t>((*cols[c])->shape(0)) != n)
                throw std::invalid_argument("allocate: a hint column's length is not the "
                                            "number of hashes");
        Plan p = plan(hs, now, partial);
        const int64_t m = p.resident;
        int64_t broken = 0;
        std::vector<int64_t> victims = choose_victims(p, now, broken);
        const int64_t hit_end = std::min(p.run, m);
        int64_t hit_hbm = 0;
        for (int64_t i = 0; i < hit_end; ++i) hit_hbm += p.tiers[i] == kHbm;
        std::vector<int64_t> up;
        for (int64_t i = 0; i < m; ++i)
            if (p.tiers[i] == kDram) up.push_back(p.seq[i]);
        int64_t dropped = 0;
        move(up, kHbm);
        const int64_t swapped = evict_hbm(victims, now, dropped);
        create(hs, p.seq);
        if (m) link_chain(p.seq);
        for (int64_t i = 0; i < m; ++i) {  // _reference
            const int64_t s = p.seq[i];
            ref_[s] += 1;
            la_[s] = now;
            if (i < hit_end) hits_[s] += 1;
        }
        for (int c = 0; c < 4; ++c) {
            if (!cols[c]->has_value()) continue;
            const auto& v = **cols[c];
            for (int64_t i = 0; i < m; ++i) hint_[c][p.seq[i]] = v(i);
        }
        return {hit_hbm, hit_end - hit_hbm, m - hit_end, n - m,
                static_cast<int64_t>(victims.size()), swapped, dropped, broken, m};
    }

    void release(const Hashes& hs, double now) {
        unique(hs, "release");
        std::vector<int64_t> slots = lookup(hs, "release");
        for (size_t i = 0; i < slots.size(); ++i)
            if (ref_[slots[i]] <= 0)
                throw std::invalid_argument(
                    "release of block " + std::to_string(hs[i]) +
                    " which holds no reference (double free?); release each allocated block once");
        for (int64_t s : slots) {
            ref_[s] -= 1;
            la_[s] = now;
        }
    }

    void touch(const Hashes& hs, double now) {
        for (int64_t s : lookup(hs, "touch")) la_[s] = now;
    }

    // ------------------------------------------------------------------ pins

    void pin(const Hashes& hs, double until) {
        if (std::isnan(until))
            throw std::invalid_argument("pin expiry 'until' is NaN; pass a time in seconds");
        for (int64_t s : lookup(hs, "pin")) pin_[s] = std::max(pin_[s], until);
    }

    void unpin(const Hashes& hs) {
        for (int64_t s : lookup(hs, "unpin")) pin_[s] = -kInf;
    }

    int64_t tick(double now) {
        int64_t count = 0;
        for (int64_t s = 0; s < n_; ++s) {
            if (pin_[s] <= now && pin_[s] > -kInf) {
                pin_[s] = -kInf;
                ++count;
            }
        }
        return count;
    }

    // ------------------------------------------------------------------ tiers

    // (victims' hashes, swapped, dropped)
    std::tuple<std::vector<int64_t>, int64_t, int64_t> evict(int64_t k, double now) {
        std::vector<int64_t> cands = evictable_in(kHbm, now, nullptr);
        std::vector<int64_t> victims = select(policy_, kHbm, cands, k, now);
        std::vector<int64_t> out;
        out.reserve(victims.size());
        for (int64_t s : victims) out.push_back(hash_of_[s]);
        int64_t dropped = 0;
        int64_t swapped = evict_hbm(victims, now, dropped);
        return {out, swapped, dropped};
    }

    // (blocks moved down, dropped)
    std::pair<int64_t, int64_t> swap_out(const Hashes& hs, double now) {
        if (dram_ == 0)
            throw std::invalid_argument(
                "swap_out needs a DRAM tier; build the CacheManager with dram_blocks");
        unique(hs, "swap_out");
        std::vector<int64_t> slots = lookup(hs, "swap_out");
        std::vector<int64_t> down;
        for (int64_t s : slots)
            if (tier_[s] == kHbm) down.push_back(s);
        for (int64_t s : down)
            if (ref_[s] > 0 || pin_[s] > now)
                throw std::invalid_argument("swap_out of block " + std::to_string(hash_of_[s]) +
                                            " which is in use or pinned; release or unpin it first");
        std::vector<int64_t> droppable = evictable_in(kDram, now, &slots);
        const int64_t dram_free = dram_ - used_[kDram];
        const int64_t nd = static_cast<int64_t>(down.size());
        if (nd > dram_free + static_cast<int64_t>(droppable.size()))
            throw std::invalid_argument(
                "swap_out needs " + std::to_string(nd) + " DRAM blocks but only " +
                std::to_string(dram_free + static_cast<int64_t>(droppable.size())) +
                " can be freed; raise dram_blocks");
        int64_t dropped = 0;
        make_dram_room(nd, now, &slots, dropped);
        move(down, kDram);
        return {nd, dropped};
    }

    // (blocks loaded up, victims, swapped, dropped)
    std::vector<int64_t> prefetch(const Hashes& hs, double now, bool partial) {
        unique(hs, "prefetch");
        std::vector<int64_t> slots = lookup(hs, "prefetch");
        std::vector<int64_t> up;
        for (int64_t s : slots)
            if (tier_[s] == kDram) up.push_back(s);
        std::vector<int64_t> evictable = evictable_in(kHbm, now, &slots);
        const int64_t free_now = hbm_ - used_[kHbm];
        const int64_t room = free_now + static_cast<int64_t>(evictable.size());
        if (static_cast<int64_t>(up.size()) > room) {
            if (!partial)
                throw std::invalid_argument(
                    "prefetch needs " + std::to_string(up.size()) + " HBM blocks but only " +
                    std::to_string(room) + " can be freed (free " + std::to_string(free_now) +
                    ", evictable " + std::to_string(evictable.size()) + "); pass partial=True");
            up.resize(room);
        }
        std::vector<int64_t> victims = select(
            policy_, kHbm, evictable,
            std::max<int64_t>(0, static_cast<int64_t>(up.size()) - free_now), now);
        move(up, kHbm);
        int64_t dropped = 0;
        int64_t swapped = evict_hbm(victims, now, dropped);
        for (int64_t s : up) la_[s] = now;
        return {static_cast<int64_t>(up.size()), static_cast<int64_t>(victims.size()), swapped,
                dropped};
    }

    // ------------------------------------------------------------------ hints

    // Sets the given columns on cached blocks; returns the positions of blocks not cached.
    std::vector<int64_t> set_hints(const Hashes& hs, OptCol reuse, OptCol steps, OptCol next_use,
                                   OptCol size) {
        const OptCol* cols[4] = {&reuse, &steps, &next_use, &size};
        const int64_t n = static_cast<int64_t>(hs.size());
        for (int c = 0; c < 4; ++c)
            if (cols[c]->has_value() && static_cast<int64_t>((*cols[c])->shape(0)) != n)
                throw std::invalid_argument("set_hints: a hint column's length is not the "
                                            "number of hashes");
        std::vector<int64_t> missing;
        for (int64_t i = 0; i < n; ++i) {
            int64_t s = slot_of(hs[i]);
            if (s < 0) {
                missing.push_back(i);
                continue;
            }
            for (int c = 0; c < 4; ++c)
                if (cols[c]->has_value()) hint_[c][s] = (**cols[c])(i);
        }
        return missing;
    }

    void set_hint(int64_t slot, int64_t column, double value) {
        if (slot < 0 || slot >= n_ || column < 0 || column > 3)
            throw std::invalid_argument("set_hint: slot or column out of range");
        hint_[column][slot] = value;
    }

    // Victims `select` would pick now among the evictable blocks of a tier (for tests).
    std::vector<int64_t> victims(int64_t tier, int64_t k, double now) {
        const Policy& p = tier == kHbm ? policy_ : dram_policy_;
        return select(p, static_cast<int8_t>(tier), evictable_in(static_cast<int8_t>(tier), now,
                                                                 nullptr), k, now);
    }

private:
    // Where the chain's blocks are (slot -1: not cached) and how much fits; the Python
    // manager's _Plan. `seq` is cut to the `resident` leading blocks.
    struct Plan {
        std::vector<int64_t> seq;
        std::vector<int8_t> tiers;
        int64_t run = 0, resident = 0, needed = 0;
        std::vector<int64_t> evictable, breakable;
    };

    Plan plan(const Hashes& hs, double now, bool partial) {
        const int64_t n = static_cast<int64_t>(hs.size());
        Plan p;
        p.seq.resize(n);
        p.tiers.assign(n, 0);
        std::vector<int64_t> need(n);
        int64_t run = -1, acc = 0;
        for (int64_t i = 0; i < n; ++i) {
            const int64_t s = slot_of(hs[i]);
            p.seq[i] = s;
            if (s >= 0) p.tiers[i] = tier_[s];
            else if (run < 0) run = i;
            acc += p.tiers[i] != kHbm;
            need[i] = acc;
        }
        p.run = run < 0 ? n : run;
        p.resident = n;
        p.needed = need[n - 1];
        const int64_t free_now = hbm_ - used_[kHbm];
        if (need[n - 1] <= free_now) return p;  // fits in free slots: no candidate scan
        ++epoch_;
        for (int64_t s : p.seq)
            if (s >= 0) mark_[s] = epoch_;
        for (int64_t s = 0; s < n_; ++s) {
            if (tier_[s] != kHbm || ref_[s] != 0 || mark_[s] == epoch_) continue;
            (pin_[s] > now ? p.breakable : p.evictable).push_back(s);
        }
        const int64_t room = free_now + static_cast<int64_t>(p.evictable.size() +
                                                             p.breakable.size());
        if (need[n - 1] > room) {
            if (!partial)
                throw std::invalid_argument(
                    "allocate needs " + std::to_string(need[n - 1]) + " HBM blocks for a " +
                    std::to_string(n) + "-block sequence but only " + std::to_string(room) +
                    " can be freed (free " + std::to_string(free_now) + ", evictable " +
                    std::to_string(p.evictable.size()) + ", pinned " +
                    std::to_string(p.breakable.size()) +
                    "); raise hbm_blocks, release blocks in use, or pass partial=True");
            p.resident = std::upper_bound(need.begin(), need.end(), room) - need.begin();
        }
        p.needed = p.resident ? need[p.resident - 1] : 0;
        p.seq.resize(p.resident);
        return p;
    }

    // Policy victims first, then pins broken earliest expiry first (the Python _choose_victims).
    std::vector<int64_t> choose_victims(Plan& p, double now, int64_t& broken) {
        const int64_t k = std::max<int64_t>(0, p.needed - (hbm_ - used_[kHbm]));
        std::vector<int64_t> victims = select(policy_, kHbm, p.evictable, k, now);
        const int64_t short_by = k - static_cast<int64_t>(victims.size());
        if (short_by <= 0) return victims;
        std::stable_sort(p.breakable.begin(), p.breakable.end(),
                         [&](int64_t a, int64_t b) { return key_less(pin_[a], pin_[b]); });
        for (int64_t i = 0; i < short_by && i < static_cast<int64_t>(p.breakable.size()); ++i) {
            const int64_t s = p.breakable[i];
            pin_[s] = -kInf;
            victims.push_back(s);
            ++broken;
        }
        return victims;
    }

    // A free slot for each block of `seq` not cached yet (-1), low slots first.
    void create(const Hashes& hs, std::vector<int64_t>& seq) {
        for (size_t i = 0; i < seq.size(); ++i) {
            if (seq[i] >= 0) continue;
            const int64_t s = free_.back();
            free_.pop_back();
            index_.emplace(hs[i], s);
            hash_of_[s] = hs[i];
            born_[s] = clock_++;
            tier_[s] = kHbm;
            ++used_[kHbm];
            seq[i] = s;
        }
    }
};

void bind(nb::module_& m) {
    nb::class_<CacheCore>(m, "CacheCore")
        .def(nb::init<int64_t, int64_t, int64_t, const PolicyArg&, const PolicyArg&, F64Col, I64Col, F64Col, I8Col, I64Col, I64Col, I64Col,
                      I64Col, I64Col, F64Col, F64Col, F64Col, F64Col>(),
             nb::arg("hbm_blocks"), nb::arg("dram_blocks"), nb::arg("block_tokens"),
             nb::arg("policy"), nb::arg("dram_policy"),
             nb::arg("last_access").noconvert(), nb::arg("ref_count").noconvert(),
             nb::arg("pinned_until").noconvert(), nb::arg("tier").noconvert(),
             nb::arg("depth").noconvert(), nb::arg("parent").noconvert(),
             nb::arg("children_hbm").noconvert(), nb::arg("children_dram").noconvert(),
             nb::arg("hits").noconvert(), nb::arg("reuse_prob").noconvert(),
             nb::arg("steps_to_exec").noconvert(), nb::arg("next_use").noconvert(),
             nb::arg("size_tokens").noconvert())
        .def("__len__", &CacheCore::size)
        .def("used", &CacheCore::used, nb::arg("tier"))
        .def("contains", &CacheCore::contains, nb::arg("block_hash"))
        .def("slot_of", &CacheCore::slot_of, nb::arg("block_hash"))
        .def("hash_at", &CacheCore::hash_at, nb::arg("slot"))
        .def("free_list", &CacheCore::free_list)
        .def("hashes", &CacheCore::hashes, nb::arg("tier"))
        .def("resident", &CacheCore::resident, nb::arg("hashes"))
        .def("slot_for", &CacheCore::slot_for, nb::arg("block_hash"), nb::arg("op"))
        .def("longest_prefix", &CacheCore::longest_prefix, nb::arg("hashes"))
        .def("allocate", &CacheCore::allocate, nb::arg("hashes"), nb::arg("now"),
             nb::arg("partial"), nb::arg("reuse_prob").none(), nb::arg("steps_to_exec").none(),
             nb::arg("next_use").none(), nb::arg("size_tokens").none())
        .def("release", &CacheCore::release, nb::arg("hashes"), nb::arg("now"))
        .def("touch", &CacheCore::touch, nb::arg("hashes"), nb::arg("now"))
        .def("pin", &CacheCore::pin, nb::arg("hashes"), nb::arg("until"))
        .def("unpin", &CacheCore::unpin, nb::arg("hashes"))
        .def("tick", &CacheCore::tick, nb::arg("now"))
        .def("evict", &CacheCore::evict, nb::arg("k"), nb::arg("now"))
        .def("swap_out", &CacheCore::swap_out, nb::arg("hashes"), nb::arg("now"))
        .def("prefetch", &CacheCore::prefetch, nb::arg("hashes"), nb::arg("now"),
             nb::arg("partial"))
        .def("set_hints", &CacheCore::set_hints, nb::arg("hashes"), nb::arg("reuse_prob").none(),
             nb::arg("steps_to_exec").none(), nb::arg("next_use").none(),
             nb::arg("size_tokens").none())
        .def("set_hint", &CacheCore::set_hint, nb::arg("slot"), nb::arg("column"),
             nb::arg("value"))
        .def("victims", &CacheCore::victims, nb::arg("tier"), nb::arg("k"), nb::arg("now"));
}

}  // namespace saga_cache
