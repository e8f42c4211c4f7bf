#include "engine/text/bpe_model.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <mutex>
#include <shared_mutex>

#include "engine/text/utf8.h"

namespace spark::engine::text {
namespace {

constexpr char32_t kSmallChars = 0x800;      // direct table for 1- and 2-byte characters
constexpr size_t kMaxCachedWordBytes = 256;  // longer words are not cached (as HF)
constexpr size_t kCacheShards = 16;
constexpr size_t kCacheEntriesPerShard = 4096;

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t len;  // bytes; 0 marks a symbol merged into its left neighbour
};

struct QueuedMerge {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
};

// Min-heap order: lowest rank first, then leftmost position.
struct LaterMerge {
  bool operator()(const QueuedMerge& a, const QueuedMerge& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};

}  // namespace

// A bounded, sharded map from word to ids. Once a shard is full it stops admitting words, as
// the HF cache does; entries are never evicted, so readers never see a changing value.
class BpeModel::Cache {
 public:
  bool Get(std::string_view word, std::vector<int32_t>* ids) const {
    const Shard& shard = shards_[StringHash{}(word) % kCacheShards];
    std::shared_lock lock(shard.mu);
    auto it = shard.map.find(word);
    if (it == shard.map.end()) return false;
    ids->insert(ids->end(), it->second.begin(), it->second.end());
    return true;
  }

  void Put(std::string_view word, std::vector<int32_t> ids) {
    Shard& shard = shards_[StringHash{}(word) % kCacheShards];
    std::unique_lock lock(shard.mu);
    if (shard.map.size() >= kCacheEntriesPerShard) return;
    shard.map.emplace(std::string(word), std::move(ids));
  }

 private:
  struct Shard {
    mutable std::shared_mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map;
  };
  std::array<Shard, kCacheShards> shards_;
};

BpeModel::BpeModel(BpeConfig config) : config_(std::move(config)), cache_(new Cache) {}

BpeModel::~BpeModel() = default;

Result<std::unique_ptr<BpeModel>> BpeModel::Create(BpeConfig config) {
  std::unique_ptr<BpeModel> model(new BpeModel(std::move(config)));
  const BpeConfig& c = model->config_;

  int32_t max_id = -1;
  for (const auto& [token, id] : c.vocab) {
    if (id < 0) {
      return InvalidArgument("vocab token '" + token + "' has negative id " + std::to_string(id) +
                             "; ids must be >= 0");
    }
    max_id = std::max(max_id, id);
  }
  model->id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string_view());
  for (const auto& [token, id] : c.vocab) model->id_to_token_[id] = token;

  model->small_char_ids_.assign(kSmallChars, -1);
  for (const auto& [token, id] : c.vocab) {
    if (token.empty()) continue;
    const Utf8Char ch = DecodeUtf8(token);
    if (ch.status == Utf8Status::kOk && ch.length == token.size() && ch.codepoint < kSmallChars) {
      model->small_char_ids_[ch.codepoint] = id;
    }
  }

  const size_t prefix_len = c.continuing_subword_prefix.size();
  model->merges_.reserve(c.merges.size());
  for (size_t rank = 0; rank < c.merges.size(); ++rank) {
    const auto& [a, b] = c.merges[rank];
    const auto ia = c.vocab.find(a);
    const auto ib = c.vocab.find(b);
    if (ia == c.vocab.end() || ib == c.vocab.end()) {
      return InvalidArgument("merge " + std::to_string(rank) + " ('" + a + "' '" + b +
                             "') uses a token that is not in the vocab; the merges do not "
                             "belong to this vocab");
    }
    if (b.size() < prefix_len) {
      return InvalidArgument("merge " + std::to_string(rank) + " ('" + a + "' '" + b +
                             "'): the right part is shorter than continuing_subword_prefix");
    }
    const std::string merged = a + b.substr(prefix_len);
    const auto im = c.vocab.find(merged);
    if (im == c.vocab.end()) {
      return InvalidArgument("merge " + std::to_string(rank) + " ('" + a + "' '" + b +
                             "') produces '" + merged +
                             "', which is not in the vocab; the merges do not belong to this "
                             "vocab");
    }
    // A repeated pair keeps its last rank, as in HF's merge map.
    model->merges_[PairKey(ia->second, ib->second)] = Merge{static_cast<int32_t>(rank), im->second};
  }

  if (c.unk_token.has_value()) {
    const auto it = c.vocab.find(*c.unk_token);
    if (it == c.vocab.end()) {
      return InvalidArgument("unk_token '" + *c.unk_token +
                             "' is not in the vocab; add it to model.vocab or set unk_token to "
                             "null");
    }
    model->unk_id_ = it->second;
  }
  if (c.byte_fallback) {
    model->byte_fallback_ids_.assign(256, -1);
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      const auto it = c.vocab.find(std::string_view(name));
      if (it != c.vocab.end()) model->byte_fallback_ids_[b] = it->second;
    }
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const auto it = config_.vocab.find(token);
  if (it == config_.vocab.end()) return std::nullopt;
  return it->second;
}

