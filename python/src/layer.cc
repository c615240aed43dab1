// mla.Layer's C++ half: one attention layer of a Hugging Face DeepSeek-V2/V3 checkpoint
// (mla::MlaLayer) with its own paged cache and block allocator, and its bindings.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "interop.h"
#include "mla/attention.h"
#include "mla/cache.h"
#include "mla/layer.h"
#include "mla/model.h"
#include "mla/safetensors.h"
#include "mla/status.h"

namespace mla_py {

using namespace nb::literals;

namespace {

// One attention layer of a checkpoint with a paged cache and block allocator of its own: the
// sequences it serves are added, prefilled, decoded and freed through it, so a block table can
// never point at another cache. Weights stay memory-mapped in `store`.
struct Layer {
  mla::ModelConfig cfg;
  mla::TensorStore store;
  std::unique_ptr<mla::MlaLayer> layer;
  mla::PagedLatentCache cache;
  mla::BlockAllocator alloc;
  int threads;
  // Held by every call that reads or changes `alloc` or the cache: prefill and decode (which run
  // with the GIL released, and both append to the cache) and the sequence calls. Two Layers run
  // at once; one Layer runs one step at a time.
  mutable std::mutex mu;

  Layer(const std::string& dir, int index, const std::string& kv_dtype, int block_size,
        int64_t num_blocks, int threads_, const std::string& kv_rotate)
      : cfg(read_config(dir, index)),
        store(mla::TensorStore::open_dir(dir)),
        layer(std::make_unique<mla::MlaLayer>(cfg, store, index, mla::parse_kv_rotation(kv_rotate))),
        cache(cache_config(kv_dtype, block_size, num_blocks, kv_rotate)),
        alloc(num_blocks, block_size),
        threads(threads_) {
    MLA_CHECK(threads_ >= 0, "threads = " << threads_ << " is negative");
  }

  static mla::ModelConfig read_config(const std::string& dir, int index) {
    MLA_CHECK(std::filesystem::is_directory(dir), "model_dir '" << dir << "' is not a directory");
    mla::ModelConfig c = mla::read_model_config((std::filesystem::path(dir) / "config.json").string());
    MLA_CHECK(index >= 0 && index < c.num_hidden_layers,
              "layer = " << index << " is outside the model's " << c.num_hidden_layers << " layers");
    return c;
  }
  static mla::CacheConfig cache_config(const std::string& kv_dtype, int block_size, int64_t num_blocks,
                                       const std::string& kv_rotate) {
    MLA_CHECK(block_size >= 1, "block_size = " << block_size << " must be at least 1");
    MLA_CHECK(num_blocks >= 1, "num_blocks = " << num_blocks << " must be at least 1");
    // int8 with per-token scales: the layer writes tokens as they come, no calibration step.
    return {.num_blocks = num_blocks, .block_size = block_size, .dtype = mla::parse_kv_dtype(kv_dtype),
            .rotation = mla::parse_kv_rotation(kv_rotate)};
  }

  // hidden [n, hidden_size] (2-D) or [B, Q, hidden_size] (3-D), float32, contiguous copy.
  const float* hidden_f32(const Array& h, std::vector<uint8_t>& hold, std::initializer_list<int64_t> shape) const {
    const nb::dlpack::dtype t = h.dtype();
    if (!(t.code == kFloat && t.bits == 32 && t.lanes == 1))
      throw nb::value_error(("hidden has dtype " + dtype_str(t) + "; expected float32").c_str());
    require_shape(h, "hidden", shape);
    return static_cast<const float*>(contiguous(h, hold));
  }

