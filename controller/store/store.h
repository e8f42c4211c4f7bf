// Store: the controller's durable state in one SQLite database (desired state, node registry, run
// history, event log, kernel tunings).
//
//   SPARK_ASSIGN_OR_RETURN(std::unique_ptr<Store> store, Store::Open({.path = db}, clock));
//   // Writes run on the writer thread; the future resolves once the transaction is committed
//   // (durable: WAL + synchronous=FULL), or with the error that rolled it back.
//   Result<DeploymentRecord> d =
//       store->Write([spec](WriteTxn& txn) { return txn.CreateDeployment(spec); }).get();
//   // Reads run on the calling thread, in one read transaction (a consistent snapshot).
//   Result<std::vector<NodeRecord>> nodes =
//       store->Read([](ReadTxn& txn) { return txn.ListNodes(); });
//
// Opening: the file is created when missing; journal_mode=WAL, synchronous=FULL, busy_timeout,
// foreign_keys=ON on every connection; an exclusive lock file ("<path>-lock") keeps a second
// controller off the same database; PRAGMA quick_check (integrity_check on request) must say "ok";
// pending schema migrations (controller/store/schema.h) are applied, each in one transaction.
// Every failure comes back as a Status naming the file and the fix.
//
// Writes: ONE writer thread owns the only read-write connection. Write(fn) queues fn; the writer
// runs queued bodies one at a time in FIFO order, each inside BEGIN IMMEDIATE ... COMMIT. A body
// that returns an error (Status or Result) is rolled back and its error is the future's value; a
// failing COMMIT is reported the same way, so an OK future always means "committed" (a body that
// throws is rolled back and reported as Internal). Bodies must be short and must not block (no
// waiting on other futures of this store: that deadlocks), and must only use the WriteTxn they
// are given, only during the call. Each body may be a mix of reads and writes; it sees its own
// writes. Every `checkpoint_every_writes` commits the writer runs PRAGMA
// wal_checkpoint(TRUNCATE) so the WAL cannot grow without bound (it waits at most
// busy_timeout_ms for readers of older snapshots).
//
// Reads: Read(fn) takes one of `read_connections` read-only connections (waiting while all are
// busy), runs fn inside one read transaction and returns fn's result. Readers never block the
// writer nor each other (WAL); they see only committed transactions.
//
// Times: the store stamps created/updated/seen/started/ended times and event timestamps in unix
// milliseconds from Clock::WallNow(), once per transaction (all stamps of one transaction agree).
//
// Thread safety: Read and Write may be called from any thread, concurrently. ReadTxn/WriteTxn
// objects belong to the call that received them. The destructor runs the writes already queued,
// then stops the writer; Write calls racing with destruction are a bug.
// Ownership: Store owns its connections, its writer thread and its lock file; the Clock is
// borrowed and must outlive the store.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "controller/store/records.h"

namespace spark::store {

namespace internal {
class Connection;
}  // namespace internal

struct StoreOptions {
  std::string path{};          // database file; its directory must exist and be writable
  int busy_timeout_ms = 5000;  // how long a statement waits for a lock held by another process
  int read_connections = 4;    // size of the read-only connection pool, >= 1
  bool full_integrity_check = false;  // integrity_check instead of quick_check at open (slower)
  // Take an exclusive advisory lock on "<path>-lock" so that two controllers cannot share one
  // database. Tests that open the file from a second process on purpose turn it off.
  bool exclusive_lock = true;
  int checkpoint_every_writes = 1000;  // commits between wal_checkpoint(TRUNCATE); 0 = never
  size_t max_queued_writes = 100000;   // Write beyond this resolves at once to ResourceExhausted
  // Test hook: statements run on the write connection after the migrations (for example
  // "PRAGMA max_page_count=N" to make the disk look full).
  std::string writer_sql_for_test{};
};

// Counters of a store, for metrics and health checks.
struct StoreStats {
  size_t queued_writes = 0;  // writes waiting for the writer thread
  int64_t committed = 0;     // write transactions committed since open
  int64_t failed = 0;        // write transactions rolled back (body error or failed COMMIT)
  int64_t wal_bytes = 0;     // size of the WAL file now (0 after a TRUNCATE checkpoint)
};

// Filter of ListRuns.
struct RunFilter {
  std::string deployment{};  // "" = runs of every deployment
  int limit = 100;           // newest first, at most this many (>= 1)
};

// Read operations; valid only inside the Read/Write call that handed it out.
class ReadTxn {
 public:
  ReadTxn(const ReadTxn&) = delete;
  ReadTxn& operator=(const ReadTxn&) = delete;

