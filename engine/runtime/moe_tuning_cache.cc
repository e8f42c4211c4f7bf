#include "engine/runtime/moe_tuning_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

namespace spark::engine {
namespace {

using Json = nlohmann::json;

constexpr char kFileFormat[] = "spark-moe-tuning";

bool IsPowerOfTwo(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

std::string Quote(std::string_view s) { return "'" + std::string(s) + "'"; }

// Typed field access on a parsed object; errors name the path of the field.
class Fields {
 public:
  Fields(const Json& object, std::string prefix) : object_(object), prefix_(std::move(prefix)) {}

  Result<const Json*> Get(const char* name) const {
    auto it = object_.find(name);
    if (it == object_.end()) return InvalidArgument("field '" + Path(name) + "' is missing");
    return &*it;
  }
  Result<int64_t> Int(const char* name) const {
    SPARK_ASSIGN_OR_RETURN(const Json* v, Get(name));
    if (!v->is_number_integer()) {
      return InvalidArgument("field '" + Path(name) + "' must be an integer, got " + v->dump());
    }
    return v->get<int64_t>();
  }
  Result<double> Number(const char* name) const {
    SPARK_ASSIGN_OR_RETURN(const Json* v, Get(name));
    if (!v->is_number()) {
      return InvalidArgument("field '" + Path(name) + "' must be a number, got " + v->dump());
    }
    return v->get<double>();
  }
  Result<std::string> String(const char* name) const {
    SPARK_ASSIGN_OR_RETURN(const Json* v, Get(name));
    if (!v->is_string()) {
      return InvalidArgument("field '" + Path(name) + "' must be a string, got " + v->dump());
    }
    return v->get<std::string>();
  }
  Result<Fields> Object(const char* name) const {
    SPARK_ASSIGN_OR_RETURN(const Json* v, Get(name));
    if (!v->is_object()) {
      return InvalidArgument("field '" + Path(name) + "' must be an object, got " + v->dump());
    }
    return Fields(*v, Path(name));
  }

 private:
  std::string Path(const char* name) const { return prefix_.empty() ? name : prefix_ + "." + name; }
  const Json& object_;
  std::string prefix_;
};

Result<int> IntField(const Fields& f, const char* name) {
  SPARK_ASSIGN_OR_RETURN(int64_t v, f.Int(name));
  if (v < INT32_MIN || v > INT32_MAX) {
    return InvalidArgument("field '" + std::string(name) +
                           "' is out of range: " + std::to_string(v));
  }
  return static_cast<int>(v);
}

Json RecordJson(const MoeTuningRecord& r) {
  Json j;
  j["device"] = {{"name", r.device.name},
                 {"compute_capability",
                  std::to_string(r.device.cc_major) + "." + std::to_string(r.device.cc_minor)},
                 {"smem_limit_bytes", r.device.smem_limit_bytes}};
  j["format"] = r.format;
  j["gemm"] = r.gemm;
  j["experts"] = r.experts;
  j["n"] = r.n;
  j["k"] = r.k;
  j["top_k"] = r.top_k;
  j["batch"] = r.batch;
  if (r.gemm == "gemv") {
    j["gemv"] = {{"gate_up_k_splits", r.gemv.gate_up_k_splits},
                 {"gate_up_sweep", r.gemv.gate_up_sweep},
                 {"down_outputs", r.gemv.down_outputs},
                 {"down_vectors", r.gemv.down_vectors},
                 {"fp8_dequant", r.gemv.fp8_dequant}};
  } else {
    j["config"] = {{"block_m", r.config.block_m},
                   {"block_n", r.config.block_n},
                   {"block_k_bytes", r.config.block_k_bytes},
                   {"warps", r.config.warps},
                   {"stages", r.config.stages},
                   {"split_k", r.config.split_k}};
  }
  j["measured_us"] = r.measured_us;
  j["tuned_unix_ms"] = r.tuned_unix_ms;
  j["kernel_generation"] = r.kernel_generation;
  j["source"] = r.source;
  return j;
}

Result<MoeTuningRecord> RecordFromJson(const Json& j) {
  if (!j.is_object()) return InvalidArgument("a record must be a JSON object, got " + j.dump());
  const Fields f(j, "");
  MoeTuningRecord r;
  SPARK_ASSIGN_OR_RETURN(Fields device, f.Object("device"));
  SPARK_ASSIGN_OR_RETURN(r.device.name, device.String("name"));
  SPARK_ASSIGN_OR_RETURN(std::string cc, device.String("compute_capability"));
  {
    const size_t dot = cc.find('.');
    char* end = nullptr;
    const long major = dot == std::string::npos ? -1 : std::strtol(cc.c_str(), &end, 10);
    const bool major_ok = dot != std::string::npos && end == cc.c_str() + dot && dot > 0;
    const long minor = major_ok ? std::strtol(cc.c_str() + dot + 1, &end, 10) : -1;
    if (!major_ok || *end != '\0' || dot + 1 == cc.size() || major < 0 || minor < 0) {
      return InvalidArgument("field 'device.compute_capability' must look like \"9.0\", got \"" +
                             cc + "\"");
    }
    r.device.cc_major = static_cast<int>(major);
    r.device.cc_minor = static_cast<int>(minor);
  }
  SPARK_ASSIGN_OR_RETURN(r.device.smem_limit_bytes, device.Int("smem_limit_bytes"));
  SPARK_ASSIGN_OR_RETURN(r.format, f.String("format"));
  SPARK_ASSIGN_OR_RETURN(r.gemm, f.String("gemm"));
  SPARK_ASSIGN_OR_RETURN(r.experts, IntField(f, "experts"));
  SPARK_ASSIGN_OR_RETURN(r.n, f.Int("n"));
  SPARK_ASSIGN_OR_RETURN(r.k, f.Int("k"));
  SPARK_ASSIGN_OR_RETURN(r.top_k, IntField(f, "top_k"));
  SPARK_ASSIGN_OR_RETURN(r.batch, f.Int("batch"));
  if (r.gemm == "gemv") {
    SPARK_ASSIGN_OR_RETURN(Fields gemv, f.Object("gemv"));
    SPARK_ASSIGN_OR_RETURN(r.gemv.gate_up_k_splits, IntField(gemv, "gate_up_k_splits"));
    SPARK_ASSIGN_OR_RETURN(r.gemv.gate_up_sweep, IntField(gemv, "gate_up_sweep"));
    SPARK_ASSIGN_OR_RETURN(r.gemv.down_outputs, IntField(gemv, "down_outputs"));
    SPARK_ASSIGN_OR_RETURN(r.gemv.down_vectors, IntField(gemv, "down_vectors"));
    SPARK_ASSIGN_OR_RETURN(r.gemv.fp8_dequant, gemv.String("fp8_dequant"));
  } else {
    SPARK_ASSIGN_OR_RETURN(Fields config, f.Object("config"));
    SPARK_ASSIGN_OR_RETURN(r.config.block_m, IntField(config, "block_m"));
    SPARK_ASSIGN_OR_RETURN(r.config.block_n, IntField(config, "block_n"));
    SPARK_ASSIGN_OR_RETURN(r.config.block_k_bytes, IntField(config, "block_k_bytes"));
    SPARK_ASSIGN_OR_RETURN(r.config.warps, IntField(config, "warps"));
    SPARK_ASSIGN_OR_RETURN(r.config.stages, IntField(config, "stages"));
    SPARK_ASSIGN_OR_RETURN(r.config.split_k, IntField(config, "split_k"));
  }
  SPARK_ASSIGN_OR_RETURN(r.measured_us, f.Number("measured_us"));
  SPARK_ASSIGN_OR_RETURN(r.tuned_unix_ms, f.Int("tuned_unix_ms"));
  SPARK_ASSIGN_OR_RETURN(r.source, f.String("source"));
  r.kernel_generation = 1;  // records from before the field
  if (j.contains("kernel_generation")) {
    SPARK_ASSIGN_OR_RETURN(r.kernel_generation, IntField(f, "kernel_generation"));
  }
  SPARK_RETURN_IF_ERROR(r.Validate());
  return r;
}

// Ordering of records in a serialized file and identity for merging.
std::tuple<std::string, std::string> Identity(const MoeTuningRecord& r) {
  return {r.device.Key(), r.Key()};
}

// Whether `incoming` replaces `existing` (same identity).
bool Replaces(const MoeTuningRecord& incoming, const MoeTuningRecord& existing) {
  if (incoming.kernel_generation != existing.kernel_generation) {
    return incoming.kernel_generation > existing.kernel_generation;
  }
  if (incoming.tuned_unix_ms != existing.tuned_unix_ms) {
    return incoming.tuned_unix_ms > existing.tuned_unix_ms;
  }
  if (incoming == existing) return false;
  const double a = incoming.measured_us > 0 ? incoming.measured_us : HUGE_VAL;
  const double b = existing.measured_us > 0 ? existing.measured_us : HUGE_VAL;
  return a < b;
}

Status ErrnoStatus(const std::string& what, const std::filesystem::path& path) {
  return Internal(what + " " + path.string() + ": " + std::strerror(errno));
}

// --- SGLang import -------------------------------------------------------------------------

// "E=128,N=1408,device_name=NVIDIA_H100,dtype=fp8_w8a8,block_shape=[128, 128]" -> key/values
// (commas inside brackets belong to the value).
std::map<std::string, std::string> SplitSglangName(std::string_view name) {
  std::map<std::string, std::string> out;
  std::string item;
  int depth = 0;
  auto flush = [&] {
    const size_t eq = item.find('=');
    if (eq != std::string::npos) out[item.substr(0, eq)] = item.substr(eq + 1);
    item.clear();
  };
  for (char c : name) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) {
      flush();
    } else {
      item += c;
    }
  }
  flush();
  return out;
}

Status BadField(const std::string& field, const std::string& value, const std::string& rule) {
  return InvalidArgument("field '" + field + "' " + rule + ", got " + value);
}

double Log2Ratio(double a, double b) { return std::fabs(std::log2(a / b)); }

}  // namespace

