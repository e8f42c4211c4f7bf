// store_crash_writer DB_PATH ROUND: opens the store and commits transactions from 4 threads as
// fast as it can until it is killed. Each transaction appends an event "ROUND:SEQ", re-registers a
// node and, for every third SEQ, creates a deployment with a run. Once a write's future reports
// the commit, the writer prints "ack ROUND:SEQ" on stdout; the crash test SIGKILLs it at a random
// moment and then checks that every acknowledged transaction is in the database.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "controller/store/store.h"

namespace {

std::mutex out_mu;

void WriteLine(const std::string& line) {
  std::lock_guard lock(out_mu);
  std::string text = line + "\n";
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(STDOUT_FILENO, text.data() + done, text.size() - done);
    if (n <= 0) std::_Exit(3);
    done += static_cast<size_t>(n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace spark;
  using namespace spark::store;
  if (argc != 3) {
    std::fprintf(stderr, "usage: store_crash_writer DB_PATH ROUND\n");
    return 2;
  }
  const std::string path = argv[1];
  const std::string round = argv[2];
  Result<std::unique_ptr<Store>> opened = Store::Open({.path = path}, RealClock::Get());
  if (!opened.ok()) {
    std::fprintf(stderr, "%s\n", opened.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<Store> store = std::move(opened).value();
  WriteLine("open");
  std::atomic<int64_t> next_seq{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      while (true) {
        const int64_t seq = next_seq.fetch_add(1);
        const std::string id = round + ":" + std::to_string(seq);
        Status status =
            store
                ->Write([&](WriteTxn& txn) -> Status {
                  SPARK_RETURN_IF_ERROR(txn.AppendEvent({.kind = "crash", .message = id}).status());
                  SPARK_RETURN_IF_ERROR(
                      txn.UpsertNode({.name = "node-" + std::to_string(t),
                                      .boot_id = id,
                                      .facts_json = R"({"seq":)" + std::to_string(seq) + "}"})
                          .status());
                  if (seq % 3 != 0) return Status();
                  const std::string name = "d-" + round + "-" + std::to_string(seq);
                  SPARK_RETURN_IF_ERROR(
                      txn.CreateDeployment({.name = name, .model_path = "/m"}).status());
                  return txn.CreateRun(name, {"node-" + std::to_string(t)}).status();
                })
                .get();
        if (!status.ok()) {
          std::fprintf(stderr, "write %s failed: %s\n", id.c_str(), status.ToString().c_str());
          std::_Exit(1);
        }
        WriteLine("ack " + id);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  return 0;
}
