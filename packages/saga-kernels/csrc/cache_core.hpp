// The native cache core (cache_core.cpp), bound into the host module by host.cpp.
#pragma once

#include <nanobind/nanobind.h>

namespace saga_cache {
void bind(nanobind::module_& m);
}  // namespace saga_cache
