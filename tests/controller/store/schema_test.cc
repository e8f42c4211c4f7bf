#include "controller/store/schema.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "controller/store/sqlite.h"
#include "controller/store/store.h"
#include "tests/controller/store/test_util.h"

namespace spark::store {
namespace {

using ::spark::store::internal::Connection;
using ::spark::store::internal::Statement;
using ::spark::store::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<Connection> OpenRaw(const std::string& path) {
  Result<std::unique_ptr<Connection>> connection =
      Connection::Open(path, /*read_only=*/false, 1000);
  SPARK_CHECK(connection.ok()) << connection.status().ToString();
  return std::move(connection).value();
}

std::vector<std::string> Tables(Connection& connection) {
  Result<Statement> statement = connection.Prepare(
      "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
      "ORDER BY name");
  SPARK_CHECK(statement.ok()) << statement.status().ToString();
  std::vector<std::string> names;
  while (statement->Step().value()) names.push_back(statement->ColumnText(0));
  return names;
}

std::vector<std::string> VersionRows(Connection& connection) {
  Result<Statement> statement = connection.Prepare(
      "SELECT version || ':' || description || ':' || applied_at_ms FROM schema_version "
      "ORDER BY version");
  SPARK_CHECK(statement.ok()) << statement.status().ToString();
  std::vector<std::string> rows;
  while (statement->Step().value()) rows.push_back(statement->ColumnText(0));
  return rows;
}

TEST(SchemaTest, MigrationsAreNumberedFromOne) {
  std::span<const Migration> migrations = Migrations();
  ASSERT_FALSE(migrations.empty());
  for (size_t i = 0; i < migrations.size(); ++i) {
    EXPECT_EQ(migrations[i].version, static_cast<int>(i) + 1);
    EXPECT_FALSE(migrations[i].description.empty());
  }
  EXPECT_EQ(LatestSchemaVersion(), static_cast<int>(migrations.size()));
}

TEST(SchemaTest, FromEmptyCreatesEveryTable) {
  TempDir dir;
  std::unique_ptr<Connection> db = OpenRaw(dir.File("a.db"));
  EXPECT_EQ(ReadSchemaVersion(*db).value(), 0);
  Result<int> version = ApplyMigrations(*db, Migrations(), 1234);
  ASSERT_TRUE(version.ok()) << version.status().ToString();
  EXPECT_EQ(*version, LatestSchemaVersion());
  EXPECT_EQ(ReadSchemaVersion(*db).value(), LatestSchemaVersion());
  EXPECT_THAT(Tables(*db), ElementsAre("deployments", "events", "kernel_tunings", "nodes",
                                       "run_members", "runs", "schema_version"));
  EXPECT_THAT(VersionRows(*db), ElementsAre("1:nodes, deployments, runs, run_members, events:1234",
                                            "2:kernel_tunings:1234"));
  EXPECT_EQ(db->QueryText("PRAGMA user_version").value(), std::to_string(LatestSchemaVersion()));
  // Applying again changes nothing.
  EXPECT_EQ(ApplyMigrations(*db, Migrations(), 9999).value(), LatestSchemaVersion());
  EXPECT_EQ(VersionRows(*db).size(), Migrations().size());
}

TEST(SchemaTest, UpgradeFromVersionOneKeepsRows) {
  TempDir dir;
  const std::string path = dir.File("v1.db");
  {
    std::unique_ptr<Connection> db = OpenRaw(path);
    ASSERT_EQ(ApplyMigrations(*db, Migrations().first(1), 1).value(), 1);
    EXPECT_THAT(Tables(*db), ::testing::Not(::testing::Contains("kernel_tunings")));
    ASSERT_TRUE(
        db->Exec("INSERT INTO nodes VALUES ('n1', 'boot', 'v', 'cpu', '{}', 'alive', 5, 6)").ok());
  }
  ManualClock clock;
  Result<std::unique_ptr<Store>> store = Store::Open({.path = path}, clock);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->schema_version(), LatestSchemaVersion());
  Result<NodeRecord> node = (*store)->Read([](ReadTxn& txn) { return txn.GetNode("n1"); });
  ASSERT_TRUE(node.ok()) << node.status().ToString();
  EXPECT_EQ(node->registered_at_ms, 5);
  EXPECT_EQ(node->last_seen_at_ms, 6);
  EXPECT_TRUE((*store)
                  ->Write([](WriteTxn& txn) {
                    return txn.UpsertKernelTuning({.device_class = "c", .key = "k"});
                  })
                  .get()
                  .ok());
}

TEST(SchemaTest, FailingMigrationIsRolledBackWhole) {
  TempDir dir;
  std::unique_ptr<Connection> db = OpenRaw(dir.File("bad.db"));
  const Migration migrations[] = {
      {1, "first", "CREATE TABLE a (x INTEGER) STRICT;"},
      {2, "second",
       "CREATE TABLE b (x INTEGER) STRICT; INSERT INTO a VALUES (1); "
       "INSERT INTO no_such_table VALUES (1);"},
  };
  Result<int> version = ApplyMigrations(*db, migrations, 1);
  ASSERT_FALSE(version.ok());
  EXPECT_THAT(version.status().message(), HasSubstr("schema migration 2 (second)"));
  EXPECT_THAT(version.status().message(), HasSubstr("no_such_table"));
  EXPECT_EQ(ReadSchemaVersion(*db).value(), 1);
  EXPECT_THAT(Tables(*db), ElementsAre("a", "schema_version"));
  EXPECT_EQ(db->QueryText("SELECT COUNT(*) FROM a").value(), "0");
  EXPECT_TRUE(db->autocommit());
}

TEST(SchemaTest, RejectsBadNumberingAndDowngrades) {
  TempDir dir;
  std::unique_ptr<Connection> db = OpenRaw(dir.File("n.db"));
  const Migration gap[] = {{1, "one", "SELECT 1;"}, {3, "three", "SELECT 1;"}};
  EXPECT_EQ(ApplyMigrations(*db, gap, 1).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(ApplyMigrations(*db, Migrations(), 1).ok());
  Result<int> downgrade = ApplyMigrations(*db, Migrations().first(1), 1);
  EXPECT_EQ(downgrade.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(downgrade.status().message(), HasSubstr("knows only up to version 1"));
}

TEST(SchemaTest, ConstraintsGuardTheTables) {
  TempDir dir;
  std::unique_ptr<Connection> db = OpenRaw(dir.File("c.db"));
  ASSERT_TRUE(ApplyMigrations(*db, Migrations(), 1).ok());
  // Unknown state names, invalid JSON and dangling references are refused by the schema itself.
  EXPECT_EQ(
      db->Exec("INSERT INTO nodes VALUES ('n', 'b', 'v', 'cpu', '{}', 'zombie', 1, 1)").code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(db->Exec("INSERT INTO nodes VALUES ('n', 'b', 'v', 'cpu', '{x', 'alive', 1, 1)").code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(db->Exec("INSERT INTO runs (deployment_id, generation, state, started_at_ms, "
                     "placement_json) VALUES (42, 1, 'starting', 1, '[]')")
                .code(),
            StatusCode::kFailedPrecondition);
  // At most one open run per deployment.
  ASSERT_TRUE(db->Exec("INSERT INTO deployments (name, model_path, tp, backend, "
                       "pinned_nodes_json, options_json, desired, state, created_at_ms, "
                       "updated_at_ms) VALUES ('d', '/m', 1, '', '[]', '{}', 'running', "
                       "'pending', 1, 1)")
                  .ok());
  ASSERT_TRUE(db->Exec("INSERT INTO runs (deployment_id, generation, state, started_at_ms, "
                       "placement_json) VALUES (1, 1, 'starting', 1, '[]')")
                  .ok());
  EXPECT_EQ(db->Exec("INSERT INTO runs (deployment_id, generation, state, started_at_ms, "
                     "placement_json) VALUES (1, 2, 'ready', 1, '[]')")
                .code(),
            StatusCode::kAlreadyExists);
  EXPECT_TRUE(db->Exec("INSERT INTO runs (deployment_id, generation, state, started_at_ms, "
                       "placement_json) VALUES (1, 3, 'ended', 1, '[]')")
                  .ok());
}

}  // namespace
}  // namespace spark::store