bool MoeDeviceClass::operator==(const MoeDeviceClass& o) const {
  return name == o.name && cc_major == o.cc_major && cc_minor == o.cc_minor &&
         smem_limit_bytes == o.smem_limit_bytes;
}

bool MoeTileChoice::operator==(const MoeTileChoice& o) const {
  return block_m == o.block_m && block_n == o.block_n && block_k_bytes == o.block_k_bytes &&
         warps == o.warps && stages == o.stages && split_k == o.split_k;
}

bool MoeGemvChoice::operator==(const MoeGemvChoice& o) const {
  return gate_up_k_splits == o.gate_up_k_splits && gate_up_sweep == o.gate_up_sweep &&
         down_outputs == o.down_outputs && down_vectors == o.down_vectors &&
         fp8_dequant == o.fp8_dequant;
}

bool MoeTuningRecord::operator==(const MoeTuningRecord& o) const {
  return device == o.device && format == o.format && gemm == o.gemm && experts == o.experts &&
         n == o.n && k == o.k && top_k == o.top_k && batch == o.batch && config == o.config &&
         gemv == o.gemv && measured_us == o.measured_us && tuned_unix_ms == o.tuned_unix_ms &&
         kernel_generation == o.kernel_generation && source == o.source;
}

std::string MoeDeviceClass::Key() const {
  return name + "/sm" + std::to_string(cc_major) + std::to_string(cc_minor) + "/smem" +
         std::to_string(smem_limit_bytes);
}

