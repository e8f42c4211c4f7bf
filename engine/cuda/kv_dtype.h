// KvCacheDtype: the element type of the paged KV cache on the CUDA backend.
//
// kBf16 stores K and V as BF16. kFp8E4m3 stores them as FP8 E4M3 with scale 1 (the values as
// they are, rounded to nearest even and saturated at +-448, as vLLM's fp8 KV cache without
// calibrated scales): half the bytes per token, so the same memory holds twice the tokens and a
// decode step reads half the KV bytes. Attention converts the elements to fp32 on load.
//
// Thread safety: constants and pure functions. Ownership: values.
#pragma once

namespace spark::cuda {

enum class KvCacheDtype { kBf16, kFp8E4m3 };

// Bytes of one cached element.
constexpr int KvElemBytes(KvCacheDtype dtype) { return dtype == KvCacheDtype::kBf16 ? 2 : 1; }

}  // namespace spark::cuda
