#include "engine/comm/nccl_communicator.h"

#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iterator>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "engine/comm/rank_order_sum.h"
#include "engine/cuda/cuda_check.h"

namespace spark::engine {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How often the watchdog looks at the pending collectives and NCCL's asynchronous error.
constexpr milliseconds kWatchdogPeriod{2};
// How long a healthy communicator may take to finalize on destruction before it is aborted.
constexpr milliseconds kFinalizeTimeout{5000};

int64_t MsLeft(Clock::time_point deadline) {
  return std::max<int64_t>(
      0, std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count());
}

std::string ToHex(const void* data, size_t size) {
  static const char kDigits[] = "0123456789abcdef";
  const auto* p = static_cast<const uint8_t*>(data);
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[p[i] >> 4]);
    out.push_back(kDigits[p[i] & 15]);
  }
  return out;
}

bool FromHex(const std::string& hex, void* data, size_t size) {
  if (hex.size() != size * 2) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  auto* p = static_cast<uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) {
    const int hi = nibble(hex[2 * i]);
    const int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    p[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

bool IsDevicePointer(const void* ptr) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();  // clears the sticky-free error of an unknown pointer
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

std::string RankList(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}

}  // namespace

struct NcclCommunicator::Impl {
  struct Pending {
    cudaEvent_t event = nullptr;
    const char* op = "";
    Clock::time_point enqueued;
  };

  int rank = 0;
  int world = 1;
  int device = 0;
  int64_t op_timeout_ms = 60000;
  cudaStream_t stream = nullptr;
  bool owns_stream = false;

  mutable std::mutex mu;
  std::condition_variable cv;
  ncclComm_t comm = nullptr;             // guarded by mu; nullptr once aborted
  Status broken = Status::Ok();          // guarded by mu
  std::deque<Pending> pending;           // guarded by mu; enqueue order
  std::vector<cudaEvent_t> free_events;  // guarded by mu
  std::vector<cudaEvent_t> all_events;   // every event made; destroyed last
  bool stopping = false;                 // guarded by mu
  bool capturing = false;                // guarded by mu; a CUDA graph capture is recording
  std::thread watchdog;

  void* staging = nullptr;  // device buffer for host-pointer collectives
  size_t staging_bytes = 0;
  // One-shot all-reduce: the limit and the all-gather's [world, count] scratch.
  int64_t one_shot_max_bytes = 0;
  float* gathered = nullptr;
  std::vector<AllReduceTiming> timings;
  // Device all-reduces enqueued by each method since Create (the calibration's not counted).
  std::atomic<int64_t> one_shot_calls{0};
  std::atomic<int64_t> nccl_calls{0};

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    cv.notify_all();
    if (watchdog.joinable()) watchdog.join();
    cudaSetDevice(device);
    if (comm != nullptr) {
      ncclResult_t state = ncclCommFinalize(comm);
      const auto until = Clock::now() + kFinalizeTimeout;
      while (state == ncclInProgress && Clock::now() < until) {
        if (ncclCommGetAsyncError(comm, &state) != ncclSuccess || state != ncclInProgress) break;
        std::this_thread::sleep_for(milliseconds(1));
      }
      if (state == ncclSuccess) {
        ncclCommDestroy(comm);
      } else {
        ncclCommAbort(comm);
      }
      comm = nullptr;
    }
    if (stream != nullptr) cudaStreamSynchronize(stream);
    for (cudaEvent_t e : all_events) cudaEventDestroy(e);
    if (staging != nullptr) cudaFree(staging);
    if (gathered != nullptr) cudaFree(gathered);
    if (owns_stream && stream != nullptr) cudaStreamDestroy(stream);
  }

  // Aborts the group with `why`. Caller holds mu.
  void BreakLocked(Status why) {
    if (!broken.ok()) return;
    broken = std::move(why);
    if (comm != nullptr) {
      ncclCommAbort(comm);
      comm = nullptr;
    }
    for (Pending& p : pending) free_events.push_back(p.event);
    pending.clear();
  }

  std::string Where() const {
    return " on rank " + std::to_string(rank) + " of " + std::to_string(world) + " (device " +
           std::to_string(device) + ")";
  }

  Status TimedOut(const char* op) const {
    return DeadlineExceeded(std::string(op) + " did not complete within " +
                            std::to_string(op_timeout_ms) + " ms" + Where() +
                            "; a peer rank died, hung or called a different collective. The NCCL "
                            "communicator was aborted; the group must be recreated");
  }

  void WatchdogLoop() {
    cudaSetDevice(device);
    std::unique_lock<std::mutex> lock(mu);
    while (!stopping) {
      cv.wait_for(lock, kWatchdogPeriod);
      if (stopping) break;
      if (!broken.ok() || comm == nullptr) continue;
      ncclResult_t async = ncclSuccess;
      ncclResult_t got = ncclCommGetAsyncError(comm, &async);
      if (got != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
        const char* op = pending.empty() ? "a collective" : pending.front().op;
        BreakLocked(Unavailable(std::string("NCCL reported an error during ") + op + Where() +
                                ": " + ncclGetErrorString(got != ncclSuccess ? got : async) +
                                "; the group was aborted (a peer rank died or its network "
                                "failed) and must be recreated"));
        continue;
      }
      while (!pending.empty()) {
        cudaError_t q = cudaEventQuery(pending.front().event);
        if (q == cudaErrorNotReady) break;
        if (q != cudaSuccess) {
          BreakLocked(Internal(std::string("CUDA failed while waiting for ") + pending.front().op +
                               Where() + ": " + cudaGetErrorString(q)));
          break;
        }
        free_events.push_back(pending.front().event);
        pending.pop_front();
      }
      if (!pending.empty() &&
          Clock::now() - pending.front().enqueued > milliseconds(op_timeout_ms)) {
        BreakLocked(TimedOut(pending.front().op));
      }
    }
  }

  // Enqueues one collective (`launch` calls NCCL on `comm` and `stream`) and tracks it.
  template <typename F>
  Status Enqueue(const char* op, F&& launch) {
    std::lock_guard<std::mutex> lock(mu);
    if (!broken.ok()) return broken;
    ncclResult_t r = launch(comm);
    if (r == ncclInProgress) {
      // A non-blocking communicator may still be connecting to the peers (lazily, at the first
      // use of a channel), which needs them to take part.
      const auto until = Clock::now() + milliseconds(op_timeout_ms);
      while (r == ncclInProgress && Clock::now() < until) {
        if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) break;
        if (r == ncclInProgress) std::this_thread::yield();
      }
      if (r == ncclInProgress) {
        BreakLocked(TimedOut(op));
        return broken;
      }
    }
    if (r != ncclSuccess) {
      BreakLocked(Unavailable(std::string(op) + " failed" + Where() + ": " + ncclGetErrorString(r) +
                              "; the group was aborted"));
      return broken;
    }
    // A graph capture records the collective; it runs (and is watched) at the graph's replays.
    if (capturing) return Status::Ok();
    return TrackLocked(op);
  }

  // Watches what the stream has enqueued so far as one operation `op`. Caller holds mu.
  Status TrackLocked(const char* op) {
    cudaEvent_t event = nullptr;
    if (free_events.empty()) {
      SPARK_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
      all_events.push_back(event);
    } else {
      event = free_events.back();
      free_events.pop_back();
    }
    cudaError_t recorded = cudaEventRecord(event, stream);
    if (recorded != cudaSuccess) {
      free_events.push_back(event);
      return cuda::CudaError(recorded, "cudaEventRecord", __FILE__, __LINE__);
    }
    pending.push_back({event, op, Clock::now()});
    return Status::Ok();
  }

  // Waits for everything enqueued so far. The watchdog aborts a hung collective, which releases
  // the kernels and so this wait.
  Status Synchronize() {
    cudaEvent_t last = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!broken.ok()) return broken;
      if (pending.empty()) return Status::Ok();
      last = pending.back().event;
    }
    cudaError_t waited = cudaEventSynchronize(last);
    std::lock_guard<std::mutex> lock(mu);
    if (!broken.ok()) return broken;
    if (waited != cudaSuccess) {
      BreakLocked(Internal(std::string("waiting for collectives failed") + Where() + ": " +
                           cudaGetErrorString(waited)));
      return broken;
    }
    for (Pending& p : pending) free_events.push_back(p.event);
    pending.clear();
    return Status::Ok();
  }

  Status EnsureStaging(size_t bytes) {
    if (bytes <= staging_bytes) return Status::Ok();
    if (staging != nullptr) {
      SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
      SPARK_CUDA_RETURN_IF_ERROR(cudaFree(staging));
      staging = nullptr;
      staging_bytes = 0;
    }
    const size_t rounded = std::max<size_t>(bytes, 1 << 16);
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&staging, rounded));
    staging_bytes = rounded;
    return Status::Ok();
  }
};

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NcclCommunicator::~NcclCommunicator() = default;

