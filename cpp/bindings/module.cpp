// pybind11 bindings: eigenlstm._core. The only file that includes pybind11. It converts NumPy
// arrays to the engine's dense row-major buffers, re-checks every size that could corrupt
// memory (std::invalid_argument -> ValueError), and releases the GIL around compute.
// Argument validation with friendly messages lives in the Python layer (python/eigenlstm).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <new>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "eigenlstm/lstm.hpp"

namespace py = pybind11;
using eigenlstm::Index;
using eigenlstm::Param;

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

// An input array argument, read-only: C-contiguous values of T. Its caster (below) borrows the
// argument when it already is such an array, and only otherwise lets NumPy convert it: a
// C-ordered copy of the values cast to T. Only value-preserving kinds convert: integers,
// unsigned integers and floats (and booleans) to a floating T, integers to an integer T; a
// complex, string or object array, or a float array for an integer T, is a TypeError naming
// the dtype, never a silent truncation.
// pybind11's own array_t caster always goes through PyArray_FromAny and default-constructs an
// empty array first: on the seed model's inference call that was a fifth of the binding's
// time.
template <typename T>
struct In {
    py::object ref;  // the array (the argument, or its converted copy); kept alive
    const T* ptr = nullptr;
    Index nd = 0;
    const py::ssize_t* dims = nullptr;

    const T* data() const { return ptr; }
    Index ndim() const { return nd; }
    Index shape(Index i) const { return dims[i]; }
    const py::ssize_t* shape() const { return dims; }
};

namespace pybind11::detail {
template <typename T>
struct type_caster<In<T>> {
    PYBIND11_TYPE_CASTER(In<T>, handle_type_name<Array<T>>::name);

    bool load(handle src, bool convert) {
        if (py::array_t<T, py::array::c_style>::check_(src)) {
            value.ref = reinterpret_borrow<object>(src);
        } else {
            if (!convert) return false;
            if (py::isinstance<py::array>(src)) {
                const char kind = reinterpret_borrow<py::array>(src).dtype().kind();
                const bool ok = std::is_floating_point_v<T> ? (kind == 'f' || kind == 'i' ||
                                                               kind == 'u' || kind == 'b')
                                                            : (kind == 'i' || kind == 'u');
                if (!ok)
                    throw py::type_error(
                        std::string("expected an array of ") +
                        (std::is_floating_point_v<T> ? "real numbers" : "integers") +
                        " (converted to " + py::str(py::dtype::of<T>()).cast<std::string>() +
                        "), got dtype " +
                        py::str(reinterpret_borrow<py::array>(src).dtype()).cast<std::string>());
            }
            value.ref = Array<T>::ensure(src);
            if (!value.ref) return false;
        }
        // A borrowed view as py::array (py::array's default constructor would allocate one).
        const auto arr = reinterpret_borrow<py::array>(value.ref);
        value.ptr = static_cast<const T*>(arr.data());
        value.nd = arr.ndim();
        value.dims = arr.shape();
        return true;
    }
};
}  // namespace pybind11::detail

