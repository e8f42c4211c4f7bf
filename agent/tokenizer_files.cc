#include "agent/tokenizer_files.h"

#include <sodium.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "common/log.h"

namespace spark::agent {

std::string Sha256Hex(std::string_view data) {
  static const int kSodiumReady = sodium_init();  // idempotent, thread-safe
  (void)kSodiumReady;
  unsigned char digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(digest, reinterpret_cast<const unsigned char*>(data.data()), data.size());
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : digest) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

Result<spark::v1::TokenizerFiles> CollectTokenizerFiles(const std::string& model_path) {
  namespace fs = std::filesystem;
  spark::v1::TokenizerFiles files;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                           "generation_config.json"}) {
    const fs::path path = fs::path(model_path) / name;
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) continue;
    const uintmax_t size = fs::file_size(path, ec);
    if (ec || size > kMaxTokenizerFileBytes) {
      SPARK_LOG(WARN).With("file", path.string()) << "tokenizer file skipped (too large)";
      continue;
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      SPARK_LOG(WARN).With("file", path.string()) << "tokenizer file not readable";
      continue;
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    spark::v1::TokenizerFile* file = files.add_files();
    file->set_name(name);
    file->set_content(buffer.str());
    file->set_sha256(Sha256Hex(file->content()));
  }
  if (files.files().empty()) {
    return NotFound("no tokenizer files (tokenizer.json, tokenizer_config.json, ...) in " +
                    model_path);
  }
  return files;
}

}  // namespace spark::agent