Result<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(int rank, int world,
                                                                   KeyValueStore* store,
                                                                   const NcclOptions& options) {
  if (world < 1 || rank < 0 || rank >= world) {
    return InvalidArgument("NCCL group: rank " + std::to_string(rank) + " is not in [0, " +
                           std::to_string(world) + ")");
  }
  if (store == nullptr) return InvalidArgument("NCCL group: a rendezvous store is required");
  if (options.init_timeout_ms <= 0 || options.op_timeout_ms <= 0) {
    return InvalidArgument("NCCL group: init_timeout_ms and op_timeout_ms must be > 0");
  }
  if (options.one_shot_max_bytes < -1 || options.one_shot_max_bytes > kOneShotMaxBytesLimit) {
    return InvalidArgument("NCCL group: one_shot_max_bytes " +
                           std::to_string(options.one_shot_max_bytes) + " is outside [-1, " +
                           std::to_string(kOneShotMaxBytesLimit) +
                           "] (-1 = measure, 0 = NCCL's all-reduce only)");
  }
  int devices = 0;
  SPARK_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&devices));
  if (options.device < 0 || options.device >= devices) {
    return InvalidArgument("NCCL group: CUDA device " + std::to_string(options.device) +
                           " does not exist (this process sees " + std::to_string(devices) +
                           "; check CUDA_VISIBLE_DEVICES)");
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));

  auto impl = std::make_unique<Impl>();
  impl->rank = rank;
  impl->world = world;
  impl->device = options.device;
  impl->op_timeout_ms = options.op_timeout_ms;
  if (options.stream != nullptr) {
    impl->stream = options.stream;
  } else {
    SPARK_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
    impl->owns_stream = true;
  }

  const auto deadline = Clock::now() + milliseconds(options.init_timeout_ms);
  const std::string id_key = options.prefix + "/nccl/unique_id";
  const std::string joined_prefix = options.prefix + "/nccl/joined/";
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (rank == 0) {
    SPARK_NCCL_RETURN_IF_ERROR(ncclGetUniqueId(&id));
    SPARK_RETURN_IF_ERROR(store->Set(id_key, ToHex(&id, sizeof(id))));
  } else {
    Result<std::string> hex = store->Get(id_key, MsLeft(deadline));
    if (!hex.ok()) {
      return DeadlineExceeded("NCCL group: rank 0 did not publish the NCCL unique id within " +
                              std::to_string(options.init_timeout_ms) + " ms (key " + id_key +
                              "); rank 0 never joined: check that it is running");
    }
    if (!FromHex(*hex, &id, sizeof(id))) {
      return DataLoss("NCCL group: the unique id under " + id_key + " is malformed");
    }
  }
  SPARK_RETURN_IF_ERROR(store->Set(joined_prefix + std::to_string(rank), "1"));

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, world, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);
    return Internal(std::string("NCCL group: ncclCommInitRankConfig failed on rank ") +
                    std::to_string(rank) + ": " + ncclGetErrorString(r));
  }
  ncclResult_t state = ncclInProgress;
  while (true) {
    r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess || state != ncclInProgress) break;
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(milliseconds(1));
  }
  if (r != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
    ncclCommAbort(comm);
    return Internal(std::string("NCCL group: initialisation failed on rank ") +
                    std::to_string(rank) + ": " + ncclGetErrorString(r != ncclSuccess ? r : state));
  }
  if (state == ncclInProgress) {
    ncclCommAbort(comm);
    std::vector<int> missing;
    for (int other = 0; other < world; ++other) {
      if (other == rank) continue;
      if (!store->Get(joined_prefix + std::to_string(other), 100).ok()) missing.push_back(other);
    }
    std::string why = "NCCL group of " + std::to_string(world) + " ranks was not ready within " +
                      std::to_string(options.init_timeout_ms) + " ms on rank " +
                      std::to_string(rank) + ": ";
    if (!missing.empty()) {
      why += std::string(missing.size() > 1 ? "ranks " : "rank ") + RankList(missing) +
             " never joined; check that they are running and reach this host";
    } else {
      why +=
          "every rank joined but NCCL did not finish connecting them (run with "
          "NCCL_DEBUG=INFO to see the transport it tried)";
    }
    return DeadlineExceeded(why);
  }
  impl->comm = comm;
  Impl* raw = impl.get();
  impl->watchdog = std::thread([raw] { raw->WatchdogLoop(); });
  std::unique_ptr<NcclCommunicator> self(new NcclCommunicator(std::move(impl)));
  if (world > 1) {
    // Connects the ranks now (NCCL connects lazily at the first collective), under the init
    // deadline: a peer that joined but cannot be reached fails here, not in the first step.
    {
      std::lock_guard<std::mutex> lock(raw->mu);
      raw->op_timeout_ms = std::max<int64_t>(1, MsLeft(deadline));
    }
    Status connected = self->Barrier();
    {
      std::lock_guard<std::mutex> lock(raw->mu);
      raw->op_timeout_ms = options.op_timeout_ms;
    }
    if (!connected.ok()) {
      return Status(connected.code(), "NCCL group: connecting rank " + std::to_string(rank) +
                                          " to its peers failed: " + connected.message());
    }
  }
  if (options.one_shot_max_bytes != 0 && world > 1) {
    const int64_t largest = options.one_shot_max_bytes > 0
                                ? options.one_shot_max_bytes
                                : std::end(kAllReduceCalibrationBytes)[-1];
    SPARK_CUDA_RETURN_IF_ERROR(
        cudaMalloc(&raw->gathered, static_cast<size_t>(largest) * static_cast<size_t>(world)));
    raw->one_shot_max_bytes = largest;
    if (options.one_shot_max_bytes < 0) {
      Status measured = self->CalibrateOneShot();
      if (!measured.ok()) {
        return Status(measured.code(),
                      "NCCL group: timing the one-shot all-reduce failed: " + measured.message());
      }
    }
  }
  return self;
}

