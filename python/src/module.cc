// The Python module mla._mla (nanobind): the only code that sees Python headers, in four parts by
// concern: interop.{h,cc} (arrays in and out, through DLPack or the buffer protocol),
// flashmla.cc (FlashMLA's calls), layer.cc (mla.Layer) and latent_cache.{h,cc} (mla.LatentCache).
// python/mla/ wraps it with FlashMLA's signatures. Arrays are read in place when C-contiguous;
// results are new NumPy arrays or PyTorch tensors. The GIL is released while the C++ library
// runs, and locks are per object (a cache, a layer, a schedule), so calls on different objects
// run at once.
#include <nanobind/nanobind.h>

#include <exception>

#include "mla/status.h"

namespace mla_py {
void bind_flashmla(nanobind::module_& m);
void bind_layer(nanobind::module_& m);
void bind_latent_cache(nanobind::module_& m);
}  // namespace mla_py

NB_MODULE(_mla, m) {
  m.doc() = "C++ half of the mla package (see mla/__init__.py).";
  nanobind::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const mla::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  // LatentCache first: decode takes one as k_cache.
  mla_py::bind_latent_cache(m);
  mla_py::bind_flashmla(m);
  mla_py::bind_layer(m);
}
