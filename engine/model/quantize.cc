#include "engine/model/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "common/check.h"
#include "engine/model/config.h"
#include "engine/model/dtype.h"
#include "engine/model/safetensors.h"

namespace spark::engine {
namespace {

using Json = nlohmann::json;

float ChannelScale(float amax) {
  float scale = amax / kF8E4M3Max;
  return scale == 0.0f ? 1.0f : scale;
}

uint8_t QuantizeValue(float w, float scale) {
  // FloatToF8E4M3 saturates to +-448, which equals clamping first.
  return FloatToF8E4M3(w / scale);
}

Result<std::string> ReadText(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot read " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status WriteText(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return PermissionDenied("cannot write " + path.string());
  return Status::Ok();
}

Json QuantizationConfigJson(const QuantizeOptions& options,
                            const std::vector<std::string>& ignore) {
  const int b = options.block_size;
  if (options.format == Fp8Format::kDeepSeek) {
    return Json{{"quant_method", "fp8"},
                {"fmt", "e4m3"},
                {"activation_scheme", "dynamic"},
                {"weight_block_size", {b, b}},
                {"modules_to_not_convert", ignore}};
  }
  const bool block = options.scheme == Fp8Scheme::kBlock;
  Json weights = {{"num_bits", 8},
                  {"type", "float"},
                  {"strategy", block ? "block" : "channel"},
                  {"dynamic", false},
                  {"symmetric", true},
                  {"group_size", nullptr},
                  {"block_structure", block ? Json{b, b} : Json(nullptr)},
                  {"observer", "minmax"}};
  Json acts = {{"num_bits", 8},
               {"type", "float"},
               {"strategy", block ? "group" : "token"},
               {"dynamic", true},
               {"symmetric", true},
               {"group_size", block ? Json(b) : Json(nullptr)},
               {"block_structure", nullptr},
               {"observer", nullptr}};
  return Json{{"quant_method", "compressed-tensors"},
              {"format", "float-quantized"},
              {"quantization_status", "compressed"},
              {"config_groups",
               {{"group_0",
                 {{"targets", {"Linear"}},
                  {"weights", weights},
                  {"input_activations", acts},
                  {"output_activations", nullptr}}}}},
              {"ignore", ignore},
              {"kv_cache_scheme", nullptr}};
}

}  // namespace

Fp8Tensor QuantizeFp8PerChannel(std::span<const float> w, int64_t rows, int64_t cols) {
  SPARK_CHECK_EQ(static_cast<int64_t>(w.size()), rows * cols);
  Fp8Tensor t;
  t.rows = rows;
  t.cols = cols;
  t.q.resize(w.size());
  t.scale.resize(static_cast<size_t>(rows));
  t.scale_shape = {rows, 1};
  for (int64_t n = 0; n < rows; ++n) {
    const float* row = w.data() + n * cols;
    float amax = 0.0f;
    for (int64_t k = 0; k < cols; ++k) amax = std::max(amax, std::fabs(row[k]));
    const float scale = ChannelScale(amax);
    t.scale[static_cast<size_t>(n)] = scale;
    uint8_t* q = t.q.data() + n * cols;
    for (int64_t k = 0; k < cols; ++k) q[k] = QuantizeValue(row[k], scale);
  }
  return t;
}

Fp8Tensor QuantizeFp8Block(std::span<const float> w, int64_t rows, int64_t cols, int block_n,
                           int block_k) {
  SPARK_CHECK_EQ(static_cast<int64_t>(w.size()), rows * cols);
  SPARK_CHECK(block_n > 0 && block_k > 0);
  Fp8Tensor t;
  t.rows = rows;
  t.cols = cols;
  t.q.resize(w.size());
  const int64_t nb = (rows + block_n - 1) / block_n;
  const int64_t kb = (cols + block_k - 1) / block_k;
  t.scale.resize(static_cast<size_t>(nb * kb));
  t.scale_shape = {nb, kb};
  for (int64_t bi = 0; bi < nb; ++bi) {
    const int64_t r0 = bi * block_n;
    const int64_t r1 = std::min(rows, r0 + block_n);
    for (int64_t bj = 0; bj < kb; ++bj) {
      const int64_t c0 = bj * block_k;
      const int64_t c1 = std::min(cols, c0 + block_k);
      float amax = 0.0f;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      }
      const float scale = ChannelScale(amax);
      t.scale[static_cast<size_t>(bi * kb + bj)] = scale;
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) t.q[r * cols + c] = QuantizeValue(w[r * cols + c], scale);
      }
    }
  }
  return t;
}

float DequantizeFp8(const Fp8Tensor& t, int64_t row, int64_t col, int block_n, int block_k) {
  const float q = F8E4M3ToFloat(t.q[static_cast<size_t>(row * t.cols + col)]);
  if (t.scale_shape.size() == 2 && t.scale_shape[1] == 1 &&
      static_cast<int64_t>(t.scale.size()) == t.rows) {
    return q * t.scale[static_cast<size_t>(row)];
  }
  const int64_t kb = (t.cols + block_k - 1) / block_k;
  return q * t.scale[static_cast<size_t>((row / block_n) * kb + col / block_k)];
}

bool IsQuantizableWeightName(std::string_view tensor_name) {
  static const std::regex kPattern(
      R"(model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj)\.weight)");
  return std::regex_match(tensor_name.begin(), tensor_name.end(), kPattern);
}