namespace {

Param param_kind(const char* fn, const std::string& name) {
    std::string valid;
    for (int k = 0; k < eigenlstm::kNumParamKinds; ++k) {
        const char* kind = eigenlstm::param_name(Param(k));
        if (name == kind) return Param(k);
        valid += std::string(k ? ", '" : "'") + kind + "'";
    }
    throw std::invalid_argument(std::string(fn) + ": kind must be one of " + valid + ", got '" +
                                name + "'");
}

std::string shape_str(const Index* s, std::size_t n) {
    std::string out = "(";
    for (std::size_t i = 0; i < n; ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (n == 1 ? ",)" : ")");
}

// Compares without allocating (this runs on every call); builds the message only on failure.
template <typename A>
void check_shape(const char* fn, const char* name, const A& a, const Index* want, std::size_t n) {
    bool same = a.ndim() == py::ssize_t(n);
    for (std::size_t i = 0; same && i < n; ++i) same = a.shape(i) == want[i];
    if (!same)
        throw std::invalid_argument(std::string(fn) + ": " + name + " must have shape " +
                                    shape_str(want, n) + ", got " +
                                    shape_str(a.shape(), std::size_t(a.ndim())));
}
template <typename A>
void check_shape(const char* fn, const char* name, const A& a, std::initializer_list<Index> want) {
    check_shape(fn, name, a, want.begin(), want.size());
}

// An output array argument: written in place, so it must already be a C-contiguous, writable
// array of T (bound with noconvert(): pybind11 must not write into a converted copy).
template <typename T>
using Out = py::array_t<T, py::array::c_style>;

// Do the byte ranges [p, p + n) and [q, q + m) share a byte?
bool overlap(const std::pair<const void*, py::ssize_t>& a,
             const std::pair<const void*, py::ssize_t>& b) {
    const auto p = reinterpret_cast<std::uintptr_t>(a.first);
    const auto q = reinterpret_cast<std::uintptr_t>(b.first);
    return a.second > 0 && b.second > 0 && p < q + std::uintptr_t(b.second) &&
           q < p + std::uintptr_t(a.second);
}

// A new C-contiguous array; std::bad_alloc (MemoryError) if its byte size overflows.
template <typename S>
py::array_t<S> empty(const std::vector<Index>& shape) {
    Index n = 1;
    for (Index s : shape) {
        if (s != 0 && n > std::numeric_limits<Index>::max() / Index(sizeof(S)) / s)
            throw std::bad_alloc();
        n *= s;
    }
    return py::array_t<S>(shape);
}

// The configuration of the bindings' constructors' arguments (checked by the engine).
eigenlstm::Config config_of(Index input_size, Index hidden_size, Index num_layers, bool bias,
                            bool bidirectional, Index proj_size, double dropout = 0.0,
                            bool reverse = false) {
    eigenlstm::Config c;
    c.input_size = input_size;
    c.hidden_size = hidden_size;
    c.num_layers = num_layers;
    c.bias = bias;
    c.bidirectional = bidirectional;
    c.proj_size = proj_size;
    c.dropout = dropout;
    c.reverse = reverse;
    return c;
}

// The cell variants of a config from keyword arguments (eigenlstm.LSTM checks their values;
// the engine checks them again): cifg, peepholes, layer_norm (bool), cell_clip, proj_clip,
// recurrent_dropout, weight_drop, zoneout_c, zoneout_h (float, 0 for off). An unknown keyword is a TypeError.
void set_variants(eigenlstm::Config& c, const py::kwargs& variants) {
    for (const auto& [key, value] : variants) {
        const std::string name = py::str(key);
        if (name == "cifg") c.cifg = value.cast<bool>();
        else if (name == "peepholes") c.peepholes = value.cast<bool>();
        else if (name == "cell_clip") c.cell_clip = value.cast<double>();
        else if (name == "proj_clip") c.proj_clip = value.cast<double>();
        else if (name == "recurrent_dropout") c.recurrent_dropout = value.cast<double>();
        else if (name == "weight_drop") c.weight_drop = value.cast<double>();
        else if (name == "zoneout_c") c.zoneout_c = value.cast<double>();
        else if (name == "zoneout_h") c.zoneout_h = value.cast<double>();
        else if (name == "layer_norm") c.layer_norm = value.cast<bool>();
        else
            throw py::type_error("unexpected keyword argument '" + name +
                                 "' (cell variants: cifg, peepholes, cell_clip, proj_clip, "
                                 "recurrent_dropout, weight_drop, zoneout_c, zoneout_h, "
                                 "layer_norm)");
    }
}

// The engine's forward of checked arguments: LSTM<S>'s in either mode, QuantizedLSTM's in
// evaluation mode (it has no other).
template <typename S>
void core_forward(eigenlstm::LSTM<S>& lstm, S* y, S* h_n, S* c_n, const S* x, const S* h0,
                  const S* c0, const std::int64_t* lengths, Index T, Index B, bool training) {
    lstm.forward(y, h_n, c_n, x, h0, c0, lengths, T, B, training);
}
void core_forward(eigenlstm::QuantizedLSTM& lstm, float* y, float* h_n, float* c_n,
                  const float* x, const float* h0, const float* c0, const std::int64_t* lengths,
                  Index T, Index B, bool /*training: always false*/) {
    lstm.forward(y, h_n, c_n, x, h0, c0, lengths, T, B);
}

// An engine (Core: LSTM<S> or QuantizedLSTM) plus a reader-writer lock: eval-mode forward
// calls share it (they touch no member), anything that writes parameters, gradients or the
// cache needs it alone and refuses rather than waits, because two writers interleaving would
// be a bug in the caller. This part is the forward calls both cores have.
template <typename S, typename Core>
struct Forward {
    Core lstm;
    mutable std::shared_mutex mutex;

    template <typename... Args>
    explicit Forward(Args&&... args) : lstm(std::forward<Args>(args)...) {}

    std::unique_lock<std::shared_mutex> exclusive(const char* what) {
        std::unique_lock<std::shared_mutex> lock(mutex, std::try_to_lock);
        if (!lock.owns_lock())
            throw std::runtime_error(std::string(what) +
                                     ": this LSTM is being used by another thread; training-mode "
                                     "calls and parameter updates on one module must not overlap");
        return lock;
    }

    // Checks x [T, B, I] and the optional state and lengths of a forward; returns (T, B).
    std::pair<Index, Index> check_forward(const char* fn, const In<S>& x,
                                          const std::optional<In<S>>& h0,
                                          const std::optional<In<S>>& c0,
                                          const std::optional<In<std::int64_t>>& lengths) const {
        const auto& c = lstm.config();
        const Index DL = c.directions() * c.num_layers, H = c.hidden_size, Hout = c.output_size();
        if (x.ndim() != 3)
            throw std::invalid_argument(std::string(fn) + ": x must be 3-D (T, B, I), got " +
                                        std::to_string(x.ndim()) + "-D");
        const Index T = x.shape(0), B = x.shape(1);
        check_shape(fn, "x", x, {T, B, c.input_size});
        if (h0) check_shape(fn, "h0", *h0, {DL, B, Hout});
        if (c0) check_shape(fn, "c0", *c0, {DL, B, H});
        if (lengths) check_shape(fn, "lengths", *lengths, {B});
        return {T, B};
    }

    py::tuple forward(const In<S>& x, const std::optional<In<S>>& h0,
                      const std::optional<In<S>>& c0,
                      const std::optional<In<std::int64_t>>& lengths, bool training) {
        const auto& c = lstm.config();
        const auto [T, B] = check_forward("forward", x, h0, c0, lengths);
        auto y = empty<S>({T, B, c.directions() * c.output_size()});
        auto h_n = empty<S>({c.directions() * c.num_layers, B, c.output_size()});
        auto c_n = empty<S>({c.directions() * c.num_layers, B, c.hidden_size});
        run_forward(x, h0, c0, lengths, T, B, y.mutable_data(), h_n.mutable_data(),
                    c_n.mutable_data(), training);
        return py::make_tuple(y, h_n, c_n);
    }

    // The evaluation-mode forward into the caller's arrays (a stream's step): y [T, B, D*Hout],
    // h_n [D*L, B, Hout] and c_n [D*L, B, H], C-contiguous arrays of S that overlap neither
    // each other nor the inputs. Allocates nothing once the engine has seen these sizes.
    void forward_into(const In<S>& x, const std::optional<In<S>>& h0,
                      const std::optional<In<S>>& c0,
                      const std::optional<In<std::int64_t>>& lengths, Out<S>& y, Out<S>& h_n,
                      Out<S>& c_n) {
        const char* fn = "forward_into";
        const auto& c = lstm.config();
        const auto [T, B] = check_forward(fn, x, h0, c0, lengths);
        const Index DL = c.directions() * c.num_layers;
        check_shape(fn, "y", y, {T, B, c.directions() * c.output_size()});
        check_shape(fn, "h_n", h_n, {DL, B, c.output_size()});
        check_shape(fn, "c_n", c_n, {DL, B, c.hidden_size});
        for (const auto& [name, out] : {std::pair<const char*, const Out<S>*>{"y", &y},
                                        {"h_n", &h_n}, {"c_n", &c_n}})
            if (!out->writeable())
                throw std::invalid_argument(std::string(fn) + ": " + name +
                                            " must be a writable array, got a read-only one");
        // The engine reads its inputs while it writes its outputs: none may share memory.
        using Bytes = std::pair<const void*, py::ssize_t>;
        const Bytes outs[] = {{y.mutable_data(), y.nbytes()},
                              {h_n.mutable_data(), h_n.nbytes()},
                              {c_n.mutable_data(), c_n.nbytes()}};
        const Bytes all[] = {
            outs[0], outs[1], outs[2],
            {x.data(), py::ssize_t(sizeof(S)) * T * B * c.input_size},
            {h0 ? h0->data() : nullptr, h0 ? h_n.nbytes() : 0},
            {c0 ? c0->data() : nullptr, c0 ? c_n.nbytes() : 0},
            {lengths ? lengths->data() : nullptr,
             lengths ? py::ssize_t(sizeof(std::int64_t)) * B : 0}};
        const char* names[] = {"y", "h_n", "c_n", "x", "h0", "c0", "lengths"};
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 7; ++j)
                if (i != j && overlap(outs[i], all[j]))
                    throw std::invalid_argument(std::string(fn) + ": " + names[i] +
                                                " must not share memory with " + names[j] +
                                                ", got arrays that overlap");
        run_forward(x, h0, c0, lengths, T, B, y.mutable_data(), h_n.mutable_data(),
                    c_n.mutable_data(), false);
    }

    // The engine's forward of checked arguments into y, h_n and c_n: a training call holds the
    // engine alone (refusing if another call runs), an evaluation call shares it.
    void run_forward(const In<S>& x, const std::optional<In<S>>& h0,
                     const std::optional<In<S>>& c0,
                     const std::optional<In<std::int64_t>>& lengths, Index T, Index B, S* y,
                     S* h_n, S* c_n, bool training) {
        const S* ph0 = h0 ? h0->data() : nullptr;
        const S* pc0 = c0 ? c0->data() : nullptr;
        const std::int64_t* pl = lengths ? lengths->data() : nullptr;
        std::unique_lock<std::shared_mutex> ex;
        std::shared_lock<std::shared_mutex> sh;
        if (training) ex = exclusive("forward");
        py::gil_scoped_release release;
        if (!training) sh = std::shared_lock<std::shared_mutex>(mutex);
        core_forward(lstm, y, h_n, c_n, x.data(), ph0, pc0, pl, T, B, training);
    }
};

template <typename S>
struct Engine : Forward<S, eigenlstm::LSTM<S>> {
    using Base = Forward<S, eigenlstm::LSTM<S>>;
    using Base::exclusive;
    using Base::lstm;
    using Base::mutex;
    Engine(const eigenlstm::Config& c, std::uint64_t seed) : Base(c, seed) {}

