// Unit tests of Tokenizer on small hand-written tokenizer.json documents: merge formats and
// order, added tokens, normalization, byte-level round trips, post-processing and load errors.
#include "engine/text/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "engine/text/utf8.h"
#include "tests/engine/text/tiny_tokenizer.h"

namespace spark::engine {
namespace {

using ::spark::engine::testing::ByteIds;
using ::spark::engine::testing::TinyTokenizer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<Tokenizer> Load(const std::string& json) {
  auto tok = Tokenizer::FromJson(json);
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

std::string DecodeOrDie(const Tokenizer& tok, const std::vector<int32_t>& ids,
                        bool skip_special = false) {
  auto text = tok.Decode(ids, skip_special);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return text.ok() ? *text : "";
}

TEST(TokenizerTest, BothMergeFormatsGiveTheSameIds) {
  TinyTokenizer tiny;
  tiny.Merge("h", "e");
  tiny.Merge("l", "l");
  tiny.Merge("he", "ll");
  const int32_t hello = tiny.Merge("hell", "o");
  tiny.Merge(" ", "w");
  const int32_t o_r = tiny.Merge("o", "r");
  tiny.Merge(" w", "or");
  tiny.Merge(" wor", "l");
  const int32_t world = tiny.Merge(" worl", "d");
  for (const bool legacy : {false, true}) {
    auto tok = Load(tiny.Json(legacy));
    ASSERT_NE(tok, nullptr);
    EXPECT_THAT(tok->Encode("hello world"), ElementsAre(hello, world)) << "legacy=" << legacy;
    EXPECT_THAT(tok->Encode("hello"), ElementsAre(hello));
    // "worldhello" is one pre-token without the leading space: no " w..." merge applies.
    EXPECT_THAT(tok->Encode("worldhello"), ElementsAre('w', o_r, 'l', 'd', hello));
  }
}

TEST(TokenizerTest, LowestRankMergesFirst) {
  {
    TinyTokenizer tiny;
    const int32_t ab = tiny.Merge("a", "b");
    tiny.Merge("b", "c");
    auto tok = Load(tiny.Json());
    EXPECT_THAT(tok->Encode("abc"), ElementsAre(ab, 'c'));
  }
  {
    TinyTokenizer tiny;
    const int32_t bc = tiny.Merge("b", "c");
    tiny.Merge("a", "b");
    auto tok = Load(tiny.Json());
    EXPECT_THAT(tok->Encode("abc"), ElementsAre('a', bc));
  }
}

TEST(TokenizerTest, EqualRanksMergeLeftmostFirst) {
  TinyTokenizer tiny;
  const int32_t aa = tiny.Merge("a", "a");
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("aaa"), ElementsAre(aa, 'a'));
  EXPECT_THAT(tok->Encode("aaaa"), ElementsAre(aa, aa));
}

TEST(TokenizerTest, MergesContinueOnMergedSymbols) {
  TinyTokenizer tiny;
  tiny.Merge("a", "b");
  tiny.Merge("c", "d");
  const int32_t abcd = tiny.Merge("ab", "cd");
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("abcdab"), ElementsAre(abcd, tiny.Merge("a", "b")));
}

TEST(TokenizerTest, IgnoreMergesUsesWholeWordsFromTheVocab) {
  TinyTokenizer tiny;
  const int32_t xyz = tiny.Token("xyz");
  {
    auto tok = Load(tiny.Json());
    EXPECT_THAT(tok->Encode("xyz"), ElementsAre('x', 'y', 'z'));
  }
  tiny.SetModel("ignore_merges", true);
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("xyz"), ElementsAre(xyz));
  EXPECT_THAT(tok->Encode("xyz xy"), ElementsAre(xyz, ' ', 'x', 'y'));
}

TEST(TokenizerTest, SpecialTokensAreCutOutBeforePreTokenization) {
  TinyTokenizer tiny;
  const int32_t start = tiny.AddToken({.content = "<|im_start|>"});
  const int32_t hi = tiny.Merge("h", "i");
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("hi<|im_start|>hi"), ElementsAre(hi, start, hi));
  EXPECT_THAT(tok->Encode("<|im_start|><|im_start|>"), ElementsAre(start, start));
  EXPECT_THAT(tok->Encode("<|im_start"), ::testing::ContainerEq(ByteIds("<|im_start")));
  // Not parsed: the marker is ordinary text.
  EXPECT_EQ(tok->Encode("<|im_start|>", /*parse_special=*/false), ByteIds("<|im_start|>"));
  EXPECT_TRUE(tok->IsSpecial(start));
  EXPECT_EQ(tok->TokenToId("<|im_start|>"), start);
  EXPECT_EQ(tok->IdToToken(start), "<|im_start|>");
}

