// A small stand-in for libFuzzer so the fuzz targets run as ordinary tests with GCC: runs
// LLVMFuzzerTestOneInput on every file of a corpus directory, then on random mutations of them
// (byte flips, insertions of parser tags, deletions, splices) until a time or run budget is spent.
// When a target aborts, the input that did it is written to fuzz-crash-<pid> in the working
// directory first.
//
//   <target> CORPUS_DIR [--seconds S] [--runs N] [--seed X] [--max-len BYTES]
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

// Tokens of the chat formats, inserted by the mutator.
const char* const kDictionary[] = {
    "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>",
    "<think>",     "</think>",     "\n",        "\\n",        " ",           "{",
    "}",           "[1, 2]",       "\"",        "\\",         "get_weather", "search",
    "city",        "limit",        "query",     "exact",      "mode",        "filters",
    "True",        "null",         "1e3",       "-0.5",       "北京",        "\xF0\x9F\x98",
    "</s>",        "<|user|>",     "ab",        "STOP",       "。",          "<",
};

std::vector<uint8_t> g_current;  // the input being run, for the crash handler

void OnAbort(int) {
  char name[64];
  std::snprintf(name, sizeof(name), "fuzz-crash-%d", static_cast<int>(getpid()));
  std::FILE* f = std::fopen(name, "wb");
  if (f != nullptr) {
    std::fwrite(g_current.data(), 1, g_current.size(), f);
    std::fclose(f);
    std::fprintf(stderr, "fuzz: failing input written to %s (%zu bytes)\n", name, g_current.size());
  }
  std::signal(SIGABRT, SIG_DFL);
  std::abort();
}

void Run(const std::vector<uint8_t>& input) {
  g_current = input;
  LLVMFuzzerTestOneInput(input.data(), input.size());
}

std::vector<uint8_t> Mutate(const std::vector<std::vector<uint8_t>>& corpus, std::mt19937_64& rng,
                            size_t max_len) {
  std::vector<uint8_t> s = corpus[rng() % corpus.size()];
  const int edits = 1 + static_cast<int>(rng() % 6);
  for (int e = 0; e < edits; ++e) {
    const size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 6) {
      case 0:  // flip a byte
        if (!s.empty()) s[rng() % s.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // insert a random byte
        s.insert(s.begin() + static_cast<long>(pos), static_cast<uint8_t>(rng()));
        break;
      case 2: {  // delete a range
        if (s.empty()) break;
        const size_t from = rng() % s.size();
        const size_t len = std::min<size_t>(s.size() - from, 1 + rng() % 16);
        s.erase(s.begin() + static_cast<long>(from), s.begin() + static_cast<long>(from + len));
        break;
      }
      case 3:
      case 4: {  // insert a dictionary token
        const char* token = kDictionary[rng() % std::size(kDictionary)];
        s.insert(s.begin() + static_cast<long>(pos), token, token + std::strlen(token));
        break;
      }
      case 5: {  // splice a piece of another corpus entry
        const std::vector<uint8_t>& other = corpus[rng() % corpus.size()];
        if (other.empty()) break;
        const size_t from = rng() % other.size();
        const size_t len = std::min<size_t>(other.size() - from, 1 + rng() % 64);
        s.insert(s.begin() + static_cast<long>(pos), other.begin() + static_cast<long>(from),
                 other.begin() + static_cast<long>(from + len));
        break;
      }
    }
  }
  if (s.size() > max_len) s.resize(max_len);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [--seconds S] [--runs N] [--seed X] [--max-len B]\n",
                 argv[0]);
    return 2;
  }
  double seconds = 10;
  uint64_t runs = 1000000;
  uint64_t seed = 1;
  size_t max_len = 4096;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--seconds") {
      seconds = std::atof(argv[i + 1]);
    } else if (flag == "--runs") {
      runs = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (flag == "--seed") {
      seed = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (flag == "--max-len") {
      max_len = std::strtoull(argv[i + 1], nullptr, 10);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  std::signal(SIGABRT, OnAbort);

  std::vector<std::vector<uint8_t>> corpus;
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(argv[1])) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& path : files) {
    std::ifstream in(path, std::ios::binary);
    corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (corpus.empty()) {
    std::fprintf(stderr, "fuzz: corpus %s is empty; every fuzz target needs a corpus\n", argv[1]);
    return 1;
  }
  for (const auto& input : corpus) Run(input);

  std::mt19937_64 rng(seed);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t done = 0;
  while (done < runs && std::chrono::steady_clock::now() < deadline) {
    Run(Mutate(corpus, rng, max_len));
    ++done;
  }
  std::printf("fuzz: %zu corpus inputs and %llu mutations (seed %llu): no failure\n", corpus.size(),
              static_cast<unsigned long long>(done), static_cast<unsigned long long>(seed));
  return 0;
}
