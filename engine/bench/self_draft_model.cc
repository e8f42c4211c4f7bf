#include "engine/bench/self_draft_model.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/model/safetensors.h"
#include "engine/model/tiny_model.h"

namespace spark::bench {
namespace {

namespace fs = std::filesystem;

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

Status WriteSelfDraftModel(const fs::path& dir, const SelfDraftModelOptions& options) {
  if (options.layers < 1) {
    return InvalidArgument("self-draft model: layers must be >= 1, got " +
                           std::to_string(options.layers));
  }
  engine::TinyModelOptions tiny;
  tiny.seed = options.seed;
  tiny.mtp = true;
  tiny.dtype = engine::DType::kF32;
  nlohmann::json config = nlohmann::json::parse(engine::TinyModelConfigJson(tiny));
  config["num_hidden_layers"] = options.layers;
  config["first_k_dense_replace"] = 0;
  config["num_nextn_predict_layers"] = 1;
  const int64_t hidden = config["hidden_size"].get<int64_t>();
  const int L = options.layers;

  // A random tiny checkpoint of that shape (tokenizer files included), then rewritten.
  const fs::path raw = dir / "random";
  SPARK_RETURN_IF_ERROR(engine::WriteTinyModel(raw, tiny));  // tokenizer files
  SPARK_RETURN_IF_ERROR(
      engine::WriteRandomCheckpoint(raw, config.dump(2), options.seed, engine::DType::kF32));
  SPARK_ASSIGN_OR_RETURN(engine::Checkpoint ckpt, engine::Checkpoint::Open(raw));

  auto floats = [&](const std::string& name) -> Result<std::vector<float>> {
    SPARK_ASSIGN_OR_RETURN(engine::TensorView view, ckpt.Get(name));
    return engine::ToFloatVector(view);
  };
  SPARK_ASSIGN_OR_RETURN(std::vector<float> embed, floats("model.embed_tokens.weight"));
  for (size_t row = 0; row * hidden < embed.size(); ++row) {
    double ss = 0;
    for (int64_t c = 0; c < hidden; ++c)
      ss += double(embed[row * hidden + c]) * embed[row * hidden + c];
    const double scale = ss > 0 ? 1.0 / std::sqrt(ss / static_cast<double>(hidden)) : 1.0;
    for (int64_t c = 0; c < hidden; ++c) embed[row * hidden + c] *= static_cast<float>(scale);
  }
  SPARK_ASSIGN_OR_RETURN(std::vector<float> final_norm, floats("model.norm.weight"));
  SPARK_ASSIGN_OR_RETURN(std::vector<float> lm_head, floats("lm_head.weight"));

  const std::string mtp = "model.layers." + std::to_string(L) + ".";
  engine::SafetensorsWriter out;
  for (const std::string& name : ckpt.names()) {
    SPARK_ASSIGN_OR_RETURN(engine::TensorView view, ckpt.Get(name));
    std::vector<float> values = engine::ToFloatVector(view);
    if (name == "model.embed_tokens.weight" || name == mtp + "embed_tokens.weight") {
      values = embed;
    } else if (name == mtp + "shared_head.head.weight") {
      values = lm_head;
    } else if (name == mtp + "shared_head.norm.weight") {
      values = final_norm;
    } else if (name == mtp + "enorm.weight" || name == mtp + "hnorm.weight") {
      std::fill(values.begin(), values.end(), 1.0f);
    } else if (name == mtp + "eh_proj.weight") {
      // [H, 2H]: y = the first (embedding) half.
      std::fill(values.begin(), values.end(), 0.0f);
      for (int64_t r = 0; r < hidden; ++r) values[r * 2 * hidden + r] = 1.0f;
    } else if (StartsWith(name, mtp)) {
      // The MTP decoder layer: a copy of layer 0.
      SPARK_ASSIGN_OR_RETURN(values, floats("model.layers.0." + name.substr(mtp.size())));
    } else if (StartsWith(name, "model.layers.") && !StartsWith(name, "model.layers.0.") &&
               (EndsWith(name, "self_attn.o_proj.weight") ||
                EndsWith(name, "self_attn.o_proj.bias") || EndsWith(name, "down_proj.weight"))) {
      for (float& v : values) v *= options.residual_scale;
    }
    SPARK_RETURN_IF_ERROR(out.AddFloat(name, view.dtype, view.shape, values));
  }
  SPARK_RETURN_IF_ERROR(out.WriteDir(dir));
  {
    std::ofstream f(dir / "config.json");
    f << config.dump(2) << "\n";
    if (!f) return Internal("cannot write " + (dir / "config.json").string());
  }
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    std::error_code ec;
    if (fs::exists(raw / file)) {
      fs::copy_file(raw / file, dir / file, fs::copy_options::overwrite_existing, ec);
      if (ec) return Internal("cannot copy " + std::string(file) + ": " + ec.message());
    }
  }
  std::error_code ec;
  fs::remove_all(raw, ec);
  return Status::Ok();
}

}  // namespace spark::bench
