#include "engine/shard/shard.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/zmq.h"
#include "engine/comm/gloo_communicator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model/config.h"
#include "engine/model/inspect.h"
#include "engine/model/loader.h"
#include "engine/runtime/tp_engine.h"
#include "engine/shard/controller_kv_store.h"
#include "engine/shard/controller_link.h"
#include "engine/shard/cuda_setup.h"
#include "engine/shard/endpoints.h"
#include "engine/shard/envelope_stamper.h"
#include "engine/shard/leader_loop.h"
#include "engine/shard/shard_settings.h"
#include "engine/shard/signal_watcher.h"
#include "engine/shard/status_reporter.h"
#include "engine/shard/watchdog.h"
#include "engine/shard/watched_communicator.h"

namespace spark::shard {
namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How long a serving rank 0 may take to stop gracefully after a signal before it _exits.
constexpr milliseconds kStopGrace{10000};
// How often LOADING progress is reported at most.
constexpr milliseconds kProgressInterval{200};
// Readiness wait when the assignment has no deadline.
constexpr milliseconds kDefaultReadyWait{30 * 60 * 1000};
// Rendezvous timeout when the assignment gives none.
constexpr milliseconds kDefaultRendezvousTimeout{60000};

const char* kLoadedKeyPrefix = "loaded/";
// After a failed rendezvous: how long to look for a peer's published load failure.
constexpr milliseconds kPeerFailureWait{1000};

int64_t UnixMs(Clock::WallTimePoint t) {
  return std::chrono::duration_cast<milliseconds>(t.time_since_epoch()).count();
}

int64_t MsLeft(SteadyClock::time_point deadline) {
  return std::max<int64_t>(
      0, std::chrono::duration_cast<milliseconds>(deadline - SteadyClock::now()).count());
}

// Flushes what the link has queued and ends the process at once (watchdog, signals): the engine
// thread may be stuck in a collective and cannot be unwound.
[[noreturn]] void FlushAndExit(ControllerLink* link, int code) {
  link->Close(ControllerLink::kDefaultLinger);
  std::fflush(nullptr);
  _exit(code);
}

class ShardRun {
 public:
  explicit ShardRun(const ShardArgs& args) : args_(args) {}
  int Run();
  // Marks the run finished (a late signal then leaves the exit to main) and passes `code` on.
  int Finish(int code) {
    finished_.store(true);
    return code;
  }

 private:
  int Fail(int code, const std::string& reason) {
    reporter_->ReportFailed(reason, code);
    return code;
  }
  int Serve();
  void OnSignal(int signo);
  // Publishes this rank's load outcome and waits for every other rank's; empty on success,
  // otherwise the reason naming the ranks.
  std::string AgreeLoaded(const Status& own);
  // What the other ranks published of their load by `until`: their failures ("rank R (failed:
  // ...)", "; "-joined) and the ranks that published nothing.
  struct PeerLoads {
    std::string failed;
    std::vector<std::string> missing;
  };
  PeerLoads ReadPeerLoads(SteadyClock::time_point until);

  const ShardArgs& args_;
  spark::v1::ShardAssignment assignment_;
  EngineSettings settings_;
  SteadyClock::time_point started_ = SteadyClock::now();
  std::optional<SteadyClock::time_point> deadline_;
  std::string advertise_host_;

