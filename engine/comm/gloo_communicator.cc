#include "engine/comm/gloo_communicator.h"

#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <unistd.h>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

namespace spark::engine {
namespace {

using Clock = std::chrono::steady_clock;

// Thrown by StoreAdapter inside Gloo's rendezvous; caught in Create().
struct StoreError : std::runtime_error {
  StoreError(Status s) : std::runtime_error(s.message()), status(std::move(s)) {}
  Status status;
};

// Adapts a KeyValueStore to gloo::rendezvous::Store. Every key gets `prefix` + "/". Blocking
// reads never outlive `deadline` (the end of the connect window).
class StoreAdapter final : public gloo::rendezvous::Store {
 public:
  StoreAdapter(KeyValueStore* store, std::string prefix, Clock::time_point deadline)
      : store_(store), prefix_(std::move(prefix)), deadline_(deadline) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    Status s = store_->Set(Key(key), std::string(data.begin(), data.end()));
    if (!s.ok()) throw StoreError(s);
  }

  std::vector<char> get(const std::string& key) override {
    Result<std::string> value = store_->Get(Key(key), RemainingMs());
    if (!value.ok()) throw StoreError(value.status());
    return std::vector<char>(value->begin(), value->end());
  }

  void wait(const std::vector<std::string>& keys) override {
    wait(keys, std::chrono::milliseconds(RemainingMs()));
  }

  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    auto until = std::min(deadline_, Clock::now() + timeout);
    for (const std::string& key : keys) {
      int64_t left_ms = std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count());
      Result<std::string> value = store_->Get(Key(key), left_ms);
      if (!value.ok()) throw StoreError(value.status());
    }
  }

  std::string Key(const std::string& key) const { return prefix_ + "/" + key; }

 private:
  int64_t RemainingMs() const {
    return std::max<int64_t>(
        0, std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count());
  }

  KeyValueStore* store_;
  std::string prefix_;
  Clock::time_point deadline_;
};

std::string JoinRanks(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(ranks[i]);
  }
  return out;
}

std::string JoinedKey(int rank) { return "spark_joined_" + std::to_string(rank); }

bool IsInterfaceName(const std::string& host) {
  return !host.empty() && if_nametoindex(host.c_str()) != 0;
}

}  // namespace

struct GlooCommunicator::Impl {
  int rank = 0;
  int world = 1;
  std::string prefix;
  std::chrono::milliseconds op_timeout{0};
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> context;
  uint32_t next_tag = 1;  // every rank issues collectives in the same order, so tags match

  // Runs one collective, turning Gloo's exceptions into a Status that names rank and operation.
  template <typename Fn>
  Status Run(const char* op, Fn&& fn) {
    if (!context) {
      return FailedPrecondition("rank " + std::to_string(rank) + ": " + op +
                                " on a broken Gloo group; recreate the communicator");
    }
    try {
      fn(next_tag++);
      return Status::Ok();
    } catch (const gloo::IoException& e) {
      return Fail(op, e.what());
    } catch (const std::exception& e) {
      return Fail(op, e.what());
    }
  }

  Status Fail(const char* op, const std::string& what) {
    // A failed collective leaves the pairs in an unknown state: the group is unusable.
    context.reset();
    std::string msg = "rank " + std::to_string(rank) + " of " + std::to_string(world) + ": " + op +
                      " failed (" + what + "); a peer died or the ranks issued different " +
                      "collectives; the group must be recreated";
    if (what.find("imeout") != std::string::npos || what.find("imed out") != std::string::npos) {
      return DeadlineExceeded("rank " + std::to_string(rank) + ": " + op + " did not complete " +
                              "within op_timeout_ms=" + std::to_string(op_timeout.count()) + " (" +
                              what + "); a peer is dead or stuck; recreate the group");
    }
    return Unavailable(msg);
  }
};

GlooCommunicator::GlooCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GlooCommunicator::~GlooCommunicator() = default;