  // Blocks `extra` more tokens of each of `seqs` would take beyond the ones they hold.
  int64_t blocks_needed(const std::vector<int>& seqs, int extra) const {
    const int bs = cache.block_size();
    int64_t need = 0;
    for (int s : seqs) {
      const int have = (alloc.seq_len(s) + bs - 1) / bs, want = (alloc.seq_len(s) + extra + bs - 1) / bs;
      need += want - have;
    }
    return need;
  }
  void require_room(const std::vector<int>& seqs, int extra) const {
    const int64_t need = blocks_needed(seqs, extra);
    MLA_CHECK(need <= alloc.free_blocks(), "the step needs " << need << " more cache blocks; "
                                               << alloc.free_blocks() << " of num_blocks = "
                                               << cache.num_blocks() << " are free");
  }
};

}  // namespace

void bind_layer(nb::module_& m) {
  nb::class_<Layer>(m, "Layer")
      .def(nb::init<const std::string&, int, const std::string&, int, int64_t, int, const std::string&>(),
           "model_dir"_a, "layer"_a, "kv_dtype"_a, "block_size"_a, "num_blocks"_a, "threads"_a,
           "kv_rotate"_a)
      .def_prop_ro("hidden_size", [](const Layer& l) { return l.cfg.hidden_size; })
      .def_prop_ro("num_heads", [](const Layer& l) { return l.cfg.num_heads; })
      .def_prop_ro("model_type", [](const Layer& l) { return l.cfg.model_type; })
      .def_prop_ro("kv_dtype", [](const Layer& l) { return std::string(mla::kv_dtype_name(l.cache.dtype())); })
      .def_prop_ro("block_size", [](const Layer& l) { return l.cache.block_size(); })
      .def_prop_ro("num_blocks", [](const Layer& l) { return l.cache.num_blocks(); })
      .def_prop_ro("free_blocks", [](const Layer& l) {
        const auto lock = lock_releasing_gil(l.mu);
        return l.alloc.free_blocks();
      })
      .def_prop_ro("threads", [](const Layer& l) { return l.threads; })
      .def("add_sequence", [](Layer& l) {
        const auto lock = lock_releasing_gil(l.mu);
        return l.alloc.add_sequence();
      })
      .def("free", [](Layer& l, int seq) {
        const auto lock = lock_releasing_gil(l.mu);
        l.alloc.free(seq);
      }, "seq"_a)
      .def("seq_len", [](const Layer& l, int seq) {
        const auto lock = lock_releasing_gil(l.mu);
        return l.alloc.seq_len(seq);
      }, "seq"_a)
      .def(
          "prefill",
          [](Layer& l, int seq, nb::handle hidden_) {
            const Array h(hidden_, "hidden");
            std::vector<uint8_t> hold;
            const float* hd = l.hidden_f32(h, hold, {-1, l.cfg.hidden_size});
            const int n = int(h.shape(0));
            nb::gil_scoped_release unlocked;
            std::lock_guard<std::mutex> lock(l.mu);
            const int start = l.alloc.seq_len(seq);  // an unknown sequence is refused here
            if (n == 0) return;
            l.require_room({seq}, n);
            std::vector<int32_t> pos(n);
            for (int t = 0; t < n; ++t) pos[t] = start + t;
            mla::BlockAllocator before = l.alloc;
            try {
              const std::vector<int64_t> slots = l.alloc.append(seq, n);
              l.layer->prefill(n, hd, pos.data(), slots.data(), l.cache, l.threads);
            } catch (...) {
              l.alloc = std::move(before);
              throw;
            }
          },
          "seq"_a, "hidden"_a)
      .def(
          "decode",
          [](Layer& l, const std::vector<int>& seqs, nb::handle hidden_) {
            const Array h(hidden_, "hidden");
            MLA_CHECK(!seqs.empty(), "seqs is empty");
            std::vector<uint8_t> hold;
            const float* hd = l.hidden_f32(h, hold, {int64_t(seqs.size()), -1, l.cfg.hidden_size});
            const int B = int(seqs.size()), Q = int(h.shape(1)), D = l.cfg.hidden_size;
            MLA_CHECK(Q >= 1, "hidden has shape [" << B << ", 0, " << D << "]: no new tokens");
            for (int i = 0; i < B; ++i)
              for (int j = 0; j < i; ++j)
                MLA_CHECK(seqs[i] != seqs[j], "seqs lists sequence " << seqs[i] << " twice");
            std::vector<float> o(size_t(B) * Q * D);
            {
              nb::gil_scoped_release unlocked;
              std::lock_guard<std::mutex> lock(l.mu);
              for (int s : seqs) (void)l.alloc.seq_len(s);  // an unknown sequence is refused here
              l.require_room(seqs, Q);
              mla::BlockAllocator before = l.alloc;
              try {
                std::vector<int32_t> lens(B);
                for (int b = 0; b < B; ++b) {
                  l.alloc.append(seqs[b], Q);
                  lens[b] = l.alloc.seq_len(seqs[b]);
                }
                int mb = 0;
                const std::vector<int32_t> bt = l.alloc.block_table_array(seqs, &mb);
                mla::DecodeOptions opt;
                opt.threads = l.threads;
                l.layer->decode(mla::LayerStep{.batch = B, .q_len = Q, .hidden = hd, .seq_lens = lens.data(),
                                               .block_table = bt.data(), .max_blocks_per_seq = mb},
                                l.cache, opt, o.data());
              } catch (...) {
                l.alloc = std::move(before);
                throw;
              }
            }
            return numpy_copy(o.data(), {size_t(B), size_t(Q), size_t(D)});
          },
          "seqs"_a, "hidden"_a);
}

}  // namespace mla_py