TEST(TokenizerTest, NonSpecialAddedTokensMatchEvenWithoutParseSpecial) {
  TinyTokenizer tiny;
  const int32_t think = tiny.AddToken({.content = "<think>", .special = false});
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("<think>", /*parse_special=*/false), ElementsAre(think));
  EXPECT_FALSE(tok->IsSpecial(think));
}

TEST(TokenizerTest, AddedTokensMatchLeftmostLongest) {
  TinyTokenizer tiny;
  const int32_t a = tiny.AddToken({.content = "<a>"});
  const int32_t ab = tiny.AddToken({.content = "<a><b>"});
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("<a><b><a>"), ElementsAre(ab, a));
  EXPECT_THAT(tok->Encode("x<a><b"), ElementsAre('x', a, '<', 'b'));
}

TEST(TokenizerTest, LstripAndRstripSwallowWhitespace) {
  TinyTokenizer tiny;
  const int32_t mask = tiny.AddToken({.content = "<mask>", .lstrip = true, .rstrip = true});
  const int32_t plain = tiny.AddToken({.content = "<p>"});
  const int32_t left = tiny.AddToken({.content = "<l>", .lstrip = true});
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("x \t <mask>\n y"), ElementsAre('x', mask, 'y'));
  EXPECT_THAT(tok->Encode("x <p> y"), ElementsAre('x', ' ', plain, ' ', 'y'));
  // U+3000 (ideographic space) is White_Space too.
  EXPECT_THAT(tok->Encode("x\u3000<l> y"), ElementsAre('x', left, ' ', 'y'));
}

TEST(TokenizerTest, SingleWordTokensDoNotMatchInsideWords) {
  TinyTokenizer tiny;
  const int32_t ony = tiny.AddToken({.content = "ony", .special = false, .single_word = true});
  auto tok = Load(tiny.Json());
  std::vector<int32_t> expected = {ony};
  for (int32_t id : ByteIds(" anthony ")) expected.push_back(id);
  expected.push_back(ony);
  EXPECT_EQ(tok->Encode("ony anthony ony"), expected);
  EXPECT_EQ(tok->Encode("onyx"), ByteIds("onyx"));
  EXPECT_THAT(tok->Encode("(ony)"), ElementsAre('(', ony, ')'));
}

TEST(TokenizerTest, NfcNormalizerComposesBeforeEncoding) {
  TinyTokenizer tiny;
  tiny.root()["normalizer"] = {{"type", "NFC"}};
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("e\u0301"), ElementsAre(0xC3, 0xA9));
  EXPECT_EQ(tok->Encode("e\u0301"), tok->Encode("\u00e9"));
  EXPECT_EQ(DecodeOrDie(*tok, tok->Encode("Cafe\u0301 \u212b")), "Caf\u00e9 \u00c5");
}

TEST(TokenizerTest, NormalizerSequenceAppliesEachForm) {
  TinyTokenizer tiny;
  tiny.root()["normalizer"] = {{"type", "Sequence"},
                               {"normalizers", {{{"type", "NFD"}}, {{"type", "NFKC"}}}}};
  auto tok = Load(tiny.Json());
  EXPECT_EQ(tok->Encode("\ufb01"), ByteIds("fi"));  // the ligature decomposes under NFKC
}

TEST(TokenizerTest, NormalizedAddedTokensMatchTheNormalizedText) {
  TinyTokenizer tiny;
  tiny.root()["normalizer"] = {{"type", "NFC"}};
  const int32_t e_acute =
      tiny.AddToken({.content = "e\u0301", .special = false, .normalized = true});
  const int32_t n_tilde = tiny.AddToken({.content = "\u00f1", .special = false});
  auto tok = Load(tiny.Json());
  // The token's content is normalized too ("é"), and so is the input.
  EXPECT_THAT(tok->Encode("e\u0301"), ElementsAre(e_acute));
  EXPECT_THAT(tok->Encode("\u00e9"), ElementsAre(e_acute));
  // normalized=false tokens match the raw text only.
  EXPECT_THAT(tok->Encode("\u00f1"), ElementsAre(n_tilde));
  EXPECT_THAT(tok->Encode("n\u0303"), ElementsAre(0xC3, 0xB1));
}

