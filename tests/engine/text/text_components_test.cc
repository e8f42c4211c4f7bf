// Unit tests of the tokenizer's building blocks: UTF-8 helpers, the byte-level alphabet, the
// PCRE2 regex wrapper and the pre-tokenizer's split behaviours.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <utf8proc.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "engine/text/byte_level.h"
#include "engine/text/normalizer.h"
#include "engine/text/pre_tokenizer.h"
#include "engine/text/regex.h"
#include "engine/text/utf8.h"

namespace spark::engine::text {
namespace {

using ::testing::ElementsAre;

std::string Lossy(std::string_view s) {
  std::string out;
  AppendUtf8Lossy(s, &out);
  return out;
}

TEST(Utf8Test, DecodesWellFormedCharacters) {
  EXPECT_EQ(DecodeUtf8("a").codepoint, U'a');
  const Utf8Char c = DecodeUtf8("\u4f60x");
  EXPECT_EQ(c.status, Utf8Status::kOk);
  EXPECT_EQ(c.length, 3u);
  EXPECT_EQ(c.codepoint, U'\u4f60');
  EXPECT_EQ(DecodeUtf8("\U0001F600").codepoint, U'\U0001F600');
  EXPECT_EQ(DecodeUtf8("\xF4\x8F\xBF\xBF").codepoint, 0x10FFFFu);
}

TEST(Utf8Test, ClassifiesIllFormedAndCutShortSequences) {
  EXPECT_EQ(DecodeUtf8("\xE4\xBD").status, Utf8Status::kIncomplete);
  EXPECT_EQ(DecodeUtf8("\xF0\x9F\x98").status, Utf8Status::kIncomplete);
  const Utf8Char bad = DecodeUtf8("\xE4\xBDx");
  EXPECT_EQ(bad.status, Utf8Status::kInvalid);
  EXPECT_EQ(bad.length, 2u);  // maximal subpart E4 BD
  EXPECT_EQ(DecodeUtf8("\x80").status, Utf8Status::kInvalid);
  EXPECT_EQ(DecodeUtf8("\xC0\xAF").length, 1u);          // C0 never starts a character
  EXPECT_EQ(DecodeUtf8("\xED\xA0\x80").length, 1u);      // surrogates are ill-formed
  EXPECT_EQ(DecodeUtf8("\xF4\x90\x80\x80").length, 1u);  // above U+10FFFF
  EXPECT_EQ(DecodeUtf8("\xE0\x80\x80").length, 1u);      // overlong
}

TEST(Utf8Test, LossyRepairMatchesPythonReplace) {
  // Expected strings are Python's bytes.decode("utf-8", errors="replace").
  EXPECT_EQ(Lossy("ok"), "ok");
  EXPECT_EQ(Lossy("\xE4\xBD"), "\uFFFD");
  EXPECT_EQ(Lossy("a\xE4\xBD"
                  "b"),
            "a\uFFFD"
            "b");
  EXPECT_EQ(Lossy("\xF0\x9F\x98"), "\uFFFD");
  EXPECT_EQ(Lossy("\xF0\x9F\x98\x80\x80"), "\U0001F600\uFFFD");
  EXPECT_EQ(Lossy("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(Lossy("\xFF\xFE"), "\uFFFD\uFFFD");
  EXPECT_EQ(Lossy("\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41"),
            "\uFFFD\uFFFD\uFFFD\uFFFD"
            "A");
  EXPECT_TRUE(IsValidUtf8("\u00e9\U0001F600"));
  EXPECT_FALSE(IsValidUtf8("\xE4\xBD"));
}

TEST(Utf8Test, CompletePrefixHoldsBackACutShortTail) {
  std::string out;
  EXPECT_EQ(AppendUtf8Complete("ab\xE4\xBD", &out), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  EXPECT_EQ(AppendUtf8Complete("\xFF"
                               "a\xF0\x9F",
                               &out),
            2u);
  EXPECT_EQ(out,
            "\uFFFD"
            "a");
  out.clear();
  EXPECT_EQ(AppendUtf8Complete("\xE4\xBD\xA0", &out), 3u);
  EXPECT_EQ(out, "\u4f60");
}

TEST(Utf8Test, UnicodeProperties) {
  for (char32_t cp : {U' ', U'\t', U'\n', U'\u0085', U'\u00a0', U'\u2003', U'\u3000'}) {
    EXPECT_TRUE(IsWhiteSpace(cp)) << static_cast<uint32_t>(cp);
  }
  for (char32_t cp : {U'a', U'\u180e', U'\u200b', U'\ufeff'}) {
    EXPECT_FALSE(IsWhiteSpace(cp)) << static_cast<uint32_t>(cp);
  }
  for (char32_t cp : {U'a', U'Z', U'5', U'_', U'\u00e9', U'\u4e2d', U'\u0301', U'\u0663'}) {
    EXPECT_TRUE(IsWordChar(cp)) << static_cast<uint32_t>(cp);
  }
  for (char32_t cp : {U'-', U' ', U',', U'\U0001F600', U'\u00bd'}) {
    EXPECT_FALSE(IsWordChar(cp)) << static_cast<uint32_t>(cp);
  }
}

TEST(ByteLevelTest, Gpt2Alphabet) {
  EXPECT_EQ(ByteToCodepoint(' '), 0x120u);   // 'Ġ'
  EXPECT_EQ(ByteToCodepoint('\n'), 0x10Au);  // 'Ċ'
  EXPECT_EQ(ByteToCodepoint('!'), static_cast<char32_t>('!'));
  EXPECT_EQ(ByteToCodepoint(0x00), 0x100u);
  EXPECT_EQ(ByteToCodepoint(0xAD), 0x143u);  // soft hyphen, the last remapped byte
  EXPECT_EQ(ByteToCodepoint(0xE9), 0xE9u);
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(CodepointToByte(ByteToCodepoint(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(CodepointToByte(U'\u4e2d'), -1);
  EXPECT_EQ(CodepointToByte(0x20), -1);  // space itself is not in the alphabet
}

TEST(ByteLevelTest, RoundTripsEveryByte) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string mapped;
  AppendByteLevel(all, &mapped);
  EXPECT_TRUE(IsValidUtf8(mapped));
  std::string back;
  ASSERT_TRUE(AppendBytesFromByteLevel(mapped, &back));
  EXPECT_EQ(back, all);
  std::string out = "keep";
  EXPECT_FALSE(AppendBytesFromByteLevel("a b", &out));
  EXPECT_EQ(out, "keep");
}

std::string ReferenceNfc(const std::string& s) {
  utf8proc_uint8_t* out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()));
  std::string result(reinterpret_cast<const char*>(out));
  std::free(out);
  return result;
}

TEST(NormalizerTest, NfcMatchesUtf8procOnRandomText) {
  // Characters that exercise composition, reordering and singletons: Latin letters with
  // combining marks, Hangul L/V/T jamo and syllables, Indic vowel signs, CJK and emoji.
  const char32_t pool[] = {
      U'a',      U'e',      U'A',      U'o',      U' ',      U'\u00e9', U'\u00c0',     U'\u0301',
      U'\u0300', U'\u0323', U'\u0302', U'\u0308', U'\u0327', U'\u031b', U'\u212b',     U'\u2126',
      U'\u1100', U'\u1161', U'\u11a8', U'\uac00', U'\ud55c', U'\u0b47', U'\u0b3e',     U'\u0b57',
      U'\u0dd9', U'\u0dcf', U'\u0dca', U'\u3099', U'\u304b', U'\u4e2d', U'\U0001F600', U'\u0958',
      U'\u0915', U'\u093c', U'\u1e9b', U'\u0344', U'\u0f73', U'\u05b8'};
  std::mt19937 rng(7);
  const Normalizer nfc({NormalizationForm::kNfc});
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s;
    const int n = static_cast<int>(rng() % 16);
    for (int i = 0; i < n; ++i) AppendUtf8(pool[rng() % std::size(pool)], &s);
    std::string got;
    nfc.Normalize(s, &got);
    ASSERT_EQ(got, ReferenceNfc(s)) << "iteration " << iter;
  }
}

TEST(NormalizerTest, FormsAndSequences) {
  std::string out;
  Normalizer({NormalizationForm::kNfd}).Normalize("\u00e9", &out);
  EXPECT_EQ(out, "e\u0301");
  Normalizer({NormalizationForm::kNfkc}).Normalize("\ufb01\u2460", &out);
  EXPECT_EQ(out, "fi1");
  Normalizer({NormalizationForm::kNfkd}).Normalize("\u00bd", &out);
  EXPECT_EQ(out, "1\u20442");
  Normalizer({NormalizationForm::kNfd, NormalizationForm::kNfc}).Normalize("A\u030a", &out);
  EXPECT_EQ(out, "\u00c5");
  Normalizer({}).Normalize("e\u0301", &out);
  EXPECT_EQ(out, "e\u0301");
}

std::vector<std::string> FindAll(const Regex& re, std::string_view text) {
  std::vector<RegexMatch> matches;
  re.FindAll(text, &matches);
  std::vector<std::string> out;
  for (const RegexMatch& m : matches) out.emplace_back(text.substr(m.begin, m.end - m.begin));
  return out;
}

TEST(RegexTest, TranslatesWhitespaceClasses) {
  EXPECT_EQ(TranslateOnigurumaPattern(R"(\s+(?!\S)|[^\s\p{L}])"),
            R"(\p{White_Space}+(?!\P{White_Space})|[^\p{White_Space}\p{L}])");
  EXPECT_EQ(TranslateOnigurumaPattern(R"(\\s\d)"), R"(\\s\d)");
}

TEST(RegexTest, Gpt2PatternSplitsWords) {
  auto re = Regex::Compile(kGpt2Pattern);
  ASSERT_TRUE(re.ok()) << re.status().ToString();
  EXPECT_THAT(FindAll(*re, "Hello world's 123  end!!\n"),
              ElementsAre("Hello", " world", "'s", " 123", " ", " end", "!!", "\n"));
}

TEST(RegexTest, CaseInsensitiveGroupAndUnicodeClasses) {
  auto re = Regex::Compile(R"((?i:'s|'ll)|\p{L}+|\p{N})");
  ASSERT_TRUE(re.ok());
  EXPECT_THAT(FindAll(*re, "IT'S we'LL \u4f60\u597d42"),
              ElementsAre("IT", "'S", "we", "'LL", "\u4f60\u597d", "4", "2"));
}

TEST(RegexTest, WhitespaceIsUnicodeWhiteSpace) {
  // Oniguruma's \s is White_Space; PCRE2's own \s would also match U+180E.
  auto re = Regex::Compile(R"(\s+)");
  ASSERT_TRUE(re.ok());
  EXPECT_THAT(FindAll(*re, "a\u180eb\u00a0c"), ElementsAre("\u00a0"));
  // Neither is U+FEFF (ECMAScript's \s would match it).
  EXPECT_TRUE(FindAll(*re, "a\ufeffb").empty());
}

TEST(RegexTest, EmptyMatchesAdvanceLikeOniguruma) {
  auto re = Regex::Compile("x*");
  ASSERT_TRUE(re.ok());
  std::vector<RegexMatch> matches;
  re->FindAll("axx\u00e9", &matches);
  ASSERT_EQ(matches.size(), 3u);
  EXPECT_EQ(matches[0].begin, 0u);
  EXPECT_EQ(matches[0].end, 0u);
  EXPECT_EQ(matches[1].begin, 1u);
  EXPECT_EQ(matches[1].end, 3u);
  EXPECT_EQ(matches[2].begin, 5u);  // after the two-byte 'é'
  EXPECT_EQ(matches[2].end, 5u);
}

TEST(RegexTest, LongWhitespaceRunsMatchWhole) {
  auto re = Regex::Compile(R"(\s*[\r\n]+|\s+(?!\S)|\s+)");
  ASSERT_TRUE(re.ok());
  const std::string spaces(1 << 20, ' ');
  std::vector<RegexMatch> matches;
  re->FindAll(spaces + "x", &matches);
  ASSERT_EQ(matches.size(), 2u);  // all but the last space, then the last one
  EXPECT_EQ(matches[0].end, spaces.size() - 1);
  EXPECT_EQ(matches[1].end, spaces.size());
}

TEST(RegexTest, CompileErrorNamesThePattern) {
  auto re = Regex::Compile("a(b");
  ASSERT_FALSE(re.ok());
  EXPECT_EQ(re.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(re.status().message(), ::testing::HasSubstr("'a(b'"));
}

std::vector<std::string> Split(SplitBehavior behavior, std::string_view text, bool invert = false) {
  auto re = Regex::Compile("-");
  EXPECT_TRUE(re.ok());
  std::vector<PreTokenizerStep> steps;
  steps.push_back(SplitStep{std::move(re).value(), behavior, invert});
  const PreTokenizer pre(std::move(steps), nullptr);
  Pieces pieces;
  pre.PreTokenize(text, &pieces);
  std::vector<std::string> out;
  for (size_t i = 0; i < pieces.spans.size(); ++i) out.emplace_back(pieces.piece(i));
  return out;
}

TEST(PreTokenizerTest, SplitBehaviorsMatchHuggingFaceDocs) {
  const std::string_view s = "the-final--countdown";
  EXPECT_THAT(Split(SplitBehavior::kRemoved, s), ElementsAre("the", "final", "countdown"));
  EXPECT_THAT(Split(SplitBehavior::kIsolated, s),
              ElementsAre("the", "-", "final", "-", "-", "countdown"));
  EXPECT_THAT(Split(SplitBehavior::kMergedWithPrevious, s),
              ElementsAre("the-", "final-", "-", "countdown"));
  EXPECT_THAT(Split(SplitBehavior::kMergedWithNext, s),
              ElementsAre("the", "-final", "-", "-countdown"));
  EXPECT_THAT(Split(SplitBehavior::kContiguous, s),
              ElementsAre("the", "-", "final", "--", "countdown"));
  EXPECT_THAT(Split(SplitBehavior::kRemoved, s, /*invert=*/true), ElementsAre("-", "-", "-"));
  EXPECT_THAT(Split(SplitBehavior::kIsolated, "-a-"), ElementsAre("-", "a", "-"));
  EXPECT_TRUE(Split(SplitBehavior::kIsolated, "").empty());
}

TEST(PreTokenizerTest, ByteLevelMapsBytesAfterSplitting) {
  auto gpt2 = Regex::Compile(kGpt2Pattern);
  ASSERT_TRUE(gpt2.ok());
  std::vector<PreTokenizerStep> steps;
  steps.push_back(ByteLevelStep{.add_prefix_space = true, .use_regex = true});
  const PreTokenizer pre(std::move(steps), std::make_unique<Regex>(std::move(gpt2).value()));
  Pieces pieces;
  pre.PreTokenize("Hi you\n", &pieces);
  ASSERT_EQ(pieces.spans.size(), 3u);
  EXPECT_EQ(pieces.piece(0), "\u0120Hi");
  EXPECT_EQ(pieces.piece(1), "\u0120you");
  EXPECT_EQ(pieces.piece(2), "\u010a");
  EXPECT_TRUE(pre.byte_level());
}

}  // namespace
}  // namespace spark::engine::text
