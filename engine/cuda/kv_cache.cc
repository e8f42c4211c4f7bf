#include "engine/cuda/kv_cache.h"

#include <string>

#include "engine/cuda/cuda_check.h"

namespace spark::cuda {

Result<std::unique_ptr<CudaKvCache>> CudaKvCache::Create(const CudaKvShape& shape,
                                                         int64_t capacity_bytes) {
  if (shape.num_layers <= 0 || shape.kv_heads <= 0 || shape.head_dim <= 0 ||
      shape.block_tokens <= 0) {
    return InvalidArgument(
        "KV cache shape must have positive layers, kv heads, head_dim and "
        "block tokens");
  }
  const int64_t block = shape.BlockBytes();
  const int64_t blocks = capacity_bytes / block;
  if (blocks < 1) {
    return ResourceExhausted("KV cache budget of " + std::to_string(capacity_bytes) +
                             " bytes cannot hold one block of " + std::to_string(block) +
                             " bytes (" + std::to_string(shape.block_tokens) +
                             " tokens); give the KV cache more memory (kv_cache_bytes or "
                             "kv_cache_fraction) or use more tensor-parallel ranks");
  }
  if (blocks > INT32_MAX) return InvalidArgument("KV cache has more than 2^31 blocks");
  std::unique_ptr<CudaKvCache> cache(new CudaKvCache(shape, blocks));
  SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&cache->pool_, static_cast<size_t>(blocks * block)));
  cache->free_.reserve(static_cast<size_t>(blocks));
  for (int64_t b = blocks - 1; b >= 0; --b) cache->free_.push_back(static_cast<int32_t>(b));
  return cache;
}

CudaKvCache::~CudaKvCache() {
  if (pool_) cudaFree(pool_);
}

int64_t CudaKvCache::LayerBytes() const {
  return num_blocks_ * shape_.kv_heads * shape_.block_tokens * shape_.head_dim *
         KvElemBytes(shape_.dtype);
}

void* CudaKvCache::keys(int layer) const { return pool_ + 2 * layer * LayerBytes(); }

void* CudaKvCache::values(int layer) const { return pool_ + (2 * layer + 1) * LayerBytes(); }

int64_t CudaKvCache::Length(uint64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.length;
}

int64_t CudaKvCache::BlocksToGrow(uint64_t seq, int64_t new_length) const {
  auto it = seqs_.find(seq);
  const int64_t have = it == seqs_.end() ? 0 : static_cast<int64_t>(it->second.blocks.size());
  const int64_t need = (new_length + shape_.block_tokens - 1) / shape_.block_tokens;
  return need > have ? need - have : 0;
}

Status CudaKvCache::Grow(uint64_t seq, int64_t new_length) {
  if (new_length < Length(seq)) {
    return InvalidArgument("cannot grow sequence " + std::to_string(seq) + " to " +
                           std::to_string(new_length) + " tokens: it already holds " +
                           std::to_string(Length(seq)));
  }
  const int64_t need = BlocksToGrow(seq, new_length);
  if (need > free_blocks()) {
    return ResourceExhausted("KV cache full: sequence " + std::to_string(seq) + " needs " +
                             std::to_string(need) + " blocks, " + std::to_string(free_blocks()) +
                             " free");
  }
  Sequence& s = seqs_[seq];
  for (int64_t i = 0; i < need; ++i) {
    s.blocks.push_back(free_.back());
    free_.pop_back();
  }
  s.length = new_length;
  return Status::Ok();
}

Status CudaKvCache::Truncate(uint64_t seq, int64_t length) {
  const int64_t have = Length(seq);
  if (length < 0 || length > have) {
    return InvalidArgument("cannot truncate sequence " + std::to_string(seq) + " to " +
                           std::to_string(length) + " tokens: it holds " + std::to_string(have));
  }
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return Status::Ok();
  Sequence& s = it->second;
  const int64_t keep = (length + shape_.block_tokens - 1) / shape_.block_tokens;
  while (static_cast<int64_t>(s.blocks.size()) > keep) {
    free_.push_back(s.blocks.back());
    s.blocks.pop_back();
  }
  s.length = length;
  return Status::Ok();
}

void CudaKvCache::Release(uint64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (int32_t b : it->second.blocks) free_.push_back(b);
  seqs_.erase(it);
}

const std::vector<int32_t>& CudaKvCache::Blocks(uint64_t seq) const {
  static const std::vector<int32_t> kEmpty;
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? kEmpty : it->second.blocks;
}

}  // namespace spark::cuda