TEST(TokenizerTest, ByteLevelPrefixSpaceAppliesToEverySplit) {
  TinyTokenizer tiny;
  tiny.root()["pre_tokenizer"]["add_prefix_space"] = true;
  const int32_t sep = tiny.AddToken({.content = "<s>"});
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("hi"), ElementsAre(' ', 'h', 'i'));
  EXPECT_THAT(tok->Encode(" hi"), ElementsAre(' ', 'h', 'i'));
  EXPECT_THAT(tok->Encode("a<s>b"), ElementsAre(' ', 'a', sep, ' ', 'b'));
}

TEST(TokenizerTest, SplitPreTokenizerWithRegex) {
  TinyTokenizer tiny;
  tiny.root()["pre_tokenizer"] = {{"type", "Sequence"},
                                  {"pretokenizers",
                                   {{{"type", "Split"},
                                     {"pattern", {{"Regex", "\\p{N}"}}},
                                     {"behavior", "Isolated"},
                                     {"invert", false}},
                                    {{"type", "ByteLevel"},
                                     {"add_prefix_space", false},
                                     {"trim_offsets", false},
                                     {"use_regex", false}}}}};
  tiny.Merge("1", "2");
  const int32_t ab = tiny.Merge("a", "b");
  auto tok = Load(tiny.Json());
  // Digits are isolated one by one, so "12" never merges; "ab" does.
  EXPECT_THAT(tok->Encode("ab12"), ElementsAre(ab, '1', '2'));
}

TEST(TokenizerTest, RoundTripsArbitraryUnicode) {
  TinyTokenizer tiny;
  tiny.Merge("\xE4", "\xBD");
  tiny.Merge(" ", " ");
  tiny.Merge("t", "h");
  tiny.Merge("th", "e");
  auto tok = Load(tiny.Json());
  std::mt19937 rng(1234);
  const char32_t ranges[][2] = {{0x0, 0x7F},        {0x80, 0x7FF},       {0x800, 0xD7FF},
                                {0xE000, 0xFFFF},   {0x10000, 0x10FFFF}, {0x4E00, 0x9FFF},
                                {0x1F300, 0x1FAFF}, {0x20, 0x20}};
  for (int iter = 0; iter < 300; ++iter) {
    std::string s;
    const int n = static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) {
      const auto& r = ranges[rng() % std::size(ranges)];
      text::AppendUtf8(r[0] + rng() % (r[1] - r[0] + 1), &s);
    }
    EXPECT_EQ(DecodeOrDie(*tok, tok->Encode(s)), s);
  }
}

TEST(TokenizerTest, InvalidUtf8InputIsRepairedBeforeEncoding) {
  TinyTokenizer tiny;
  auto tok = Load(tiny.Json());
  const std::string bad =
      "\xFF\xFE"
      "a\xE4\xBD";
  EXPECT_EQ(DecodeOrDie(*tok, tok->Encode(bad)), "\uFFFD\uFFFDa\uFFFD");
}

TEST(TokenizerTest, DecodeReplacesInvalidBytesLikeFromUtf8Lossy) {
  TinyTokenizer tiny;
  auto tok = Load(tiny.Json());
  EXPECT_EQ(DecodeOrDie(*tok, {0xE4, 0xBD, 0xA0}), "\u4f60");
  EXPECT_EQ(DecodeOrDie(*tok, {0xE4, 0xBD}), "\uFFFD");
  EXPECT_EQ(DecodeOrDie(*tok, {0xFF, 'a'}), "\uFFFDa");
  EXPECT_EQ(DecodeOrDie(*tok, {0xF0, 0x9F, 'a'}), "\uFFFDa");
  EXPECT_EQ(DecodeOrDie(*tok, {0xED, 0xA0, 0x80}), "\uFFFD\uFFFD\uFFFD");  // a surrogate
  EXPECT_EQ(DecodeOrDie(*tok, {0xC0, 0xAF}), "\uFFFD\uFFFD");              // overlong '/'
  EXPECT_EQ(DecodeOrDie(*tok, {}), "");
}

TEST(TokenizerTest, DecodeSkipsSpecialTokensOnRequest) {
  TinyTokenizer tiny;
  const int32_t eos = tiny.AddToken({.content = "</s>"});
  const int32_t tool = tiny.AddToken({.content = "<tool>", .special = false});
  auto tok = Load(tiny.Json());
  const std::vector<int32_t> ids = {'h', 'i', tool, eos};
  EXPECT_EQ(DecodeOrDie(*tok, ids), "hi<tool></s>");
  EXPECT_EQ(DecodeOrDie(*tok, ids, /*skip_special=*/true), "hi<tool>");
}

