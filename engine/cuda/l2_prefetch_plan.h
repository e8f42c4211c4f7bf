// How L2Prefetch (engine/cuda/l2_prefetch.h) cuts its ranges into requests: each range is clipped
// to its whole 16-byte units (first boundary at or after its start, last at or before its end),
// empty ones are dropped, and the rest are cut into chunks of kL2PrefetchChunkBytes (the last of
// a range shorter), numbered across the ranges in order. The kernel asks for chunk c with
// L2PrefetchChunkAt. Free of CUDA headers, so CPU tests check the arithmetic the kernel runs.
// Thread safety: pure functions on values.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPARK_L2_PLAN_HD __host__ __device__
#else
#define SPARK_L2_PLAN_HD
#endif

namespace spark::cuda {

struct L2Range {
  const void* data = nullptr;
  int64_t bytes = 0;
};

constexpr int kL2PrefetchMaxRanges = 4;
constexpr int64_t kL2PrefetchChunkBytes = 16 * 1024;

struct L2PrefetchPlan {
  const uint8_t* begin[kL2PrefetchMaxRanges] = {};
  int64_t bytes[kL2PrefetchMaxRanges] = {};            // whole 16-byte units from begin
  int64_t first_chunk[kL2PrefetchMaxRanges + 1] = {};  // prefix sums of each range's chunks
  int count = 0;                                       // ranges kept

  int64_t chunks() const { return first_chunk[count]; }
};

// The plan of `count` ranges; false (and an empty plan) for a negative count or size, more than
// kL2PrefetchMaxRanges ranges, or null `ranges` with a positive count.
inline bool PlanL2Prefetch(const L2Range* ranges, int count, L2PrefetchPlan* plan) {
  *plan = L2PrefetchPlan{};
  if (count < 0 || count > kL2PrefetchMaxRanges || (count > 0 && ranges == nullptr)) return false;
  for (int i = 0; i < count; ++i) {
    if (ranges[i].bytes < 0) {
      *plan = L2PrefetchPlan{};
      return false;
    }
    const auto addr = reinterpret_cast<uintptr_t>(ranges[i].data);
    const uintptr_t begin = (addr + 15) & ~uintptr_t{15};
    const uintptr_t end = (addr + static_cast<uintptr_t>(ranges[i].bytes)) & ~uintptr_t{15};
    if (ranges[i].data == nullptr || end <= begin) continue;
    const int k = plan->count;
    plan->begin[k] = reinterpret_cast<const uint8_t*>(begin);
    plan->bytes[k] = static_cast<int64_t>(end - begin);
    plan->first_chunk[k + 1] =
        plan->first_chunk[k] + (plan->bytes[k] + kL2PrefetchChunkBytes - 1) / kL2PrefetchChunkBytes;
    ++plan->count;
  }
  return true;
}

struct L2Chunk {
  const uint8_t* data;
  int64_t bytes;
};

// Chunk c (0 <= c < plan.chunks()) of the plan.
SPARK_L2_PLAN_HD inline L2Chunk L2PrefetchChunkAt(const L2PrefetchPlan& plan, int64_t c) {
  int i = 0;
  while (c >= plan.first_chunk[i + 1]) ++i;
  const int64_t off = (c - plan.first_chunk[i]) * kL2PrefetchChunkBytes;
  const int64_t left = plan.bytes[i] - off;
  return {plan.begin[i] + off, left < kL2PrefetchChunkBytes ? left : kL2PrefetchChunkBytes};
}

}  // namespace spark::cuda