    // Memory-bounded BPTT reads x again in backward instead of copying it: the x of such a
    // training forward stays alive (it is the engine's, unless the caller holds it too) until
    // the next training forward or backward.
    py::object kept_x;

    py::tuple forward(const In<S>& x, const std::optional<In<S>>& h0,
                      const std::optional<In<S>>& c0,
                      const std::optional<In<std::int64_t>>& lengths, bool training) {
        py::tuple out = Base::forward(x, h0, c0, lengths, training);
        if (training) kept_x = lstm.cache_segment() < x.shape(0) ? x.ref : py::object();
        return out;
    }

    py::array_t<S> flat_view(S* data, py::handle owner) {
        return py::array_t<S>({lstm.num_params()}, {Index(sizeof(S))}, data, owner);
    }

    // out [B, O] = the top layer's output at each last step, through weight [O, D*Hout] and
    // bias [O]; x is [B, T, I] when batch_first, else [T, B, I]. Eval: shares the lock.
    py::array_t<S> forward_last(const In<S>& x, const std::optional<In<std::int64_t>>& lengths,
                                const In<S>& weight, const std::optional<In<S>>& bias,
                                bool batch_first) {
        const auto& c = lstm.config();
        if (x.ndim() != 3)
            throw std::invalid_argument("forward_last: x must be 3-D, got " +
                                        std::to_string(x.ndim()) + "-D");
        const Index T = x.shape(batch_first ? 1 : 0), B = x.shape(batch_first ? 0 : 1);
        check_shape("forward_last", "x", x, {x.shape(0), x.shape(1), c.input_size});
        if (weight.ndim() != 2)
            throw std::invalid_argument("forward_last: weight must be 2-D, got " +
                                        std::to_string(weight.ndim()) + "-D");
        const Index O = weight.shape(0);
        check_shape("forward_last", "weight", weight, {O, c.directions() * c.output_size()});
        if (bias) check_shape("forward_last", "bias", *bias, {O});
        if (lengths) check_shape("forward_last", "lengths", *lengths, {B});
        auto out = empty<S>({B, O});
        S* po = out.mutable_data();
        {
            py::gil_scoped_release release;
            std::shared_lock<std::shared_mutex> sh(mutex);
            lstm.forward_last(po, x.data(), lengths ? (*lengths).data() : nullptr, T, B,
                              batch_first, weight.data(), bias ? (*bias).data() : nullptr, O);
        }
        return out;
    }