  // Declaration order is destruction order in reverse: the threads (signals, watchdog) go before
  // the link and reporter they use; the engine objects go in dependency order.
  std::unique_ptr<EnvelopeStamper> stamper_;
  std::unique_ptr<ControllerLink> link_;
  std::unique_ptr<StatusReporter> reporter_;
  std::unique_ptr<EventFd> stop_event_;
  std::atomic<bool> armed_{false};     // link_, reporter_ and stop_event_ exist
  std::atomic<bool> serving_{false};   // rank 0 is inside LeaderLoop::Run
  std::atomic<bool> finished_{false};  // Run() has returned or is about to
  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<SignalWatcher> signals_;
  std::unique_ptr<ControllerKeyValueStore> store_;
  std::unique_ptr<engine::Communicator> comm_;  // Gloo (cpu) or NCCL (cuda)
  std::unique_ptr<WatchedCommunicator> watched_;
  std::unique_ptr<engine::Backend> backend_;
  std::unique_ptr<engine::TpLeaderBackend> leader_;
  std::unique_ptr<engine::BatchSampler> sampler_;  // rank 0, CUDA backend: GPU sampling
  std::unique_ptr<LeaderLoop> loop_;
};

void ShardRun::OnSignal(int signo) {
  SPARK_LOG(INFO).With("signal", signo) << "stop requested";
  // Until the link and reporter exist there is nobody to tell: wait for them (setup is short),
  // or for Run() to give up.
  while (!armed_.load()) {
    if (finished_.load()) return;
    std::this_thread::sleep_for(milliseconds(10));
  }
  if (serving_.load() && stop_event_ != nullptr) {
    stop_event_->Notify().IgnoreError();
    const auto until = SteadyClock::now() + kStopGrace;
    while (SteadyClock::now() < until) {
      if (finished_.load()) return;
      std::this_thread::sleep_for(milliseconds(20));
    }
    reporter_->ReportStopped("signal " + std::to_string(signo) + ": graceful stop timed out",
                             kExitOk);
    FlushAndExit(link_.get(), kExitOk);
  }
  if (finished_.load()) return;
  reporter_->ReportStopped("signal " + std::to_string(signo), kExitOk);
  FlushAndExit(link_.get(), kExitOk);
}

int ShardRun::Run() {
  // First, before any thread exists: every later thread inherits the blocked signals.
  signals_ = std::make_unique<SignalWatcher>([this](int signo) { OnSignal(signo); });
  Result<spark::v1::ShardAssignment> read = ReadAssignmentFile(args_.assignment_path);
  if (!read.ok()) {
    SPARK_LOG(ERROR) << read.status().message();
    return kExitUsage;
  }
  assignment_ = std::move(read).value();
  const spark::v1::ShardAssignment& a = assignment_;
  if (a.deadline_ms() > 0) deadline_ = started_ + milliseconds(a.deadline_ms());

  std::optional<CurveKeyPair> keys;
  std::string controller_key;
  if (!args_.insecure) {
    if (args_.keys_dir.empty()) {
      SPARK_LOG(ERROR) << "no keys: pass --keys DIR (with agent.key and controller.pub, as "
                          "spark-agent keygen writes them) or --insecure for a cluster without "
                          "CURVE";
      return kExitUsage;
    }
    Result<CurveKeyPair> own = ReadCurveSecretKeyFile(args_.keys_dir / "agent.key");
    Result<std::string> controller = ReadCurvePublicKeyFile(args_.keys_dir / "controller.pub");
    if (!own.ok() || !controller.ok()) {
      SPARK_LOG(ERROR) << "cannot read the CURVE keys in " << args_.keys_dir.string() << ": "
                       << (!own.ok() ? own.status() : controller.status()).message()
                       << "; create them with `spark-agent keygen --keys DIR` and copy the "
                          "controller's controller.pub there, or run with --insecure";
      return kExitUsage;
    }
    keys = *own;
    controller_key = *controller;
  }

  stamper_ = std::make_unique<EnvelopeStamper>(ShardSenderId(a), a.generation());
  ControllerLinkOptions link_options;
  link_options.endpoint = args_.controller_endpoint;
  link_options.routing_id = ShardSenderId(a);
  link_options.keys = keys;
  link_options.controller_public_key = controller_key;
  Result<std::unique_ptr<ControllerLink>> link =
      ControllerLink::Connect(link_options, stamper_.get());
  if (!link.ok()) {
    SPARK_LOG(ERROR) << link.status().message();
    return kExitUsage;
  }
  link_ = std::move(link).value();
  ShardIdentity identity;
  identity.deployment = a.deployment();
  identity.run_id = a.run_id();
  identity.generation = a.generation();
  identity.rank = a.rank();
  identity.pid = getpid();
  identity.started_unix_ms = UnixMs(RealClock::Get().WallNow());
  reporter_ =
      std::make_unique<StatusReporter>(link_.get(), identity, RealClock::Get(), args_.status_file);
  SPARK_LOG(INFO)
          .With("deployment", a.deployment())
          .With("generation", a.generation())
          .With("rank", a.rank())
          .With("world_size", a.world_size())
          .With("node", args_.node_name)
      << "spark-shard starting";
  reporter_->Report(spark::v1::SHARD_PHASE_STARTING).IgnoreError();

  Result<EventFd> stop_event = EventFd::Create();
  if (!stop_event.ok()) return Fail(kExitFailed, stop_event.status().message());
  stop_event_ = std::make_unique<EventFd>(std::move(stop_event).value());
  armed_.store(true);

  Status valid = ValidateAssignment(a);
  if (!valid.ok()) {
    return Fail(valid.code() == StatusCode::kUnimplemented ? kExitUnsupported : kExitUsage,
                valid.message());
  }
  Result<EngineSettings> settings = ResolveEngineSettings(a.options());
  if (!settings.ok()) return Fail(kExitUsage, settings.status().message());
  settings_ = *settings;
  if (args_.step_timeout_ms > 0) {
    settings_.step_timeout = milliseconds(args_.step_timeout_ms);
    settings_.keepalive = std::min(settings_.keepalive, settings_.step_timeout / 4);
  }

  watchdog_ = std::make_unique<Watchdog>(RealClock::Get(), settings_.step_timeout,
                                         [this](const std::string& reason) {
                                           reporter_->ReportFailed(reason, kExitWatchdog);
                                           FlushAndExit(link_.get(), kExitWatchdog);
                                         });
  auto phase = [&](const std::string& what) {
    if (deadline_) watchdog_->SetStartupDeadline(*deadline_, what);
  };
  phase("starting");

  const bool cuda = a.backend() == spark::v1::BACKEND_CUDA;
  if (cuda && !BuiltWithCuda()) return Fail(kExitUnsupported, WithoutCudaMessage());
  if (!cuda && settings_.kv_cache_fp8) {
    return Fail(kExitUnsupported,
                "engine option kv_cache_dtype=fp8 is not supported on the CPU backend yet; deploy "
                "on the CUDA backend, or without kv_cache_dtype (BF16 on CUDA, fp32 on the CPU)");
  }
  // Speculative decoding: asked for explicitly, or possibly turned on by mode AUTO (CUDA only).
  // Either way the checkpoint's MTP layer is looked up once, before joining the group and
  // loading the weights: its config, and (real weights) whether its files hold the layer.
  const bool asked = settings_.speculative.enabled();
  if (asked || (settings_.speculative_auto && cuda)) {
    const bool dummy = a.options().load_format() == spark::v1::LOAD_FORMAT_DUMMY;
    std::optional<engine::ModelConfig> config;
    size_t mtp_layers_present = 0;
    if (dummy) {
      if (Result<engine::ModelConfig> c = engine::LoadModelConfig(a.model_path()); c.ok()) {
        config = std::move(c).value();
      }
    } else if (Result<engine::CheckpointSummary> files =
                   engine::InspectCheckpoint(a.model_path(), static_cast<int>(a.world_size()));
               files.ok()) {
      config = files->config;
      mtp_layers_present = static_cast<size_t>(std::max(files->mtp_layers, 0));
    }
    // An unreadable checkpoint is left to the load, which names the problem.
    if (asked && config) {
      // Refuse a model without an MTP layer (in its config, or in its files).
      Status has_mtp = CheckSpeculativeModel(*config, a.model_path());
      if (has_mtp.ok() && !dummy) {
        has_mtp = CheckMtpWeightsLoaded(*config, a.model_path(), mtp_layers_present);
      }
      if (!has_mtp.ok()) return Fail(kExitUsage, has_mtp.message());
    } else if (!asked && config &&
               AutoSpeculation(a.backend(), *config, mtp_layers_present, dummy)) {
      // Mode AUTO: on where it helps (the same decision on every rank: the same checkpoint).
      settings_.speculative = AutoSpeculativeOptions();
      SPARK_LOG(INFO).With("steps", settings_.speculative.steps)
          << "speculative decoding on (automatic: CUDA backend, checkpoint with its MTP layer; "
             "deployment option speculative=off turns it off)";
    }
  }
  const bool speculative = settings_.speculative.enabled();

  advertise_host_ = args_.advertise_host;
  if (advertise_host_.empty()) {
    Result<std::string> local = LocalAddressToward(args_.controller_endpoint);
    if (!local.ok()) return Fail(kExitUsage, local.status().message());
    advertise_host_ = *local;
  }
  const std::string& advertise = advertise_host_;

  // Rendezvous.
  const int rank = static_cast<int>(a.rank());
  const int world = static_cast<int>(a.world_size());
  reporter_->Report(spark::v1::SHARD_PHASE_RENDEZVOUS).IgnoreError();
  phase("joining the rendezvous");
  store_ = std::make_unique<ControllerKeyValueStore>(
      link_.get(),
      RendezvousScope{a.deployment(), a.generation(), a.rank(), a.rendezvous().key_prefix()});
  if (world > 1) {
    engine::GlooOptions gloo;
    gloo.host = advertise;
    milliseconds connect = a.rendezvous().timeout_ms() > 0
                               ? milliseconds(a.rendezvous().timeout_ms())
                               : kDefaultRendezvousTimeout;
    if (deadline_) {
      // End a second before the startup deadline, so the failure names the missing ranks
      // instead of the watchdog's generic "not READY".
      connect = std::min(connect, milliseconds(std::max<int64_t>(1, MsLeft(*deadline_) - 1000)));
    }
    gloo.connect_timeout_ms = connect.count();
    gloo.op_timeout_ms =
        (settings_.step_timeout + std::max(milliseconds(2000), settings_.step_timeout / 2)).count();
    gloo.prefix = a.deployment() + "/" + std::to_string(a.generation());
    auto join = [&]() -> Result<std::unique_ptr<engine::Communicator>> {
      if (cuda) {
        NcclGroupOptions nccl;
        nccl.device = static_cast<int>(a.gpu_index());
        nccl.connect_timeout_ms = gloo.connect_timeout_ms;
        nccl.op_timeout_ms = gloo.op_timeout_ms;
        nccl.prefix = gloo.prefix;
        nccl.one_shot_max_bytes = settings_.one_shot_all_reduce_bytes;
        return JoinNcclGroup(rank, world, store_.get(), nccl);
      }
      SPARK_ASSIGN_OR_RETURN(std::unique_ptr<engine::GlooCommunicator> joined,
                             engine::GlooCommunicator::Create(rank, world, store_.get(), gloo));
      return std::unique_ptr<engine::Communicator>(std::move(joined));
    };
    Result<std::unique_ptr<engine::Communicator>> comm = join();
    if (!comm.ok()) {
      // A peer that joined, then failed to load and exited, can close the connection before
      // this rank's side of the group is up: name that failure rather than the connection.
      const PeerLoads peers = ReadPeerLoads(SteadyClock::now() + kPeerFailureWait);
      if (!peers.failed.empty()) {
        return Fail(kExitLoad, "another rank failed to load: " + peers.failed);
      }
      return Fail(kExitRendezvous, "rendezvous failed: " + comm.status().message());
    }
    comm_ = std::move(comm).value();
    watched_ = std::make_unique<WatchedCommunicator>(comm_.get(), watchdog_.get());
  }

  // Loading.
  reporter_->Report(spark::v1::SHARD_PHASE_LOADING).IgnoreError();
  phase("loading the weights");
  engine::LoadOptions load;
  load.tp_rank = rank;
  load.tp_size = world;
  load.dummy = a.options().load_format() == spark::v1::LOAD_FORMAT_DUMMY;
  load.seed = a.options().seed();
  load.load_mtp = speculative;
  std::mutex progress_mu;
  SteadyClock::time_point last_progress{};
  load.progress = [&](int64_t done, int64_t total) {
    std::lock_guard<std::mutex> lock(progress_mu);
    const auto now = SteadyClock::now();
    if (now - last_progress < kProgressInterval && done < total) return;
    last_progress = now;
    const double fraction = total > 0 ? 0.9 * static_cast<double>(done) / total : 0.0;
    reporter_->ReportProgress(done, total, fraction).IgnoreError();
  };
  Status own = Status::Ok();
  int own_exit = kExitLoad;
  if (cuda) {
    CudaBackendSetup setup;
    setup.device = static_cast<int>(a.gpu_index());
    setup.max_batch_tokens = settings_.max_batch_tokens;
    setup.kv_block_tokens = settings_.kv_block_tokens;
    setup.progress = load.progress;
    setup.load_mtp = speculative;
    Result<std::unique_ptr<engine::Backend>> backend =
        CreateShardCudaBackend(a, watched_.get(), comm_.get(), setup);
    if (backend.ok()) {
      backend_ = std::move(backend).value();
    } else {
      own = backend.status().WithContext("creating the CUDA backend");
    }
  } else {
    Result<engine::ModelWeights> weights = engine::LoadModelWeights(a.model_path(), load);
    if (!weights.ok()) {
      own = weights.status().WithContext("loading " + a.model_path());
    } else if (Status mtp = speculative ? CheckMtpWeightsLoaded(weights->config, a.model_path(),
                                                                weights->mtp.size())
                                        : Status::Ok();
               !mtp.ok()) {
      own = mtp;
      own_exit = kExitUsage;
    } else {
      const engine::ModelConfig config = weights->config;
      Result<int64_t> kv_bytes =
          ResolveKvCacheBytes(a.options(), config, world, MemAvailableBytes());
      if (!kv_bytes.ok()) {
        own = kv_bytes.status();
      } else {
        engine::CpuBackendOptions cpu;
        cpu.threads = settings_.threads;
        cpu.kv_cache_bytes = *kv_bytes;
        cpu.kv_block_tokens = settings_.kv_block_tokens;
        Result<std::unique_ptr<engine::CpuBackend>> backend =
            engine::CpuBackend::Create(std::move(weights).value(), watched_.get(), cpu);
        if (backend.ok()) {
          SPARK_LOG(INFO)
                  .With("kv_cache_bytes", *kv_bytes)
                  .With("kv_capacity_tokens", (*backend)->KvCapacityTokens())
              << "backend created";
          backend_ = std::move(backend).value();
        } else {
          own = backend.status().WithContext("creating the CPU backend");
        }
      }
    }
  }
  if (own.ok() && speculative) {
    own = CheckSpeculationSupported(*backend_, a.backend());
    if (!own.ok()) own_exit = kExitUnsupported;
  }
  if (own.ok()) reporter_->ReportProgress(0, 0, 0.95).IgnoreError();
  const std::string agreement = AgreeLoaded(own);
  if (!own.ok()) return Fail(own_exit, own.message());
  if (!agreement.empty()) return Fail(kExitLoad, agreement);

  if (rank == 0) {
    if (world > 1)
      leader_ = std::make_unique<engine::TpLeaderBackend>(backend_.get(), watched_.get());
    LeaderLoopOptions loop;
    Result<std::string> bind = DataBindEndpoint(a.data_listen_address(), advertise);
    if (!bind.ok()) return Fail(kExitUsage, bind.status().message());
    loop.bind_endpoint = *bind;
    loop.server_keys = keys;
    if (keys) loop.allowed_client_keys = {controller_key};
    loop.scheduler.max_batch_tokens = settings_.max_batch_tokens;
    loop.scheduler.max_running = settings_.max_running;
    loop.scheduler.max_model_len = settings_.max_model_len;
    loop.keepalive = settings_.keepalive;
    loop.scheduler.speculative = settings_.speculative;
    if (speculative) {
      loop.on_speculative_stats = [this](const engine::SpeculativeStats& stats) {
        reporter_->ReportSpeculativeStats(SpeculativeStatsToProto(stats)).IgnoreError();
      };
    }
    if (cuda && settings_.gpu_sampling) {
      Result<std::unique_ptr<engine::BatchSampler>> sampler =
          CreateGpuBatchSampler(*backend_, settings_.max_running);
      if (!sampler.ok()) {
        if (leader_) leader_->Stop().IgnoreError();
        return Fail(kExitFailed, "GPU sampler: " + sampler.status().message());
      }
      sampler_ = std::move(sampler).value();
      loop.scheduler.batch_sampler = sampler_.get();
    }
    engine::Backend* driven =
        leader_ ? static_cast<engine::Backend*>(leader_.get()) : backend_.get();
    Result<std::unique_ptr<LeaderLoop>> created =
        LeaderLoop::Create(driven, leader_.get(), watchdog_.get(), stamper_.get(), loop);
    if (!created.ok()) {
      // The workers are already waiting for steps: tell them to stop.
      if (leader_) leader_->Stop().IgnoreError();
      return Fail(kExitFailed, created.status().message());
    }
    loop_ = std::move(created).value();
  }
  return Serve();
}

ShardRun::PeerLoads ShardRun::ReadPeerLoads(SteadyClock::time_point until) {
  PeerLoads peers;
  for (uint32_t r = 0; r < assignment_.world_size(); ++r) {
    if (r == assignment_.rank()) continue;
    Result<std::string> value = store_->Get(kLoadedKeyPrefix + std::to_string(r), MsLeft(until));
    if (!value.ok()) {
      peers.missing.push_back(std::to_string(r));
    } else if (*value != "ok") {
      peers.failed +=
          (peers.failed.empty() ? "" : "; ") + ("rank " + std::to_string(r) + " (" + *value + ")");
    }
  }
  return peers;
}

std::string ShardRun::AgreeLoaded(const Status& own) {
  Status published = store_->Set(kLoadedKeyPrefix + std::to_string(assignment_.rank()),
                                 own.ok() ? std::string("ok") : "failed: " + own.message());
  if (!published.ok()) return published.message();
  if (!own.ok()) return "";
  const PeerLoads peers = ReadPeerLoads(deadline_.value_or(SteadyClock::now() + kDefaultReadyWait));
  if (!peers.failed.empty()) return "another rank failed to load: " + peers.failed;
  if (!peers.missing.empty()) {
    std::string ranks;
    for (const std::string& m : peers.missing) ranks += (ranks.empty() ? "" : ", ") + m;
    return "rank" + std::string(peers.missing.size() > 1 ? "s " : " ") + ranks +
           " did not finish loading in time; check their logs (a slow disk or a crash)";
  }
  return "";
}

int ShardRun::Serve() {
  const spark::v1::ShardAssignment& a = assignment_;
  watchdog_->ClearStartupDeadline();
  std::string endpoint;
  if (loop_) {
    Result<std::string> advertised = AdvertisedEndpoint(loop_->bound_endpoint(), advertise_host_);
    if (!advertised.ok()) return Fail(kExitUsage, advertised.status().message());
    endpoint = *advertised;
  }
  // From here a signal stops rank 0 through its loop (the stop event stays readable until Run()
  // sees it), so the workers get the stop message instead of a vanished peer.
  if (loop_) serving_.store(true);
  reporter_->ReportProgress(0, 0, 1.0).IgnoreError();
  reporter_->ReportReady(endpoint).IgnoreError();

  Status ended;
  if (loop_) {
    ended = loop_->Run(stop_event_->fd());
    serving_.store(false);
  } else {
    // Workers cannot be interrupted inside RunTpWorker; a signal ends them at once (OnSignal).
    ended = engine::RunTpWorker(backend_.get(), watched_.get());
  }
  int code = kExitOk;
  if (ended.ok()) {
    reporter_->ReportStopped(a.rank() == 0 ? "stopped on request" : "rank 0 stopped the group",
                             kExitOk);
  } else {
    code = kExitFailed;
    reporter_->ReportFailed(
        (a.rank() == 0 ? "serving failed: " : "worker failed: ") + ended.message() +
            "; the group is broken (a peer rank died or hung) and the controller starts a new run",
        code);
  }
  return code;
}

}  // namespace

int RunShard(const ShardArgs& args) {
  ShardRun run(args);
  return run.Finish(run.Run());
}

}  // namespace spark::shard
