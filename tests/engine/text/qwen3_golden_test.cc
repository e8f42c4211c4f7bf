// Golden test: the real Qwen3 tokenizer.json against ids produced by the reference tokenizer
// over tests/data/tokenizer/corpus.txt (see tests/reference/tokenizer_golden.py).
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/text/detokenizer.h"
#include "engine/text/normalizer.h"
#include "engine/text/tokenizer.h"

namespace spark::engine {
namespace {

const std::filesystem::path kSource = SPARK_SOURCE_DIR;
const std::filesystem::path kTokenizerPath = kSource / ".cache/testdata/qwen3/tokenizer.json";

struct GoldenRecord {
  std::string text;
  std::vector<int32_t> ids;
  std::string decoded;
  bool has_no_special = false;
  std::vector<int32_t> ids_no_special;
};

// qwen3_golden.jsonl: ids made by Hugging Face `tokenizers` (tests/reference/tokenizer_golden.py).
std::vector<GoldenRecord> LoadGolden(std::string* source) {
  const std::filesystem::path dir = kSource / "tests/data/tokenizer";
  std::filesystem::path path = dir / "qwen3_golden.jsonl";
  *source = path.filename().string();
  std::vector<GoldenRecord> records;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line);
    GoldenRecord r;
    r.text = j.at("text").get<std::string>();
    r.ids = j.at("ids").get<std::vector<int32_t>>();
    r.decoded = j.at("decoded").get<std::string>();
    if (j.contains("ids_no_special")) {
      r.has_no_special = true;
      r.ids_no_special = j.at("ids_no_special").get<std::vector<int32_t>>();
    }
    records.push_back(std::move(r));
  }
  return records;
}

class Qwen3GoldenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(kTokenizerPath)) return;
    auto tok = Tokenizer::FromFile(kTokenizerPath);
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tokenizer_ = std::move(tok).value().release();
    records_ = new std::vector<GoldenRecord>(LoadGolden(&source_));
    std::cout << "golden ids from " << source_ << " (" << records_->size() << " records)\n";
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete records_;
    tokenizer_ = nullptr;
    records_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(tokenizer_, nullptr)
        << kTokenizerPath << " is missing: run scripts/fetch-test-data first";
    ASSERT_GE(records_->size(), 100u) << "golden file " << source_ << " is missing or short";
  }

  static const Tokenizer* tokenizer_;
  static std::vector<GoldenRecord>* records_;
  static std::string source_;
};

const Tokenizer* Qwen3GoldenTest::tokenizer_ = nullptr;
std::vector<GoldenRecord>* Qwen3GoldenTest::records_ = nullptr;
std::string Qwen3GoldenTest::source_;

TEST_F(Qwen3GoldenTest, Vocabulary) {
  EXPECT_EQ(tokenizer_->vocab_size(), 151669);
  EXPECT_EQ(tokenizer_->TokenToId("<|im_start|>"), 151644);
  EXPECT_EQ(tokenizer_->TokenToId("<think>"), 151667);
  EXPECT_EQ(tokenizer_->IdToToken(151645), "<|im_end|>");
  EXPECT_EQ(tokenizer_->IdToToken(9707), "Hello");
  EXPECT_TRUE(tokenizer_->IsSpecial(151643));
  EXPECT_FALSE(tokenizer_->IsSpecial(151667));  // <think> is an added, non-special token
  EXPECT_FALSE(tokenizer_->IsSpecial(9707));
}

TEST_F(Qwen3GoldenTest, KnownSentence) {
  // Reference ids from docs/build-environment.md (§5).
  const std::vector<int32_t> ids =
      tokenizer_->Encode("Hello, world! 你好 🤖  def f(x):\n\treturn x**2  # 12345");
  const std::vector<int32_t> reference = {9707, 11,  1879, 0,    220, 108386, 11162, 97,  244,
                                          220,  707, 282,  2075, 982, 853,    856,   334, 17,
                                          220,  671, 220,  16,   17,  18,     19,    20};
  EXPECT_EQ(ids, reference);
}