Result<std::unique_ptr<GlooCommunicator>> GlooCommunicator::Create(int rank, int world,
                                                                   KeyValueStore* store,
                                                                   const GlooOptions& options) {
  if (world < 1 || rank < 0 || rank >= world) {
    return InvalidArgument("Gloo group: rank " + std::to_string(rank) + " is outside world size " +
                           std::to_string(world) + "; ranks are 0..world-1");
  }
  if (store == nullptr) return InvalidArgument("Gloo group: a KeyValueStore is required");
  if (options.connect_timeout_ms <= 0 || options.op_timeout_ms <= 0) {
    return InvalidArgument("Gloo group: connect_timeout_ms and op_timeout_ms must be > 0");
  }
  if (options.host.empty()) {
    return InvalidArgument(
        "Gloo group: GlooOptions.host is empty; give an interface name, a "
        "hostname or an IP address to bind (e.g. 127.0.0.1)");
  }

  // Gloo writes to sockets without MSG_NOSIGNAL: a dead peer would kill the process with SIGPIPE
  // instead of failing the collective. Ignore it unless the program installed its own handler.
  struct sigaction current {};
  if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
    signal(SIGPIPE, SIG_IGN);
  }

  auto impl = std::make_unique<Impl>();
  impl->rank = rank;
  impl->world = world;
  impl->prefix = options.prefix;
  impl->op_timeout = std::chrono::milliseconds(options.op_timeout_ms);

  gloo::transport::tcp::attr attr;
  if (IsInterfaceName(options.host)) {
    attr.iface = options.host;
  } else {
    attr.hostname = options.host;
  }
  try {
    impl->device = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    return InvalidArgument("rank " + std::to_string(rank) + ": cannot bind a Gloo TCP device to '" +
                           options.host + "' (" + e.what() +
                           "); set GlooOptions.host to a local interface or address");
  }

  const auto deadline = Clock::now() + std::chrono::milliseconds(options.connect_timeout_ms);
  StoreAdapter adapter(store, options.prefix, deadline);
  auto context = std::make_shared<gloo::rendezvous::Context>(rank, world);
  context->setTimeout(std::chrono::milliseconds(options.connect_timeout_ms));

  // Announce this rank first, so that on failure every rank can tell which peers never came.
  Status joined = store->Set(adapter.Key(JoinedKey(rank)), "1");
  if (!joined.ok()) return joined.WithContext("rank " + std::to_string(rank) + " rendezvous");

  std::string failure;
  try {
    context->connectFullMesh(adapter, impl->device);
  } catch (const StoreError& e) {
    failure = e.status.message();
    if (e.status.code() != StatusCode::kDeadlineExceeded)
      return e.status.WithContext("rank " + std::to_string(rank) + " rendezvous");
  } catch (const std::exception& e) {
    failure = e.what();
  }

  if (!failure.empty()) {
    // Find the ranks that never announced themselves (they never reached Create()).
    std::vector<int> missing;
    for (int i = 0; i < world; ++i) {
      if (i == rank) continue;
      if (!store->Get(adapter.Key(JoinedKey(i)), 0).ok()) missing.push_back(i);
    }
    if (!missing.empty()) {
      return DeadlineExceeded(
          "rank " + std::to_string(rank) + " of " + std::to_string(world) + ": rank" +
          (missing.size() > 1 ? "s " : " ") + JoinRanks(missing) + " never joined Gloo group '" +
          options.prefix +
          "' within connect_timeout_ms=" + std::to_string(options.connect_timeout_ms) +
          "; start every rank with the same store and prefix, or raise the timeout");
    }
    return Unavailable("rank " + std::to_string(rank) + " of " + std::to_string(world) +
                       ": every rank registered in Gloo group '" + options.prefix +
                       "' but the connection failed (" + failure +
                       "); check that the ranks can reach each other on the bound address '" +
                       options.host + "' (firewall, interface)");
  }

  context->setTimeout(impl->op_timeout);
  impl->context = std::move(context);
  return std::unique_ptr<GlooCommunicator>(new GlooCommunicator(std::move(impl)));
}

int GlooCommunicator::rank() const { return impl_->rank; }
int GlooCommunicator::world_size() const { return impl_->world; }

