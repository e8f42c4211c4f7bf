#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/check.h"

namespace spark::engine {
namespace {

using Json = nlohmann::json;

// Largest header the reader accepts (the Python library uses 100 MB as well).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

std::string ErrnoText(int err) { return std::strerror(err); }

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

Result<std::string> ReadTextFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot read " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::Describe() const {
  return ShapeToString(shape) + " " + std::string(DTypeName(dtype));
}

std::string ShapeToString(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

void ConvertToFloat(DType dtype, const std::byte* src, size_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        dst[i] = Bf16ToFloat(v);
      }
      return;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        dst[i] = F16ToFloat(v);
      }
      return;
    case DType::kF8E4M3:
      for (size_t i = 0; i < n; ++i) dst[i] = F8E4M3ToFloat(static_cast<uint8_t>(src[i]));
      return;
    case DType::kI64:
      for (size_t i = 0; i < n; ++i) {
        int64_t v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      return;
    case DType::kI32:
      for (size_t i = 0; i < n; ++i) {
        int32_t v;
        std::memcpy(&v, src + 4 * i, 4);
        dst[i] = static_cast<float>(v);
      }
      return;
    case DType::kU8:
    case DType::kBool:
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<uint8_t>(src[i]));
      return;
  }
}

std::vector<float> ToFloatVector(const TensorView& view) {
  std::vector<float> out(static_cast<size_t>(view.numel()));
  ConvertToFloat(view.dtype, view.data, out.size(), out.data());
  return out;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::filesystem::path& path) {
  const std::string p = path.string();
  Fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    int err = errno;
    if (err == ENOENT) return NotFound("safetensors file " + p + " does not exist");
    return NotFound("cannot open " + p + ": " + ErrnoText(err));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Internal("fstat " + p + ": " + ErrnoText(errno));
  if (!S_ISREG(st.st_mode)) return InvalidArgument(p + " is not a regular file");
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    return DataLoss(p + " is truncated (" + std::to_string(size) +
                    " bytes, a safetensors file has at least an 8-byte header length); "
                    "re-download it");
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (map == MAP_FAILED) return Internal("mmap " + p + ": " + ErrnoText(errno));
  file->map_ = map;
  file->size_ = size;
  const auto* base = static_cast<const std::byte*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(base[i]);
  if (header_len > size - 8) {
    return DataLoss(p + ": header length " + std::to_string(header_len) +
                    " exceeds the file size " + std::to_string(size) +
                    "; the file is truncated or not a safetensors file");
  }
  if (header_len > kMaxHeaderBytes) {
    return DataLoss(p + ": header length " + std::to_string(header_len) +
                    " is larger than 100 MB; not a safetensors file");
  }
  const char* header_begin = reinterpret_cast<const char*>(base + 8);
  Json header = Json::parse(header_begin, header_begin + header_len, nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return DataLoss(p + ": the JSON header is malformed; the file is corrupt");
  }
  const uint64_t data_begin = 8 + header_len;
  const uint64_t data_size = size - data_begin;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return DataLoss(p + ": __metadata__ must be an object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) return DataLoss(p + ": __metadata__." + k + " must be a string");
        file->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = p + ": tensor " + name;
    if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string() ||
        !entry.contains("shape") || !entry["shape"].is_array() || !entry.contains("data_offsets") ||
        !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
      return DataLoss(where + " has a malformed header entry (needs dtype, shape, data_offsets)");
    }
    std::string dtype_name = entry["dtype"].get<std::string>();
    std::optional<DType> dtype = ParseDType(dtype_name);
    if (!dtype) {
      return InvalidArgument(where + " has dtype " + dtype_name +
                             " which spark does not read (F32, BF16, F16, F8_E4M3, I64, I32, U8, "
                             "BOOL)");
    }
    TensorView view;
    view.dtype = *dtype;
    uint64_t numel = 1;
    for (const Json& d : entry["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) {
        return DataLoss(where + " has an invalid shape " + entry["shape"].dump());
      }
      uint64_t dim = d.get<uint64_t>();
      if (MulOverflows(numel, dim, &numel) || dim > (1ull << 62)) {
        return DataLoss(where + " has a shape that overflows: " + entry["shape"].dump());
      }
      view.shape.push_back(static_cast<int64_t>(dim));
    }
    const Json& off = entry["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
      return DataLoss(where + " has invalid data_offsets " + off.dump());
    }
    uint64_t begin = off[0].get<uint64_t>();
    uint64_t end = off[1].get<uint64_t>();
    uint64_t nbytes = 0;
    if (MulOverflows(numel, DTypeSize(*dtype), &nbytes)) {
      return DataLoss(where + " has a size that overflows");
    }
    if (begin > end || end > data_size) {
      return DataLoss(where + " has data_offsets [" + std::to_string(begin) + ", " +
                      std::to_string(end) + ") outside the data section of " +
                      std::to_string(data_size) + " bytes; the file is truncated or corrupt");
    }
    if (end - begin != nbytes) {
      return DataLoss(where + ": data_offsets span " + std::to_string(end - begin) + " bytes but " +
                      view.Describe() + " needs " + std::to_string(nbytes));
    }
    view.data = base + data_begin + begin;
    view.nbytes = static_cast<size_t>(nbytes);
    if (!file->tensors_.emplace(name, std::move(view)).second) {
      return DataLoss(where + " appears twice in the header");
    }
    file->names_.push_back(name);
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

bool SafetensorsFile::Has(std::string_view name) const {
  return tensors_.find(std::string(name)) != tensors_.end();
}

Result<TensorView> SafetensorsFile::Get(std::string_view name) const {
  auto it = tensors_.find(std::string(name));
  if (it == tensors_.end()) {
    return NotFound("tensor " + std::string(name) + " not found in " + path_.string());
  }
  return it->second;
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

Result<Checkpoint> Checkpoint::Open(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return NotFound("checkpoint directory " + dir.string() + " does not exist");
  }
  Checkpoint ckpt;
  ckpt.dir_ = dir;
  std::vector<std::filesystem::path> paths;
  std::map<std::string, std::string> weight_map;
  const std::filesystem::path index = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(index, ec)) {
    SPARK_ASSIGN_OR_RETURN(std::string text, ReadTextFile(index));
    Json j = Json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
        !j["weight_map"].is_object()) {
      return DataLoss(index.string() + " is malformed (needs an object \"weight_map\")");
    }
    std::set<std::string> files;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) {
        return DataLoss(index.string() + ": weight_map entry " + name + " is not a file name");
      }
      weight_map[name] = file.get<std::string>();
      files.insert(file.get<std::string>());
    }
    for (const std::string& f : files) {
      if (f.find('/') != std::string::npos || f == "..") {
        return DataLoss(index.string() + ": file name " + f + " is not a plain file name");
      }
      paths.push_back(dir / f);
    }
  } else if (std::filesystem::exists(dir / "model.safetensors", ec)) {
    paths.push_back(dir / "model.safetensors");
  } else {
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      if (e.path().extension() == ".safetensors") paths.push_back(e.path());
    }
    std::sort(paths.begin(), paths.end());
  }
  if (paths.empty()) {
    return NotFound("no *.safetensors files in " + dir.string() +
                    "; download the model weights or use load_format=dummy");
  }
  for (const auto& path : paths) {
    Result<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    if (!file.ok()) {
      if (file.status().code() == StatusCode::kNotFound && !weight_map.empty()) {
        return NotFound(path.string() +
                        " is listed in model.safetensors.index.json but missing; "
                        "the download is incomplete");
      }
      return file.status();
    }
    const size_t idx = ckpt.files_.size();
    for (const std::string& name : (*file)->names()) {
      auto [it, inserted] = ckpt.file_of_.emplace(name, idx);
      if (!inserted) {
        return InvalidArgument("tensor " + name + " is stored in both " +
                               ckpt.files_[it->second]->path().string() + " and " + path.string() +
                               "; remove the stray file");
      }
    }
    ckpt.files_.push_back(std::move(file).value());
  }
  for (const auto& [name, file] : weight_map) {
    auto it = ckpt.file_of_.find(name);
    if (it == ckpt.file_of_.end() || ckpt.files_[it->second]->path().filename() != file) {
      return DataLoss("model.safetensors.index.json maps " + name + " to " + file +
                      " but that file does not contain it; the checkpoint is inconsistent");
    }
  }
  return ckpt;
}