std::string MoeTileChoice::ToString() const {
  return "m" + std::to_string(block_m) + "n" + std::to_string(block_n) + "k" +
         std::to_string(block_k_bytes) + "B w" + std::to_string(warps) + " s" +
         std::to_string(stages) + " split" + std::to_string(split_k);
}

bool IsMoeTuningFormat(std::string_view format) {
  return format == "bf16" || format == "fp8-per-channel" || format == "fp8-block128";
}

std::string MoeGemvChoice::ToString() const {
  return "gate_up " +
         (gate_up_sweep == 1 ? std::string("sweep") : "k" + std::to_string(gate_up_k_splits)) +
         " | down o" + std::to_string(down_outputs) + " v" + std::to_string(down_vectors) + " | " +
         fp8_dequant;
}

bool IsMoeGemvDequant(std::string_view name) {
  return name == "convert" || name == "scaled_bits" || name == "half_mma";
}

bool IsMoeTuningGemm(std::string_view gemm) {
  return gemm == "gate_up" || gemm == "down" || gemm == "gemv";
}

std::string MoeTuningRecord::Key() const {
  return "moe/" + format + "/" + gemm + "/e" + std::to_string(experts) + "/n" + std::to_string(n) +
         "/k" + std::to_string(k) + "/top" + std::to_string(top_k) + "/b" + std::to_string(batch);
}

Status MoeTuningRecord::Validate() const {
  auto bad = [](const std::string& field, const std::string& value, const std::string& rule) {
    return BadField(field, value, rule);
  };
  if (device.name.empty()) return bad("device.name", "\"\"", "must name the CUDA device");
  if (device.cc_major < 1 || device.cc_major > 99 || device.cc_minor < 0 || device.cc_minor > 9) {
    return bad("device.compute_capability",
               std::to_string(device.cc_major) + "." + std::to_string(device.cc_minor),
               "must be a CUDA compute capability (1.0 .. 99.9)");
  }
  if (device.smem_limit_bytes <= 0) {
    return bad("device.smem_limit_bytes", std::to_string(device.smem_limit_bytes),
               "must be positive");
  }
  if (!IsMoeTuningFormat(format)) {
    return bad("format", Quote(format), "must be bf16, fp8-per-channel or fp8-block128");
  }
  if (!IsMoeTuningGemm(gemm)) return bad("gemm", Quote(gemm), "must be gate_up, down or gemv");
  if (experts < 1) return bad("experts", std::to_string(experts), "must be >= 1");
  if (n < 1 || k < 1) {
    return bad("n/k", std::to_string(n) + "/" + std::to_string(k), "must both be >= 1");
  }
  if (top_k < 1 || top_k > experts) {
    return bad("top_k", std::to_string(top_k), "must be 1.." + std::to_string(experts));
  }
  if (!IsPowerOfTwo(batch)) return bad("batch", std::to_string(batch), "must be a power of two");
  if (gemm == "gemv") {
    SPARK_RETURN_IF_ERROR(ValidateGemv());
  } else {
    SPARK_RETURN_IF_ERROR(ValidateTile());
  }
  if (!std::isfinite(measured_us) || measured_us < 0) {
    return bad("measured_us", std::to_string(measured_us), "must be a finite number >= 0");
  }
  if (tuned_unix_ms < 0) {
    return bad("tuned_unix_ms", std::to_string(tuned_unix_ms), "must be >= 0");
  }
  if (kernel_generation < 1) {
    return bad("kernel_generation", std::to_string(kernel_generation), "must be >= 1");
  }
  return Status::Ok();
}

