// mla.LatentCache's bindings: sequences and block tables, appends and slot writes (quantized on
// write), scales, import / export in every format. A write waits for the decodes reading the
// cache (its shared lock); decodes of other caches go on meanwhile.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "latent_cache.h"
#include "mla/attention.h"

namespace mla_py {

using namespace nb::literals;

void bind_latent_cache(nb::module_& m) {
  nb::class_<LatentCache>(m, "LatentCache")
      .def(nb::init<int64_t, int, const std::string&, const std::string&, uint64_t,
                    const std::string&, const std::string&>(),
           "num_blocks"_a, "block_size"_a, "dtype"_a, "scale"_a, "shuffle_seed"_a, "rotation"_a,
           "fp8_scale"_a)
      .def_prop_ro("rotation", [](const LatentCache& c) {
        return std::string(mla::kv_rotation_name(c.cache.config().rotation));
      })
      .def_prop_ro("fp8_scale", [](const LatentCache& c) {
        return std::string(mla::fp8_scale_name(c.cache.config().fp8_scale));
      })
      .def_prop_ro("num_blocks", [](const LatentCache& c) { return c.cache.num_blocks(); })
      .def_prop_ro("block_size", [](const LatentCache& c) { return c.cache.block_size(); })
      .def_prop_ro("dtype", [](const LatentCache& c) { return std::string(mla::kv_dtype_name(c.cache.dtype())); })
      .def_prop_ro("scale", [](const LatentCache& c) { return std::string(mla::kv_scale_name(c.cache.scale_mode())); })
      .def_prop_ro("free_blocks", [](const LatentCache& c) { return c.alloc.free_blocks(); })
      .def("add_sequence", [](LatentCache& c) { return c.alloc.add_sequence(); })
      .def("free", [](LatentCache& c, int seq) { c.alloc.free(seq); }, "seq"_a)
      .def("seq_len", [](const LatentCache& c, int seq) { return c.alloc.seq_len(seq); }, "seq"_a)
      .def(
          "append",
          [](LatentCache& c, int seq, nb::handle tokens_, bool bf16_bits) {
            const Array tokens(tokens_, "tokens");
            const std::vector<float> f = LatentCache::tokens_f32(tokens, bf16_bits, "tokens");
            c.require_writable();
            (void)c.alloc.seq_len(seq);  // an unknown sequence is refused before anything changes
            const auto lock = lock_releasing_gil(c.mu);  // not while a decode reads the cache
            const std::vector<int64_t> slots = c.alloc.append(seq, int(tokens.shape(0)));
            c.write_rows(slots.data(), f, slots.size());
            return numpy_copy(slots.data(), {slots.size()});
          },
          "seq"_a, "tokens"_a, "bf16_bits"_a)
      .def(
          "write",
          [](LatentCache& c, nb::handle slots_, nb::handle tokens_, bool bf16_bits) {
            const Array slots(slots_, "slot_mapping"), tokens(tokens_, "tokens");
            const std::vector<float> f = LatentCache::tokens_f32(tokens, bf16_bits, "tokens");
            const nb::dlpack::dtype t = slots.dtype();
            if (!(t.code == kInt && t.bits == 64 && t.lanes == 1))
              throw nb::type_error(("slot_mapping has dtype " + dtype_str(t) + "; expected int64").c_str());
            require_shape(slots, "slot_mapping", {int64_t(tokens.shape(0))});
            c.require_writable();
            std::vector<uint8_t> hold;
            const auto lock = lock_releasing_gil(c.mu);  // not while a decode reads the cache
            c.write_rows(static_cast<const int64_t*>(contiguous(slots, hold)), f, tokens.shape(0));
          },
          "slot_mapping"_a, "tokens"_a, "bf16_bits"_a)
      .def(
          "slot_mapping",
          [](const LatentCache& c, int seq, const std::vector<int>& positions) {
            std::vector<int64_t> s;
            for (int pos : positions) {
              MLA_CHECK(pos >= 0 && pos < c.alloc.seq_len(seq),
                        "position " << pos << " is outside sequence " << seq << " of "
                                    << c.alloc.seq_len(seq) << " tokens");
              s.push_back(c.alloc.slot(seq, pos));
            }
            return numpy_copy(s.data(), {s.size()});
          },
          "seq"_a, "positions"_a)
      .def(
          "block_table",
          [](const LatentCache& c, const std::vector<int>& seqs, int min_blocks) {
            int mb = 0;
            std::vector<int32_t> t = c.alloc.block_table_array(seqs, &mb);
            mb = std::max(mb, 1);
            const int cols = std::max(mb, min_blocks);
            std::vector<int32_t> out(seqs.size() * size_t(cols), -1);
            for (size_t i = 0; i < seqs.size(); ++i)
              for (int j = 0; j < mb && size_t(j) < c.alloc.block_table(seqs[i]).size(); ++j)
                out[i * cols + j] = c.alloc.block_table(seqs[i])[j];
            (void)t;
            return numpy_copy(out.data(), {seqs.size(), size_t(cols)});
          },
          "seqs"_a, "min_blocks"_a)
      .def(
          "seq_lens",
          [](const LatentCache& c, const std::vector<int>& seqs) {
            std::vector<int32_t> v;
            for (int s : seqs) v.push_back(c.alloc.seq_len(s));
            return numpy_copy(v.data(), {v.size()});
          },
          "seqs"_a)
      .def("set_tensor_scale", [](LatentCache& c, float s) {
             const auto lock = lock_releasing_gil(c.mu);  // not while a decode reads the cache
             c.cache.set_tensor_scale(s);
             c.static_scale = true;
           }, "scale"_a)
      .def(
          "set_channel_scales",
          [](LatentCache& c, nb::ndarray<nb::ro, nb::device::cpu, float, nb::shape<mla::kLatentDim>, nb::c_contig> s) {
            const auto lock = lock_releasing_gil(c.mu);  // not while a decode reads the cache
            c.cache.set_channel_scales(s.data());
            c.static_scale = true;
          },
          "scales"_a)
      .def(
          "calibrate",
          [](LatentCache& c, nb::handle tokens_, bool bf16_bits) {
            const Array tokens(tokens_, "tokens");
            // Scales from these tokens (max|latent| / 127), as if they filled slots 0..n-1.
            const std::vector<float> f = LatentCache::tokens_f32(tokens, bf16_bits, "tokens");
            std::vector<int64_t> slots(tokens.shape(0));
            for (size_t i = 0; i < slots.size(); ++i) slots[i] = int64_t(i);
            const auto lock = lock_releasing_gil(c.mu);  // not while a decode reads the cache
            c.cache.calibrate(f.data(), slots);
            c.static_scale = mla::kv_token_scales(c.cache.scale_mode()) == 0;
          },
          "tokens"_a, "bf16_bits"_a)
      .def(
          "query_values",
          [](const LatentCache& c, nb::ndarray<nb::ro, nb::device::cpu, float, nb::c_contig> q) {
            // The query as the kernels compute with it (int8: the latent quantized per row).
            MLA_CHECK(q.size() % mla::kQkDim == 0, "q has " << q.size() << " values, not rows of 576");
            OutBuffer b = OutBuffer::make({q.size() / mla::kQkDim, size_t(mla::kQkDim)}, mla::DType::f32);
            mla::kernel_query_values(c.cache, int64_t(q.size() / mla::kQkDim), q.data(), b.as<float>());
            return b.release();
          },
          "q"_a)
      .def(
          "export_array",
          [](const LatentCache& c) {
            OutBuffer b = OutBuffer::make({size_t(c.cache.num_blocks()), size_t(c.cache.block_size()),
                                           size_t(mla::kQkDim)}, mla::DType::f32);
            c.cache.export_f32(b.as<float>());
            return b.release();
          })
      .def(
          "import_array",
          [](LatentCache& c, nb::handle kv_, bool bf16_bits) {
            const Array kv(kv_, "kv");
            const mla::DType ty = float_type(kv, bf16_bits, "kv");
            require_shape(kv, "kv", {c.cache.num_blocks(), c.cache.block_size(), mla::kQkDim});
            c.require_writable();
            std::vector<uint8_t> hold;
            const void* d = contiguous(kv, hold);
            std::vector<float> f(kv.size());
            for (size_t i = 0; i < f.size(); ++i) f[i] = mla::load_f32(ty, d, int64_t(i));
            const auto lock = lock_releasing_gil(c.mu);  // not while a decode reads the cache
            c.cache.import_f32(f.data());
          },
          "kv"_a, "bf16_bits"_a)
      .def(
          "export_fp8",
          [](const LatentCache& c) {
            MLA_CHECK(c.cache.dtype() == mla::KvDType::fp8,
                      "export_fp8: the cache is " << mla::kv_dtype_name(c.cache.dtype()) << ", not fp8");
            const std::vector<uint8_t> b = c.cache.export_fp8();
            return numpy_copy(b.data(), {size_t(c.cache.num_blocks()), size_t(c.cache.block_size()),
                                         size_t(mla::kFp8TokenBytes)});
          })
      .def(
          "import_fp8",
          [](LatentCache& c, nb::ndarray<nb::ro, nb::device::cpu, uint8_t, nb::c_contig> bytes) {
            MLA_CHECK(c.cache.dtype() == mla::KvDType::fp8,
                      "import_fp8: the cache is " << mla::kv_dtype_name(c.cache.dtype()) << ", not fp8");
            const size_t want = size_t(c.cache.num_slots()) * mla::kFp8TokenBytes;
            MLA_CHECK(bytes.size() == want, "fp8 bytes have " << bytes.size() << " values; expected "
                                                 << c.cache.num_slots() << " x 656");
            const auto lock = lock_releasing_gil(c.mu);  // not while a decode reads the cache
            c.cache.import_fp8(bytes.data(), bytes.size());
          },
          "bytes"_a)
      .def(
          "export_int8",
          [](const LatentCache& c) {
            MLA_CHECK(c.cache.dtype() == mla::KvDType::int8,
                      "export_int8: the cache is " << mla::kv_dtype_name(c.cache.dtype()) << ", not int8");
            const mla::Int8CacheContent x = c.cache.export_int8();
            const size_t nb_ = size_t(c.cache.num_blocks()), bs = size_t(c.cache.block_size());
            nb::dict d;
            d["latent"] = numpy_copy(x.latent.data(), {nb_, bs, size_t(mla::kLatentDim)});
            d["rope"] = numpy_copy(x.rope.data(), {nb_, bs, size_t(mla::kRopeDim)});
            // token mode [num_blocks, block_size]; group modes [num_blocks, block_size, 512 / group]
            const int g = mla::kv_token_scales(c.cache.scale_mode());
            d["token_scale"] = x.token_scale.empty() ? nb::none()
                               : g == 1 ? numpy_copy(x.token_scale.data(), {nb_, bs})
                                        : numpy_copy(x.token_scale.data(), {nb_, bs, size_t(g)});
            d["tensor_scale"] = c.cache.scale_mode() == mla::KvScale::tensor ? nb::cast(x.tensor_scale) : nb::none();
            d["channel_scale"] = x.channel_scale.empty() ? nb::none()
                                                         : numpy_copy(x.channel_scale.data(), {x.channel_scale.size()});
            return d;
          })
      .def(
          "import_int8",
          [](LatentCache& c, nb::ndarray<nb::ro, nb::device::cpu, int8_t, nb::c_contig> latent,
             nb::ndarray<nb::ro, nb::device::cpu, uint16_t, nb::c_contig> rope,
             std::optional<nb::ndarray<nb::ro, nb::device::cpu, float, nb::c_contig>> token_scale,
             std::optional<float> tensor_scale,
             std::optional<nb::ndarray<nb::ro, nb::device::cpu, float, nb::c_contig>> channel_scale) {
            MLA_CHECK(c.cache.dtype() == mla::KvDType::int8,
                      "import_int8: the cache is " << mla::kv_dtype_name(c.cache.dtype()) << ", not int8");
            const size_t slots = size_t(c.cache.num_slots());
            MLA_CHECK(latent.size() == slots * mla::kLatentDim,
                      "latent has " << latent.size() << " values; expected " << slots << " x 512");
            MLA_CHECK(rope.size() == slots * mla::kRopeDim,
                      "rope has " << rope.size() << " values; expected " << slots << " x 64");
            mla::Int8CacheContent x;
            x.latent.assign(latent.data(), latent.data() + latent.size());
            x.rope.assign(rope.data(), rope.data() + rope.size());
            if (token_scale) x.token_scale.assign(token_scale->data(), token_scale->data() + token_scale->size());
            if (tensor_scale) x.tensor_scale = *tensor_scale;
            if (channel_scale) x.channel_scale.assign(channel_scale->data(), channel_scale->data() + channel_scale->size());
            const auto lock = lock_releasing_gil(c.mu);  // not while a decode reads the cache
            c.cache.import_int8(x);
            c.static_scale = mla::kv_token_scales(c.cache.scale_mode()) == 0;
          },
          "latent"_a, "rope"_a, "token_scale"_a.none(), "tensor_scale"_a.none(), "channel_scale"_a.none());
}

}  // namespace mla_py
