// Host memory of the CUDA shard's weight loading (engine/shard/cuda_setup.h): the rank's slice is
// streamed with ShardLoadOptions + LoadOptions::on_layer, as CudaBackend::Load does, and the peak
// of the heap during the load stays near one decoder layer plus the embedding and lm_head, far
// below the whole checkpoint. The heap is measured by replacing the global operator new/delete
// of this test binary (its own executable for that reason).
#include <gtest/gtest.h>
#include <malloc.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "engine/model/loader.h"
#include "engine/model/tiny_model.h"
#include "engine/shard/cuda_setup.h"

namespace {

std::atomic<int64_t> g_heap_bytes{0};
std::atomic<int64_t> g_heap_peak{0};

void* CountedAlloc(size_t n) {
  void* p = std::malloc(n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  const int64_t now = g_heap_bytes.fetch_add(static_cast<int64_t>(malloc_usable_size(p))) +
                      static_cast<int64_t>(malloc_usable_size(p));
  int64_t peak = g_heap_peak.load();
  while (now > peak && !g_heap_peak.compare_exchange_weak(peak, now)) {
  }
  return p;
}

void CountedFree(void* p) {
  if (p == nullptr) return;
  g_heap_bytes.fetch_sub(static_cast<int64_t>(malloc_usable_size(p)));
  std::free(p);
}

}  // namespace

void* operator new(size_t n) { return CountedAlloc(n); }
void* operator new[](size_t n) { return CountedAlloc(n); }
void operator delete(void* p) noexcept { CountedFree(p); }
void operator delete[](void* p) noexcept { CountedFree(p); }
void operator delete(void* p, size_t) noexcept { CountedFree(p); }
void operator delete[](void* p, size_t) noexcept { CountedFree(p); }

namespace spark::shard {
namespace {

int64_t Bytes(const engine::LinearWeight& w) {
  return static_cast<int64_t>(w.data.size() + (w.scale.size() + w.bias.size()) * sizeof(float));
}
int64_t Bytes(const std::vector<float>& v) { return static_cast<int64_t>(v.size() * 4); }
int64_t Bytes(const engine::ExpertWeights& e) {
  return Bytes(e.gate) + Bytes(e.up) + Bytes(e.down);
}
int64_t Bytes(const engine::LayerWeights& l) {
  int64_t b = Bytes(l.input_norm) + Bytes(l.post_attn_norm) + Bytes(l.q) + Bytes(l.k) + Bytes(l.v) +
              Bytes(l.o) + Bytes(l.q_norm) + Bytes(l.k_norm) + Bytes(l.mlp) + Bytes(l.router) +
              Bytes(l.router_bias) + Bytes(l.shared);
  for (const engine::ExpertWeights& e : l.experts) b += Bytes(e);
  return b;
}

class ShardLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        std::filesystem::temp_directory_path() / ("spark_shard_load_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    engine::TinyModelOptions tiny;
    nlohmann::json config = nlohmann::json::parse(engine::TinyModelConfigJson(tiny));
    config["num_hidden_layers"] = kLayers;  // one dense layer, then MoE layers
    ASSERT_TRUE(engine::WriteRandomCheckpoint(dir_, config.dump(), 7, engine::DType::kBF16).ok());
    assignment_.set_rank(1);
    assignment_.set_world_size(2);
    assignment_.set_model_path(dir_.string());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static constexpr int kLayers = 12;
  std::filesystem::path dir_;
  spark::v1::ShardAssignment assignment_;
};

TEST_F(ShardLoadTest, StreamingHoldsAboutOneLayerOfHostMemory) {
  // The whole slice at once (the reference for sizes and peak).
  engine::LoadOptions whole_options = ShardLoadOptions(assignment_, nullptr);
  EXPECT_EQ(whole_options.tp_rank, 1);
  EXPECT_EQ(whole_options.tp_size, 2);
  const int64_t base_whole = g_heap_bytes.load();
  g_heap_peak.store(base_whole);
  Result<engine::ModelWeights> whole = engine::LoadModelWeights(dir_, whole_options);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  const int64_t whole_peak = g_heap_peak.load() - base_whole;
  ASSERT_EQ(whole->layers.size(), static_cast<size_t>(kLayers));
  int64_t max_layer = 0, all_layers = 0;
  for (const engine::LayerWeights& l : whole->layers) {
    max_layer = std::max(max_layer, Bytes(l));
    all_layers += Bytes(l);
  }
  const int64_t top = Bytes(whole->embed) + Bytes(whole->lm_head) + Bytes(whole->final_norm);

  // Streamed: each layer is handed to the consumer and freed before the next one is built.
  std::vector<std::pair<int64_t, int64_t>> progress;
  std::vector<int> order;
  int64_t streamed_layer_bytes = 0;
  engine::LoadOptions options = ShardLoadOptions(
      assignment_, [&](int64_t done, int64_t total) { progress.emplace_back(done, total); });
  options.on_layer = [&](int layer, engine::LayerWeights&& weights) {
    engine::LayerWeights owned = std::move(weights);  // an upload would copy it off the host
    order.push_back(layer);
    streamed_layer_bytes += Bytes(owned);
    EXPECT_EQ(owned.q.data, whole->layers[static_cast<size_t>(layer)].q.data);
    return Status::Ok();
  };
  progress.reserve(4096);
  order.reserve(kLayers);
  const int64_t base = g_heap_bytes.load();
  g_heap_peak.store(base);
  Result<engine::ModelWeights> top_only = engine::LoadModelWeights(dir_, options);
  ASSERT_TRUE(top_only.ok()) << top_only.status().ToString();
  const int64_t stream_peak = g_heap_peak.load() - base;

  std::printf(
      "[shard-load] %d layers, rank 1 of 2: layers %lld B (largest %lld B), embedding + lm_head "
      "%lld B; peak heap: whole load %lld B, streamed %lld B\n",
      kLayers, static_cast<long long>(all_layers), static_cast<long long>(max_layer),
      static_cast<long long>(top), static_cast<long long>(whole_peak),
      static_cast<long long>(stream_peak));
  ASSERT_EQ(order.size(), static_cast<size_t>(kLayers));
  for (int l = 0; l < kLayers; ++l) EXPECT_EQ(order[static_cast<size_t>(l)], l);
  EXPECT_EQ(streamed_layer_bytes, all_layers);
  for (const engine::LayerWeights& l : top_only->layers) EXPECT_EQ(Bytes(l), 0);
  EXPECT_EQ(top_only->embed.data, whole->embed.data);
  EXPECT_EQ(top_only->lm_head.data, whole->lm_head.data);

  // The whole load holds every layer; the streamed one the top tensors and one layer, plus the
  // loader's bookkeeping (checkpoint header, names: ~130 KiB here).
  EXPECT_GE(whole_peak, all_layers + top);
  EXPECT_LE(stream_peak, top + max_layer + (int64_t{256} << 10));
  EXPECT_LT(stream_peak * 3, whole_peak);

  // Progress reaches the total (what the agent sees as LOADING progress), never going back.
  ASSERT_FALSE(progress.empty());
  for (size_t i = 1; i < progress.size(); ++i) {
    EXPECT_GE(progress[i].first, progress[i - 1].first);
    EXPECT_EQ(progress[i].second, progress[0].second);
  }
  EXPECT_EQ(progress.back().first, progress.back().second);
  EXPECT_GT(progress.back().second, 0);
}

TEST_F(ShardLoadTest, ALayerTheDeviceRejectsStopsTheLoadNamingIt) {
  engine::LoadOptions options = ShardLoadOptions(assignment_, nullptr);
  options.on_layer = [](int layer, engine::LayerWeights&&) {
    return layer == 3 ? ResourceExhausted("out of device memory") : Status::Ok();
  };
  Result<engine::ModelWeights> w = engine::LoadModelWeights(dir_, options);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(w.status().message().find("layer 3"), std::string::npos) << w.status().message();
}

}  // namespace
}  // namespace spark::shard