Status MoeTuningRecord::ValidateGemv() const {
  const MoeGemvChoice& g = gemv;
  if (g.gate_up_k_splits != 1 && g.gate_up_k_splits != 2 && g.gate_up_k_splits != 4 &&
      g.gate_up_k_splits != 8) {
    return BadField("gemv.gate_up_k_splits", std::to_string(g.gate_up_k_splits),
                    "must be 1, 2, 4 or 8");
  }
  if (g.gate_up_sweep != 0 && g.gate_up_sweep != 1) {
    return BadField("gemv.gate_up_sweep", std::to_string(g.gate_up_sweep), "must be 0 or 1");
  }
  if (g.down_outputs != 4 && g.down_outputs != 8 && g.down_outputs != 16) {
    return BadField("gemv.down_outputs", std::to_string(g.down_outputs), "must be 4, 8 or 16");
  }
  if (g.down_vectors < 1 || g.down_vectors > 4) {
    return BadField("gemv.down_vectors", std::to_string(g.down_vectors), "must be 1..4");
  }
  if (!IsMoeGemvDequant(g.fp8_dequant)) {
    return BadField("gemv.fp8_dequant", Quote(g.fp8_dequant),
                    "must be convert, scaled_bits or half_mma");
  }
  return Status::Ok();
}

Status MoeTuningRecord::ValidateTile() const {
  auto bad = [](const std::string& field, const std::string& value, const std::string& rule) {
    return BadField(field, value, rule);
  };
  const MoeTileChoice& c = config;
  if (c.block_m != 16 && c.block_m != 32 && c.block_m != 64 && c.block_m != 128) {
    return bad("config.block_m", std::to_string(c.block_m), "must be 16, 32, 64 or 128");
  }
  if (!IsPowerOfTwo(c.block_n) || c.block_n < 16 || c.block_n > 256) {
    return bad("config.block_n", std::to_string(c.block_n), "must be a power of two in 16..256");
  }
  if (c.block_k_bytes < 128 || c.block_k_bytes % 128 != 0 || c.block_k_bytes > 512) {
    return bad("config.block_k_bytes", std::to_string(c.block_k_bytes),
               "must be 128, 256, 384 or 512");
  }
  if (!IsPowerOfTwo(c.warps) || c.warps > 32) {
    return bad("config.warps", std::to_string(c.warps), "must be a power of two up to 32");
  }
  if (c.stages < 2 || c.stages > 6) {
    return bad("config.stages", std::to_string(c.stages), "must be 2..6");
  }
  if (!IsPowerOfTwo(c.split_k) || c.split_k > 16) {
    return bad("config.split_k", std::to_string(c.split_k), "must be 1, 2, 4, 8 or 16");
  }
  if (c.SmemBytes() > device.smem_limit_bytes) {
    return bad("config", c.ToString() + " (" + std::to_string(c.SmemBytes()) + " B)",
               "must fit the device class's shared-memory limit of " +
                   std::to_string(device.smem_limit_bytes) + " bytes per block");
  }
  return Status::Ok();
}

int64_t MoeBatchBucket(int64_t tokens) {
  int64_t b = 1;
  while (b < tokens) b *= 2;
  return b;
}

std::vector<int64_t> MoeBatchBuckets(int64_t max_tokens) {
  std::vector<int64_t> out;
  const int64_t top = MoeBatchBucket(std::max<int64_t>(max_tokens, 1));
  for (int64_t b = 1; b <= top; b *= 2) out.push_back(b);
  return out;
}

std::vector<MoeGemmDims> MoeGemmDimsOf(const MoeGemmShape& shape) {
  return {{"gate_up", 2 * shape.inter, shape.hidden}, {"down", shape.hidden, shape.inter}};
}

MoeGemmDims MoeGemvDimsOf(const MoeGemmShape& shape) {
  return {"gemv", 2 * shape.inter, shape.hidden};
}

std::string MoeTuningRecordToJson(const MoeTuningRecord& record) {
  return RecordJson(record).dump();
}

Result<MoeTuningRecord> MoeTuningRecordFromJson(std::string_view json_text) {
  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("MoE tuning record is not valid JSON");
  return RecordFromJson(j);
}