  // Nodes. NotFound names the node.
  Result<NodeRecord> GetNode(std::string_view name);
  Result<std::vector<NodeRecord>> ListNodes();  // by name

  // Deployments. GetDeployment finds deleted deployments too (check `deleted`).
  Result<DeploymentRecord> GetDeployment(std::string_view name);
  Result<DeploymentRecord> GetDeploymentById(int64_t id);
  Result<std::vector<DeploymentRecord>> ListDeployments(bool include_deleted = false);  // by name

  // Runs. GetRun / ListOpenRuns give the members in rank order.
  Result<RunDetail> GetRun(int64_t run_id);
  Result<std::vector<RunRecord>> ListRuns(const RunFilter& filter = {});  // newest first
  // Every run not ended (state starting or ready), oldest first: what a restarted controller
  // must adopt or end.
  Result<std::vector<RunDetail>> ListOpenRuns();
  // The deployment's run that has not ended, if any (at most one exists).
  Result<std::optional<RunDetail>> GetOpenRun(std::string_view deployment);
  Result<std::vector<RunMemberRecord>> ListRunMembers(int64_t run_id);  // rank order

  // Events with id > since_id, oldest first, at most `limit` (1..10000); `deployment` filters
  // when not empty.
  Result<std::vector<EventRecord>> ListEvents(int64_t since_id, int limit = 100,
                                              std::string_view deployment = {});
  Result<int64_t> LastEventId();  // 0 when the log is empty

  // Kernel tunings. NotFound when no tuning is stored for (device_class, key).
  Result<KernelTuning> GetKernelTuning(std::string_view device_class, std::string_view key);
  // The tunings of one device class by key; "" = every class, by class and key.
  Result<std::vector<KernelTuning>> ListKernelTunings(std::string_view device_class);

 protected:
  explicit ReadTxn(internal::Connection& connection) : connection_(connection) {}
  ~ReadTxn() = default;
  internal::Connection& connection_;

  friend class Store;
};

// Read and write operations of one write transaction; valid only inside the Write body that
// received it. A returned error does not roll back by itself: the body decides (returning an
// error rolls the whole transaction back).
class WriteTxn : public ReadTxn {
 public:
  // The transaction's timestamp (unix ms), used for every stamp it writes.
  int64_t now_ms() const { return now_ms_; }

  // Nodes.
  // Inserts the node or replaces its registration facts (boot_id, agent_version, backend,
  // facts_json); sets state alive and registered_at/last_seen_at to now. The input's state and
  // times are ignored. Returns the stored record.
  Result<NodeRecord> UpsertNode(const NodeRecord& node);
  // last_seen_at = now. NotFound when the node is not registered.
  Status TouchNode(std::string_view name);
  Status SetNodeState(std::string_view name, NodeState state);
  // Forgets a node (its run members keep their node name). NotFound when absent.
  Status DeleteNode(std::string_view name);

  // Deployments.
  // Stores a new deployment (desired running, state pending, generation 0). InvalidArgument for
  // an empty name or model path, tp < 1, or invalid options JSON; AlreadyExists when a deployment
  // of that name exists and is not deleted. A deleted one of that name is revived in place: same
  // id, its generation counter kept (so generations never repeat), everything else reset.
  Result<DeploymentRecord> CreateDeployment(const DeploymentSpec& spec);
  Result<DeploymentRecord> UpdateDeployment(std::string_view name, const DeploymentPatch& patch);

  // Runs.
  // Starts the next generation of a deployment: generation = deployment.generation + 1 (also
  // stored on the deployment), state starting, one member per rank (phase assigned) on
  // placement[rank]. InvalidArgument when placement.size() != tp or a node name is empty;
  // NotFound for an unknown deployment; FailedPrecondition when it is deleted or still has a run
  // that has not ended.
  Result<RunDetail> CreateRun(std::string_view deployment,
                              const std::vector<std::string>& placement);
  // state ready, ready_at = now. FailedPrecondition when the run has ended; a ready run stays as
  // it is.
  Result<RunRecord> MarkRunReady(int64_t run_id);
  // state ended, ended_at = now, end_reason. A run already ended is returned unchanged (the
  // first reason stays).
  Result<RunRecord> EndRun(int64_t run_id, std::string_view end_reason);
  // NotFound when the run has no such rank.
  Result<RunMemberRecord> UpdateRunMember(int64_t run_id, int rank, const RunMemberPatch& patch);

