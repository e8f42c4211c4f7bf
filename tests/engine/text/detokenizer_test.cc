// Streaming tests of Detokenizer: multi-byte characters split across tokens are held back until
// complete, invalid bytes become U+FFFD, and the stream always equals Tokenizer::Decode.
#include "engine/text/detokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "tests/engine/text/tiny_tokenizer.h"

namespace spark::engine {
namespace {

using ::spark::engine::testing::ByteIds;
using ::spark::engine::testing::TinyTokenizer;
using ::testing::ElementsAre;

std::unique_ptr<Tokenizer> Load(const TinyTokenizer& tiny) {
  auto tok = Tokenizer::FromJson(tiny.Json());
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return std::move(tok).value();
}

std::vector<std::string> FeedAll(Detokenizer* detok, const std::vector<int32_t>& ids) {
  std::vector<std::string> out;
  for (const int32_t id : ids) {
    auto piece = detok->Feed(id);
    EXPECT_TRUE(piece.ok()) << piece.status().ToString();
    out.push_back(piece.ok() ? *piece : "<error>");
  }
  return out;
}

TEST(DetokenizerTest, HoldsBackCharactersUntilTheirLastByte) {
  TinyTokenizer tiny;
  auto tok = Load(tiny);
  Detokenizer detok(tok.get());
  // "a你😀" one byte per token.
  EXPECT_THAT(FeedAll(&detok, ByteIds("a\u4f60\U0001F600")),
              ElementsAre("a", "", "", "\u4f60", "", "", "", "\U0001F600"));
  EXPECT_EQ(detok.pending_bytes(), 0u);
  EXPECT_EQ(detok.Flush(), "");
}

TEST(DetokenizerTest, TokensThatSplitACharacterInTheMiddle) {
  TinyTokenizer tiny;
  tiny.Merge("a", "\xE4");
  const int32_t head = tiny.Merge("a\xE4", "\xBD");  // "a" + the first two bytes of 你
  const int32_t tail = tiny.Merge("\xA0", "b");      // its last byte + "b"
  auto tok = Load(tiny);
  Detokenizer detok(tok.get());
  EXPECT_THAT(FeedAll(&detok, {head, tail}), ElementsAre("a",
                                                         "\u4f60"
                                                         "b"));
  EXPECT_EQ(*tok->Decode(std::vector<int32_t>{head, tail}),
            "a\u4f60"
            "b");
}

TEST(DetokenizerTest, InvalidBytesBecomeReplacementCharacters) {
  TinyTokenizer tiny;
  auto tok = Load(tiny);
  Detokenizer detok(tok.get());
  EXPECT_THAT(FeedAll(&detok, {0xFF}), ElementsAre("\uFFFD"));
  // E4 BD is a valid prefix until 'a' arrives; then the prefix is one U+FFFD.
  EXPECT_THAT(FeedAll(&detok, {0xE4, 0xBD, 'a'}), ElementsAre("", "",
                                                              "\uFFFD"
                                                              "a"));
  EXPECT_EQ(detok.pending_bytes(), 0u);
}

TEST(DetokenizerTest, FlushReplacesACutShortTail) {
  TinyTokenizer tiny;
  auto tok = Load(tiny);
  Detokenizer detok(tok.get());
  EXPECT_THAT(FeedAll(&detok, {'x', 0xF0, 0x9F, 0x98}), ElementsAre("x", "", "", ""));
  EXPECT_EQ(detok.pending_bytes(), 3u);
  EXPECT_EQ(detok.Flush(), "\uFFFD");
  EXPECT_EQ(detok.pending_bytes(), 0u);
  // After Flush the detokenizer starts a new stream.
  EXPECT_THAT(FeedAll(&detok, {'y'}), ElementsAre("y"));
}

TEST(DetokenizerTest, ResetDropsHeldBytes) {
  TinyTokenizer tiny;
  auto tok = Load(tiny);
  Detokenizer detok(tok.get());
  FeedAll(&detok, {0xE4, 0xBD});
  detok.Reset();
  EXPECT_EQ(detok.pending_bytes(), 0u);
  EXPECT_THAT(FeedAll(&detok, {0xA0, 'z'}), ElementsAre("\uFFFD", "z"));
}

TEST(DetokenizerTest, SkipSpecialAndUnknownIds) {
  TinyTokenizer tiny;
  const int32_t eos = tiny.AddToken({.content = "<|im_end|>"});
  auto tok = Load(tiny);
  Detokenizer keep(tok.get());
  EXPECT_THAT(FeedAll(&keep, {'a', eos}), ElementsAre("a", "<|im_end|>"));
  Detokenizer skip(tok.get(), /*skip_special=*/true);
  EXPECT_THAT(FeedAll(&skip, {0xE4, eos, 0xBD, 0xA0}), ElementsAre("", "", "", "\u4f60"));
  // An unknown id fails and leaves the held-back bytes alone.
  Detokenizer detok(tok.get());
  FeedAll(&detok, {0xE4});
  auto bad = detok.Feed(777777);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(detok.pending_bytes(), 1u);
  EXPECT_THAT(FeedAll(&detok, {0xBD, 0xA0}), ElementsAre("", "\u4f60"));
}

TEST(DetokenizerTest, StreamEqualsDecodeForRandomByteSequences) {
  TinyTokenizer tiny;
  const int32_t special = tiny.AddToken({.content = "<s>"});
  auto tok = Load(tiny);
  std::mt19937 rng(42);
  // Bytes biased towards UTF-8 lead and continuation bytes so that characters form often.
  const int32_t pool[] = {'a',  ' ',  0xC3, 0xA9, 0xE4, 0xBD, 0xA0, 0xF0,
                          0x9F, 0x98, 0x80, 0xFF, 0xED, 0xC0, 0x8F, special};
  for (int iter = 0; iter < 2000; ++iter) {
    std::vector<int32_t> ids(rng() % 12);
    for (int32_t& id : ids) id = pool[rng() % std::size(pool)];
    for (const bool skip : {false, true}) {
      Detokenizer detok(tok.get(), skip);
      std::string streamed;
      for (const std::string& piece : FeedAll(&detok, ids)) streamed += piece;
      streamed += detok.Flush();
      auto decoded = tok->Decode(ids, skip);
      ASSERT_TRUE(decoded.ok());
      ASSERT_EQ(streamed, *decoded) << "iteration " << iter;
    }
  }
}

TEST(DetokenizerTest, SpaceJoiningDecoderStreamsSeparators) {
  TinyTokenizer tiny;
  tiny.root()["decoder"] = nullptr;
  const int32_t hi = tiny.Merge("h", "i");
  auto tok = Load(tiny);
  Detokenizer detok(tok.get());
  EXPECT_THAT(FeedAll(&detok, {hi, 'x', hi}), ElementsAre("hi", " x", " hi"));
  EXPECT_EQ(*tok->Decode(std::vector<int32_t>{hi, 'x', hi}), "hi x hi");
}

}  // namespace
}  // namespace spark::engine
