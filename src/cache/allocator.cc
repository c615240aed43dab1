// The block allocator (mla/cache.h): hands out a pool's blocks to sequences, builds block tables
// and slot mappings. Apart from the cache's storage so that each file holds one concern.
#include <algorithm>
#include <random>

#include "mla/cache.h"
#include "mla/status.h"

namespace mla {

BlockAllocator::BlockAllocator(int64_t num_blocks, int block_size, uint64_t shuffle_seed)
    : num_blocks_(num_blocks), block_size_(block_size) {
  MLA_CHECK(num_blocks > 0 && num_blocks < (int64_t(1) << 31),
            "allocator: num_blocks = " << num_blocks << " out of range");
  MLA_CHECK(block_size > 0, "allocator: block_size = " << block_size << " must be positive");
  free_.resize(num_blocks);
  // Stack order: block 0 is handed out first unless shuffled.
  for (int64_t i = 0; i < num_blocks; ++i) free_[i] = int32_t(num_blocks - 1 - i);
  if (shuffle_seed) {
    std::mt19937_64 rng(shuffle_seed);
    std::shuffle(free_.begin(), free_.end(), rng);
  }
}

int BlockAllocator::add_sequence() {
  Seq s;
  s.live = true;
  seqs_.push_back(s);
  return int(seqs_.size()) - 1;
}

const BlockAllocator::Seq& BlockAllocator::get(int seq) const {
  MLA_CHECK(seq >= 0 && seq < int(seqs_.size()) && seqs_[seq].live,
            "allocator: sequence " << seq << " does not exist");
  return seqs_[seq];
}

std::vector<int64_t> BlockAllocator::append(int seq, int n) {
  get(seq);
  MLA_CHECK(n >= 0, "allocator: cannot append " << n << " tokens");
  Seq& s = seqs_[seq];
  const int64_t have = int64_t(s.blocks.size()) * block_size_;
  const int64_t need_tokens = int64_t(s.len) + n;
  const int64_t need_blocks = (std::max<int64_t>(need_tokens - have, 0) + block_size_ - 1) / block_size_;
  MLA_CHECK(need_blocks <= free_blocks(),
            "allocator: out of blocks: sequence " << seq << " needs " << need_blocks
                                                  << " more blocks, " << free_blocks() << " free");
  MLA_CHECK(need_tokens < (int64_t(1) << 31), "allocator: sequence length overflow");
  for (int64_t i = 0; i < need_blocks; ++i) {
    s.blocks.push_back(free_.back());
    free_.pop_back();
  }
  std::vector<int64_t> slots(n);
  for (int i = 0; i < n; ++i) slots[i] = slot(seq, s.len + i);
  s.len += n;
  return slots;
}

void BlockAllocator::free(int seq) {
  get(seq);
  Seq& s = seqs_[seq];
  for (auto it = s.blocks.rbegin(); it != s.blocks.rend(); ++it) free_.push_back(*it);
  s = Seq{};
}

int BlockAllocator::seq_len(int seq) const { return get(seq).len; }

const std::vector<int32_t>& BlockAllocator::block_table(int seq) const { return get(seq).blocks; }

int64_t BlockAllocator::slot(int seq, int pos) const {
  const Seq& s = get(seq);
  MLA_CHECK(pos >= 0 && int64_t(pos) < int64_t(s.blocks.size()) * block_size_,
            "allocator: position " << pos << " of sequence " << seq << " has no block");
  return int64_t(s.blocks[pos / block_size_]) * block_size_ + pos % block_size_;
}

std::vector<int32_t> BlockAllocator::block_table_array(const std::vector<int>& seqs,
                                                       int* max_blocks) const {
  int mb = 1;
  for (int q : seqs) mb = std::max(mb, int(get(q).blocks.size()));
  std::vector<int32_t> t(seqs.size() * mb, -1);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto& b = get(seqs[i]).blocks;
    std::copy(b.begin(), b.end(), t.begin() + i * mb);
  }
  *max_blocks = mb;
  return t;
}

}  // namespace mla