TEST_F(Qwen3GoldenTest, GoldenFileCoversTheCorpus) {
  // The scripts' split: the file minus one trailing newline, cut on "\n%%%%\n", then the
  // whole file as a last entry. A changed corpus needs a regenerated golden file.
  std::ifstream in(kSource / "tests/data/tokenizer/corpus.txt", std::ios::binary);
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string body = raw;
  if (!body.empty() && body.back() == '\n') body.pop_back();
  std::vector<std::string> entries;
  const std::string sep = "\n%%%%\n";
  for (size_t pos = 0;;) {
    const size_t next = body.find(sep, pos);
    entries.push_back(body.substr(pos, next - pos));
    if (next == std::string::npos) break;
    pos = next + sep.size();
  }
  entries.push_back(raw);
  ASSERT_EQ(entries.size(), records_->size())
      << source_ << " is stale: regenerate it with tests/reference/tokenizer_golden.py";
  for (size_t i = 0; i < entries.size(); ++i) {
    EXPECT_EQ(entries[i], (*records_)[i].text) << "entry " << i << " differs from " << source_;
  }
}

TEST_F(Qwen3GoldenTest, EncodeMatchesGolden) {
  int failures = 0;
  for (size_t i = 0; i < records_->size(); ++i) {
    const GoldenRecord& r = (*records_)[i];
    const std::vector<int32_t> ids = tokenizer_->Encode(r.text);
    if (ids != r.ids) {
      ++failures;
      ADD_FAILURE() << "record " << i << " (" << source_ << "): ids differ for text\n"
                    << r.text.substr(0, 200);
    }
    if (r.has_no_special) {
      EXPECT_EQ(tokenizer_->Encode(r.text, /*parse_special=*/false), r.ids_no_special)
          << "record " << i << " with parse_special=false";
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_F(Qwen3GoldenTest, ConcurrentEncodesShareTheCacheSafely) {
  // Several threads encode the corpus at once from a fresh tokenizer (empty word cache).
  auto fresh = Tokenizer::FromFile(kTokenizerPath);
  ASSERT_TRUE(fresh.ok());
  const Tokenizer& tok = **fresh;
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t k = 0; k < records_->size(); ++k) {
        const GoldenRecord& r = (*records_)[(k + static_cast<size_t>(t) * 37) % records_->size()];
        if (tok.Encode(r.text) != r.ids) mismatches.fetch_add(1);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_F(Qwen3GoldenTest, DecodeRoundTripIsNfc) {
  const text::Normalizer nfc({text::NormalizationForm::kNfc});
  for (size_t i = 0; i < records_->size(); ++i) {
    const GoldenRecord& r = (*records_)[i];
    auto decoded = tokenizer_->Decode(r.ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_EQ(*decoded, r.decoded) << "record " << i;
    std::string expected;
    nfc.Normalize(r.text, &expected);
    EXPECT_EQ(*decoded, expected) << "record " << i;
  }
}

TEST_F(Qwen3GoldenTest, StreamingDetokenizerMatchesDecode) {
  for (size_t i = 0; i < records_->size(); ++i) {
    const GoldenRecord& r = (*records_)[i];
    Detokenizer detok(tokenizer_);
    std::string streamed;
    for (const int32_t id : r.ids) {
      auto piece = detok.Feed(id);
      ASSERT_TRUE(piece.ok()) << piece.status().ToString();
      streamed += *piece;
      ASSERT_LE(detok.pending_bytes(), 3u);
    }
    streamed += detok.Flush();
    EXPECT_EQ(streamed, r.decoded) << "record " << i;
  }
}

TEST_F(Qwen3GoldenTest, SkipSpecialDropsOnlySpecialTokens) {
  const std::vector<int32_t> ids =
      tokenizer_->Encode("<|im_start|>user\nhi<|im_end|><think>x</think>");
  ASSERT_EQ(ids.front(), 151644);
  auto text = tokenizer_->Decode(ids, /*skip_special=*/true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "user\nhi<think>x</think>");
}

TEST_F(Qwen3GoldenTest, ParseSpecialFalseEncodesMarkersAsText) {
  const std::vector<int32_t> ids = tokenizer_->Encode("<|im_start|>", /*parse_special=*/false);
  EXPECT_GT(ids.size(), 1u);
  for (const int32_t id : ids) EXPECT_LT(id, 151643);
  auto text = tokenizer_->Decode(ids);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<|im_start|>");
  // <think> is not special, so it still matches as an added token.
  EXPECT_EQ(tokenizer_->Encode("<think>", /*parse_special=*/false), std::vector<int32_t>{151667});
}

}  // namespace
}  // namespace spark::engine
