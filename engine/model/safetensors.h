// Safetensors files and checkpoint directories.
//
// SafetensorsFile opens one `.safetensors` file read-only with mmap, parses the 8-byte
// little-endian header length and the JSON header, and validates every entry (known dtype,
// shape, data_offsets inside the data section, size == numel * dtype size). `__metadata__` is
// kept as string pairs. TensorView points into the mapping (no copies): it is valid while the
// SafetensorsFile (or the Checkpoint holding it) lives.
//
// Checkpoint opens a directory: `model.safetensors.index.json` (weight_map), else a single
// `model.safetensors`, else every `*.safetensors` in name order. Lookups are by tensor name.
//
// SafetensorsWriter collects tensors from buffers and writes one file, or shards plus
// `model.safetensors.index.json`.
//
// Thread safety: SafetensorsFile and Checkpoint are immutable after Open; const methods and the
// returned views may be used from many threads. SafetensorsWriter is single-threaded.
// Ownership: the file objects own their mappings (RAII, unmapped in the destructor).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "engine/model/dtype.h"

namespace spark::engine {

struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
  // "[256, 64] BF16"
  std::string Describe() const;
};

// "[256, 64]"
std::string ShapeToString(std::span<const int64_t> shape);

// Converts `n` elements of `dtype` at `src` to float (F32/BF16/F16/F8_E4M3/I32/I64/U8/BOOL).
void ConvertToFloat(DType dtype, const std::byte* src, size_t n, float* dst);
// All elements of a view as float.
std::vector<float> ToFloatVector(const TensorView& view);

class SafetensorsFile {
 public:
  // Errors: NotFound (no file), DataLoss (truncated, header overflow, bad JSON, offsets out of
  // range), InvalidArgument (unknown dtype).
  static Result<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  bool Has(std::string_view name) const;
  // NotFound naming the tensor and the file when absent.
  Result<TensorView> Get(std::string_view name) const;
  // Tensor names in header order.
  const std::vector<std::string>& names() const { return names_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t file_bytes() const { return size_; }

 private:
  SafetensorsFile() = default;

  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::vector<std::string> names_;
  std::unordered_map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

class Checkpoint {
 public:
  // Errors: NotFound (no directory / no safetensors files / a file of the index missing),
  // DataLoss (bad index.json or file), InvalidArgument (a tensor listed in two files).
  static Result<Checkpoint> Open(const std::filesystem::path& dir);

  Checkpoint(Checkpoint&&) noexcept = default;
  Checkpoint& operator=(Checkpoint&&) noexcept = default;

  const std::filesystem::path& dir() const { return dir_; }
  size_t num_files() const { return files_.size(); }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

  bool Has(std::string_view name) const;
  // NotFound: "tensor X not found in DIR (N files); the checkpoint is incomplete or of another
  // architecture".
  Result<TensorView> Get(std::string_view name) const;
  // Get + check: the shape must equal `shape` and the dtype be one of `dtypes` (any dtype when
  // empty). InvalidArgument: "tensor X: expected [256, 64] BF16, got [128, 64] BF16".
  Result<TensorView> GetChecked(std::string_view name, std::span<const int64_t> shape,
                                std::span<const DType> dtypes = {}) const;
  // Every tensor name, sorted.
  std::vector<std::string> names() const;
  // Sum of the data bytes of every tensor.
  int64_t total_tensor_bytes() const;

 private:
  Checkpoint() = default;

  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, size_t> file_of_;  // tensor name -> index in files_
};

class SafetensorsWriter {
 public:
  // Adds a tensor (bytes copied). `data.size()` must equal numel(shape) * DTypeSize(dtype)
  // (InvalidArgument otherwise, also for duplicate names).
  Status Add(std::string name, DType dtype, std::vector<int64_t> shape,
             std::span<const std::byte> data);
  Status Add(std::string name, DType dtype, std::vector<int64_t> shape,
             std::vector<std::byte>&& data);
  // Converts float values to `dtype` (F32, BF16, F16 or F8_E4M3, RNE) and adds them.
  Status AddFloat(std::string name, DType dtype, std::vector<int64_t> shape,
                  std::span<const float> values);
  void SetMetadata(std::string key, std::string value);

  size_t size() const { return tensors_.size(); }
  int64_t total_bytes() const;

  // Writes all tensors (in insertion order) to one file.
  Status WriteFile(const std::filesystem::path& path) const;
  // Writes DIR/model.safetensors, or, when max_shard_bytes > 0 and the tensors exceed it,
  // DIR/model-0000i-of-0000n.safetensors plus DIR/model.safetensors.index.json.
  Status WriteDir(const std::filesystem::path& dir, int64_t max_shard_bytes = 0) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<std::byte> data;
  };
  Status WriteEntries(const std::filesystem::path& path,
                      std::span<const Entry* const> entries) const;

  std::vector<Entry> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace spark::engine