Status NcclCommunicator::CalibrateOneShot() {
  Impl& m = *impl_;
  const int64_t largest = std::end(kAllReduceCalibrationBytes)[-1];
  float* data = nullptr;
  SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&data, static_cast<size_t>(largest)));
  cudaEvent_t begin = nullptr, end = nullptr;
  if (cudaEventCreate(&begin) != cudaSuccess || cudaEventCreate(&end) != cudaSuccess) {
    if (begin != nullptr) cudaEventDestroy(begin);
    cudaFree(data);
    return Internal("creating the calibration events failed");
  }
  constexpr int kWarmup = 3;
  constexpr int kIters = 20;
  const int sizes = static_cast<int>(std::size(kAllReduceCalibrationBytes));
  // [size][method] mean microseconds on this rank, then the maximum over the ranks.
  std::vector<float> us(static_cast<size_t>(2 * sizes), 0.f);
  Status st = Status::Ok();
  auto time_one = [&](size_t count, bool one_shot, float* out_us) -> Status {
    m.one_shot_max_bytes = one_shot ? largest : 0;
    for (int i = 0; i < kWarmup; ++i) {
      SPARK_RETURN_IF_ERROR(AllReduceSumDevice(data, count, DeviceDtype::kFloat32));
    }
    SPARK_RETURN_IF_ERROR(m.Synchronize());
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventRecord(begin, m.stream));
    for (int i = 0; i < kIters; ++i) {
      SPARK_RETURN_IF_ERROR(AllReduceSumDevice(data, count, DeviceDtype::kFloat32));
    }
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventRecord(end, m.stream));
    SPARK_RETURN_IF_ERROR(m.Synchronize());
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(end));
    float ms = 0.f;
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, begin, end));
    *out_us = ms * 1000.f / kIters;
    return Status::Ok();
  };
  if (cudaMemsetAsync(data, 0, static_cast<size_t>(largest), m.stream) != cudaSuccess) {
    st = Internal("cudaMemsetAsync of the calibration buffer failed");
  }
  for (int s = 0; s < sizes && st.ok(); ++s) {
    const size_t count = static_cast<size_t>(kAllReduceCalibrationBytes[s]) / sizeof(float);
    st = time_one(count, false, &us[static_cast<size_t>(2 * s)]);
    if (st.ok()) st = time_one(count, true, &us[static_cast<size_t>(2 * s + 1)]);
  }
  // Every rank takes the same decision: the slowest rank's time of each size and method.
  if (st.ok() && cudaMemcpyAsync(data, us.data(), us.size() * sizeof(float), cudaMemcpyHostToDevice,
                                 m.stream) != cudaSuccess) {
    st = Internal("uploading the calibration times failed");
  }
  if (st.ok()) {
    st = m.Enqueue("all-reduce (calibration)", [&](ncclComm_t c) {
      return ncclAllReduce(data, data, us.size(), ncclFloat32, ncclMax, c, m.stream);
    });
  }
  if (st.ok() && cudaMemcpyAsync(us.data(), data, us.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                 m.stream) != cudaSuccess) {
    st = Internal("reading the calibration times failed");
  }
  if (st.ok()) st = m.Synchronize();
  if (st.ok() && cudaStreamSynchronize(m.stream) != cudaSuccess) {
    st = Internal("reading the calibration times failed");
  }
  cudaEventDestroy(begin);
  cudaEventDestroy(end);
  cudaFree(data);
  if (!st.ok()) return st;
  int64_t keep = 0;
  m.timings.clear();
  for (int s = 0; s < sizes; ++s) {
    const float nccl = us[static_cast<size_t>(2 * s)];
    const float one_shot = us[static_cast<size_t>(2 * s + 1)];
    m.timings.push_back({kAllReduceCalibrationBytes[s], nccl, one_shot});
    if (keep == (s == 0 ? 0 : kAllReduceCalibrationBytes[s - 1]) && one_shot < nccl) {
      keep = kAllReduceCalibrationBytes[s];
    }
  }
  m.one_shot_max_bytes = keep;
  m.one_shot_calls = 0;
  m.nccl_calls = 0;
  return Status::Ok();
}