    py::tuple backward(const In<S>& dy, const std::optional<In<S>>& dh_n,
                       const std::optional<In<S>>& dc_n) {
        const auto& c = lstm.config();
        const Index DL = c.directions() * c.num_layers, H = c.hidden_size, Hout = c.output_size();
        auto lock = exclusive("backward");
        Index T, B;
        if (!lstm.cached_sizes(T, B))
            throw std::logic_error("backward: no training-mode forward to differentiate (the "
                                   "cache is consumed by each backward)");
        check_shape("backward", "d_output", dy, {T, B, c.directions() * Hout});
        if (dh_n) check_shape("backward", "dh_n", *dh_n, {DL, B, Hout});
        if (dc_n) check_shape("backward", "dc_n", *dc_n, {DL, B, H});
        auto dx = empty<S>({T, B, c.input_size});
        auto dh0 = empty<S>({DL, B, Hout});
        auto dc0 = empty<S>({DL, B, H});
        S* pdx = dx.mutable_data();
        S* pdh = dh0.mutable_data();
        S* pdc = dc0.mutable_data();
        const S* pdy = dy.data();
        const S* pdhn = dh_n ? dh_n->data() : nullptr;
        const S* pdcn = dc_n ? dc_n->data() : nullptr;
        {
            py::gil_scoped_release release;
            lstm.backward(pdx, pdh, pdc, pdy, pdhn, pdcn);
        }
        kept_x = py::object();
        return py::make_tuple(dx, dh0, dc0);
    }