  // Events. Returns the stored event (id and ts_ms assigned).
  Result<EventRecord> AppendEvent(const EventRecord& event);
  // Deletes all but the newest `keep_newest` events (ids are never reused); returns how many.
  Result<int64_t> PruneEvents(int64_t keep_newest);

  // Kernel tunings: insert or replace (updated_at = now).
  Result<KernelTuning> UpsertKernelTuning(const KernelTuning& tuning);

 private:
  WriteTxn(internal::Connection& connection, int64_t now_ms)
      : ReadTxn(connection), now_ms_(now_ms) {}
  int64_t now_ms_;

  friend class Store;
};

namespace internal {

// A queued write: Run executes the body inside the transaction (OK = commit), Finish delivers
// the outcome (OK only when committed). Both run on the writer thread.
class WriteTask {
 public:
  virtual ~WriteTask() = default;
  virtual Status Run(WriteTxn& txn) = 0;
  virtual void Finish(const Status& outcome) = 0;
};

inline const Status& StatusOf(const Status& status) { return status; }
template <typename T>
const Status& StatusOf(const Result<T>& result) {
  return result.status();
}

template <typename R>
struct IsStatusOrResult : std::false_type {};
template <>
struct IsStatusOrResult<Status> : std::true_type {};
template <typename T>
struct IsStatusOrResult<Result<T>> : std::true_type {};

template <typename Fn, typename R>
class WriteTaskImpl final : public WriteTask {
 public:
  explicit WriteTaskImpl(Fn fn) : fn_(std::move(fn)) {}
  std::future<R> future() { return promise_.get_future(); }
  Status Run(WriteTxn& txn) override {
    result_.emplace(fn_(txn));
    return StatusOf(*result_);
  }
  void Finish(const Status& outcome) override {
    if (outcome.ok()) {
      promise_.set_value(std::move(*result_));
    } else {
      promise_.set_value(R(outcome));
    }
  }

 private:
  Fn fn_;
  std::optional<R> result_{};
  std::promise<R> promise_;
};

}  // namespace internal

class Store {
 public:
  static Result<std::unique_ptr<Store>> Open(StoreOptions options, Clock& clock);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Queues `fn` (callable as R(WriteTxn&), R = Status or Result<T>) for the writer thread.
  template <typename Fn>
  auto Write(Fn fn) -> std::future<std::invoke_result_t<Fn&, WriteTxn&>> {
    using R = std::invoke_result_t<Fn&, WriteTxn&>;
    static_assert(internal::IsStatusOrResult<R>::value,
                  "a Write body must return Status or Result<T>");
    auto task = std::make_unique<internal::WriteTaskImpl<Fn, R>>(std::move(fn));
    std::future<R> future = task->future();
    PostWrite(std::move(task));
    return future;
  }

  // Runs `fn` (callable as R(ReadTxn&), R = Status or Result<T>) in a read transaction on the
  // calling thread; returns its result, or the error that kept the transaction from starting.
  template <typename Fn>
  auto Read(Fn&& fn) -> std::invoke_result_t<Fn&, ReadTxn&> {
    using R = std::invoke_result_t<Fn&, ReadTxn&>;
    static_assert(internal::IsStatusOrResult<R>::value,
                  "a Read body must return Status or Result<T>");
    std::optional<R> result;
    Status status = RunRead([&](ReadTxn& txn) {
      result.emplace(fn(txn));
      return internal::StatusOf(*result);
    });
    if (!result.has_value()) return R(status);
    return std::move(*result);
  }

  // Runs PRAGMA wal_checkpoint(TRUNCATE) on the writer thread, after the writes queued before.
  std::future<Status> Checkpoint();

  // Runs PRAGMA quick_check (or integrity_check when `full`) on a read connection; DataLoss with
  // the first problems when it does not say "ok".
  Status CheckIntegrity(bool full = false);

  StoreStats Stats() const;

  const std::string& path() const { return options_.path; }
  // Schema version after the migrations at open (schema.h: LatestSchemaVersion()).
  int schema_version() const { return schema_version_; }

 private:
  struct Shared;
  Store(StoreOptions options, Clock& clock);
  void PostWrite(std::unique_ptr<internal::WriteTask> task);
  void WriterLoop();
  Status RunRead(const std::function<Status(ReadTxn&)>& body);

  StoreOptions options_;
  Clock& clock_;
  int schema_version_ = 0;
  std::unique_ptr<Shared> shared_;  // connections, queue, writer thread
};

}  // namespace spark::store