TEST(TokenizerTest, DecodeRejectsUnknownIds) {
  TinyTokenizer tiny;
  auto tok = Load(tiny.Json());
  const std::vector<int32_t> ids = {'a', 999999};
  auto text = tok->Decode(ids);
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("999999"));
  EXPECT_FALSE(tok->Decode(std::vector<int32_t>{-1}).ok());
  EXPECT_EQ(tok->IdToToken(999999), "");
}

TEST(TokenizerTest, AddedTokensOutsideTheByteAlphabetDecodeVerbatim) {
  TinyTokenizer tiny;
  const int32_t phrase = tiny.AddToken({.content = "hello world", .special = false});
  const int32_t cjk = tiny.AddToken({.content = "\u4f60\u597d", .special = false});
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("hello world!"), ElementsAre(phrase, '!'));
  EXPECT_EQ(DecodeOrDie(*tok, {phrase, cjk}), "hello world\u4f60\u597d");
}

TEST(TokenizerTest, WithoutDecoderTokensAreJoinedWithSpaces) {
  TinyTokenizer tiny;
  tiny.root()["decoder"] = nullptr;
  const int32_t hi = tiny.Merge("h", "i");
  auto tok = Load(tiny.Json());
  EXPECT_TRUE(tok->decode_joins_with_space());
  EXPECT_EQ(DecodeOrDie(*tok, {hi, 'x', 0x20}), "hi x \u0120");
}

TEST(TokenizerTest, TemplateProcessingAddsSpecialTokensOnRequest) {
  TinyTokenizer tiny;
  const int32_t bos = tiny.AddToken({.content = "<s>"});
  const int32_t eos = tiny.AddToken({.content = "</s>"});
  tiny.root()["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       {{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}},
        {{"type", "TemplateProcessing"},
         {"single",
          {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
           {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
           {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
         {"pair", nlohmann::json::array()},
         {"special_tokens",
          {{"<s>", {{"id", "<s>"}, {"ids", {bos}}, {"tokens", {"<s>"}}}},
           {"</s>", {{"id", "</s>"}, {"ids", {eos}}, {"tokens", {"</s>"}}}}}}}}}};
  auto tok = Load(tiny.Json());
  EXPECT_THAT(tok->Encode("a"), ElementsAre('a'));
  EXPECT_THAT(tok->EncodeWithOptions("a", {.add_special_tokens = true}),
              ElementsAre(bos, 'a', eos));
  EXPECT_THAT(tok->EncodeWithOptions("", {.add_special_tokens = true}), ElementsAre(bos, eos));
}

TEST(TokenizerTest, ByteFallbackAndUnknownTokens) {
  const std::string base = R"({"model": {"type": "BPE", "merges": [],
      "vocab": {"a": 0, "<unk>": 1, "<0xC3>": 2, "<0xA9>": 3}, )";
  {
    auto tok = Load(base + R"("byte_fallback": true}})");
    EXPECT_THAT(tok->Encode("a\u00e9a"), ElementsAre(0, 2, 3, 0));
    // No <0x..> token for 'x' and no unk_token: dropped, as HF does.
    EXPECT_THAT(tok->Encode("axa"), ElementsAre(0, 0));
  }
  {
    auto tok = Load(base + R"("unk_token": "<unk>", "fuse_unk": true}})");
    EXPECT_THAT(tok->Encode("axyza"), ElementsAre(0, 1, 0));
  }
  {
    auto tok = Load(base + R"("unk_token": "<unk>", "fuse_unk": false}})");
    EXPECT_THAT(tok->Encode("axyza"), ElementsAre(0, 1, 1, 1, 0));
  }
}

TEST(TokenizerTest, ContinuingSubwordPrefixAndSuffix) {
  auto tok = Load(R"({"model": {"type": "BPE", "continuing_subword_prefix": "##",
      "end_of_word_suffix": "</w>",
      "vocab": {"a": 0, "##b": 1, "##c</w>": 2, "ab": 3, "abc</w>": 4, "c</w>": 5},
      "merges": [["a", "##b"], ["ab", "##c</w>"]]}})");
  ASSERT_NE(tok, nullptr);
  // "abc": a ##b ##c</w> -> ab ##c</w> -> abc</w>; "##" is stripped from the right part.
  EXPECT_THAT(tok->Encode("abc"), ElementsAre(4));
  EXPECT_THAT(tok->Encode("c"), ElementsAre(5));
}