bool Checkpoint::Has(std::string_view name) const {
  return file_of_.find(std::string(name)) != file_of_.end();
}

Result<TensorView> Checkpoint::Get(std::string_view name) const {
  auto it = file_of_.find(std::string(name));
  if (it == file_of_.end()) {
    return NotFound("tensor " + std::string(name) + " not found in " + dir_.string() + " (" +
                    std::to_string(files_.size()) + (files_.size() == 1 ? " file" : " files") +
                    "); the checkpoint is incomplete or of another architecture");
  }
  return files_[it->second]->Get(name);
}

Result<TensorView> Checkpoint::GetChecked(std::string_view name, std::span<const int64_t> shape,
                                          std::span<const DType> dtypes) const {
  SPARK_ASSIGN_OR_RETURN(TensorView view, Get(name));
  bool shape_ok = std::equal(view.shape.begin(), view.shape.end(), shape.begin(), shape.end());
  bool dtype_ok =
      dtypes.empty() || std::find(dtypes.begin(), dtypes.end(), view.dtype) != dtypes.end();
  if (!shape_ok || !dtype_ok) {
    std::string expected = ShapeToString(shape);
    if (!dtypes.empty()) {
      expected += " ";
      for (size_t i = 0; i < dtypes.size(); ++i) {
        if (i > 0) expected += "/";
        expected += DTypeName(dtypes[i]);
      }
    }
    return InvalidArgument("tensor " + std::string(name) + ": expected " + expected + ", got " +
                           view.Describe() + "; the checkpoint does not match its config.json");
  }
  return view;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(file_of_.size());
  for (const auto& [name, idx] : file_of_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

int64_t Checkpoint::total_tensor_bytes() const {
  int64_t total = 0;
  for (const auto& f : files_) {
    for (const std::string& name : f->names()) total += static_cast<int64_t>(f->Get(name)->nbytes);
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter

Status SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape,
                              std::span<const std::byte> data) {
  return Add(std::move(name), dtype, std::move(shape),
             std::vector<std::byte>(data.begin(), data.end()));
}

Status SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape,
                              std::vector<std::byte>&& data) {
  if (name.empty() || name == "__metadata__") {
    return InvalidArgument("invalid tensor name \"" + name + "\"");
  }
  if (index_.count(name) != 0) return InvalidArgument("tensor " + name + " added twice");
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) return InvalidArgument("tensor " + name + ": negative dimension");
    numel *= static_cast<uint64_t>(d);
  }
  if (numel * DTypeSize(dtype) != data.size()) {
    return InvalidArgument("tensor " + name + ": " + ShapeToString(shape) + " " +
                           std::string(DTypeName(dtype)) + " needs " +
                           std::to_string(numel * DTypeSize(dtype)) + " bytes, got " +
                           std::to_string(data.size()));
  }
  index_[name] = tensors_.size();
  tensors_.push_back(Entry{std::move(name), dtype, std::move(shape), std::move(data)});
  return Status::Ok();
}

