// CpuKvCache: the paged KV cache of one CPU rank.
//
// Memory is a pool of fixed-size blocks sized from a byte budget. A block holds `block_tokens`
// consecutive tokens of one sequence for every layer: per layer, K and V each as
// [block_tokens][kv_heads][head_dim] floats. Each sequence owns a block table (its blocks in
// position order); growing a sequence takes blocks from the free list, Release and Truncate
// return them; KeepEntries compacts a sequence after speculative verification. Block b of layer l
// starts at a fixed address, so views stay valid while a sequence grows.
//
// Thread safety: not synchronised; one owner thread (the backend's). Slot pointers may be
// written concurrently for distinct (sequence, position) pairs.
// Ownership: the cache owns the pool; pointers it hands out are valid until the slot's block is
// released.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "engine/cpu/kernels.h"

namespace spark::engine {

struct KvCacheShape {
  int num_layers = 0;
  int kv_heads = 0;  // local kv heads of the rank
  int head_dim = 0;
  int block_tokens = 16;
};

class CpuKvCache {
 public:
  // InvalidArgument when the shape is empty or the budget cannot hold a single block (the
  // message gives the bytes one block needs).
  static Result<std::unique_ptr<CpuKvCache>> Create(const KvCacheShape& shape,
                                                    int64_t capacity_bytes);

  CpuKvCache(const CpuKvCache&) = delete;
  CpuKvCache& operator=(const CpuKvCache&) = delete;

  const KvCacheShape& shape() const { return shape_; }
  // Bytes of one block (all layers, K and V).
  int64_t block_bytes() const;
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t CapacityTokens() const { return num_blocks_ * shape_.block_tokens; }
  int64_t FreeTokens() const { return free_blocks() * shape_.block_tokens; }

  // Cached tokens of a sequence (0 when unknown).
  int64_t Length(uint64_t seq) const;
  // Blocks that growing `seq` to `new_length` tokens would take from the free list.
  int64_t BlocksToGrow(uint64_t seq, int64_t new_length) const;
  // Grows `seq` (created if new) to `new_length` tokens. ResourceExhausted when the free blocks
  // do not suffice (nothing changes then); InvalidArgument when new_length < Length(seq).
  Status Grow(uint64_t seq, int64_t new_length);
  // Shrinks `seq` to `length` tokens, freeing blocks no longer needed.
  Status Truncate(uint64_t seq, int64_t length);
  // Frees every block of `seq`; unknown ids are ignored.
  void Release(uint64_t seq);
  // Keeps slots [0, prefix_len), then slot prefix_len + keep[i] moved to prefix_len + i (K and V
  // of every layer), and truncates to prefix_len + keep.size(). InvalidArgument (nothing
  // changes) when prefix_len is outside [0, Length], or keep is not strictly ascending within
  // [0, Length - prefix_len).
  Status KeepEntries(uint64_t seq, int64_t prefix_len, const std::vector<int32_t>& keep);

  // K / V of token `pos` of `seq` in `layer`: kv_heads * head_dim floats. pos < Length(seq).
  float* KeySlot(int layer, uint64_t seq, int64_t pos);
  float* ValueSlot(int layer, uint64_t seq, int64_t pos);

  // Fills `k_blocks` / `v_blocks` with the block addresses of `seq` in `layer` and returns a view
  // over them (valid while those vectors live and the blocks are held).
  PagedKvView View(int layer, uint64_t seq, std::vector<const float*>* k_blocks,
                   std::vector<const float*>* v_blocks) const;

 private:
  CpuKvCache(const KvCacheShape& shape, int64_t num_blocks);

  struct Sequence {
    int64_t length = 0;
    std::vector<int32_t> blocks;
  };

  int64_t floats_per_block_layer() const;  // one of K or V, one layer
  float* Slot(bool value, int layer, uint64_t seq, int64_t pos);

  KvCacheShape shape_;
  int64_t num_blocks_ = 0;
  // Per layer: K then V, each [num_blocks][block_tokens][kv_heads][head_dim].
  std::vector<std::unique_ptr<float[]>> k_;
  std::vector<std::unique_ptr<float[]>> v_;
  std::vector<int32_t> free_;  // stack of free block ids
  std::unordered_map<uint64_t, Sequence> seqs_;
};

}  // namespace spark::engine
