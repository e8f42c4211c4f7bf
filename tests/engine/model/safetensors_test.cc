#include "engine/model/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "tests/engine/model/test_util.h"

namespace spark::engine {
namespace {

using ::testing::HasSubstr;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

std::vector<std::byte> Bytes(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

// A file built by hand, byte by byte, as the Python library writes it.
std::string HandMadeFile() {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},)"
                             R"("__metadata__":{"format":"pt"}})";
  std::string file(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) file[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  file += header;
  const float a[2] = {1.5f, -2.0f};
  file.append(reinterpret_cast<const char*>(a), 8);
  const uint16_t b[2] = {0x3f80, 0xc000};  // bf16 1.0, -2.0
  file.append(reinterpret_cast<const char*>(b), 4);
  return file;
}

TEST(SafetensorsTest, ReadsHandMadeFile) {
  TempDir dir;
  WriteFile(dir / "x.safetensors", HandMadeFile());
  auto file = SafetensorsFile::Open(dir / "x.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  Result<TensorView> a = (*file)->Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(ToFloatVector(*a), (std::vector<float>{1.5f, -2.0f}));
  Result<TensorView> b = (*file)->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->Describe(), "[1, 2] BF16");
  EXPECT_EQ(ToFloatVector(*b), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_FALSE((*file)->Get("c").ok());
}

TEST(SafetensorsTest, WriterRoundTripsEveryDtype) {
  TempDir dir;
  SafetensorsWriter w;
  const float vals[] = {0.5f, -1.25f, 3.0f, 448.0f, -0.0f, 1e-3f};
  ASSERT_TRUE(w.AddFloat("f32", DType::kF32, {2, 3}, vals).ok());
  ASSERT_TRUE(w.AddFloat("bf16", DType::kBF16, {6}, vals).ok());
  ASSERT_TRUE(w.AddFloat("f16", DType::kF16, {3, 2}, vals).ok());
  ASSERT_TRUE(w.AddFloat("f8", DType::kF8E4M3, {6, 1}, vals).ok());
  ASSERT_TRUE(w.Add("i64", DType::kI64, {1}, Bytes({7, 0, 0, 0, 0, 0, 0, 0})).ok());
  ASSERT_TRUE(w.Add("u8", DType::kU8, {3}, Bytes({1, 2, 255})).ok());
  ASSERT_TRUE(w.Add("empty", DType::kF32, {0, 4}, std::vector<std::byte>{}).ok());
  w.SetMetadata("format", "pt");
  EXPECT_FALSE(w.Add("u8", DType::kU8, {1}, Bytes({1})).ok());          // duplicate
  EXPECT_FALSE(w.Add("bad", DType::kF32, {2}, Bytes({1, 2, 3})).ok());  // wrong size
  ASSERT_TRUE(w.WriteDir(dir.path()).ok());

  const std::string raw = ReadFile(dir / "model.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u) << "data section must be 8-byte aligned";

  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_EQ(ckpt->num_files(), 1u);
  EXPECT_EQ(ckpt->names().size(), 7u);
  EXPECT_EQ(testing::ReadFloat(*ckpt, "f32"),
            (std::vector<float>{0.5f, -1.25f, 3.0f, 448.0f, -0.0f, 1e-3f}));
  std::vector<float> bf16 = testing::ReadFloat(*ckpt, "bf16");
  std::vector<float> f16 = testing::ReadFloat(*ckpt, "f16");
  std::vector<float> f8 = testing::ReadFloat(*ckpt, "f8");
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(bf16[i], Bf16ToFloat(FloatToBf16(vals[i])));
    EXPECT_EQ(f16[i], F16ToFloat(FloatToF16(vals[i])));
    EXPECT_EQ(f8[i], F8E4M3ToFloat(FloatToF8E4M3(vals[i])));
  }
  EXPECT_EQ(testing::ReadFloat(*ckpt, "i64"), (std::vector<float>{7.0f}));
  EXPECT_EQ(testing::ReadFloat(*ckpt, "u8"), (std::vector<float>{1.0f, 2.0f, 255.0f}));
  EXPECT_EQ(ckpt->Get("empty")->nbytes, 0u);
  EXPECT_EQ(ckpt->files()[0]->metadata().at("format"), "pt");
  EXPECT_EQ(ckpt->total_tensor_bytes(), w.total_bytes());
}

TEST(SafetensorsTest, ShardedWriteAndIndex) {
  TempDir dir;
  SafetensorsWriter w;
  std::vector<float> v(100);
  for (int i = 0; i < 10; ++i) {
    for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(i * 1000 + k);
    ASSERT_TRUE(w.AddFloat("t" + std::to_string(i), DType::kF32, {10, 10}, v).ok());
  }
  ASSERT_TRUE(w.WriteDir(dir.path(), /*max_shard_bytes=*/400).ok());
  EXPECT_TRUE(std::filesystem::exists(dir / "model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(dir / "model-00001-of-00010.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors"));
  auto index = nlohmann::json::parse(ReadFile(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"]["t3"], "model-00004-of-00010.safetensors");
  EXPECT_EQ(index["metadata"]["total_size"], 4000);
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_EQ(ckpt->num_files(), 10u);
  EXPECT_EQ(testing::ReadFloat(*ckpt, "t7")[42], 7042.0f);

  // An index entry pointing at the wrong file is an inconsistency.
  index["weight_map"]["t3"] = "model-00001-of-00010.safetensors";
  WriteFile(dir / "model.safetensors.index.json", index.dump());
  auto bad = Checkpoint::Open(dir.path());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(bad.status().message(), HasSubstr("t3"));

  // A file listed in the index but missing.
  index["weight_map"]["t3"] = "model-00004-of-00010.safetensors";
  WriteFile(dir / "model.safetensors.index.json", index.dump());
  std::filesystem::remove(dir / "model-00004-of-00010.safetensors");
  bad = Checkpoint::Open(dir.path());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(bad.status().message(), HasSubstr("model-00004-of-00010.safetensors"));
  EXPECT_THAT(bad.status().message(), HasSubstr("incomplete"));
}

TEST(SafetensorsTest, DirectoryWithoutIndexReadsAllFiles) {
  TempDir dir;
  for (int i = 0; i < 3; ++i) {
    SafetensorsWriter w;
    const float v[] = {static_cast<float>(i)};
    ASSERT_TRUE(w.AddFloat("x" + std::to_string(i), DType::kF32, {1}, v).ok());
    ASSERT_TRUE(w.WriteFile(dir / ("part" + std::to_string(i) + ".safetensors")).ok());
  }
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  EXPECT_EQ(ckpt->num_files(), 3u);
  EXPECT_EQ(testing::ReadFloat(*ckpt, "x2"), (std::vector<float>{2.0f}));
  Result<TensorView> missing = ckpt->Get("model.layers.3.mlp.gate.weight");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(),
            "tensor model.layers.3.mlp.gate.weight not found in " + dir.path().string() +
                " (3 files); the checkpoint is incomplete or of another architecture");

  // The same tensor in two files.
  SafetensorsWriter w;
  const float v[] = {9.0f};
  ASSERT_TRUE(w.AddFloat("x0", DType::kF32, {1}, v).ok());
  ASSERT_TRUE(w.WriteFile(dir / "part9.safetensors").ok());
  auto dup = Checkpoint::Open(dir.path());
  ASSERT_FALSE(dup.ok());
  EXPECT_THAT(dup.status().message(), HasSubstr("x0"));
}

TEST(SafetensorsTest, GetCheckedReportsShapeAndDtype) {
  TempDir dir;
  SafetensorsWriter w;
  std::vector<float> v(128 * 64, 1.0f);
  ASSERT_TRUE(w.AddFloat("w", DType::kBF16, {128, 64}, v).ok());
  ASSERT_TRUE(w.WriteDir(dir.path()).ok());
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok());
  const int64_t want[] = {256, 64};
  const DType bf16[] = {DType::kBF16};
  Result<TensorView> r = ckpt->GetChecked("w", want, bf16);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("tensor w: expected [256, 64] BF16, got [128, 64]"));
  const int64_t right[] = {128, 64};
  const DType f32[] = {DType::kF32};
  r = ckpt->GetChecked("w", right, f32);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("expected [128, 64] F32, got [128, 64] BF16"));
  EXPECT_TRUE(ckpt->GetChecked("w", right, bf16).ok());
  EXPECT_TRUE(ckpt->GetChecked("w", right).ok());
}

TEST(SafetensorsTest, CorruptFilesAreRejected) {
  TempDir dir;
  const std::string good = HandMadeFile();
  const auto path = dir / "model.safetensors";
  auto open_error = [&](const std::string& bytes) {
    WriteFile(path, bytes);
    auto f = SafetensorsFile::Open(path);
    EXPECT_FALSE(f.ok());
    return f.ok() ? Status() : f.status();
  };
  // Truncated data section.
  Status s = open_error(good.substr(0, good.size() - 3));
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("outside the data section"));
  // Shorter than the length prefix.
  s = open_error("abc");
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("truncated"));
  // Header length larger than the file.
  std::string overflow = good;
  overflow[6] = static_cast<char>(0x7f);
  s = open_error(overflow);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("exceeds the file size"));
  // Malformed JSON.
  std::string bad_json = good;
  bad_json[8] = '[';
  bad_json[9] = '[';
  s = open_error(bad_json);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("malformed"));
  // Size that does not match the shape.
  std::string wrong = good;
  wrong.replace(wrong.find("[2]"), 3, "[3]");
  s = open_error(wrong);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("needs 12"));
  // Unknown dtype.
  std::string dtype = good;
  dtype.replace(dtype.find("\"F32\""), 5, "\"F64\"");
  s = open_error(dtype);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("F64"));
  // Missing file and directory.
  auto none = SafetensorsFile::Open(dir / "nope.safetensors");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  auto no_dir = Checkpoint::Open(dir / "nope");
  ASSERT_FALSE(no_dir.ok());
  EXPECT_EQ(no_dir.status().code(), StatusCode::kNotFound);
  std::filesystem::remove(path);
  auto empty = Checkpoint::Open(dir.path());
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("no *.safetensors files"));
}

}  // namespace
}  // namespace spark::engine