spark::v1::MoeTuningRecord MoeTuningRecordToProto(const MoeTuningRecord& r) {
  spark::v1::MoeTuningRecord p;
  p.set_device_name(r.device.name);
  p.set_compute_capability_major(static_cast<uint32_t>(r.device.cc_major));
  p.set_compute_capability_minor(static_cast<uint32_t>(r.device.cc_minor));
  p.set_smem_limit_bytes(static_cast<uint64_t>(r.device.smem_limit_bytes));
  p.set_format(r.format);
  p.set_gemm(r.gemm);
  p.set_experts(static_cast<uint32_t>(r.experts));
  p.set_n(static_cast<uint64_t>(r.n));
  p.set_k(static_cast<uint64_t>(r.k));
  p.set_top_k(static_cast<uint32_t>(r.top_k));
  p.set_batch(static_cast<uint64_t>(r.batch));
  if (r.gemm == "gemv") {
    spark::v1::MoeGemvChoice* g = p.mutable_gemv();
    g->set_gate_up_k_splits(static_cast<uint32_t>(r.gemv.gate_up_k_splits));
    g->set_gate_up_sweep(static_cast<uint32_t>(r.gemv.gate_up_sweep));
    g->set_down_outputs(static_cast<uint32_t>(r.gemv.down_outputs));
    g->set_down_vectors(static_cast<uint32_t>(r.gemv.down_vectors));
    g->set_fp8_dequant(r.gemv.fp8_dequant);
  } else {
    p.set_block_m(static_cast<uint32_t>(r.config.block_m));
    p.set_block_n(static_cast<uint32_t>(r.config.block_n));
    p.set_block_k_bytes(static_cast<uint32_t>(r.config.block_k_bytes));
    p.set_warps(static_cast<uint32_t>(r.config.warps));
    p.set_stages(static_cast<uint32_t>(r.config.stages));
    p.set_split_k(static_cast<uint32_t>(r.config.split_k));
  }
  p.set_measured_us(r.measured_us);
  p.set_tuned_unix_ms(r.tuned_unix_ms);
  p.set_kernel_generation(static_cast<uint32_t>(r.kernel_generation));
  p.set_source(r.source);
  return p;
}

Result<MoeTuningRecord> MoeTuningRecordFromProto(const spark::v1::MoeTuningRecord& p) {
  auto to_int = [](uint64_t v) { return static_cast<int>(std::min<uint64_t>(v, INT32_MAX)); };
  auto to_i64 = [](uint64_t v) { return static_cast<int64_t>(std::min<uint64_t>(v, INT64_MAX)); };
  MoeTuningRecord r;
  r.device.name = p.device_name();
  r.device.cc_major = to_int(p.compute_capability_major());
  r.device.cc_minor = to_int(p.compute_capability_minor());
  r.device.smem_limit_bytes = to_i64(p.smem_limit_bytes());
  r.format = p.format();
  r.gemm = p.gemm();
  r.experts = to_int(p.experts());
  r.n = to_i64(p.n());
  r.k = to_i64(p.k());
  r.top_k = to_int(p.top_k());
  r.batch = to_i64(p.batch());
  if (r.gemm == "gemv") {
    if (!p.has_gemv()) {
      return InvalidArgument("field 'gemv' is missing from a MoE tuning record of gemm gemv");
    }
    r.gemv.gate_up_k_splits = to_int(p.gemv().gate_up_k_splits());
    r.gemv.gate_up_sweep = to_int(p.gemv().gate_up_sweep());
    r.gemv.down_outputs = to_int(p.gemv().down_outputs());
    r.gemv.down_vectors = to_int(p.gemv().down_vectors());
    r.gemv.fp8_dequant = p.gemv().fp8_dequant();
  } else {
    r.config.block_m = to_int(p.block_m());
    r.config.block_n = to_int(p.block_n());
    r.config.block_k_bytes = to_int(p.block_k_bytes());
    r.config.warps = to_int(p.warps());
    r.config.stages = to_int(p.stages());
    r.config.split_k = to_int(p.split_k());
  }
  r.measured_us = p.measured_us();
  r.tuned_unix_ms = p.tuned_unix_ms();
  // 0: a sender from before the field.
  r.kernel_generation = p.kernel_generation() == 0 ? 1 : to_int(p.kernel_generation());
  r.source = p.source();
  SPARK_RETURN_IF_ERROR(r.Validate());
  return r;
}

