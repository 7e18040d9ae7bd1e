// The front end's access to the back end chosen at run time (dispatch.cpp).
#pragma once

#include "backend.hpp"

namespace eigenlstm {
namespace detail {

// The back end of the best level the CPU supports (capped by EIGENLSTM_MAX_ISA), loaded on the
// first call. Throws std::invalid_argument for a bad EIGENLSTM_MAX_ISA, std::runtime_error
// when no back end can be loaded.
const Backend& backend();

}  // namespace detail
}  // namespace eigenlstm
