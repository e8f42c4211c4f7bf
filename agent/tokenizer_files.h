// The tokenizer and chat-template files of a checkpoint that the rank-0 agent sends to the
// controller (TokenizerFiles): tokenizer.json, tokenizer_config.json, chat_template.jinja and
// generation_config.json, each when present, with its SHA-256.
//
// Thread safety: pure functions over the file system.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"
#include "spark.pb.h"

namespace spark::agent {

// Files larger than this are skipped (with a warning); the frame limit is 256 MiB.
inline constexpr size_t kMaxTokenizerFileBytes = 64u << 20;

// Reads the files present in `model_path`. NotFound when none of them exists.
Result<spark::v1::TokenizerFiles> CollectTokenizerFiles(const std::string& model_path);

// Lower-case hex SHA-256 (libsodium).
std::string Sha256Hex(std::string_view data);

}  // namespace spark::agent
