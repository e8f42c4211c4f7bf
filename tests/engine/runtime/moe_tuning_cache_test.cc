#include "engine/runtime/moe_tuning_cache.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace spark::engine {
namespace {

MoeDeviceClass H100() { return {"NVIDIA H100 80GB HBM3", 9, 0, 232448}; }

MoeGemmShape Air() { return {"fp8-per-channel", 128, 4096, 1408, 8}; }

MoeTuningRecord Record(std::string gemm, int64_t batch, int stages = 3, int64_t tuned_ms = 1000,
                       double us = 40.0) {
  MoeTuningRecord r;
  r.device = H100();
  r.format = "fp8-per-channel";
  r.gemm = gemm;
  r.experts = 128;
  r.n = gemm == "gate_up" ? 2816 : 4096;
  r.k = gemm == "gate_up" ? 4096 : 1408;
  r.top_k = 8;
  r.batch = batch;
  r.config = {32, 128, 128, 4, stages, 1};
  r.measured_us = us;
  r.tuned_unix_ms = tuned_ms;
  r.source = "tuner";
  return r;
}

// The GEMV path's record of bucket `batch` (n = 2*Im, k = H as for gate_up).
MoeTuningRecord GemvRecord(int64_t batch, int down_vectors = 4, int64_t tuned_ms = 1000,
                           double us = 35.0) {
  MoeTuningRecord r = Record("gate_up", batch, 3, tuned_ms, us);
  r.gemm = "gemv";
  r.config = {};
  r.gemv = {2, 1, 16, down_vectors, "half_mma"};
  return r;
}

std::filesystem::path TempDir() {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("moe_tuning_test_" + std::to_string(::getpid()) + "_" +
                               ::testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(MoeTuningCacheTest, KeysNameDeviceClassAndProblem) {
  EXPECT_EQ(H100().Key(), "NVIDIA H100 80GB HBM3/sm90/smem232448");
  EXPECT_EQ((MoeDeviceClass{"NVIDIA GB10", 12, 1, 101376}).Key(), "NVIDIA GB10/sm121/smem101376");
  EXPECT_EQ(Record("gate_up", 64).Key(), "moe/fp8-per-channel/gate_up/e128/n2816/k4096/top8/b64");
  EXPECT_EQ(Record("down", 1).Key(), "moe/fp8-per-channel/down/e128/n4096/k1408/top8/b1");
}

TEST(MoeTuningCacheTest, SmemBytesMatchesTheKernelFormula) {
  // Row table (16 B per row + 16, rounded up to 128) + stages * (BM + BN) * BK bytes.
  EXPECT_EQ((MoeTileChoice{16, 64, 128, 4, 4, 1}).SmemBytes(), 384 + 4 * 80 * 128);
  EXPECT_EQ((MoeTileChoice{128, 256, 128, 8, 2, 1}).SmemBytes(), 2176 + 2 * 384 * 128);
}

TEST(MoeTuningCacheTest, BatchBuckets) {
  EXPECT_EQ(MoeBatchBucket(1), 1);
  EXPECT_EQ(MoeBatchBucket(3), 4);
  EXPECT_EQ(MoeBatchBucket(64), 64);
  EXPECT_EQ(MoeBatchBucket(65), 128);
  EXPECT_EQ(MoeBatchBuckets(2048).size(), 12u);
  EXPECT_EQ(MoeBatchBuckets(2048).back(), 2048);
  EXPECT_EQ(MoeBatchBuckets(100), (std::vector<int64_t>{1, 2, 4, 8, 16, 32, 64, 128}));
}

TEST(MoeTuningCacheTest, RecordRoundTripsThroughJsonAndProto) {
  MoeTuningRecord r = Record("down", 256, 4, 1767225600123, 123.25);
  r.device = {"NVIDIA GB10", 12, 1, 101376};
  Result<MoeTuningRecord> from_json = MoeTuningRecordFromJson(MoeTuningRecordToJson(r));
  ASSERT_TRUE(from_json.ok()) << from_json.status().ToString();
  EXPECT_EQ(*from_json, r);
  spark::v1::MoeTuningRecord wire;
  ASSERT_TRUE(wire.ParseFromString(MoeTuningRecordToProto(r).SerializeAsString()));
  EXPECT_EQ(wire.device_name(), "NVIDIA GB10");
  EXPECT_EQ(wire.compute_capability_major(), 12u);
  EXPECT_EQ(wire.stages(), 4u);
  Result<MoeTuningRecord> from_proto = MoeTuningRecordFromProto(wire);
  ASSERT_TRUE(from_proto.ok()) << from_proto.status().ToString();
  EXPECT_EQ(*from_proto, r);
}

TEST(MoeTuningCacheTest, ValidationNamesTheField) {
  MoeTuningRecord r = Record("gate_up", 8);
  r.config.stages = 9;
  EXPECT_NE(r.Validate().message().find("config.stages"), std::string::npos);
  r = Record("gate_up", 8);
  r.batch = 24;
  EXPECT_NE(r.Validate().message().find("'batch' must be a power of two"), std::string::npos);
  r = Record("sideways", 8);
  EXPECT_NE(r.Validate().message().find("must be gate_up, down or gemv"), std::string::npos);
  // A config above the device class's shared-memory limit is refused.
  r = Record("gate_up", 8);
  r.device.smem_limit_bytes = 101376;
  r.config = {64, 128, 128, 4, 5, 1};  // 124,032 bytes
  EXPECT_EQ(r.config.SmemBytes(), 124032);
  const Status st = r.Validate();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("101376 bytes per block"), std::string::npos) << st.message();
  // The wire form is validated too.
  spark::v1::MoeTuningRecord wire = MoeTuningRecordToProto(Record("down", 4));
  wire.set_split_k(3);
  EXPECT_NE(MoeTuningRecordFromProto(wire).status().message().find("config.split_k"),
            std::string::npos);
}

TEST(MoeTuningCacheTest, FileRoundTripAndParseErrors) {
  MoeTuningCache cache;
  ASSERT_TRUE(cache.Add(Record("gate_up", 1)).ok());
  ASSERT_TRUE(cache.Add(Record("down", 1)).ok());
  const std::string text = cache.Serialize();
  EXPECT_NE(text.find("\"format\": \"spark-moe-tuning\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"version\": 1"), std::string::npos);
  Result<MoeTuningCache> parsed = MoeTuningCache::Parse(text, "x.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->size(), 2u);
  EXPECT_EQ(parsed->Serialize(), text);

  auto error_of = [](const std::string& t) {
    return MoeTuningCache::Parse(t, "/s/moe_tuning.json").status().message();
  };
  EXPECT_NE(error_of("[1,2]").find("not a JSON object"), std::string::npos);
  EXPECT_NE(error_of(R"({"1": {"BLOCK_SIZE_M": 16}})").find("--import"), std::string::npos);
  const std::string newer = error_of(R"({"format": "spark-moe-tuning", "version": 3,
                                         "records": []})");
  EXPECT_NE(newer.find("version 3 is not supported (this build reads versions 1 to 2)"),
            std::string::npos)
      << newer;
  EXPECT_NE(newer.find("/s/moe_tuning.json"), std::string::npos);
  std::string bad = text;
  bad.replace(bad.find("\"stages\": 3"), 11, "\"stages\": \"3\"");
  const std::string bad_error = error_of(bad);
  EXPECT_NE(bad_error.find("record 0: field 'config.stages' must be an integer"), std::string::npos)
      << bad_error;
}

TEST(MoeTuningCacheTest, MergeKeepsTheNewerThenTheFaster) {
  MoeTuningCache cache;
  ASSERT_TRUE(*cache.Add(Record("gate_up", 64, 3, 1000, 50.0)));
  // Older: ignored.
  EXPECT_FALSE(*cache.Add(Record("gate_up", 64, 4, 900, 10.0)));
  // Same time, slower: ignored; faster: replaces.
  EXPECT_FALSE(*cache.Add(Record("gate_up", 64, 4, 1000, 60.0)));
  EXPECT_TRUE(*cache.Add(Record("gate_up", 64, 2, 1000, 45.0)));
  // Newer: replaces even when slower (a retune after a kernel change).
  EXPECT_TRUE(*cache.Add(Record("gate_up", 64, 5, 2000, 70.0)));
  ASSERT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.records()[0].config.stages, 5);
  // Another device class is another record.
  MoeTuningRecord gb10 = Record("gate_up", 64, 2, 1000);
  gb10.device = {"NVIDIA GB10", 12, 1, 101376};
  EXPECT_TRUE(*cache.Add(gb10));
  EXPECT_EQ(cache.size(), 2u);

  MoeTuningCache other;
  ASSERT_TRUE(other.Add(Record("down", 64)).ok());
  ASSERT_TRUE(other.Add(Record("gate_up", 64, 3, 1500)).ok());  // older than the stored 2000
  EXPECT_EQ(cache.Merge(other), 1);
  EXPECT_EQ(cache.size(), 3u);
}

TEST(MoeTuningCacheTest, LookupByShapeAndMissingBuckets) {
  MoeTuningCache cache;
  for (int64_t b : {1, 2, 4}) ASSERT_TRUE(cache.Add(Record("gate_up", b)).ok());
  for (int64_t b : {1, 4}) ASSERT_TRUE(cache.Add(Record("down", b)).ok());
  const std::vector<int64_t> batches = {1, 2, 4, 8};
  EXPECT_EQ(cache.MissingBatches(H100(), Air(), batches), (std::vector<int64_t>{2, 8}));
  EXPECT_EQ(cache.ForShape(H100(), Air(), batches).size(), 5u);
  auto found = cache.Find(H100(), "fp8-per-channel", "down", 128, 4096, 1408, 8, 4);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->batch, 4);
  // Another smem limit is another device class: nothing matches.
  MoeDeviceClass capped = H100();
  capped.smem_limit_bytes = 101376;
  EXPECT_EQ(cache.MissingBatches(capped, Air(), batches), batches);
  // Another tp (Im) is another shape.
  MoeGemmShape tp2 = Air();
  tp2.inter = 704;
  EXPECT_TRUE(cache.ForShape(H100(), tp2, batches).empty());
}

