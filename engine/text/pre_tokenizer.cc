#include "engine/text/pre_tokenizer.h"

#include <utility>

#include "common/check.h"
#include "engine/text/byte_level.h"

namespace spark::engine::text {
namespace {

struct Segment {
  size_t begin;
  size_t end;
  bool is_delimiter;
};

// The segments of [begin, end) that the matches cut out, covering it whole, in order.
void Segments(const std::vector<RegexMatch>& matches, size_t begin, size_t end, bool invert,
              std::vector<Segment>* out) {
  out->clear();
  if (begin == end) {
    out->push_back({begin, end, false});
    return;
  }
  size_t prev = begin;
  for (const RegexMatch& m : matches) {
    const size_t b = begin + m.begin;
    const size_t e = begin + m.end;
    if (prev != b) out->push_back({prev, b, invert});
    out->push_back({b, e, !invert});
    prev = e;
  }
  if (prev != end) out->push_back({prev, end, invert});
}

// Applies the delimiter behaviour: the kept [begin, end) spans, in order.
void Behave(SplitBehavior behavior, const std::vector<Segment>& segments,
            std::vector<Pieces::Span>* out) {
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Segment& s : segments) out->push_back({s.begin, s.end});
      return;
    case SplitBehavior::kRemoved:
      for (const Segment& s : segments) {
        if (!s.is_delimiter) out->push_back({s.begin, s.end});
      }
      return;
    case SplitBehavior::kContiguous: {
      const size_t first = out->size();
      bool previous = false;
      for (const Segment& s : segments) {
        if (s.is_delimiter == previous && out->size() > first) {
          out->back().end = s.end;
        } else {
          out->push_back({s.begin, s.end});
        }
        previous = s.is_delimiter;
      }
      return;
    }
    case SplitBehavior::kMergedWithPrevious: {
      const size_t first = out->size();
      bool previous = false;
      for (const Segment& s : segments) {
        if (s.is_delimiter && !previous && out->size() > first) {
          out->back().end = s.end;
        } else {
          out->push_back({s.begin, s.end});
        }
        previous = s.is_delimiter;
      }
      return;
    }
    case SplitBehavior::kMergedWithNext: {
      // Scan from the end: a delimiter joins the piece that follows it.
      std::vector<Pieces::Span> reversed;
      bool previous = false;
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->is_delimiter && !previous && !reversed.empty()) {
          reversed.back().begin = it->begin;
        } else {
          reversed.push_back({it->begin, it->end});
        }
        previous = it->is_delimiter;
      }
      out->insert(out->end(), reversed.rbegin(), reversed.rend());
      return;
    }
  }
}

void DropEmpty(std::vector<Pieces::Span>* spans, size_t from) {
  size_t w = from;
  for (size_t r = from; r < spans->size(); ++r) {
    if ((*spans)[r].begin != (*spans)[r].end) (*spans)[w++] = (*spans)[r];
  }
  spans->resize(w);
}

}  // namespace

bool PreTokenizer::byte_level() const {
  for (const PreTokenizerStep& step : steps_) {
    if (std::holds_alternative<ByteLevelStep>(step)) return true;
  }
  return false;
}

void PreTokenizer::ApplySplit(const Regex& regex, SplitBehavior behavior, bool invert,
                              const Pieces& in, Pieces* out) const {
  out->buffer = in.buffer;
  out->spans.clear();
  std::vector<RegexMatch> matches;
  std::vector<Segment> segments;
  for (const Pieces::Span& span : in.spans) {
    matches.clear();
    regex.FindAll(std::string_view(in.buffer).substr(span.begin, span.end - span.begin), &matches);
    Segments(matches, span.begin, span.end, invert, &segments);
    const size_t first = out->spans.size();
    Behave(behavior, segments, &out->spans);
    DropEmpty(&out->spans, first);
  }
}

void PreTokenizer::ApplyByteLevel(const ByteLevelStep& step, const Pieces& in, Pieces* out) const {
  out->Clear();
  out->buffer.reserve(in.buffer.size() * 2);
  std::string prefixed;
  std::vector<RegexMatch> matches;
  std::vector<Segment> segments;
  for (size_t i = 0; i < in.spans.size(); ++i) {
    std::string_view piece = in.piece(i);
    if (step.add_prefix_space && (piece.empty() || piece.front() != ' ')) {
      prefixed.assign(" ");
      prefixed.append(piece);
      piece = prefixed;
    }
    if (!step.use_regex) {
      const size_t begin = out->buffer.size();
      AppendByteLevel(piece, &out->buffer);
      if (out->buffer.size() != begin) out->spans.push_back({begin, out->buffer.size()});
      continue;
    }
    SPARK_CHECK(gpt2_regex_ != nullptr) << "ByteLevel with use_regex needs the GPT-2 regex";
    matches.clear();
    gpt2_regex_->FindAll(piece, &matches);
    Segments(matches, 0, piece.size(), /*invert=*/false, &segments);
    for (const Segment& s : segments) {
      const size_t begin = out->buffer.size();
      AppendByteLevel(piece.substr(s.begin, s.end - s.begin), &out->buffer);
      if (out->buffer.size() != begin) out->spans.push_back({begin, out->buffer.size()});
    }
  }
}

void PreTokenizer::PreTokenize(std::string_view text, Pieces* out) const {
  out->Clear();
  out->buffer.assign(text);
  if (!text.empty()) out->spans.push_back({0, text.size()});
  Pieces scratch;
  for (const PreTokenizerStep& step : steps_) {
    if (const auto* split = std::get_if<SplitStep>(&step)) {
      ApplySplit(split->regex, split->behavior, split->invert, *out, &scratch);
    } else {
      ApplyByteLevel(std::get<ByteLevelStep>(step), *out, &scratch);
    }
    std::swap(*out, scratch);
  }
}

}  // namespace spark::engine::text