Result<MoeTuningCache> MoeTuningCache::Parse(std::string_view json_text, std::string_view origin) {
  const std::string where = "MoE tuning file " + std::string(origin) + ": ";
  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgument(where +
                           "not a JSON object; delete the file (it is rebuilt by tuning) or "
                           "restore it from the controller");
  }
  const Fields f(j, "");
  Result<std::string> format = f.String("format");
  if (!format.ok() || *format != kFileFormat) {
    return InvalidArgument(where + "field 'format' must be \"" + kFileFormat +
                           "\"; this is not a spark MoE tuning file (SGLang/vLLM files are "
                           "imported with spark-model tune-moe --import)");
  }
  Result<int64_t> version = f.Int("version");
  if (!version.ok()) return InvalidArgument(where + version.status().message());
  if (*version < 1 || *version > kMoeTuningFileVersion) {
    return InvalidArgument(where + "version " + std::to_string(*version) +
                           " is not supported (this build reads versions 1 to " +
                           std::to_string(kMoeTuningFileVersion) +
                           "); upgrade spark or delete the file to retune");
  }
  auto records = j.find("records");
  if (records == j.end() || !records->is_array()) {
    return InvalidArgument(where + "field 'records' must be an array");
  }
  MoeTuningCache cache;
  for (size_t i = 0; i < records->size(); ++i) {
    Result<MoeTuningRecord> r = RecordFromJson((*records)[i]);
    if (!r.ok()) {
      return InvalidArgument(where + "record " + std::to_string(i) + ": " + r.status().message() +
                             "; fix or delete the record (spark-model tune-moe rebuilds it)");
    }
    SPARK_RETURN_IF_ERROR(cache.Add(*r).status());
  }
  return cache;
}

Result<MoeTuningCache> MoeTuningCache::Load(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return MoeTuningCache();
    return PermissionDenied("cannot read the MoE tuning file " + path.string() +
                            "; check its permissions");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str(), path.string());
}

std::string MoeTuningCache::Serialize() const {
  std::vector<const MoeTuningRecord*> sorted;
  for (const auto& r : records_) sorted.push_back(&r);
  std::sort(sorted.begin(), sorted.end(),
            [](const auto* a, const auto* b) { return Identity(*a) < Identity(*b); });
  Json records = Json::array();
  for (const auto* r : sorted) records.push_back(RecordJson(*r));
  Json j;
  j["format"] = kFileFormat;
  // The oldest version that holds these records, so that older builds read what they can.
  const bool has_gemv = std::any_of(records_.begin(), records_.end(),
                                    [](const MoeTuningRecord& r) { return r.gemm == "gemv"; });
  j["version"] = has_gemv ? kMoeTuningFileVersion : 1;
  j["records"] = std::move(records);
  return j.dump(1) + "\n";
}

Status MoeTuningCache::Save(const std::filesystem::path& path) const {
  const std::string text = Serialize();
  const std::filesystem::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot create", tmp);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status st = ErrnoStatus("cannot write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return st;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    Status st = ErrnoStatus("cannot flush", tmp);
    ::unlink(tmp.c_str());
    return st;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status st = ErrnoStatus("cannot rename " + tmp.string() + " to", path);
    ::unlink(tmp.c_str());
    return st;
  }
  return Status::Ok();
}

Result<bool> MoeTuningCache::Add(const MoeTuningRecord& record) {
  SPARK_RETURN_IF_ERROR(record.Validate());
  const auto id = Identity(record);
  for (MoeTuningRecord& r : records_) {
    if (Identity(r) != id) continue;
    if (!Replaces(record, r)) return false;
    r = record;
    return true;
  }
  records_.push_back(record);
  return true;
}

int MoeTuningCache::Merge(const MoeTuningCache& other) {
  int changed = 0;
  for (const MoeTuningRecord& r : other.records_) {
    Result<bool> added = Add(r);
    if (added.ok() && *added) ++changed;
  }
  return changed;
}

std::optional<MoeTuningRecord> MoeTuningCache::Find(const MoeDeviceClass& device,
                                                    std::string_view format, std::string_view gemm,
                                                    int experts, int64_t n, int64_t k, int top_k,
                                                    int64_t batch) const {
  for (const MoeTuningRecord& r : records_) {
    if (r.device == device && r.format == format && r.gemm == gemm && r.experts == experts &&
        r.n == n && r.k == k && r.top_k == top_k && r.batch == batch) {
      return r;
    }
  }
  return std::nullopt;
}

std::vector<MoeTuningRecord> MoeTuningCache::ForShape(const MoeDeviceClass& device,
                                                      const MoeGemmShape& shape,
                                                      const std::vector<int64_t>& batches) const {
  std::vector<MoeTuningRecord> out;
  for (int64_t b : batches) {
    for (const MoeGemmDims& d : MoeGemmDimsOf(shape)) {
      if (auto r = Find(device, shape.format, d.gemm, shape.experts, d.n, d.k, shape.top_k, b)) {
        out.push_back(*r);
      }
    }
    if (auto r = FindGemv(device, shape, b)) out.push_back(*r);
  }
  return out;
}