TEST(MoeTuningCacheTest, UpdateFileMergesAndSurvivesConcurrentWriters) {
  const std::filesystem::path dir = TempDir();
  const std::filesystem::path file = dir / kMoeTuningFileName;
  Result<MoeTuningCache> empty = MoeTuningCache::Load(file);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());

  Result<int> first = UpdateMoeTuningFile(file, {Record("gate_up", 1), Record("down", 1)});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(*first, 2);
  const std::string before = ReadFile(file);
  Result<int> again = UpdateMoeTuningFile(file, {Record("gate_up", 1)});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 0);
  EXPECT_EQ(ReadFile(file), before);

  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < 6; ++i) {
        MoeTuningRecord r =
            Record(i % 2 == 0 ? "gate_up" : "down", int64_t{1} << (2 + t * 3 + i / 2));
        ASSERT_TRUE(UpdateMoeTuningFile(file, {r}).ok());
      }
    });
  }
  for (auto& w : writers) w.join();
  Result<MoeTuningCache> all = MoeTuningCache::Load(file);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->size(), 2u + 24u);
  std::filesystem::remove_all(dir);
}

TEST(MoeTuningCacheTest, LoadReportsABrokenFileWithItsPath) {
  const std::filesystem::path dir = TempDir();
  const std::filesystem::path file = dir / kMoeTuningFileName;
  std::ofstream(file) << "{\"format\": \"spark-moe-tuning\", \"version\": 1, \"records\": [{}]}";
  Result<MoeTuningCache> loaded = MoeTuningCache::Load(file);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find(file.string()), std::string::npos);
  EXPECT_NE(loaded.status().message().find("record 0: field 'device' is missing"),
            std::string::npos)
      << loaded.status().message();
  std::filesystem::remove_all(dir);
}

