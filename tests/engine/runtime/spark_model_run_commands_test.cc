// Runs the spark-model binary: `logits` and `generate` on a `spark-model tiny` checkpoint.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct RunResult {
  int rc = -1;
  std::string out;  // stdout and stderr
};

RunResult SparkModel(const std::string& args) {
  std::string cmd = std::string(SPARK_MODEL_BIN) + " " + args + " 2>&1";
  RunResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::vector<float> ReadFloats(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

class RunCommandsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         ("spark_run_commands_test_" + std::to_string(getpid())));
    fs::create_directories(*root_);
    RunResult r = SparkModel("tiny " + Model().string() + " --seed 5");
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static fs::path Model() { return *root_ / "tiny"; }
  static int64_t Vocab() {
    std::ifstream in(Model() / "config.json");
    return nlohmann::json::parse(in)["vocab_size"].get<int64_t>();
  }
  static fs::path* root_;
};

fs::path* RunCommandsTest::root_ = nullptr;

TEST_F(RunCommandsTest, LogitsAtTp2AndTp4EqualTp1) {
  const std::string ids = "5,17,3,99,1,250";
  std::vector<std::vector<float>> logits;
  for (int tp : {1, 2, 4}) {
    fs::path out = *root_ / ("logits_tp" + std::to_string(tp) + ".bin");
    RunResult r = SparkModel("logits " + Model().string() + " --ids " + ids + " --out " +
                             out.string() + " --tp " + std::to_string(tp));
    ASSERT_EQ(r.rc, 0) << r.out;
    logits.push_back(ReadFloats(out));
    ASSERT_EQ(logits.back().size(), 6u * static_cast<size_t>(Vocab())) << "tp " << tp;
  }
  float max_abs = 0;
  for (float v : logits[0]) max_abs = std::max(max_abs, std::abs(v));
  ASSERT_GT(max_abs, 0.1f);
  for (size_t k = 1; k < logits.size(); ++k) {
    float max_diff = 0;
    for (size_t i = 0; i < logits[0].size(); ++i) {
      max_diff = std::max(max_diff, std::abs(logits[k][i] - logits[0][i]));
    }
    EXPECT_LT(max_diff, 1e-2f * max_abs);
    EXPECT_LT(max_diff, 1e-4f * max_abs) << "tensor parallelism should agree to ~1e-5";
  }
}