Status QuantizeCheckpoint(const std::filesystem::path& in_dir, const std::filesystem::path& out_dir,
                          const QuantizeOptions& options) {
  if (options.format == Fp8Format::kDeepSeek && options.scheme != Fp8Scheme::kBlock) {
    return InvalidArgument(
        "the deepseek format (quant_method fp8, weight_scale_inv) stores block scales only; use "
        "--scheme fp8-block or --format compressed-tensors");
  }
  if (options.block_size <= 0) return InvalidArgument("block size must be > 0");
  std::error_code ec;
  if (std::filesystem::exists(out_dir, ec) && std::filesystem::equivalent(in_dir, out_dir, ec)) {
    return InvalidArgument("output directory " + out_dir.string() +
                           " is the input directory; choose a new directory");
  }
  SPARK_ASSIGN_OR_RETURN(std::string config_text, ReadText(in_dir / "config.json"));
  Json config = Json::parse(config_text, nullptr, false);
  if (config.is_discarded() || !config.is_object()) {
    return InvalidArgument((in_dir / "config.json").string() + " is not valid JSON");
  }
  // Validates the architecture; a quantised input is refused below.
  Result<ModelConfig> parsed = ParseModelConfig(config_text);
  if (!parsed.ok()) return parsed.status().WithContext((in_dir / "config.json").string());
  if (parsed->quant.method != QuantMethod::kNone) {
    return FailedPrecondition(in_dir.string() +
                              " is already quantised (config.json has a quantization_config); "
                              "quantise the BF16 checkpoint instead");
  }
  SPARK_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(in_dir));
  std::filesystem::create_directories(out_dir, ec);
  if (ec) {
    return PermissionDenied("cannot create " + out_dir.string() + ": " + ec.message());
  }

  const std::string scale_suffix = options.format == Fp8Format::kDeepSeek ? "_scale_inv" : "_scale";
  std::vector<std::string> ignore;
  Json weight_map = Json::object();
  int64_t total_size = 0;
  for (const auto& file : ckpt.files()) {
    SafetensorsWriter writer;
    for (const std::string& name : file->names()) {
      SPARK_ASSIGN_OR_RETURN(TensorView view, file->Get(name));
      const bool float_type =
          view.dtype == DType::kBF16 || view.dtype == DType::kF16 || view.dtype == DType::kF32;
      if (view.dtype == DType::kF8E4M3) {
        return FailedPrecondition("tensor " + name +
                                  " is already F8_E4M3; quantise the BF16 "
                                  "checkpoint instead");
      }
      const bool is_module_weight = view.shape.size() == 2 && name.size() > 7 &&
                                    name.compare(name.size() - 7, 7, ".weight") == 0;
      if (IsQuantizableWeightName(name) && view.shape.size() == 2 && float_type) {
        const int64_t rows = view.shape[0];
        const int64_t cols = view.shape[1];
        std::vector<float> w = ToFloatVector(view);
        Fp8Tensor t = options.scheme == Fp8Scheme::kPerChannel
                          ? QuantizeFp8PerChannel(w, rows, cols)
                          : QuantizeFp8Block(w, rows, cols, options.block_size, options.block_size);
        std::vector<std::byte> q(t.q.size());
        std::memcpy(q.data(), t.q.data(), q.size());
        SPARK_RETURN_IF_ERROR(writer.Add(name, DType::kF8E4M3, {rows, cols}, std::move(q)));
        SPARK_RETURN_IF_ERROR(
            writer.AddFloat(name + scale_suffix, DType::kF32, t.scale_shape, t.scale));
      } else {
        if (is_module_weight && name.find("embed_tokens") == std::string::npos) {
          ignore.push_back(name.substr(0, name.size() - 7));
        }
        SPARK_RETURN_IF_ERROR(writer.Add(name, view.dtype, view.shape,
                                         std::span<const std::byte>(view.data, view.nbytes)));
      }
    }
    for (const auto& [k, v] : file->metadata()) writer.SetMetadata(k, v);
    const std::string out_name = file->path().filename().string();
    SPARK_RETURN_IF_ERROR(writer.WriteFile(out_dir / out_name));
    total_size += writer.total_bytes();
    // The writer's names are the input names plus the scale tensors.
    for (const std::string& name : file->names()) {
      weight_map[name] = out_name;
      if (IsQuantizableWeightName(name)) {
        SPARK_ASSIGN_OR_RETURN(TensorView view, file->Get(name));
        if (view.shape.size() == 2) weight_map[name + scale_suffix] = out_name;
      }
    }
  }
  std::sort(ignore.begin(), ignore.end());
  if (std::filesystem::exists(in_dir / "model.safetensors.index.json", ec)) {
    Json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
    SPARK_RETURN_IF_ERROR(
        WriteText(out_dir / "model.safetensors.index.json", index.dump(2) + "\n"));
  }

  config["quantization_config"] = QuantizationConfigJson(options, ignore);
  SPARK_RETURN_IF_ERROR(WriteText(out_dir / "config.json", config.dump(2) + "\n"));

  // Tokenizer, generation config, chat template and any other small files come along.
  for (const auto& e : std::filesystem::directory_iterator(in_dir, ec)) {
    if (!e.is_regular_file()) continue;
    const std::string fname = e.path().filename().string();
    if (fname == "config.json" || fname == "model.safetensors.index.json" ||
        e.path().extension() == ".safetensors") {
      continue;
    }
    std::filesystem::copy_file(e.path(), out_dir / fname,
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) return PermissionDenied("copying " + e.path().string() + ": " + ec.message());
  }
  return Status::Ok();
}

}  // namespace spark::engine