// The compiled tiles of engine/cuda/moe_gemm.cu (all serve per-channel FP8).
std::vector<MoeTileShape> Tiles() {
  return {{16, 64, 256, 4},  {16, 64, 128, 4},  {16, 128, 128, 4},  {32, 128, 128, 4},
          {64, 128, 128, 4}, {64, 256, 128, 8}, {128, 128, 128, 8}, {128, 256, 128, 8}};
}

constexpr char kSglangName[] = "E=128,N=1408,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8.json";
constexpr char kSglangJson[] = R"({
  "1": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1,
        "num_warps": 4, "num_stages": 4},
  "64": {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1,
         "num_warps": 4, "num_stages": 5},
  "4096": {"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 256, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 16,
           "num_warps": 8, "num_stages": 3}
})";

TEST(MoeTuningCacheTest, SglangImportMapsToTheNearestTileWithinTheSmemLimit) {
  MoeDeviceClass capped = H100();
  capped.smem_limit_bytes = 101376;  // GB10 emulation
  Result<std::vector<MoeTuningRecord>> imported =
      ImportSglangMoeConfig(std::string("/tmp/configs/") + kSglangName, kSglangJson, capped, Air(),
                            Tiles(), {1, 2, 64, 2048}, 777);
  ASSERT_TRUE(imported.ok()) << imported.status().ToString();
  ASSERT_EQ(imported->size(), 8u);
  auto config_of = [&](const std::string& gemm, int64_t batch) {
    for (const MoeTuningRecord& r : *imported) {
      if (r.gemm == gemm && r.batch == batch) return r.config;
    }
    ADD_FAILURE() << "no record for " << gemm << " " << batch;
    return MoeTileChoice{};
  };
  EXPECT_EQ(config_of("gate_up", 1), (MoeTileChoice{16, 64, 128, 4, 4, 1}));
  EXPECT_EQ(config_of("down", 2), (MoeTileChoice{16, 64, 128, 4, 4, 1}));  // nearest key: 1
  // 5 stages would need 124,032 bytes: 4 is the deepest within 101,376.
  EXPECT_EQ(config_of("gate_up", 64), (MoeTileChoice{64, 128, 128, 4, 4, 1}));
  // Nearest key of 2048 is 4096; 3 stages need 149,632 bytes, 2 fit.
  EXPECT_EQ(config_of("down", 2048), (MoeTileChoice{128, 256, 128, 8, 2, 1}));
  for (const MoeTuningRecord& r : *imported) {
    EXPECT_LE(r.config.SmemBytes(), 101376);
    EXPECT_EQ(r.device, capped);
    EXPECT_EQ(r.source, std::string("sglang:") + kSglangName);
    EXPECT_EQ(r.tuned_unix_ms, 777);
    EXPECT_EQ(r.measured_us, 0.0);
    EXPECT_EQ(r.n, r.gemm == "gate_up" ? 2816 : 4096);
  }
  // On the full H100 limit the deeper pipeline stays.
  Result<std::vector<MoeTuningRecord>> full =
      ImportSglangMoeConfig(kSglangName, kSglangJson, H100(), Air(), Tiles(), {64}, 777);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ((*full)[0].config.stages, 5);
}