int64_t NcclCommunicator::one_shot_max_bytes() const { return impl_->one_shot_max_bytes; }
int64_t NcclCommunicator::one_shot_all_reduces() const {
  return impl_->one_shot_calls.load(std::memory_order_relaxed);
}
int64_t NcclCommunicator::nccl_all_reduces() const {
  return impl_->nccl_calls.load(std::memory_order_relaxed);
}
const std::vector<AllReduceTiming>& NcclCommunicator::all_reduce_timings() const {
  return impl_->timings;
}

int NcclCommunicator::rank() const { return impl_->rank; }
int NcclCommunicator::world_size() const { return impl_->world; }
cudaStream_t NcclCommunicator::stream() const { return impl_->stream; }
int NcclCommunicator::device() const { return impl_->device; }

Status NcclCommunicator::health() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->broken;
}

Status NcclCommunicator::Synchronize() { return impl_->Synchronize(); }

Status NcclCommunicator::AllReduceSumDevice(void* data, size_t count, DeviceDtype dtype) {
  const ncclDataType_t type = dtype == DeviceDtype::kFloat32 ? ncclFloat32 : ncclBfloat16;
  cudaStream_t s = impl_->stream;
  if (dtype == DeviceDtype::kFloat32 && impl_->world > 1 &&
      static_cast<int64_t>(count * sizeof(float)) <= impl_->one_shot_max_bytes) {
    float* gathered = impl_->gathered;
    SPARK_RETURN_IF_ERROR(impl_->Enqueue("all-reduce (one-shot all-gather)", [&](ncclComm_t c) {
      return ncclAllGather(data, gathered, count, ncclFloat32, c, s);
    }));
    SPARK_CUDA_RETURN_IF_ERROR(
        RankOrderSum(gathered, impl_->world, count, static_cast<float*>(data), s));
    impl_->one_shot_calls.fetch_add(1, std::memory_order_relaxed);
    return Status::Ok();
  }
  impl_->nccl_calls.fetch_add(1, std::memory_order_relaxed);
  return impl_->Enqueue("all-reduce", [&](ncclComm_t c) {
    return ncclAllReduce(data, data, count, type, ncclSum, c, s);
  });
}