    std::vector<Index> shape(Param kind, Index layer) const {
        Index rows, cols;
        lstm.param_shape(kind, layer, rows, cols);
        // the biases and the layer norms' vectors are 1-D
        if (kind == Param::bias_ih || kind == Param::bias_hh ||
            kind >= Param::layer_norm_ih_weight)
            return {rows};
        return {rows, cols};
    }

    // A flat buffer to read: any array NumPy converts to S (the In caster), 1-D, all parameters.
    void check_flat(const char* fn, const In<S>& flat) const {
        check_shape(fn, "flat", flat, {lstm.num_params()});
    }

    // The kind named `name`, checked to exist in this LSTM with layer in [0, L) and dir in
    // [0, D); std::invalid_argument naming fn, the argument, the valid values and the given one.
    Param check_index(const char* fn, const std::string& name, Index layer, Index dir) const {
        const auto& c = lstm.config();
        const Param kind = param_kind(fn, name);
        if (!lstm.has_param(kind))
            throw std::invalid_argument(std::string(fn) + ": this LSTM has no " + name +
                                        eigenlstm::param_requirement(kind));
        if (layer < 0 || layer >= c.num_layers)
            throw std::invalid_argument(std::string(fn) + ": layer must be in [0, " +
                                        std::to_string(c.num_layers) + "), got " +
                                        std::to_string(layer));
        if (dir < 0 || dir >= c.directions())
            throw std::invalid_argument(std::string(fn) + ": direction must be in [0, " +
                                        std::to_string(c.directions()) + "), got " +
                                        std::to_string(dir));
        return kind;
    }