std::string_view BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id >= id_end()) return {};
  return id_to_token_[id];
}

std::optional<int32_t> BpeModel::SymbolId(std::string_view symbol) const {
  const Utf8Char ch = DecodeUtf8(symbol);
  if (ch.length == symbol.size() && ch.status == Utf8Status::kOk && ch.codepoint < kSmallChars) {
    const int32_t id = small_char_ids_[ch.codepoint];
    if (id < 0) return std::nullopt;
    return id;
  }
  return TokenToId(symbol);
}

const BpeModel::Merge* BpeModel::FindMerge(int32_t left, int32_t right) const {
  const auto it = merges_.find(PairKey(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&symbols](int32_t id, uint32_t len) {
    const int32_t n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back({id, n - 1, -1, len});
  };

  // Initial symbols: one per character, with unknown handling as HF's BPE::merge_word.
  int32_t unk_pending_id = -1;  // an unknown run waiting to be added (HF fuse_unk)
  uint32_t unk_pending_len = 0;
  std::string decorated;
  size_t i = 0;
  while (i < word.size()) {
    const uint32_t char_len = DecodeUtf8(word.substr(i)).length;
    const bool is_first = i == 0;
    const bool is_last = i + char_len >= word.size();
    std::string_view symbol = word.substr(i, char_len);
    if ((!is_first && !config_.continuing_subword_prefix.empty()) ||
        (is_last && !config_.end_of_word_suffix.empty())) {
      decorated.clear();
      if (!is_first) decorated.append(config_.continuing_subword_prefix);
      decorated.append(symbol);
      if (is_last) decorated.append(config_.end_of_word_suffix);
      symbol = decorated;
    }
    i += char_len;

    if (const std::optional<int32_t> id = SymbolId(symbol)) {
      if (unk_pending_id >= 0) {
        add(unk_pending_id, unk_pending_len);
        unk_pending_id = -1;
      }
      add(*id, char_len);
      continue;
    }
    if (config_.byte_fallback) {
      bool all = true;
      for (char b : symbol) all = all && byte_fallback_ids_[static_cast<uint8_t>(b)] >= 0;
      if (all) {
        for (char b : symbol) add(byte_fallback_ids_[static_cast<uint8_t>(b)], 1);
        continue;
      }
    }
    if (unk_id_) {
      if (unk_pending_id >= 0 && config_.fuse_unk) {
        unk_pending_len += char_len;
      } else {
        if (unk_pending_id >= 0) add(unk_pending_id, unk_pending_len);
        unk_pending_id = *unk_id_;
        unk_pending_len = char_len;
      }
    }
    // Without unk_token an unknown character is dropped, as in HF.
  }
  if (unk_pending_id >= 0) add(unk_pending_id, unk_pending_len);

  // Merge loop of HF's Word::merge_all (without dropout).
  std::vector<QueuedMerge> heap;
  heap.reserve(symbols.size());
  for (size_t p = 0; p + 1 < symbols.size(); ++p) {
    if (const Merge* m = FindMerge(symbols[p].id, symbols[p + 1].id)) {
      heap.push_back({m->rank, static_cast<int32_t>(p), m->new_id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), LaterMerge{});
  const int32_t count = static_cast<int32_t>(symbols.size());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), LaterMerge{});
    const QueuedMerge top = heap.back();
    heap.pop_back();
    Symbol& current = symbols[top.pos];
    if (current.len == 0 || current.next == -1) continue;
    const int32_t next_pos = current.next;
    const Symbol right = symbols[next_pos];
    const Merge* m = FindMerge(current.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale entry

    current.id = top.new_id;
    current.len += right.len;
    current.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next > -1 && right.next < count) symbols[right.next].prev = top.pos;

    if (current.prev >= 0) {
      if (const Merge* pm = FindMerge(symbols[current.prev].id, current.id)) {
        heap.push_back({pm->rank, current.prev, pm->new_id});
        std::push_heap(heap.begin(), heap.end(), LaterMerge{});
      }
    }
    if (current.next >= 0 && current.next < count) {
      if (const Merge* nm = FindMerge(current.id, symbols[current.next].id)) {
        heap.push_back({nm->rank, top.pos, nm->new_id});
        std::push_heap(heap.begin(), heap.end(), LaterMerge{});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids->push_back(s.id);
  }
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (config_.ignore_merges) {
    if (const auto id = TokenToId(word)) {
      ids->push_back(*id);
      return;
    }
  }
  if (cache_->Get(word, ids)) return;
  const size_t start = ids->size();
  MergeWord(word, ids);
  if (word.size() < kMaxCachedWordBytes) {
    cache_->Put(word,
                std::vector<int32_t>(ids->begin() + static_cast<ptrdiff_t>(start), ids->end()));
  }
}

}  // namespace spark::engine::text