TEST(MoeTuningCacheTest, SglangImportRefusesAMismatchedFile) {
  auto error_of = [](const std::string& name, const MoeDeviceClass& device,
                     const MoeGemmShape& shape) {
    return ImportSglangMoeConfig(name, kSglangJson, device, shape, Tiles(), {1}, 0)
        .status()
        .message();
  };
  MoeDeviceClass h200 = H100();
  h200.name = "NVIDIA H200";
  EXPECT_NE(error_of(kSglangName, h200, Air()).find("tuned on NVIDIA_H100_80GB_HBM3"),
            std::string::npos);
  MoeGemmShape tp2 = Air();
  tp2.inter = 704;
  EXPECT_NE(error_of(kSglangName, H100(), tp2).find("E=128, N=1408 but the model has E=128, N=704"),
            std::string::npos);
  EXPECT_NE(error_of("E=128,N=1408,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape="
                     "[128, 128].json",
                     H100(), Air())
                .find("holds fp8-block128 configs but the model's MoE weights are "
                      "fp8-per-channel"),
            std::string::npos);
  EXPECT_NE(
      error_of("E=128,N=1408,device_name=NVIDIA_H100_80GB_HBM3,dtype=int8_w8a8.json", H100(), Air())
          .find("dtype int8_w8a8 is not supported yet"),
      std::string::npos);
  EXPECT_NE(error_of("moe.json", H100(), Air()).find("file name must look like"),
            std::string::npos);
  Result<std::vector<MoeTuningRecord>> block = ImportSglangMoeConfig(
      "E=128,N=1408,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128, 128].json",
      kSglangJson, H100(), {"fp8-block128", 128, 4096, 1408, 8}, Tiles(), {1}, 0);
  ASSERT_TRUE(block.ok()) << block.status().ToString();
  EXPECT_EQ((*block)[0].format, "fp8-block128");
  EXPECT_NE(ImportSglangMoeConfig(kSglangName, R"({"8": {"BLOCK_SIZE_M": 16}})", H100(), Air(),
                                  Tiles(), {1}, 0)
                .status()
                .message()
                .find("'8.BLOCK_SIZE_N' is missing"),
            std::string::npos);
}

}  // namespace
}  // namespace spark::engine