Status SafetensorsWriter::AddFloat(std::string name, DType dtype, std::vector<int64_t> shape,
                                   std::span<const float> values) {
  std::vector<std::byte> data(values.size() * DTypeSize(dtype));
  switch (dtype) {
    case DType::kF32:
      std::memcpy(data.data(), values.data(), data.size());
      break;
    case DType::kBF16:
      for (size_t i = 0; i < values.size(); ++i) {
        uint16_t v = FloatToBf16(values[i]);
        std::memcpy(data.data() + 2 * i, &v, 2);
      }
      break;
    case DType::kF16:
      for (size_t i = 0; i < values.size(); ++i) {
        uint16_t v = FloatToF16(values[i]);
        std::memcpy(data.data() + 2 * i, &v, 2);
      }
      break;
    case DType::kF8E4M3:
      for (size_t i = 0; i < values.size(); ++i) {
        data[i] = static_cast<std::byte>(FloatToF8E4M3(values[i]));
      }
      break;
    default:
      return InvalidArgument("AddFloat: dtype " + std::string(DTypeName(dtype)) +
                             " is not a floating type");
  }
  return Add(std::move(name), dtype, std::move(shape), std::move(data));
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

int64_t SafetensorsWriter::total_bytes() const {
  int64_t total = 0;
  for (const Entry& e : tensors_) total += static_cast<int64_t>(e.data.size());
  return total;
}

Status SafetensorsWriter::WriteEntries(const std::filesystem::path& path,
                                       std::span<const Entry* const> entries) const {
  Json header = Json::object();
  uint64_t offset = 0;
  for (const Entry* e : entries) {
    header[e->name] = {{"dtype", std::string(DTypeName(e->dtype))},
                       {"shape", e->shape},
                       {"data_offsets", {offset, offset + e->data.size()}}};
    offset += e->data.size();
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');  // data section 8-byte aligned
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return PermissionDenied("cannot create " + path.string() + ": " + ErrnoText(errno));
  unsigned char len[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const Entry* e : entries) {
    out.write(reinterpret_cast<const char*>(e->data.data()),
              static_cast<std::streamsize>(e->data.size()));
  }
  out.close();
  if (!out) {
    return ResourceExhausted("writing " + path.string() +
                             " failed (disk full?): " + ErrnoText(errno));
  }
  return Status::Ok();
}

Status SafetensorsWriter::WriteFile(const std::filesystem::path& path) const {
  std::vector<const Entry*> entries;
  for (const Entry& e : tensors_) entries.push_back(&e);
  return WriteEntries(path, entries);
}

Status SafetensorsWriter::WriteDir(const std::filesystem::path& dir,
                                   int64_t max_shard_bytes) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return PermissionDenied("cannot create directory " + dir.string() + ": " + ec.message());
  if (max_shard_bytes <= 0 || total_bytes() <= max_shard_bytes) {
    return WriteFile(dir / "model.safetensors");
  }
  std::vector<std::vector<const Entry*>> shards(1);
  int64_t current = 0;
  for (const Entry& e : tensors_) {
    auto bytes = static_cast<int64_t>(e.data.size());
    if (!shards.back().empty() && current + bytes > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(&e);
    current += bytes;
  }
  Json weight_map = Json::object();
  char name[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    SPARK_RETURN_IF_ERROR(WriteEntries(dir / name, shards[i]));
    for (const Entry* e : shards[i]) weight_map[e->name] = name;
  }
  Json index = {{"metadata", {{"total_size", total_bytes()}}}, {"weight_map", weight_map}};
  std::ofstream out(dir / "model.safetensors.index.json", std::ios::trunc);
  out << index.dump(2) << "\n";
  out.close();
  if (!out) return ResourceExhausted("writing " + (dir / "model.safetensors.index.json").string());
  return Status::Ok();
}

}  // namespace spark::engine
