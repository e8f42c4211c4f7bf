#include "engine/cpu/kv_cache.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>

#include "common/check.h"

namespace spark::engine {

Result<std::unique_ptr<CpuKvCache>> CpuKvCache::Create(const KvCacheShape& shape,
                                                       int64_t capacity_bytes) {
  if (shape.num_layers <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0 ||
      shape.block_tokens <= 0) {
    return InvalidArgument("KV cache shape: layers " + std::to_string(shape.num_layers) +
                           ", kv heads " + std::to_string(shape.kv_heads) + ", head_dim " +
                           std::to_string(shape.head_dim) + ", block_tokens " +
                           std::to_string(shape.block_tokens) + " must all be positive");
  }
  const int64_t block_bytes = int64_t{2} * shape.num_layers * shape.block_tokens * shape.kv_heads *
                              shape.head_dim * int64_t{sizeof(float)};
  const int64_t num_blocks = capacity_bytes / block_bytes;
  if (num_blocks <= 0) {
    return InvalidArgument("kv_cache_bytes " + std::to_string(capacity_bytes) +
                           " cannot hold one KV block of " + std::to_string(block_bytes) +
                           " bytes; raise kv_cache_bytes or lower kv_block_tokens");
  }
  if (num_blocks > int64_t{INT32_MAX}) {
    return InvalidArgument("kv_cache_bytes " + std::to_string(capacity_bytes) +
                           " gives more than 2^31 KV blocks; raise kv_block_tokens");
  }
  std::unique_ptr<CpuKvCache> cache(new CpuKvCache(shape, num_blocks));
  const int64_t floats = num_blocks * cache->floats_per_block_layer();
  for (int l = 0; l < shape.num_layers; ++l) {
    // Uninitialised on purpose: pages are touched only when tokens are written.
    float* k = new (std::nothrow) float[static_cast<size_t>(floats)];
    float* v = new (std::nothrow) float[static_cast<size_t>(floats)];
    if (k == nullptr || v == nullptr) {
      delete[] k;
      delete[] v;
      return ResourceExhausted("cannot allocate the KV cache (" + std::to_string(capacity_bytes) +
                               " bytes); lower kv_cache_bytes");
    }
    cache->k_.emplace_back(k);
    cache->v_.emplace_back(v);
  }
  return cache;
}

CpuKvCache::CpuKvCache(const KvCacheShape& shape, int64_t num_blocks)
    : shape_(shape), num_blocks_(num_blocks) {
  free_.reserve(static_cast<size_t>(num_blocks));
  // Stack with block 0 on top, so a fresh cache hands out blocks in ascending order.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

int64_t CpuKvCache::floats_per_block_layer() const {
  return int64_t{shape_.block_tokens} * shape_.kv_heads * shape_.head_dim;
}

int64_t CpuKvCache::block_bytes() const {
  return 2 * shape_.num_layers * floats_per_block_layer() * int64_t{sizeof(float)};
}

int64_t CpuKvCache::Length(uint64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.length;
}

int64_t CpuKvCache::BlocksToGrow(uint64_t seq, int64_t new_length) const {
  auto it = seqs_.find(seq);
  const int64_t have = it == seqs_.end() ? 0 : static_cast<int64_t>(it->second.blocks.size());
  const int64_t need = (new_length + shape_.block_tokens - 1) / shape_.block_tokens;
  return std::max<int64_t>(0, need - have);
}

Status CpuKvCache::Grow(uint64_t seq, int64_t new_length) {
  const int64_t length = Length(seq);
  if (new_length < length) {
    return InvalidArgument("cannot grow sequence " + std::to_string(seq) + " from " +
                           std::to_string(length) + " to " + std::to_string(new_length) +
                           " tokens; use Truncate to shrink");
  }
  const int64_t blocks = BlocksToGrow(seq, new_length);
  if (blocks > free_blocks()) {
    return ResourceExhausted("KV cache full: sequence " + std::to_string(seq) + " needs " +
                             std::to_string(blocks) + " more blocks, " +
                             std::to_string(free_blocks()) +
                             " free; preempt or release a sequence, or raise kv_cache_bytes");
  }
  Sequence& s = seqs_[seq];
  for (int64_t i = 0; i < blocks; ++i) {
    s.blocks.push_back(free_.back());
    free_.pop_back();
  }
  s.length = new_length;
  return Status::Ok();
}

Status CpuKvCache::Truncate(uint64_t seq, int64_t length) {
  const int64_t current = Length(seq);
  if (length < 0 || length > current) {
    return InvalidArgument("cannot truncate sequence " + std::to_string(seq) + " of " +
                           std::to_string(current) + " cached tokens to " + std::to_string(length));
  }
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return Status::Ok();
  Sequence& s = it->second;
  const size_t keep = static_cast<size_t>((length + shape_.block_tokens - 1) / shape_.block_tokens);
  while (s.blocks.size() > keep) {
    free_.push_back(s.blocks.back());
    s.blocks.pop_back();
  }
  s.length = length;
  if (length == 0) seqs_.erase(it);
  return Status::Ok();
}

void CpuKvCache::Release(uint64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) {
    free_.push_back(*b);
  }
  seqs_.erase(it);
}

Status CpuKvCache::KeepEntries(uint64_t seq, int64_t prefix_len, const std::vector<int32_t>& keep) {
  const int64_t length = Length(seq);
  if (prefix_len < 0 || prefix_len > length) {
    return InvalidArgument("cannot keep a prefix of " + std::to_string(prefix_len) +
                           " entries of sequence " + std::to_string(seq) + ", which caches " +
                           std::to_string(length) + "; prefix_len must be in [0, cached length]");
  }
  int64_t previous = -1;
  for (size_t i = 0; i < keep.size(); ++i) {
    const int64_t k = keep[i];
    if (k <= previous || k >= length - prefix_len) {
      return InvalidArgument(
          "keep[" + std::to_string(i) + "] = " + std::to_string(k) + " for sequence " +
          std::to_string(seq) + " (" + std::to_string(length) + " cached, prefix " +
          std::to_string(prefix_len) + "): indices must be strictly ascending and in [0, " +
          std::to_string(length - prefix_len) + ")");
    }
    previous = k;
  }
  const size_t bytes = static_cast<size_t>(shape_.kv_heads) * shape_.head_dim * sizeof(float);
  for (size_t i = 0; i < keep.size(); ++i) {
    const int64_t from = prefix_len + keep[i];
    const int64_t to = prefix_len + static_cast<int64_t>(i);
    if (from == to) continue;  // keep[i] >= i, so a slot is read before it is overwritten
    for (int l = 0; l < shape_.num_layers; ++l) {
      std::memcpy(Slot(false, l, seq, to), Slot(false, l, seq, from), bytes);
      std::memcpy(Slot(true, l, seq, to), Slot(true, l, seq, from), bytes);
    }
  }
  return Truncate(seq, prefix_len + static_cast<int64_t>(keep.size()));
}

float* CpuKvCache::Slot(bool value, int layer, uint64_t seq, int64_t pos) {
  auto it = seqs_.find(seq);
  SPARK_CHECK(it != seqs_.end() && pos >= 0 && pos < it->second.length)
      << "KV slot of sequence " << seq << " position " << pos;
  const int32_t block = it->second.blocks[pos / shape_.block_tokens];
  float* base = value ? v_[layer].get() : k_[layer].get();
  return base + block * floats_per_block_layer() +
         (pos % shape_.block_tokens) * int64_t{shape_.kv_heads} * shape_.head_dim;
}

float* CpuKvCache::KeySlot(int layer, uint64_t seq, int64_t pos) {
  return Slot(false, layer, seq, pos);
}

float* CpuKvCache::ValueSlot(int layer, uint64_t seq, int64_t pos) {
  return Slot(true, layer, seq, pos);
}

PagedKvView CpuKvCache::View(int layer, uint64_t seq, std::vector<const float*>* k_blocks,
                             std::vector<const float*>* v_blocks) const {
  k_blocks->clear();
  v_blocks->clear();
  auto it = seqs_.find(seq);
  if (it != seqs_.end()) {
    for (int32_t b : it->second.blocks) {
      k_blocks->push_back(k_[layer].get() + b * floats_per_block_layer());
      v_blocks->push_back(v_[layer].get() + b * floats_per_block_layer());
    }
  }
  PagedKvView view;
  view.k_blocks = k_blocks->data();
  view.v_blocks = v_blocks->data();
  view.block_tokens = shape_.block_tokens;
  view.kv_heads = shape_.kv_heads;
  view.head_dim = shape_.head_dim;
  return view;
}

}  // namespace spark::engine