namespace spark::engine {
namespace {

TEST(MoeTuningCacheTest, GemvRecordRoundTripsThroughJsonProtoAndFile) {
  const MoeTuningRecord r = GemvRecord(2, 3, 1767225600123, 31.5);
  EXPECT_EQ(r.Key(), "moe/fp8-per-channel/gemv/e128/n2816/k4096/top8/b2");
  ASSERT_TRUE(r.Validate().ok()) << r.Validate().ToString();
  const std::string json = MoeTuningRecordToJson(r);
  EXPECT_NE(json.find(R"("gemv":{"down_outputs":16,"down_vectors":3,"fp8_dequant":"half_mma",)"
                      R"("gate_up_k_splits":2,"gate_up_sweep":1})"),
            std::string::npos)
      << json;
  EXPECT_EQ(json.find("\"config\""), std::string::npos) << json;
  Result<MoeTuningRecord> from_json = MoeTuningRecordFromJson(json);
  ASSERT_TRUE(from_json.ok()) << from_json.status().ToString();
  EXPECT_EQ(*from_json, r);

  spark::v1::MoeTuningRecord wire;
  ASSERT_TRUE(wire.ParseFromString(MoeTuningRecordToProto(r).SerializeAsString()));
  EXPECT_EQ(wire.gemm(), "gemv");
  EXPECT_EQ(wire.gemv().down_vectors(), 3u);
  EXPECT_EQ(wire.gemv().fp8_dequant(), "half_mma");
  EXPECT_EQ(wire.block_m(), 0u);
  Result<MoeTuningRecord> from_proto = MoeTuningRecordFromProto(wire);
  ASSERT_TRUE(from_proto.ok()) << from_proto.status().ToString();
  EXPECT_EQ(*from_proto, r);
  wire.clear_gemv();
  EXPECT_NE(MoeTuningRecordFromProto(wire).status().message().find("field 'gemv' is missing"),
            std::string::npos);

  // A file holding a gemv record is version 2 (older builds refuse it by version); one without
  // stays version 1.
  MoeTuningCache cache;
  ASSERT_TRUE(cache.Add(Record("gate_up", 8)).ok());
  EXPECT_NE(cache.Serialize().find("\"version\": 1"), std::string::npos);
  ASSERT_TRUE(cache.Add(r).ok());
  const std::string text = cache.Serialize();
  EXPECT_NE(text.find("\"version\": 2"), std::string::npos) << text;
  Result<MoeTuningCache> parsed = MoeTuningCache::Parse(text, "x.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->Serialize(), text);
  ASSERT_TRUE(parsed->FindGemv(H100(), Air(), 2).has_value());
  EXPECT_EQ(parsed->FindGemv(H100(), Air(), 2)->gemv, r.gemv);
}

TEST(MoeTuningCacheTest, GemvValidationNamesTheField) {
  auto error_of = [](MoeTuningRecord r) { return r.Validate().message(); };
  MoeTuningRecord r = GemvRecord(1);
  r.gemv.gate_up_k_splits = 3;
  EXPECT_NE(error_of(r).find("'gemv.gate_up_k_splits' must be 1, 2, 4 or 8, got 3"),
            std::string::npos)
      << error_of(r);
  r = GemvRecord(1);
  r.gemv.gate_up_sweep = 2;
  EXPECT_NE(error_of(r).find("gemv.gate_up_sweep"), std::string::npos);
  r = GemvRecord(1);
  r.gemv.down_outputs = 32;
  EXPECT_NE(error_of(r).find("gemv.down_outputs"), std::string::npos);
  r = GemvRecord(1);
  r.gemv.down_vectors = 0;
  EXPECT_NE(error_of(r).find("gemv.down_vectors"), std::string::npos);
  r = GemvRecord(1);
  r.gemv.fp8_dequant = "fast";
  EXPECT_NE(error_of(r).find("'gemv.fp8_dequant' must be convert, scaled_bits or half_mma"),
            std::string::npos)
      << error_of(r);
  // A gemv record's unused tile config is not checked; a tile record's config still is.
  EXPECT_TRUE(GemvRecord(4).Validate().ok());
  // A gemv record without its "gemv" object names it.
  std::string json = MoeTuningRecordToJson(GemvRecord(1));
  json.replace(json.find("\"gemv\":{"), 8, "\"gemx\":{");
  EXPECT_NE(MoeTuningRecordFromJson(json).status().message().find("field 'gemv' is missing"),
            std::string::npos);
}

TEST(MoeTuningCacheTest, GemvBucketsNeedTheirGemvRecordOnly) {
  MoeTuningCache cache;
  ASSERT_TRUE(cache.Add(GemvRecord(1)).ok());
  ASSERT_TRUE(cache.Add(GemvRecord(4)).ok());
  for (int64_t b : {8, 16}) {
    ASSERT_TRUE(cache.Add(Record("gate_up", b)).ok());
    ASSERT_TRUE(cache.Add(Record("down", b)).ok());
  }
  const std::vector<int64_t> batches = {1, 2, 4, 8, 16};
  // Up to 4 tokens the GEMV path serves: bucket 2 lacks its gemv record.
  EXPECT_EQ(cache.MissingBatches(H100(), Air(), batches, 4), (std::vector<int64_t>{2}));
  // Without the GEMV path every bucket needs both tile records.
  EXPECT_EQ(cache.MissingBatches(H100(), Air(), batches, 0), (std::vector<int64_t>{1, 2, 4}));
  // With it up to 8, bucket 8's tile records do not stand in for its gemv record.
  EXPECT_EQ(cache.MissingBatches(H100(), Air(), batches, 8), (std::vector<int64_t>{2, 8}));
  // ForShape hands out the gemv records with the tile ones.
  EXPECT_EQ(cache.ForShape(H100(), Air(), batches).size(), 6u);
  // A gemv record of another tp (Im) is another shape.
  MoeGemmShape tp2 = Air();
  tp2.inter = 704;
  EXPECT_FALSE(cache.FindGemv(H100(), tp2, 1).has_value());
  // Merging: the newer record of the bucket wins.
  EXPECT_TRUE(*cache.Add(GemvRecord(1, 2, 2000, 40.0)));
  EXPECT_EQ(cache.FindGemv(H100(), Air(), 1)->gemv.down_vectors, 2);
}

}  // namespace
}  // namespace spark::engine

namespace spark::engine {
namespace {

// Records carry the kernel generation they were measured with: files and senders from before the
// field read as generation 1, a newer generation replaces an older record whatever its time, and
// records of older kernels count as missing when the current generation is asked for.
TEST(MoeTuningCacheTest, KernelGenerationDecidesMergesAndWhatIsMissing) {
  const MoeTuningRecord current = Record("gate_up", 8);
  EXPECT_EQ(current.kernel_generation, kMoeKernelGeneration);
  std::string json = MoeTuningRecordToJson(current);
  EXPECT_NE(json.find("\"kernel_generation\":" + std::to_string(kMoeKernelGeneration)),
            std::string::npos)
      << json;
  // A record written before the field.
  nlohmann::json old = nlohmann::json::parse(json);
  old.erase("kernel_generation");
  Result<MoeTuningRecord> parsed = MoeTuningRecordFromJson(old.dump());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->kernel_generation, 1);
  spark::v1::MoeTuningRecord wire = MoeTuningRecordToProto(current);
  EXPECT_EQ(wire.kernel_generation(), static_cast<uint32_t>(kMoeKernelGeneration));
  wire.clear_kernel_generation();
  EXPECT_EQ(MoeTuningRecordFromProto(wire)->kernel_generation, 1);
  MoeTuningRecord bad = current;
  bad.kernel_generation = 0;
  EXPECT_NE(bad.Validate().message().find("kernel_generation"), std::string::npos);

