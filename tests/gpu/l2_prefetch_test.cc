// L2Prefetch and L2Prefetcher (engine/cuda/l2_prefetch.h): argument checks, ranges of every
// alignment leave memory untouched, and the prefetcher's fork and join through a CUDA graph
// capture (the prefetch becomes a kernel node of its own branch; without the join the capture
// fails as unjoined).
#include "engine/cuda/l2_prefetch.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "tests/gpu/device_buffer.h"

namespace spark::cuda {
namespace {

TEST(L2PrefetchTest, RejectsBadArguments) {
  DeviceBuffer<uint8_t> buf(4096);
  const L2Range one{buf.get(), 4096};
  EXPECT_EQ(L2Prefetch(&one, -1, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(L2Prefetch(nullptr, 1, nullptr), cudaErrorInvalidValue);
  const L2Range five[5] = {one, one, one, one, one};
  EXPECT_EQ(L2Prefetch(five, 5, nullptr), cudaErrorInvalidValue);
  const L2Range negative{buf.get(), -16};
  EXPECT_EQ(L2Prefetch(&negative, 1, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(L2Prefetch(nullptr, 0, nullptr), cudaSuccess);
}

TEST(L2PrefetchTest, RangesOfEveryAlignmentLeaveMemoryUntouched) {
  const int64_t n = int64_t{48} << 20;  // larger than an H100's L2
  std::vector<uint8_t> host(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) host[static_cast<size_t>(i)] = static_cast<uint8_t>(i * 37 + 11);
  DeviceBuffer<uint8_t> buf(host);
  const uint8_t* p = buf.get();
  const L2Range ranges[4] = {{p + 3, n - 3},               // unaligned start, whole buffer
                             {p + 1, 14},                  // no whole 16-byte unit inside
                             {nullptr, 1 << 20},           // skipped
                             {p + 4096, 16 * 1024 + 16}};  // one chunk and a tail
  ASSERT_EQ(L2Prefetch(ranges, 4, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(buf.Download() == host);
}

TEST(L2PrefetchTest, DisabledPrefetcherDoesNothing) {
  L2Prefetcher off;
  ASSERT_EQ(L2Prefetcher::Create(0, &off), cudaSuccess);
  EXPECT_FALSE(off.enabled());
  DeviceBuffer<uint8_t> buf(1 << 20);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  // Nothing forks, so a capture holds no node and ends cleanly without a Join.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_EQ(off.Prefetch(s, {{buf.get(), 1 << 20}}), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  size_t nodes = 99;
  ASSERT_EQ(cudaGraphGetNodes(graph, nullptr, &nodes), cudaSuccess);
  EXPECT_EQ(nodes, 0u);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

TEST(L2PrefetchTest, PrefetcherForksAndJoinsInsideAGraphCapture) {
  L2Prefetcher pf;
  ASSERT_EQ(L2Prefetcher::Create(int64_t{8} << 20, &pf), cudaSuccess);
  ASSERT_TRUE(pf.enabled());
  EXPECT_EQ(pf.budget_bytes(), int64_t{8} << 20);
  DeviceBuffer<uint8_t> weights(int64_t{16} << 20);
  DeviceBuffer<uint8_t> out(1024);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);

  // Without the join the side branch is left unjoined: the capture fails.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(out.get(), 1, 1024, s), cudaSuccess);
  ASSERT_EQ(pf.Prefetch(s, {{weights.get(), int64_t{16} << 20}}), cudaSuccess);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureUnjoined);
  if (graph != nullptr) cudaGraphDestroy(graph);
  (void)cudaGetLastError();
  // After the failed capture the fork went with it: Forget, and the same prefetcher serves the
  // next captures, also one that forks nothing and only joins (a bucket above the prefetch's
  // token limit), which a stale fork would break.
  pf.Forget();
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(out.get(), 3, 1024, s), cudaSuccess);
  ASSERT_EQ(pf.Join(s), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_NE(graph, nullptr);
  cudaGraphDestroy(graph);
  graph = nullptr;

  // memset, prefetch (forked after it), memset, join: memset -> {prefetch, memset} -> join.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(out.get(), 1, 512, s), cudaSuccess);
  ASSERT_EQ(pf.Prefetch(s, {{weights.get(), int64_t{4} << 20}, {weights.get(), int64_t{8} << 20}}),
            cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(out.get() + 512, 2, 512, s), cudaSuccess);
  ASSERT_EQ(pf.Join(s), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  size_t count = 0;
  ASSERT_EQ(cudaGraphGetNodes(graph, nullptr, &count), cudaSuccess);
  std::vector<cudaGraphNode_t> nodes(count);
  ASSERT_EQ(cudaGraphGetNodes(graph, nodes.data(), &count), cudaSuccess);
  int kernels = 0, memsets = 0;
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType type;
    ASSERT_EQ(cudaGraphNodeGetType(node, &type), cudaSuccess);
    kernels += type == cudaGraphNodeTypeKernel;
    memsets += type == cudaGraphNodeTypeMemset;
  }
  EXPECT_EQ(kernels, 1);  // one prefetch kernel for both ranges (the budget ends in the second)
  EXPECT_EQ(memsets, 2);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  const std::vector<uint8_t> got = out.Download();
  for (int i = 0; i < 1024; ++i) ASSERT_EQ(got[static_cast<size_t>(i)], i < 512 ? 1 : 2) << i;

  // Eagerly: prefetch, join, and a second join with nothing forked.
  ASSERT_EQ(pf.Prefetch(s, {{weights.get(), int64_t{16} << 20}}), cudaSuccess);
  ASSERT_EQ(pf.Join(s), cudaSuccess);
  ASSERT_EQ(pf.Join(s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace spark::cuda