Status GlooCommunicator::AllReduceSum(float* data, size_t count) {
  if (impl_->world == 1 || count == 0) return Status::Ok();
  return impl_->Run("AllReduceSum", [&](uint32_t tag) {
    gloo::AllreduceOptions opts(impl_->context);
    opts.setOutput(data, count);
    opts.setReduceFunction(
        static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    opts.setTag(tag);
    opts.setTimeout(impl_->op_timeout);
    gloo::allreduce(opts);
  });
}

Status GlooCommunicator::AllGather(const float* in, size_t count, float* out) {
  if (impl_->world == 1) {
    std::copy(in, in + count, out);
    return Status::Ok();
  }
  if (count == 0) return Status::Ok();
  return impl_->Run("AllGather", [&](uint32_t tag) {
    gloo::AllgatherOptions opts(impl_->context);
    opts.setInput(const_cast<float*>(in), count);
    opts.setOutput(out, count * static_cast<size_t>(impl_->world));
    opts.setTag(tag);
    opts.setTimeout(impl_->op_timeout);
    gloo::allgather(opts);
  });
}

Status GlooCommunicator::Broadcast(void* data, size_t bytes, int root) {
  if (root < 0 || root >= impl_->world) {
    return InvalidArgument("Broadcast: root " + std::to_string(root) + " is outside world size " +
                           std::to_string(impl_->world));
  }
  if (impl_->world == 1 || bytes == 0) return Status::Ok();
  return impl_->Run("Broadcast", [&](uint32_t tag) {
    gloo::BroadcastOptions opts(impl_->context);
    opts.setOutput(static_cast<uint8_t*>(data), bytes);
    opts.setRoot(root);
    opts.setTag(tag);
    opts.setTimeout(impl_->op_timeout);
    gloo::broadcast(opts);
  });
}

Status GlooCommunicator::Barrier() {
  if (impl_->world == 1) return Status::Ok();
  return impl_->Run("Barrier", [&](uint32_t tag) {
    gloo::BarrierOptions opts(impl_->context);
    opts.setTag(tag);
    opts.setTimeout(impl_->op_timeout);
    gloo::barrier(opts);
  });
}

// ---------------------------------------------------------------------------------------------
// LocalKeyValueStore

Status LocalKeyValueStore::Set(const std::string& key, const std::string& value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    values_[key] = value;
  }
  cv_.notify_all();
  return Status::Ok();
}

Result<std::string> LocalKeyValueStore::Get(const std::string& key, int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  auto until = Clock::now() + std::chrono::milliseconds(std::max<int64_t>(0, timeout_ms));
  bool found = cv_.wait_until(lock, until, [&] { return values_.count(key) > 0; });
  if (!found) {
    return DeadlineExceeded("key '" + key + "' was not set within " + std::to_string(timeout_ms) +
                            " ms; the rank that publishes it has not started or failed");
  }
  return values_[key];
}

// ---------------------------------------------------------------------------------------------
// FileKeyValueStore

Result<std::unique_ptr<FileKeyValueStore>> FileKeyValueStore::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    return InvalidArgument("key-value store directory '" + dir + "' cannot be created (" +
                           ec.message() + "); choose a writable path");
  }
  if (access(dir.c_str(), W_OK) != 0) {
    return PermissionDenied("key-value store directory '" + dir +
                            "' is not writable; choose a writable path");
  }
  return std::unique_ptr<FileKeyValueStore>(new FileKeyValueStore(dir));
}

std::string FileKeyValueStore::PathFor(const std::string& key) const {
  static const char kHex[] = "0123456789ABCDEF";
  std::string name = "k_";
  for (unsigned char c : key) {
    if (std::isalnum(c) || c == '-' || c == '_') {
      name += static_cast<char>(c);
    } else {
      name += '%';
      name += kHex[c >> 4];
      name += kHex[c & 15];
    }
  }
  return dir_ + "/" + name;
}

Status FileKeyValueStore::Set(const std::string& key, const std::string& value) {
  static std::atomic<uint64_t> counter{0};
  const std::string path = PathFor(key);
  const std::string tmp = dir_ + "/.tmp." + std::to_string(getpid()) + "." +
                          std::to_string(counter.fetch_add(1)) + "." +
                          std::to_string(std::random_device{}());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return Unavailable("key-value store: cannot create '" + tmp + "' (" + std::strerror(errno) +
                       "); check the directory permissions and free space");
  }
  size_t written = 0;
  while (written < value.size()) {
    ssize_t n = write(fd, value.data() + written, value.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::string err = std::strerror(errno);
      close(fd);
      unlink(tmp.c_str());
      return Unavailable("key-value store: writing '" + tmp + "' failed (" + err + ")");
    }
    written += static_cast<size_t>(n);
  }
  if (close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = std::strerror(errno);
    unlink(tmp.c_str());
    return Unavailable("key-value store: publishing '" + path + "' failed (" + err + ")");
  }
  return Status::Ok();
}

Result<std::string> FileKeyValueStore::Get(const std::string& key, int64_t timeout_ms) {
  const std::string path = PathFor(key);
  auto until = Clock::now() + std::chrono::milliseconds(std::max<int64_t>(0, timeout_ms));
  auto sleep = std::chrono::milliseconds(1);
  while (true) {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      std::ostringstream ss;
      ss << in.rdbuf();
      return ss.str();
    }
    if (Clock::now() >= until) {
      return DeadlineExceeded("key '" + key + "' did not appear in '" + dir_ + "' within " +
                              std::to_string(timeout_ms) +
                              " ms; the rank that publishes it has not started or failed");
    }
    std::this_thread::sleep_for(std::min(
        sleep, std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()) +
                   std::chrono::milliseconds(1)));
    sleep = std::min(sleep * 2, std::chrono::milliseconds(20));
  }
}

}  // namespace spark::engine
