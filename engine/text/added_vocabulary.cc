#include "engine/text/added_vocabulary.h"

#include <algorithm>
#include <map>

#include "engine/text/normalizer.h"
#include "engine/text/utf8.h"

namespace spark::engine::text {
namespace {

// The last character of s, or 0 when s is empty.
char32_t LastChar(std::string_view s) {
  if (s.empty()) return 0;
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80 && s.size() - i < 4) --i;
  const Utf8Char c = DecodeUtf8(s.substr(i));
  return c.status == Utf8Status::kOk ? c.codepoint : 0;
}

char32_t FirstChar(std::string_view s) {
  if (s.empty()) return 0;
  const Utf8Char c = DecodeUtf8(s);
  return c.status == Utf8Status::kOk ? c.codepoint : 0;
}

// Start of the run of whitespace that ends s (s.size() when there is none).
size_t TrailingSpaceStart(std::string_view s) {
  size_t start = s.size();
  while (start > 0) {
    size_t i = start - 1;
    while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80 && start - i < 4) --i;
    const Utf8Char c = DecodeUtf8(s.substr(i, start - i));
    if (c.status != Utf8Status::kOk || !IsWhiteSpace(c.codepoint)) break;
    start = i;
  }
  return start;
}

// Length of the run of whitespace that starts s.
size_t LeadingSpaceLength(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const Utf8Char c = DecodeUtf8(s.substr(i));
    if (c.status != Utf8Status::kOk || !IsWhiteSpace(c.codepoint)) break;
    i += c.length;
  }
  return i;
}

}  // namespace

void AddedVocabulary::Trie::Build(const std::vector<std::pair<std::string, int32_t>>& patterns) {
  // Build with ordered maps, then flatten into contiguous edge lists.
  struct BuildNode {
    int32_t token = -1;
    std::map<uint8_t, int32_t> children;
  };
  std::vector<BuildNode> build;
  for (const auto& [content, token] : patterns) {
    if (content.empty()) continue;
    if (build.empty()) build.emplace_back();
    int32_t node = 0;
    for (char ch : content) {
      const auto b = static_cast<uint8_t>(ch);
      auto it = build[node].children.find(b);
      if (it == build[node].children.end()) {
        build.emplace_back();
        const auto child = static_cast<int32_t>(build.size() - 1);
        build[node].children.emplace(b, child);
        node = child;
      } else {
        node = it->second;
      }
    }
    // The first pattern with a given content wins, as with aho-corasick.
    if (build[node].token < 0) build[node].token = token;
    first_byte[static_cast<uint8_t>(content[0])] = true;
  }
  nodes.resize(build.size());
  for (size_t n = 0; n < build.size(); ++n) {
    nodes[n].token = build[n].token;
    nodes[n].first_edge = static_cast<uint32_t>(edges.size());
    nodes[n].edge_count = static_cast<uint32_t>(build[n].children.size());
    for (const auto& [b, child] : build[n].children) edges.push_back({b, child});
  }
}

int32_t AddedVocabulary::Trie::LongestAt(std::string_view text, size_t* length) const {
  int32_t best = -1;
  int32_t node = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto b = static_cast<uint8_t>(text[i]);
    const Node& n = nodes[node];
    const auto begin = edges.begin() + n.first_edge;
    const auto end = begin + n.edge_count;
    const auto it =
        std::lower_bound(begin, end, b, [](const Edge& e, uint8_t v) { return e.byte < v; });
    if (it == end || it->byte != b) break;
    node = it->child;
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      *length = i + 1;
    }
  }
  return best;
}

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer)
    : tokens_(std::move(tokens)) {
  // HF matches special tokens before plain ones when contents collide; order them that way.
  std::vector<std::pair<std::string, int32_t>> raw;
  std::vector<std::pair<std::string, int32_t>> normalized;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const AddedToken& t = tokens_[i];
      if (t.special != (pass == 0)) continue;
      if (!t.normalized) {
        raw.emplace_back(t.content, static_cast<int32_t>(i));
      } else {
        std::string content = t.content;
        if (normalizer != nullptr) normalizer->Normalize(t.content, &content);
        normalized.emplace_back(std::move(content), static_cast<int32_t>(i));
      }
    }
  }
  raw_trie_.Build(raw);
  normalized_trie_.Build(normalized);
}

void AddedVocabulary::Split(std::string_view text, bool normalized, bool parse_special,
                            std::vector<AddedSplit>* out) const {
  const Trie& trie = normalized ? normalized_trie_ : raw_trie_;
  size_t start_offset = 0;
  size_t pos = 0;
  if (!trie.nodes.empty()) {
    while (pos < text.size()) {
      if (!trie.first_byte[static_cast<uint8_t>(text[pos])]) {
        ++pos;
        continue;
      }
      size_t length = 0;
      const int32_t index = trie.LongestAt(text.substr(pos), &length);
      if (index < 0) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t stop = pos + length;
      pos = stop;  // the scan resumes after the raw match, as aho-corasick's find_iter
      const AddedToken& token = tokens_[index];
      if (token.special && !parse_special) continue;
      if (token.single_word) {
        const bool start_ok = start == 0 || !IsWordChar(LastChar(text.substr(0, start)));
        const bool stop_ok = stop == text.size() || !IsWordChar(FirstChar(text.substr(stop)));
        if (!start_ok || !stop_ok) continue;
      }
      if (token.lstrip) {
        start = std::max(TrailingSpaceStart(text.substr(0, start)), start_offset);
      }
      if (token.rstrip) stop += LeadingSpaceLength(text.substr(stop));
      if (start_offset < start) out->push_back({start_offset, start, -1});
      out->push_back({start, stop, token.id});
      start_offset = stop;
    }
  }
  if (start_offset < text.size()) out->push_back({start_offset, text.size(), -1});
}

}  // namespace spark::engine::text