void NcclCommunicator::SetCapturing(bool capturing) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->capturing = capturing;
}

Status NcclCommunicator::WatchReplay(const char* op) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (!impl_->broken.ok()) return impl_->broken;
  return impl_->TrackLocked(op);
}

Status NcclCommunicator::AllReduceSum(float* data, size_t count) {
  if (count == 0) return Status::Ok();
  cudaStream_t s = impl_->stream;
  if (IsDevicePointer(data)) return AllReduceSumDevice(data, count, DeviceDtype::kFloat32);
  const size_t bytes = count * sizeof(float);
  SPARK_RETURN_IF_ERROR(impl_->EnsureStaging(bytes));
  auto* buf = static_cast<float*>(impl_->staging);
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buf, data, bytes, cudaMemcpyHostToDevice, s));
  SPARK_RETURN_IF_ERROR(impl_->Enqueue("all-reduce", [&](ncclComm_t c) {
    return ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, c, s);
  }));
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(data, buf, bytes, cudaMemcpyDeviceToHost, s));
  SPARK_RETURN_IF_ERROR(impl_->Synchronize());
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return Status::Ok();
}

Status NcclCommunicator::AllGather(const float* in, size_t count, float* out) {
  if (count == 0) return Status::Ok();
  cudaStream_t s = impl_->stream;
  const size_t world = static_cast<size_t>(impl_->world);
  if (IsDevicePointer(in) && IsDevicePointer(out)) {
    SPARK_RETURN_IF_ERROR(impl_->Enqueue("all-gather", [&](ncclComm_t c) {
      return ncclAllGather(in, out, count, ncclFloat32, c, s);
    }));
    return impl_->Synchronize();
  }
  const size_t bytes = count * sizeof(float);
  SPARK_RETURN_IF_ERROR(impl_->EnsureStaging(bytes * (world + 1)));
  auto* send = static_cast<float*>(impl_->staging);
  float* recv = send + count;
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(send, in, bytes, cudaMemcpyDefault, s));
  SPARK_RETURN_IF_ERROR(impl_->Enqueue("all-gather", [&](ncclComm_t c) {
    return ncclAllGather(send, recv, count, ncclFloat32, c, s);
  }));
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out, recv, bytes * world, cudaMemcpyDefault, s));
  SPARK_RETURN_IF_ERROR(impl_->Synchronize());
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return Status::Ok();
}

