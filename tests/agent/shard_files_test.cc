#include "agent/shard_files.h"

#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "agent/log_tail.h"
#include "agent/shard_status_file.h"
#include "agent/stale_shards.h"
#include "agent/tokenizer_files.h"
#include "common/process.h"
#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

TEST(ShardFilesTest, StemsAreFileSafe) {
  EXPECT_EQ(ShardStem("glm47", 17, 3), "glm47-17-3");
  EXPECT_EQ(ShardStem("a/b c", 1, 0), "a_b_c-1-0");
  EXPECT_EQ(ShardStem("../x", 2, 1), "_.._x-2-1");
  EXPECT_EQ(ShardStem("", 1, 0), "_-1-0");
  const ShardPaths p = ShardPathsFor("/var/lib/spark-agent", "glm47-17-3");
  EXPECT_EQ(p.assignment, "/var/lib/spark-agent/shards/glm47-17-3.pb");
  EXPECT_EQ(p.pid, "/var/lib/spark-agent/shards/glm47-17-3.pid");
  EXPECT_EQ(p.status, "/var/lib/spark-agent/shards/glm47-17-3.status");
  EXPECT_EQ(p.log, "/var/lib/spark-agent/logs/glm47-17-3.log");
}

TEST(ShardFilesTest, PidFileRoundTripAndPlainPid) {
  testing::TempDir dir;
  ASSERT_TRUE(WritePidFile(dir.File("a.pid"), PidRecord{4242, 987654321, "boot-x"}).ok());
  EXPECT_EQ(testing::ReadFile(dir.File("a.pid")),
            "pid=4242\nstart_ticks=987654321\nboot_id=boot-x\n");
  Result<PidRecord> r = ReadPidFile(dir.File("a.pid"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->pid, 4242);
  EXPECT_EQ(r->start_ticks, 987654321u);
  EXPECT_EQ(r->boot_id, "boot-x");
  testing::WriteFile(dir.File("b.pid"), "777\n");
  EXPECT_EQ(ReadPidFile(dir.File("b.pid"))->pid, 777);
  testing::WriteFile(dir.File("c.pid"), "pid=abc\n");
  EXPECT_EQ(ReadPidFile(dir.File("c.pid")).status().code(), StatusCode::kDataLoss);
  testing::WriteFile(dir.File("d.pid"), "pid=1\n");  // never init
  EXPECT_EQ(ReadPidFile(dir.File("d.pid")).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ReadPidFile(dir.File("none.pid")).status().code(), StatusCode::kNotFound);
}

TEST(ShardFilesTest, ProcFacts) {
  Result<uint64_t> start = ProcessStartTicks(::getpid());
  ASSERT_TRUE(start.ok());
  EXPECT_GT(*start, 0u);
  EXPECT_EQ(*ProcessState(::getpid()), 'R');
  Result<std::vector<std::string>> cmdline = ProcessCmdline(::getpid());
  ASSERT_TRUE(cmdline.ok());
  ASSERT_FALSE(cmdline->empty());
  EXPECT_NE(cmdline->at(0).find("agent_unit_test"), std::string::npos);
  // A fake /proc entry whose command name holds spaces and parentheses.
  testing::TempDir dir;
  testing::WriteFile(dir.File("123/stat"),
                     "123 (a b) c) S 1 123 123 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5555 0 0\n");
  EXPECT_EQ(*ProcessStartTicks(123, dir.path().string()), 5555u);
  EXPECT_EQ(*ProcessState(123, dir.path().string()), 'S');
  EXPECT_EQ(ProcessStartTicks(124, dir.path().string()).status().code(), StatusCode::kNotFound);
}

TEST(ShardStatusFileTest, RoundTrip) {
  testing::TempDir dir;
  spark::v1::ShardStatus s;
  s.set_deployment("demo");
  s.set_generation(4);
  s.set_phase(spark::v1::SHARD_PHASE_READY);
  s.set_data_endpoint("tcp://10.0.0.1:7450");
  ASSERT_TRUE(WriteShardStatusFile(dir.File("x.status"), s).ok());
  Result<spark::v1::ShardStatus> read = ReadShardStatusFile(dir.File("x.status"));
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->SerializeAsString(), s.SerializeAsString());
  EXPECT_EQ(ReadShardStatusFile(dir.File("none")).status().code(), StatusCode::kNotFound);
  testing::WriteFile(dir.File("bad.status"), "\xff\xff\xff");
  EXPECT_EQ(ReadShardStatusFile(dir.File("bad.status")).status().code(), StatusCode::kDataLoss);
}