std::optional<MoeTuningRecord> MoeTuningCache::FindGemv(const MoeDeviceClass& device,
                                                        const MoeGemmShape& shape,
                                                        int64_t batch) const {
  const MoeGemmDims d = MoeGemvDimsOf(shape);
  return Find(device, shape.format, d.gemm, shape.experts, d.n, d.k, shape.top_k, batch);
}

std::vector<int64_t> MoeTuningCache::MissingBatches(const MoeDeviceClass& device,
                                                    const MoeGemmShape& shape,
                                                    const std::vector<int64_t>& batches,
                                                    int64_t gemv_max_tokens,
                                                    int min_kernel_generation) const {
  std::vector<int64_t> out;
  for (int64_t b : batches) {
    auto current = [&](const std::optional<MoeTuningRecord>& r) {
      return r.has_value() && r->kernel_generation >= min_kernel_generation;
    };
    if (b <= gemv_max_tokens) {
      if (!current(FindGemv(device, shape, b))) out.push_back(b);
      continue;
    }
    for (const MoeGemmDims& d : MoeGemmDimsOf(shape)) {
      if (!current(Find(device, shape.format, d.gemm, shape.experts, d.n, d.k, shape.top_k, b))) {
        out.push_back(b);
        break;
      }
    }
  }
  return out;
}

Result<int> UpdateMoeTuningFile(const std::filesystem::path& path,
                                const std::vector<MoeTuningRecord>& records) {
  const std::filesystem::path lock_path = path.string() + ".lock";
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0) {
    return ErrnoStatus("cannot open the lock file", lock_path)
        .WithContext("updating the MoE tuning file (check that its directory is writable)");
  }
  while (::flock(lock_fd, LOCK_EX) != 0) {
    if (errno != EINTR) {
      Status st = ErrnoStatus("cannot lock", lock_path);
      ::close(lock_fd);
      return st;
    }
  }
  auto finish = [&](Result<int> r) {
    ::flock(lock_fd, LOCK_UN);
    ::close(lock_fd);
    return r;
  };
  Result<MoeTuningCache> cache = MoeTuningCache::Load(path);
  if (!cache.ok()) return finish(cache.status());
  int changed = 0;
  for (const MoeTuningRecord& r : records) {
    Result<bool> added = cache->Add(r);
    if (!added.ok()) return finish(added.status());
    if (*added) ++changed;
  }
  if (changed > 0) {
    Status saved = cache->Save(path);
    if (!saved.ok()) return finish(saved);
  }
  return finish(changed);
}

