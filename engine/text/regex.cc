#include "engine/text/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <utility>

#include "engine/text/utf8.h"

namespace spark::engine::text {
namespace {

constexpr size_t kJitStackStartBytes = 32 * 1024;
constexpr size_t kJitStackMaxBytes = 16 * 1024 * 1024;

// Per-thread match state: match data with room for the whole match, and a JIT stack large
// enough for long runs of one character class.
class ThreadMatchState {
 public:
  ThreadMatchState()
      : match_data_(pcre2_match_data_create(1, nullptr)),
        context_(pcre2_match_context_create(nullptr)),
        jit_stack_(pcre2_jit_stack_create(kJitStackStartBytes, kJitStackMaxBytes, nullptr)) {
    if (context_ != nullptr && jit_stack_ != nullptr) {
      pcre2_jit_stack_assign(context_, nullptr, jit_stack_);
    }
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack_);
    pcre2_match_context_free(context_);
    pcre2_match_data_free(match_data_);
  }
  ThreadMatchState(const ThreadMatchState&) = delete;
  ThreadMatchState& operator=(const ThreadMatchState&) = delete;

  pcre2_match_data* match_data() const { return match_data_; }
  pcre2_match_context* context() const { return context_; }

 private:
  pcre2_match_data* match_data_;
  pcre2_match_context* context_;
  pcre2_jit_stack* jit_stack_;
};

ThreadMatchState& GetThreadMatchState() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

std::string TranslateOnigurumaPattern(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c != '\\' || i + 1 == pattern.size()) {
      out.push_back(c);
      continue;
    }
    const char next = pattern[++i];
    if (next == 's') {
      out.append("\\p{White_Space}");
    } else if (next == 'S') {
      out.append("\\P{White_Space}");
    } else {
      out.push_back('\\');
      out.push_back(next);
    }
  }
  return out;
}

Result<Regex> Regex::Compile(std::string_view pattern) {
  const std::string translated = TranslateOnigurumaPattern(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return InvalidArgument("regex '" + std::string(pattern) +
                           "' does not compile: " + reinterpret_cast<const char*>(message) +
                           " (at offset " + std::to_string(error_offset) +
                           " of the PCRE2 form); use Oniguruma/PCRE syntax");
  }
  // JIT is an optimisation only: the interpreter runs when it is unavailable.
  (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return Regex(std::string(pattern), code);
}

Regex::Regex(Regex&& other) noexcept
    : pattern_(std::move(other.pattern_)), code_(std::exchange(other.code_, nullptr)) {}

Regex& Regex::operator=(Regex&& other) noexcept {
  if (this != &other) {
    pcre2_code_free(code_);
    pattern_ = std::move(other.pattern_);
    code_ = std::exchange(other.code_, nullptr);
  }
  return *this;
}

Regex::~Regex() { pcre2_code_free(code_); }

void Regex::FindAll(std::string_view text, std::vector<RegexMatch>* matches) const {
  ThreadMatchState& state = GetThreadMatchState();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t pos = 0;
  bool has_last = false;
  size_t last_end = 0;
  while (pos <= n) {
    int rc = pcre2_match(code_, subject, n, pos, PCRE2_NO_UTF_CHECK, state.match_data(),
                         state.context());
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      rc = pcre2_match(code_, subject, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       state.match_data(), state.context());
    }
    if (rc < 0) break;  // no match, or a resource error: the rest stays unmatched
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.match_data());
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (begin == end && has_last && last_end == end) {
      if (pos >= n) break;
      const Utf8Char c = DecodeUtf8(text.substr(pos));
      pos += c.length;
      continue;
    }
    matches->push_back({begin, end});
    pos = end;
    has_last = true;
    last_end = end;
  }
}

}  // namespace spark::engine::text