TEST(LogTailTest, LastLinesOnly) {
  testing::TempDir dir;
  std::string content;
  for (int i = 1; i <= 30; ++i) content += "line " + std::to_string(i) + "\r\n";
  content += "\n\n";
  testing::WriteFile(dir.File("a.log"), content);
  std::vector<std::string> tail = ReadLogTail(dir.File("a.log"), 20);
  ASSERT_EQ(tail.size(), 20u);
  EXPECT_EQ(tail.front(), "line 11");
  EXPECT_EQ(tail.back(), "line 30");
  // Reading only the last 20 bytes drops the partial first line.
  tail = ReadLogTail(dir.File("a.log"), 20, 20);
  ASSERT_FALSE(tail.empty());
  EXPECT_EQ(tail.back(), "line 30");
  for (const auto& line : tail) EXPECT_EQ(line.rfind("line ", 0), 0u) << line;
  EXPECT_TRUE(ReadLogTail(dir.File("missing.log"), 20).empty());
  testing::WriteFile(dir.File("long.log"), std::string(5000, 'x') + "\nend");
  tail = ReadLogTail(dir.File("long.log"), 2);
  ASSERT_EQ(tail.size(), 2u);
  EXPECT_EQ(tail[0].size(), 1000u);
  EXPECT_EQ(tail[1], "end");
}

TEST(TokenizerFilesTest, CollectsPresentFilesWithSha256) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  testing::TempDir dir;
  testing::WriteFile(dir.File("m/tokenizer.json"), "abc");
  testing::WriteFile(dir.File("m/chat_template.jinja"), "{{ x }}");
  testing::WriteFile(dir.File("m/config.json"), "{}");
  Result<spark::v1::TokenizerFiles> files = CollectTokenizerFiles(dir.File("m"));
  ASSERT_TRUE(files.ok());
  ASSERT_EQ(files->files_size(), 2);
  EXPECT_EQ(files->files(0).name(), "tokenizer.json");
  EXPECT_EQ(files->files(0).content(), "abc");
  EXPECT_EQ(files->files(0).sha256(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(files->files(1).name(), "chat_template.jinja");
  std::filesystem::create_directories(dir.File("empty"));
  EXPECT_EQ(CollectTokenizerFiles(dir.File("empty")).status().code(), StatusCode::kNotFound);
}

TEST(StaleShardsTest, OnlyProvenShardsOfThisBootAreKilled) {
  testing::TempDir dir;
  const std::string shards = dir.File("shards");
  std::filesystem::create_directories(shards);
  const std::string script =
      testing::WriteScript(dir.File("spark-shard"), "trap 'exit 0' TERM\nsleep 1000 & wait\n");
  RealProcessLauncher launcher;
  auto spawn = [&](const std::string& pb) {
    SpawnOptions o;
    o.args = {script, "--assignment", pb};
    Result<std::unique_ptr<Process>> p = launcher.Spawn(o);
    EXPECT_TRUE(p.ok());
    // Wait for exec so /proc shows the script's command line.
    EXPECT_TRUE(
        testing::WaitUntil([&] { return ProcessCmdline((*p)->pid()).value_or({}).size() == 4; },
                           std::chrono::milliseconds(2000)));
    return std::move(*p);
  };
  // Killed: this boot, matching start time and command line.
  std::unique_ptr<Process> current = spawn(shards + "/cur-1-0.pb");
  ASSERT_TRUE(WritePidFile(shards + "/cur-1-0.pid",
                           PidRecord{current->pid(), *ProcessStartTicks(current->pid()), "boot-2"})
                  .ok());
  // Left alone: recorded under another boot (the pid may belong to anything now).
  std::unique_ptr<Process> other_boot = spawn(shards + "/old-1-0.pb");
  ASSERT_TRUE(
      WritePidFile(shards + "/old-1-0.pid", PidRecord{other_boot->pid(), 0, "boot-1"}).ok());
  // Left alone: the start time does not match (a reused pid).
  std::unique_ptr<Process> reused = spawn(shards + "/reu-1-0.pb");
  ASSERT_TRUE(WritePidFile(shards + "/reu-1-0.pid", PidRecord{reused->pid(), 1, "boot-2"}).ok());
  testing::WriteFile(shards + "/orphan-2-0.pb", "");

  Result<StaleShardReport> report =
      KillStaleShards(shards, "boot-2", std::chrono::milliseconds(3000));
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_EQ(report->killed_pids.size(), 1u);
  EXPECT_EQ(report->killed_pids[0], current->pid());
  EXPECT_TRUE(report->still_alive.empty());
  Result<std::optional<ExitInfo>> exit = current->WaitFor(std::chrono::milliseconds(1000));
  ASSERT_TRUE(exit.ok() && exit->has_value());
  EXPECT_EQ((*exit)->signal, SIGKILL);
  EXPECT_TRUE(testing::ProcessAlive(other_boot->pid()));
  EXPECT_TRUE(testing::ProcessAlive(reused->pid()));
  // Every recorded file is gone, including the orphan assignment.
  EXPECT_TRUE(std::filesystem::is_empty(shards));
  EXPECT_EQ(report->removed.size(), 4u);
}

}  // namespace
}  // namespace spark::agent
