// Fuzz target: GLM-4.7 tool-call parser (see tool_parser_fuzz_common.h).
#include <cstddef>
#include <cstdint>

#include "tests/engine/text/chat/fuzz/tool_parser_fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  spark::engine::chat::fuzz::FuzzToolParser(spark::engine::chat::ToolCallFormat::kGlm47, data,
                                            size);
  return 0;
}