    Index param_offset(const std::string& name, Index layer, Index dir) const {
        return lstm.param_offset(check_index("param_offset", name, layer, dir), layer, dir);
    }
};

template <typename S>
void bind_engine(py::module_& m, const char* name) {
    using E = Engine<S>;
    py::class_<E>(m, name, "The C++ LSTM engine for one dtype (see eigenlstm.LSTM).")
        .def(py::init([](Index input_size, Index hidden_size, Index num_layers, bool bias,
                         bool bidirectional, Index proj_size, double dropout, bool reverse,
                         std::uint64_t seed, const py::kwargs& variants) {
                 eigenlstm::Config c = config_of(input_size, hidden_size, num_layers, bias,
                                                 bidirectional, proj_size, dropout, reverse);
                 set_variants(c, variants);
                 return new E(c, seed);
             }),
             py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers"),
             py::arg("bias"), py::arg("bidirectional"), py::arg("proj_size"),
             py::arg("dropout"), py::arg("reverse"), py::arg("seed"))
        .def_property_readonly("num_params", [](const E& e) { return e.lstm.num_params(); })
        .def_property_readonly(
            "params", [](py::object self) {
                E& e = self.cast<E&>();
                return e.flat_view(e.lstm.params(), self);
            },
            "Writable view of the flat parameter buffer, in torch layout (param_offset). Call "
            "params_updated() after writing it.")
        .def_property_readonly(
            "grads", [](py::object self) {
                E& e = self.cast<E&>();
                return e.flat_view(e.lstm.grads(), self);
            },
            "Writable view of the flat gradient buffer, laid out like params.")
        .def("params_updated", [](E& e) {
            auto lock = e.exclusive("params_updated");
            e.lstm.params_updated();
        })
        .def("zero_grad", [](E& e) {
            auto lock = e.exclusive("zero_grad");
            e.lstm.zero_grad();
        })
        .def("has_param", [](const E& e, const std::string& k) {
            return e.lstm.has_param(param_kind("has_param", k));
        })
        .def("param_shape", [](const E& e, const std::string& k, Index layer) {
            return e.shape(e.check_index("param_shape", k, layer, 0), layer);
        })
        .def("param_offset", &E::param_offset, py::arg("kind"), py::arg("layer"),
             py::arg("direction"),
             "Element offset of one parameter in params, grads or any buffer laid out like them: "
             "flat[offset:offset + rows*cols].reshape(param_shape(kind, layer)) is the torch "
             "tensor (a view).")
        .def("load_flat", [](E& e, const In<S>& flat) {
            e.check_flat("load_flat", flat);
            auto lock = e.exclusive("load_state_dict");
            std::copy(flat.data(), flat.data() + flat.shape(0), e.lstm.params());
            e.lstm.params_updated();
        }, "Replace all parameters at once from a flat buffer laid out like params.")
        .def_property_readonly("rng_state", [](const E& e) {
            return py::make_tuple(e.lstm.rng_seed(), e.lstm.rng_counter());
        })
        .def("set_rng_state", [](E& e, std::uint64_t seed, std::uint64_t counter) {
            auto lock = e.exclusive("set_rng_state");
            e.lstm.set_rng_state(seed, counter);
        })
        .def_property_readonly("has_cache", [](const E& e) {
            Index T, B;
            return e.lstm.cached_sizes(T, B);
        })
        .def("set_bptt_memory", [](E& e, const std::string& policy, std::uint64_t bytes) {
            using M = typename eigenlstm::LSTM<S>::BpttMemory;
            M m;
            if (policy == "sqrt") m.policy = M::Policy::sqrt;
            else if (policy == "bytes") m.policy = M::Policy::bytes;
            else if (policy != "full")
                throw std::invalid_argument("set_bptt_memory: policy must be 'full', 'sqrt' or "
                                            "'bytes', got '" + policy + "'");
            m.bytes = bytes;
            auto lock = e.exclusive("bptt_memory");
            e.lstm.set_bptt_memory(m);
        }, py::arg("policy"), py::arg("bytes"),
           "What training forwards keep for backward: 'full', 'sqrt' or 'bytes' (a budget)")
        .def_property_readonly("cache_bytes", [](const E& e) { return e.lstm.cache_bytes(); },
                               "Bytes the last training forward's cache holds (0: none)")
        .def_property_readonly("cache_segment", [](const E& e) { return e.lstm.cache_segment(); },
                               "Steps per segment of that cache (T: full storage; 0: none)")
        .def("forward", &E::forward, py::arg("x"), py::arg("h0"), py::arg("c0"),
             py::arg("lengths"), py::arg("training"),
             "x [T, B, I] -> (y [T, B, D*Hout], h_n [D*L, B, Hout], c_n [D*L, B, H])")
        .def("forward_into", &E::forward_into, py::arg("x"), py::arg("h0"), py::arg("c0"),
             py::arg("lengths"), py::arg("y").noconvert(), py::arg("h_n").noconvert(),
             py::arg("c_n").noconvert(),
             "Eval forward of x [T, B, I] into the caller's y, h_n and c_n (a stream's step)")
        .def("forward_last", &E::forward_last, py::arg("x"), py::arg("lengths"),
             py::arg("weight"), py::arg("bias"), py::arg("batch_first"),
             "Eval forward, then out [B, O] = y[last step] @ weight.T + bias")
        .def("backward", &E::backward, py::arg("d_output"), py::arg("dh_n"), py::arg("dc_n"),
             "-> (dx [T, B, I], dh0, dc0); parameter gradients are added into grads");
}

// ---- reduced precision ------------------------------------------------------------------------

eigenlstm::Precision precision_of(const std::string& name) {
    if (name == "int8") return eigenlstm::Precision::int8;
    if (name == "bfloat16") return eigenlstm::Precision::bfloat16;
    throw std::invalid_argument("precision must be 'int8' or 'bfloat16', got '" + name + "'");
}

// tensors[key]: exactly a C-contiguous array of T with this shape (no conversion: a weight
// converted on the way in would be a different model), kept alive in `keep`.
template <typename T>
const T* tensor_of(const char* fn, const py::dict& tensors, const std::string& key,
                   std::initializer_list<Index> shape, std::vector<py::object>& keep) {
    if (!tensors.contains(key))
        throw std::invalid_argument(std::string(fn) + ": missing tensor '" + key + "'");
    py::object obj = tensors[key.c_str()];
    if (!py::array_t<T, py::array::c_style>::check_(obj))
        throw py::type_error(std::string(fn) + ": " + key + " must be a C-contiguous array of " +
                             py::str(py::dtype::of<T>()).cast<std::string>() + ", got " +
                             py::str(py::type::of(obj)).cast<std::string>() +
                             (py::isinstance<py::array>(obj)
                                  ? " of dtype " + py::str(obj.attr("dtype")).cast<std::string>()
                                  : std::string()));
    auto arr = obj.cast<py::array_t<T, py::array::c_style>>();
    check_shape(fn, key.c_str(), arr, shape.begin(), shape.size());
    keep.push_back(obj);
    return arr.data();
}

// The reduced-precision values of a weight tensor, of the precision's storage type.
const void* weight_of(const char* fn, eigenlstm::Precision p, const py::dict& tensors,
                      const std::string& key, std::initializer_list<Index> shape,
                      std::vector<py::object>& keep) {
    if (p == eigenlstm::Precision::int8)
        return tensor_of<std::int8_t>(fn, tensors, key, shape, keep);
    return tensor_of<std::uint16_t>(fn, tensors, key, shape, keep);
}

struct QuantizedEngine : Forward<float, eigenlstm::QuantizedLSTM> {
    using Forward::Forward;
};

// A QuantizedLSTM from torch-named tensors: weight_ih_l{k}{suffix} (int8 or uint16 bfloat16
// bits), its "_scale" (int8: float32 per row), and the float32 biases.
QuantizedEngine* make_quantized_engine(Index input_size, Index hidden_size, Index num_layers,
                                       bool bias, bool bidirectional, Index proj_size,
                                       const std::string& precision, const py::dict& tensors,
                                       const py::kwargs& variants) {
    const char* fn = "QuantizedEngine";
    eigenlstm::Config c =
        config_of(input_size, hidden_size, num_layers, bias, bidirectional, proj_size);
    set_variants(c, variants);
    c.validate();
    const eigenlstm::Precision p = precision_of(precision);
    const bool int8 = p == eigenlstm::Precision::int8;
    const Index G = c.gate_size(), H = c.hidden_size, P = c.proj_size, Hout = c.output_size();
    eigenlstm::QuantizedWeights w;
    std::vector<py::object> keep;
    for (Index l = 0; l < c.num_layers; ++l)
        for (Index d = 0; d < c.directions(); ++d) {
            const std::string sfx = "_l" + std::to_string(l) + (d ? "_reverse" : "");
            const Index I_l = l == 0 ? c.input_size : c.directions() * Hout;
            w.weight_ih.push_back(weight_of(fn, p, tensors, "weight_ih" + sfx, {G, I_l}, keep));
            w.weight_hh.push_back(weight_of(fn, p, tensors, "weight_hh" + sfx, {G, Hout}, keep));
            if (int8) {
                w.scale_ih.push_back(tensor_of<float>(fn, tensors, "weight_ih" + sfx + "_scale", {G}, keep));
                w.scale_hh.push_back(tensor_of<float>(fn, tensors, "weight_hh" + sfx + "_scale", {G}, keep));
            }
            if (P > 0) {
                w.weight_hr.push_back(weight_of(fn, p, tensors, "weight_hr" + sfx, {P, H}, keep));
                if (int8)
                    w.scale_hr.push_back(
                        tensor_of<float>(fn, tensors, "weight_hr" + sfx + "_scale", {P}, keep));
            }
            if (bias) {
                w.bias_ih.push_back(tensor_of<float>(fn, tensors, "bias_ih" + sfx, {G}, keep));
                w.bias_hh.push_back(tensor_of<float>(fn, tensors, "bias_hh" + sfx, {G}, keep));
            }
            if (c.peepholes)
                w.peephole.push_back(
                    tensor_of<float>(fn, tensors, "weight_peephole" + sfx, {3, H}, keep));
        }
    return new QuantizedEngine(c, p, w);
}

void bind_quantized(py::module_& m) {
    using E = QuantizedEngine;
    py::class_<E>(m, "QuantizedEngine",
                  "The C++ reduced-precision LSTM (see eigenlstm.nn.QuantizedLSTM).")
        .def(py::init(&make_quantized_engine), py::arg("input_size"), py::arg("hidden_size"),
             py::arg("num_layers"), py::arg("bias"), py::arg("bidirectional"),
             py::arg("proj_size"), py::arg("precision"), py::arg("tensors"))
        .def(
            "forward",
            [](E& e, const In<float>& x, const std::optional<In<float>>& h0,
               const std::optional<In<float>>& c0,
               const std::optional<In<std::int64_t>>& lengths) {
                return e.forward(x, h0, c0, lengths, false);
            },
            py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
            "x [T, B, I] -> (y [T, B, D*Hout], h_n [D*L, B, Hout], c_n [D*L, B, H])")
        .def("forward_into", &E::forward_into, py::arg("x"), py::arg("h0"), py::arg("c0"),
             py::arg("lengths"), py::arg("y").noconvert(), py::arg("h_n").noconvert(),
             py::arg("c_n").noconvert(),
             "Forward of x [T, B, I] into the caller's y, h_n and c_n (a stream's step)");

    py::class_<eigenlstm::QuantizedLinear>(m, "QuantizedLinear",
                                           "y = x W^T + b with W in reduced precision")
        .def(py::init([](Index in_features, Index out_features, const std::string& precision,
                         const py::dict& tensors) {
                 const char* fn = "QuantizedLinear";
                 if (in_features < 1 || out_features < 1)
                     throw std::invalid_argument(std::string(fn) +
                                                 ": in_features and out_features must be >= 1");
                 const eigenlstm::Precision p = precision_of(precision);
                 std::vector<py::object> keep;
                 const void* weight =
                     weight_of(fn, p, tensors, "weight", {out_features, in_features}, keep);
                 const float* scale =
                     p == eigenlstm::Precision::int8
                         ? tensor_of<float>(fn, tensors, "weight_scale", {out_features}, keep)
                         : nullptr;
                 const float* bias = tensors.contains("bias")
                                         ? tensor_of<float>(fn, tensors, "bias", {out_features}, keep)
                                         : nullptr;
                 return eigenlstm::QuantizedLinear(in_features, out_features, p, weight, scale, bias);
             }),
             py::arg("in_features"), py::arg("out_features"), py::arg("precision"),
             py::arg("tensors"))
        .def(
            "forward_into",
            [](const eigenlstm::QuantizedLinear& q, const In<float>& x, Out<float>& y) {
                const char* fn = "QuantizedLinear.forward_into";
                if (x.ndim() != 2 || y.ndim() != 2)
                    throw std::invalid_argument(std::string(fn) + ": x and y must be 2-D, got " +
                                                std::to_string(x.ndim()) + "-D and " +
                                                std::to_string(y.ndim()) + "-D");
                const Index M = x.shape(0);
                check_shape(fn, "x", x, {M, q.in_features()});
                check_shape(fn, "y", y, {M, q.out_features()});
                if (!y.writeable())
                    throw std::invalid_argument(std::string(fn) + ": y must be a writable array");
                if (overlap({y.data(), y.nbytes()},
                            {x.data(), py::ssize_t(sizeof(float)) * M * q.in_features()}))
                    throw std::invalid_argument(std::string(fn) +
                                                ": y must not share memory with x");
                float* py_ = y.mutable_data();
                py::gil_scoped_release release;
                q.forward(py_, x.data(), M);
            },
            py::arg("x"), py::arg("y").noconvert(), "y [M, O] = x [M, I] W^T + b");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "eigenlstm C++ engine (Eigen), bound with pybind11";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const std::logic_error& e) {
            // std::invalid_argument derives from logic_error: keep it a ValueError.
            if (dynamic_cast<const std::invalid_argument*>(&e)) throw;
            if (dynamic_cast<const std::length_error*>(&e)) throw;
            if (dynamic_cast<const std::out_of_range*>(&e)) throw;
            PyErr_SetString(PyExc_RuntimeError, e.what());
        }
    });
    bind_engine<float>(m, "EngineF32");
    bind_engine<double>(m, "EngineF64");
    bind_quantized(m);
    m.def("isa_features", &eigenlstm::isa_features,
          "The features beyond the level that the reduced-precision kernels use.");
    m.def("quantized_kernel", [](const std::string& p) {
        return eigenlstm::quantized_kernel(precision_of(p));
    }, py::arg("precision"), "The kernel that 'int8' or 'bfloat16' runs on this CPU.");
    m.def("set_num_threads", &eigenlstm::set_num_threads, py::arg("n"));
    m.def("get_num_threads", &eigenlstm::get_num_threads);
    m.def("set_flush_denormal", &eigenlstm::set_flush_denormal, py::arg("on"));
    m.def("get_flush_denormal", &eigenlstm::flush_denormal);
    m.def("isa", &eigenlstm::isa, "The instruction-set level of the back end in use.");
    m.def("isa_available", &eigenlstm::isa_available,
          "The levels this CPU and this build can run, low to high.");
    m.def("build_info", [] {
        const eigenlstm::BuildInfo b = eigenlstm::build_info();
        py::dict d;
        d["isa"] = b.isa;
        d["compiler"] = b.compiler;
        d["eigen"] = b.eigen;
        d["simd"] = b.simd;
        d["openmp"] = b.openmp;
        d["library"] = b.library;
        return d;
    }, "The back end in use: its level, compiler, Eigen version and SIMD, OpenMP, file.");
    m.def("_fail_next_parallel_region", &eigenlstm::testing::fail_next_parallel_region,
          py::arg("armed"),
          "Test hook: armed, the next multi-threaded parallel region fails with "
          "std::bad_alloc (MemoryError); False disarms.");
    m.attr("gate_block_float32") = eigenlstm::gate_block<float>();
    m.attr("gate_block_float64") = eigenlstm::gate_block<double>();
}