Result<std::vector<MoeTuningRecord>> ImportSglangMoeConfig(
    std::string_view file_name, std::string_view json_text, const MoeDeviceClass& device,
    const MoeGemmShape& shape, const std::vector<MoeTileShape>& tiles,
    const std::vector<int64_t>& batches, int64_t now_unix_ms) {
  std::string base(file_name);
  if (const size_t slash = base.rfind('/'); slash != std::string::npos)
    base = base.substr(slash + 1);
  const std::string where = "SGLang MoE config " + base + ": ";
  std::string stem = base;
  if (stem.size() > 5 && stem.substr(stem.size() - 5) == ".json") {
    stem = stem.substr(0, stem.size() - 5);
  }
  const std::map<std::string, std::string> kv = SplitSglangName(stem);
  auto get = [&](const char* key) -> std::string {
    auto it = kv.find(key);
    return it == kv.end() ? "" : it->second;
  };
  const std::string e = get("E"), n = get("N"), device_name = get("device_name");
  if (e.empty() || n.empty() || device_name.empty()) {
    return InvalidArgument(where +
                           "the file name must look like "
                           "E=<experts>,N=<intermediate>,device_name=<GPU>[,dtype=...][,"
                           "block_shape=[..]].json (as SGLang/vLLM name their tuned configs)");
  }
  if (e != std::to_string(shape.experts) || n != std::to_string(shape.inter)) {
    return InvalidArgument(where + "it is for E=" + e + ", N=" + n + " but the model has E=" +
                           std::to_string(shape.experts) + ", N=" + std::to_string(shape.inter) +
                           " (routed experts, intermediate size per rank); pick the file of "
                           "this model and tensor-parallel size");
  }
  std::string want_device = device.name;
  std::replace(want_device.begin(), want_device.end(), ' ', '_');
  if (device_name != want_device) {
    return InvalidArgument(where + "it was tuned on " + device_name + ", this device is " +
                           want_device + "; import a file of this GPU or tune here");
  }
  const std::string dtype = get("dtype");
  const std::string block_shape = get("block_shape");
  std::string format;
  if (dtype.empty()) {
    format = "bf16";
  } else if (dtype == "fp8_w8a8") {
    if (block_shape.empty()) {
      format = "fp8-per-channel";
    } else {
      std::string compact;
      for (char c : block_shape) {
        if (c != ' ') compact += c;
      }
      if (compact != "[128,128]") {
        return Unimplemented(where + "block_shape " + block_shape +
                             " is not supported yet (only [128, 128] FP8 blocks)");
      }
      format = "fp8-block128";
    }
  } else {
    return Unimplemented(where + "dtype " + dtype +
                         " is not supported yet (bf16 files have no dtype, FP8 ones fp8_w8a8)");
  }
  if (format != shape.format) {
    return InvalidArgument(where + "it holds " + format +
                           " configs but the model's MoE weights are " + shape.format +
                           "; import the file of the matching dtype");
  }

  Json j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || j.empty()) {
    return InvalidArgument(where + "must be a non-empty JSON object of batch size -> config");
  }
  struct Entry {
    int64_t batch;
    int m, n, k, warps, stages;
  };
  std::vector<Entry> entries;
  for (auto it = j.begin(); it != j.end(); ++it) {
    char* end = nullptr;
    const long long batch = std::strtoll(it.key().c_str(), &end, 10);
    if (it.key().empty() || *end != '\0' || batch < 1) {
      return InvalidArgument(where + "key \"" + it.key() + "\" is not a batch size");
    }
    if (!it.value().is_object()) {
      return InvalidArgument(where + "entry \"" + it.key() + "\" must be an object");
    }
    const Fields f(it.value(), it.key());
    Entry en;
    en.batch = batch;
    SPARK_ASSIGN_OR_RETURN(en.m, IntField(f, "BLOCK_SIZE_M"));
    SPARK_ASSIGN_OR_RETURN(en.n, IntField(f, "BLOCK_SIZE_N"));
    SPARK_ASSIGN_OR_RETURN(en.k, IntField(f, "BLOCK_SIZE_K"));
    SPARK_ASSIGN_OR_RETURN(en.warps, IntField(f, "num_warps"));
    SPARK_ASSIGN_OR_RETURN(en.stages, IntField(f, "num_stages"));
    if (en.m < 1 || en.n < 1 || en.k < 1 || en.warps < 1 || en.stages < 1) {
      return InvalidArgument(where + "entry \"" + it.key() +
                             "\": BLOCK_SIZE_M/N/K, num_warps and num_stages must be >= 1");
    }
    entries.push_back(en);
  }
  if (tiles.empty()) {
    return InvalidArgument(where + "no compiled MoE tile serves " + shape.format);
  }
  const int elem_bytes = shape.format == "bf16" ? 2 : 1;
  std::vector<MoeTuningRecord> out;
  for (int64_t bucket : batches) {
    const Entry* best_entry = nullptr;
    double best_dist = HUGE_VAL;
    for (const Entry& en : entries) {
      const double d = Log2Ratio(static_cast<double>(en.batch), static_cast<double>(bucket));
      if (d < best_dist - 1e-9 ||
          (std::fabs(d - best_dist) <= 1e-9 && en.batch < best_entry->batch)) {
        best_dist = d;
        best_entry = &en;
      }
    }
    const Entry& en = *best_entry;
    // Nearest compiled tile (block_m weighs most, then block_n, block_k, warps) that fits.
    std::optional<MoeTileChoice> chosen;
    double chosen_dist = HUGE_VAL;
    for (const MoeTileShape& t : tiles) {
      MoeTileChoice c{t.block_m, t.block_n, t.block_k_bytes, t.warps, 0, 1};
      c.stages = std::clamp(en.stages, 2, 6);
      while (c.stages >= 2 && c.SmemBytes() > device.smem_limit_bytes) --c.stages;
      if (c.stages < 2) continue;
      const double d = 4 * Log2Ratio(t.block_m, en.m) + 2 * Log2Ratio(t.block_n, en.n) +
                       Log2Ratio(t.block_k_bytes, static_cast<double>(en.k) * elem_bytes) +
                       0.5 * Log2Ratio(t.warps, en.warps) + 0.1 * std::abs(c.stages - en.stages);
      if (d < chosen_dist - 1e-9) {
        chosen_dist = d;
        chosen = c;
      }
    }
    if (!chosen) {
      return InvalidArgument(where + "no compiled MoE tile fits " +
                             std::to_string(device.smem_limit_bytes) +
                             " bytes of shared memory per block");
    }
    for (const MoeGemmDims& d : MoeGemmDimsOf(shape)) {
      MoeTuningRecord r;
      r.device = device;
      r.format = shape.format;
      r.gemm = d.gemm;
      r.experts = shape.experts;
      r.n = d.n;
      r.k = d.k;
      r.top_k = shape.top_k;
      r.batch = bucket;
      r.config = *chosen;
      r.measured_us = 0;
      r.tuned_unix_ms = now_unix_ms;
      r.source = "sglang:" + base;
      SPARK_RETURN_IF_ERROR(r.Validate().WithContext(where));
      out.push_back(std::move(r));
    }
  }
  return out;
}

}  // namespace spark::engine
