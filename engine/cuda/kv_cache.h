// CudaKvCache: the paged KV cache of one CUDA rank.
//
// One device allocation holds, per layer, K and V as [num_blocks][kv_heads][block_tokens]
// [head_dim] elements of the cache's dtype (engine/cuda/kv_dtype.h: BF16 or FP8 E4M3). Block
// bookkeeping (free list, per-sequence block tables) lives on the host; the backend uploads the
// block tables of a batch before its kernels run. Semantics as
// CpuKvCache: Grow takes blocks (ResourceExhausted when too few are free, nothing changes),
// Truncate and Release return them.
//
// Thread safety: one owner thread. Ownership: owns the device pool.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "engine/cuda/kv_dtype.h"

namespace spark::cuda {

struct CudaKvShape {
  int num_layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int block_tokens = 16;
  KvCacheDtype dtype = KvCacheDtype::kBf16;
  // Bytes of one block over all layers, K and V.
  int64_t BlockBytes() const {
    return int64_t{2} * num_layers * kv_heads * block_tokens * head_dim * KvElemBytes(dtype);
  }
};

class CudaKvCache {
 public:
  // ResourceExhausted naming the numbers when `capacity_bytes` cannot hold one block.
  static Result<std::unique_ptr<CudaKvCache>> Create(const CudaKvShape& shape,
                                                     int64_t capacity_bytes);
  ~CudaKvCache();
  CudaKvCache(const CudaKvCache&) = delete;
  CudaKvCache& operator=(const CudaKvCache&) = delete;

  const CudaKvShape& shape() const { return shape_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t CapacityTokens() const { return num_blocks_ * shape_.block_tokens; }
  int64_t FreeTokens() const { return free_blocks() * shape_.block_tokens; }
  int64_t bytes() const { return num_blocks_ * shape_.BlockBytes(); }

  int64_t Length(uint64_t seq) const;
  int64_t BlocksToGrow(uint64_t seq, int64_t new_length) const;
  Status Grow(uint64_t seq, int64_t new_length);
  Status Truncate(uint64_t seq, int64_t length);
  void Release(uint64_t seq);
  // Block ids of a sequence in position order (empty for unknown ids).
  const std::vector<int32_t>& Blocks(uint64_t seq) const;

  // Start of K / V of one layer (elements of shape().dtype).
  void* keys(int layer) const;
  void* values(int layer) const;

 private:
  CudaKvCache(const CudaKvShape& shape, int64_t num_blocks)
      : shape_(shape), num_blocks_(num_blocks) {}
  int64_t LayerBytes() const;  // one of K or V of one layer

  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> blocks;
  };
  CudaKvShape shape_;
  int64_t num_blocks_ = 0;
  uint8_t* pool_ = nullptr;
  std::vector<int32_t> free_;
  std::unordered_map<uint64_t, Sequence> seqs_;
};

}  // namespace spark::cuda