TEST(TokenizerTest, VocabSizeCoversAddedTokens) {
  TinyTokenizer tiny;
  tiny.Merge("a", "b");
  auto plain = Load(tiny.Json());
  EXPECT_EQ(plain->vocab_size(), 257);
  tiny.AddToken({.content = "<x>"});
  auto with_added = Load(tiny.Json());
  EXPECT_EQ(with_added->vocab_size(), 1001);
}

// --- load errors

Status LoadError(const std::string& json) {
  auto tok = Tokenizer::FromJson(json);
  EXPECT_FALSE(tok.ok());
  return tok.ok() ? Status::Ok() : tok.status();
}

TEST(TokenizerLoadTest, MalformedJson) {
  const Status s = LoadError("{\"model\": ");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("not valid JSON"));
  EXPECT_THAT(LoadError("[1, 2]").message(), HasSubstr("must be a JSON object"));
  EXPECT_THAT(LoadError("{}").message(), HasSubstr("model is missing"));
}

TEST(TokenizerLoadTest, UnsupportedComponentsAreNamed) {
  TinyTokenizer tiny;
  tiny.root()["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AA=="}};
  Status s = LoadError(tiny.Json());
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_EQ(s.message(), "tokenizer.json: normalizer type 'Precompiled' is not supported yet");

  TinyTokenizer pre;
  pre.root()["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "_"}};
  EXPECT_EQ(LoadError(pre.Json()).message(),
            "tokenizer.json: pre_tokenizer type 'Metaspace' is not supported yet");

  TinyTokenizer dec;
  dec.root()["decoder"] = {{"type", "WordPiece"}};
  EXPECT_EQ(LoadError(dec.Json()).message(),
            "tokenizer.json: decoder type 'WordPiece' is not supported yet");

  TinyTokenizer post;
  post.root()["post_processor"] = {{"type", "Fancy"}};
  EXPECT_EQ(LoadError(post.Json()).message(),
            "tokenizer.json: post_processor type 'Fancy' is not supported yet");

  s = LoadError(R"({"model": {"type": "WordPiece", "vocab": {}}})");
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("model type 'WordPiece'"));

  TinyTokenizer dropout;
  dropout.SetModel("dropout", 0.1);
  EXPECT_THAT(LoadError(dropout.Json()).message(), HasSubstr("dropout"));
}

TEST(TokenizerLoadTest, InconsistentModelsAreRejected) {
  Status s = LoadError(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("not in the vocab"));
  s = LoadError(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})");
  EXPECT_THAT(s.message(), HasSubstr("produces 'ab'"));
  s = LoadError(R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})");
  EXPECT_THAT(s.message(), HasSubstr("non-integer id"));
  s = LoadError(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}})");
  EXPECT_THAT(s.message(), HasSubstr("two tokens separated by one space"));
  s = LoadError(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [],
                  "unk_token": "<unk>"}})");
  EXPECT_THAT(s.message(), HasSubstr("unk_token '<unk>' is not in the vocab"));
  s = LoadError(R"({"model": {"type": "BPE", "vocab": {"a": 0}}})");
  EXPECT_THAT(s.message(), HasSubstr("model.merges must be an array"));
}

TEST(TokenizerLoadTest, BadRegexAndAddedTokens) {
  TinyTokenizer tiny;
  tiny.root()["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  Status s = LoadError(tiny.Json());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("pre_tokenizer.pattern"));
  EXPECT_THAT(s.message(), HasSubstr("does not compile"));

  TinyTokenizer behavior;
  behavior.root()["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", "Sideways"}};
  EXPECT_THAT(LoadError(behavior.Json()).message(), HasSubstr("'Sideways' is unknown"));

  TinyTokenizer added;
  added.root()["added_tokens"] = {{{"id", -3}, {"content", "<x>"}}};
  EXPECT_THAT(LoadError(added.Json()).message(), HasSubstr("added_tokens[0].id"));
}

TEST(TokenizerLoadTest, MissingFileIsNotFound) {
  auto tok = Tokenizer::FromFile("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(tok.status().message(), HasSubstr("/nonexistent/dir/tokenizer.json"));
}

}  // namespace
}  // namespace spark::engine