Status NcclCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (root < 0 || root >= impl_->world) {
    return InvalidArgument("broadcast root " + std::to_string(root) + " is not in [0, " +
                           std::to_string(impl_->world) + ")");
  }
  if (bytes == 0) return Status::Ok();
  cudaStream_t s = impl_->stream;
  if (IsDevicePointer(data)) {
    return impl_->Enqueue("broadcast", [&](ncclComm_t c) {
      return ncclBroadcast(data, data, bytes, ncclUint8, root, c, s);
    });
  }
  SPARK_RETURN_IF_ERROR(impl_->EnsureStaging(bytes));
  void* buf = impl_->staging;
  if (impl_->rank == root) {
    SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buf, data, bytes, cudaMemcpyHostToDevice, s));
  }
  SPARK_RETURN_IF_ERROR(impl_->Enqueue("broadcast", [&](ncclComm_t c) {
    return ncclBroadcast(buf, buf, bytes, ncclUint8, root, c, s);
  }));
  if (impl_->rank != root) {
    SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(data, buf, bytes, cudaMemcpyDeviceToHost, s));
  }
  SPARK_RETURN_IF_ERROR(impl_->Synchronize());
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return Status::Ok();
}

Status NcclCommunicator::Barrier() {
  SPARK_RETURN_IF_ERROR(impl_->EnsureStaging(sizeof(float)));
  auto* buf = static_cast<float*>(impl_->staging);
  cudaStream_t s = impl_->stream;
  SPARK_RETURN_IF_ERROR(impl_->Enqueue("barrier", [&](ncclComm_t c) {
    return ncclAllReduce(buf, buf, 1, ncclFloat32, ncclSum, c, s);
  }));
  return impl_->Synchronize();
}

}  // namespace spark::engine