TEST_F(RunCommandsTest, GenerateGreedyIsDeterministicAndJsonIsWellFormed) {
  const std::string args =
      "generate " + Model().string() + " --prompt 'The quick brown fox' --max-tokens 8 --json";
  RunResult a = SparkModel(args);
  RunResult b = SparkModel(args);
  RunResult tp2 = SparkModel(args + " --tp 2");
  ASSERT_EQ(a.rc, 0) << a.out;
  ASSERT_EQ(tp2.rc, 0) << tp2.out;
  auto ja = nlohmann::json::parse(a.out);
  auto jb = nlohmann::json::parse(b.out);
  auto j2 = nlohmann::json::parse(tp2.out);
  for (const char* key : {"ids", "text", "finish_reason", "prompt_tokens", "prefill_ms",
                          "decode_ms", "decode_tokens_per_s"}) {
    EXPECT_TRUE(ja.contains(key)) << key;
  }
  ASSERT_TRUE(ja["ids"].is_array());
  EXPECT_GE(ja["ids"].size(), 1u);
  EXPECT_LE(ja["ids"].size(), 8u);
  EXPECT_TRUE(ja["text"].is_string());
  EXPECT_GT(ja["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(ja["ids"], jb["ids"]);
  EXPECT_EQ(ja["text"], jb["text"]);
  EXPECT_EQ(ja["ids"], j2["ids"]);
  if (ja["ids"].size() == 8u) {
    EXPECT_EQ(ja["finish_reason"], "length");
  } else {
    EXPECT_EQ(ja["finish_reason"], "stop");
  }

  // Plain mode prints the same continuation text.
  RunResult plain =
      SparkModel("generate " + Model().string() + " --prompt 'The quick brown fox' --max-tokens 8");
  ASSERT_EQ(plain.rc, 0) << plain.out;
  EXPECT_EQ(plain.out, ja["text"].get<std::string>() + "\n");
}

TEST_F(RunCommandsTest, GenerateFromIdsNeedsNoTokenizer) {
  fs::path bare = *root_ / "bare";
  fs::create_directories(bare);
  for (const char* f : {"config.json", "model.safetensors"}) {
    fs::copy_file(Model() / f, bare / f, fs::copy_options::overwrite_existing);
  }
  RunResult r =
      SparkModel("generate " + bare.string() + " --ids 5,6,7 --max-tokens 5 --ignore-eos --json");
  ASSERT_EQ(r.rc, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["ids"].size(), 5u);
  EXPECT_TRUE(j["text"].is_null());
  EXPECT_EQ(j["finish_reason"], "length");
  RunResult with_tokenizer = SparkModel("generate " + Model().string() +
                                        " --ids 5,6,7 --max-tokens 5 --ignore-eos --json");
  ASSERT_EQ(with_tokenizer.rc, 0) << with_tokenizer.out;
  EXPECT_EQ(nlohmann::json::parse(with_tokenizer.out)["ids"], j["ids"]);

  RunResult needs = SparkModel("generate " + bare.string() + " --prompt hi");
  EXPECT_NE(needs.rc, 0);
  EXPECT_NE(needs.out.find("tokenizer.json"), std::string::npos) << needs.out;
}

TEST_F(RunCommandsTest, ClearErrors) {
#if !defined(SPARK_HAVE_CUDA)  // with the CUDA backend built, --backend cuda runs on a GPU
  RunResult cuda = SparkModel("generate " + Model().string() + " --ids 1,2 --backend cuda");
  EXPECT_NE(cuda.rc, 0);
  EXPECT_NE(cuda.out.find("not supported yet: the CUDA backend is not built"), std::string::npos)
      << cuda.out;
  RunResult cuda_logits =
      SparkModel("logits " + Model().string() + " --ids 1 --out /dev/null --backend cuda");
  EXPECT_NE(cuda_logits.out.find("not supported yet"), std::string::npos) << cuda_logits.out;
#endif

  RunResult bad_ids = SparkModel("logits " + Model().string() + " --ids 1,x --out /dev/null");
  EXPECT_EQ(bad_ids.rc, 2);
  EXPECT_NE(bad_ids.out.find("'x'"), std::string::npos) << bad_ids.out;

  RunResult both = SparkModel("generate " + Model().string() + " --ids 1 --prompt hi");
  EXPECT_NE(both.rc, 0);
  RunResult neither = SparkModel("generate " + Model().string());
  EXPECT_NE(neither.rc, 0);
  EXPECT_NE(neither.out.find("--prompt"), std::string::npos) << neither.out;

  RunResult out_of_vocab = SparkModel("generate " + Model().string() + " --ids 999999");
  EXPECT_EQ(out_of_vocab.rc, 2);
  EXPECT_NE(out_of_vocab.out.find("999999"), std::string::npos) << out_of_vocab.out;

  RunResult bad_temp = SparkModel("generate " + Model().string() + " --ids 1 --temperature -1");
  EXPECT_NE(bad_temp.rc, 0);
  RunResult bad_top_p = SparkModel("generate " + Model().string() + " --ids 1 --top-p 1.5");
  EXPECT_NE(bad_top_p.rc, 0);
  EXPECT_NE(bad_top_p.out.find("top_p"), std::string::npos) << bad_top_p.out;

  RunResult missing =
      SparkModel("logits " + (*root_ / "nope").string() + " --ids 1 --out /dev/null");
  EXPECT_NE(missing.rc, 0);
  EXPECT_NE(missing.out.find("config.json"), std::string::npos) << missing.out;
}

TEST_F(RunCommandsTest, GenerateWithSpeculationGivesTheGreedyOutputAndReportsStats) {
  const fs::path mtp = *root_ / "tiny_mtp";
  RunResult made = SparkModel("tiny " + mtp.string() + " --seed 5 --mtp");
  ASSERT_EQ(made.rc, 0) << made.out;
  const std::string base = "generate " + mtp.string() + " --ids 5,17,3,99 --max-tokens 12 --json";
  RunResult plain = SparkModel(base);
  ASSERT_EQ(plain.rc, 0) << plain.out;
  const nlohmann::json want = nlohmann::json::parse(plain.out);
  EXPECT_FALSE(want.contains("speculative"));
  for (const std::string flags :
       {" --spec-steps 3", " --spec-steps 2 --spec-topk 2 --spec-draft-tokens 5 --tp 2"}) {
    RunResult r = SparkModel(base + flags);
    ASSERT_EQ(r.rc, 0) << r.out;
    const nlohmann::json got = nlohmann::json::parse(r.out);
    EXPECT_EQ(got["ids"], want["ids"]) << flags;
    const nlohmann::json& spec = got["speculative"];
    EXPECT_GT(spec["verify_steps"].get<int64_t>(), 0);
    EXPECT_GE(spec["acceptance_length"].get<double>(), 1.0);
    EXPECT_LE(spec["accepted_tokens"].get<int64_t>(), spec["drafted_tokens"].get<int64_t>());
  }
  RunResult chain = SparkModel(base + " --spec-steps 3 --spec-draft-tokens 9");
  ASSERT_EQ(chain.rc, 0) << chain.out;
  EXPECT_EQ(nlohmann::json::parse(chain.out)["speculative"]["draft_tokens"], 4);  // steps + 1

  // A checkpoint without an MTP layer, and bad tree sizes, are refused with the fix.
  RunResult no_mtp =
      SparkModel("generate " + Model().string() + " --ids 5,17 --max-tokens 3 --spec-steps 2");
  EXPECT_EQ(no_mtp.rc, 2) << no_mtp.out;
  EXPECT_NE(no_mtp.out.find("MTP"), std::string::npos) << no_mtp.out;
  RunResult bad_tree = SparkModel("generate " + mtp.string() +
                                  " --ids 5 --spec-steps 2 --spec-topk 2 --spec-draft-tokens 99");
  EXPECT_EQ(bad_tree.rc, 2) << bad_tree.out;
  EXPECT_NE(bad_tree.out.find("--spec-draft-tokens"), std::string::npos) << bad_tree.out;
  EXPECT_NE(bad_tree.out.find("[2, 7]"), std::string::npos) << bad_tree.out;
}

}  // namespace
