// Victim orders of the native cache core: each policy's sort keys (numpy.lexsort's, primary
// first) as one comparable record per candidate, NaN last, ties by candidate position.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

namespace saga_cache {

// Sort keys of an order, primary first (numpy.lexsort's last key); smaller = evicted first.
enum class Order { Access, AccessDeep, WALRU, Steps, NextUse };

inline Order parse_order(const std::string& name) {
    if (name == "access") return Order::Access;
    if (name == "access_deep") return Order::AccessDeep;
    if (name == "walru") return Order::WALRU;
    if (name == "steps") return Order::Steps;
    if (name == "next_use") return Order::NextUse;
    throw std::invalid_argument("CacheCore: unknown order '" + name +
                                "' (access, access_deep, walru, steps, next_use)");
}

struct Policy {
    Order order;
    bool leaves_only;
    double alpha, beta, gamma;
};

// (order, leaves_only, alpha, beta, gamma): the order's keys and WA-LRU's weights.
using PolicyArg = std::tuple<std::string, bool, double, double, double>;

inline Policy make_policy(const PolicyArg& a) {
    auto bad = [](double w) { return std::isnan(w) || w < 0.0; };
    if (bad(std::get<2>(a)) || bad(std::get<3>(a)) || bad(std::get<4>(a)))
        throw std::invalid_argument("CacheCore: weights must be non-negative numbers");
    return {parse_order(std::get<0>(a)), std::get<1>(a), std::get<2>(a), std::get<3>(a),
            std::get<4>(a)};
}

// numpy sorts NaN last; keep that so the ranking is a strict weak order equal to lexsort's.
inline bool key_less(double a, double b) {
    if (std::isnan(a)) return false;
    if (std::isnan(b)) return true;
    return a < b;
}

struct Keyed {
    double k0, k1, k2;
    int64_t pos;  // index among the candidates: lexsort is stable
};

inline bool rank_less(const Keyed& a, const Keyed& b) {
    if (key_less(a.k0, b.k0)) return true;
    if (key_less(b.k0, a.k0)) return false;
    if (key_less(a.k1, b.k1)) return true;
    if (key_less(b.k1, a.k1)) return false;
    if (key_less(a.k2, b.k2)) return true;
    if (key_less(b.k2, a.k2)) return false;
    return a.pos < b.pos;
}

}  // namespace saga_cache
