// The work of one paged-attention block (engine/cuda/attention.h): its chunk, its tile of
// (token, head) rows of one kv head and the keys of its split. Shared by the CUDA-core kernel
// (attention.cu) and the tensor-core kernel (attention_mma.cu), so both partition the keys the
// same way. Device-only inline code; no state.
#pragma once

#include <cstdint>

#include "engine/cuda/attention.h"

namespace spark::cuda {

// With split_keys 0, each split's share of a chunk's keys is rounded up to this many keys.
constexpr int kAttentionSplitKeyTile = 32;

struct AttentionTileWork {
  int chunk = 0;
  int row_begin = 0;  // rows [row_begin, row_end) of the chunk's len * group rows
  int row_end = 0;
  int group = 0;  // q heads per kv head
  int start = 0;  // the chunk's first position, token count and first row of q / out
  int len = 0;
  int offset = 0;
  int key_begin = 0;  // keys [key_begin, key_end) this block covers
  int key_end = 0;
  const int* table = nullptr;  // the chunk's block table
};

// The block (blockIdx.x = tile, blockIdx.z = split)'s work.
__device__ __forceinline__ AttentionTileWork AttentionTileFor(const AttentionBatch& batch,
                                                              const AttentionShape& shape,
                                                              int splits, int split_keys) {
  AttentionTileWork w;
  const int2 tile = batch.tiles[blockIdx.x];
  w.chunk = tile.x;
  w.row_begin = tile.y;
  w.group = shape.q_heads / shape.kv_heads;
  w.start = batch.start[w.chunk];
  w.len = batch.len[w.chunk];
  w.offset = batch.offset[w.chunk];
  w.row_end = min(w.len * w.group, w.row_begin + kAttentionRowsPerTile);
  w.table = batch.block_tables + static_cast<int64_t>(w.chunk) * batch.max_blocks;
  // Up to the tile's last token; a split takes its share (split_keys 0: the chunk's keys divided
  // evenly, in whole kAttentionSplitKeyTile tiles, among the splits).
  w.key_end = w.start + (w.row_end - 1) / w.group + 1;
  if (splits > 1) {
    const int per_split =
        split_keys > 0 ? split_keys
                       : ((w.start + w.len + splits - 1) / splits + kAttentionSplitKeyTile - 1) /
                             kAttentionSplitKeyTile * kAttentionSplitKeyTile;
    w.key_begin = static_cast<int>(blockIdx.z) * per_split;
    w.key_end = min(w.key_end, w.key_begin + per_split);
  }
  return w;
}

}  // namespace spark::cuda