  // Merging: the newer generation wins even when older in time or slower.
  MoeTuningCache cache;
  MoeTuningRecord stale = Record("gate_up", 8, 4, 5000, 10.0);
  stale.kernel_generation = 1;
  ASSERT_TRUE(*cache.Add(stale));
  MoeTuningRecord fresh = Record("gate_up", 8, 2, 1000, 50.0);
  EXPECT_TRUE(*cache.Add(fresh));
  EXPECT_EQ(cache.records()[0].kernel_generation, kMoeKernelGeneration);
  EXPECT_FALSE(*cache.Add(stale));  // and an older generation never comes back

  // Missing: a bucket whose record is of an older generation, when the current one is asked for.
  MoeTuningCache mixed;
  ASSERT_TRUE(mixed.Add(Record("gate_up", 8)).ok());
  ASSERT_TRUE(mixed.Add(Record("down", 8)).ok());
  MoeTuningRecord old_down = Record("down", 16);
  old_down.kernel_generation = 1;
  ASSERT_TRUE(mixed.Add(Record("gate_up", 16)).ok());
  ASSERT_TRUE(mixed.Add(old_down).ok());
  const std::vector<int64_t> batches = {8, 16};
  EXPECT_TRUE(mixed.MissingBatches(H100(), Air(), batches).empty());
  EXPECT_EQ(mixed.MissingBatches(H100(), Air(), batches, 0, kMoeKernelGeneration),
            (std::vector<int64_t>{16}));
}

}  // namespace
}  // namespace spark::engine
