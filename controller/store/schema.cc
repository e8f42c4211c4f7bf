#include "controller/store/schema.h"

#include <string>

namespace spark::store {
namespace {

// Version 1: desired state, node registry, run history and the event log.
constexpr std::string_view kV1Sql = R"sql(
CREATE TABLE nodes (
  name TEXT PRIMARY KEY NOT NULL,
  boot_id TEXT NOT NULL,
  agent_version TEXT NOT NULL,
  backend TEXT NOT NULL,
  facts_json TEXT NOT NULL CHECK (json_valid(facts_json)),
  state TEXT NOT NULL CHECK (state IN ('alive', 'dead')),
  registered_at_ms INTEGER NOT NULL,
  last_seen_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE deployments (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  model_path TEXT NOT NULL,
  tp INTEGER NOT NULL CHECK (tp >= 1),
  backend TEXT NOT NULL,
  pinned_nodes_json TEXT NOT NULL CHECK (json_valid(pinned_nodes_json)),
  options_json TEXT NOT NULL CHECK (json_valid(options_json)),
  desired TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),
  state TEXT NOT NULL CHECK (state IN ('pending', 'loading', 'ready', 'recovering', 'failed',
                                       'stopping', 'stopped')),
  generation INTEGER NOT NULL DEFAULT 0 CHECK (generation >= 0),
  restarts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT '',
  deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
  created_at_ms INTEGER NOT NULL,
  updated_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE runs (
  id INTEGER PRIMARY KEY,
  deployment_id INTEGER NOT NULL REFERENCES deployments(id),
  generation INTEGER NOT NULL CHECK (generation >= 1),
  state TEXT NOT NULL CHECK (state IN ('starting', 'ready', 'ended')),
  started_at_ms INTEGER NOT NULL,
  ready_at_ms INTEGER NOT NULL DEFAULT 0,
  ended_at_ms INTEGER NOT NULL DEFAULT 0,
  end_reason TEXT NOT NULL DEFAULT '',
  placement_json TEXT NOT NULL CHECK (json_valid(placement_json)),
  UNIQUE (deployment_id, generation)
) STRICT;
-- At most one run per deployment is not ended.
CREATE UNIQUE INDEX runs_open_per_deployment ON runs(deployment_id) WHERE state != 'ended';

CREATE TABLE run_members (
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  rank INTEGER NOT NULL CHECK (rank >= 0),
  node_name TEXT NOT NULL,
  pid INTEGER NOT NULL DEFAULT 0,
  phase TEXT NOT NULL CHECK (phase IN ('assigned', 'starting', 'rendezvous', 'loading', 'ready',
                                       'failed', 'stopped')),
  exit_status INTEGER,
  signal INTEGER,
  failure_reason TEXT NOT NULL DEFAULT '',
  updated_at_ms INTEGER NOT NULL,
  PRIMARY KEY (run_id, rank)
) STRICT, WITHOUT ROWID;
CREATE INDEX run_members_by_node ON run_members(node_name);

CREATE TABLE events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  deployment TEXT NOT NULL DEFAULT '',
  node TEXT NOT NULL DEFAULT '',
  run_id INTEGER NOT NULL DEFAULT 0,
  generation INTEGER NOT NULL DEFAULT 0,
  message TEXT NOT NULL,
  data_json TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data_json))
) STRICT;
CREATE INDEX events_by_deployment ON events(deployment, id);
)sql";

// Version 2: measured kernel configurations per device class (MoE autotuning).
constexpr std::string_view kV2Sql = R"sql(
CREATE TABLE kernel_tunings (
  device_class TEXT NOT NULL,
  key TEXT NOT NULL,
  config_json TEXT NOT NULL CHECK (json_valid(config_json)),
  measured_us REAL NOT NULL,
  updated_at_ms INTEGER NOT NULL,
  PRIMARY KEY (device_class, key)
) STRICT, WITHOUT ROWID;
)sql";

constexpr Migration kMigrations[] = {
    {1, "nodes, deployments, runs, run_members, events", kV1Sql},
    {2, "kernel_tunings", kV2Sql},
};

constexpr std::string_view kCreateSchemaVersion = R"sql(
CREATE TABLE IF NOT EXISTS schema_version (
  version INTEGER PRIMARY KEY,
  description TEXT NOT NULL,
  applied_at_ms INTEGER NOT NULL
) STRICT;
)sql";

}  // namespace

std::span<const Migration> Migrations() { return kMigrations; }

int LatestSchemaVersion() { return kMigrations[std::size(kMigrations) - 1].version; }

Result<int> ReadSchemaVersion(internal::Connection& connection) {
  SPARK_ASSIGN_OR_RETURN(internal::Statement tables,
                         connection.Prepare("SELECT name FROM sqlite_schema WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite_%' ORDER BY name"));
  bool has_version_table = false;
  std::string others;
  while (true) {
    SPARK_ASSIGN_OR_RETURN(bool row, tables.Step());
    if (!row) break;
    std::string name = tables.ColumnText(0);
    if (name == "schema_version") {
      has_version_table = true;
    } else {
      others += (others.empty() ? "" : ", ") + name;
    }
  }
  if (!has_version_table) {
    if (others.empty()) return 0;
    return FailedPrecondition("database " + connection.path() +
                              " is not a spark-controller database (it has tables " + others +
                              " but no schema_version); point the controller at another file");
  }
  SPARK_ASSIGN_OR_RETURN(std::string version,
                         connection.QueryText("SELECT COALESCE(MAX(version), 0) FROM "
                                              "schema_version"));
  return std::stoi(version);
}

Result<int> ApplyMigrations(internal::Connection& connection, std::span<const Migration> migrations,
                            int64_t now_ms) {
  for (size_t i = 0; i < migrations.size(); ++i) {
    if (migrations[i].version != static_cast<int>(i) + 1) {
      return FailedPrecondition("migration list is not numbered 1..N: entry " + std::to_string(i) +
                                " has version " + std::to_string(migrations[i].version));
    }
  }
  SPARK_ASSIGN_OR_RETURN(int version, ReadSchemaVersion(connection));
  const int latest = static_cast<int>(migrations.size());
  if (version > latest) {
    return FailedPrecondition("database " + connection.path() + " has schema version " +
                              std::to_string(version) + " but this spark-controller knows only " +
                              "up to version " + std::to_string(latest) +
                              "; run the newer spark-controller that wrote it, or point --db at "
                              "another file");
  }
  for (const Migration& migration : migrations.subspan(static_cast<size_t>(version))) {
    const std::string context = "schema migration " + std::to_string(migration.version) + " (" +
                                std::string(migration.description) + ")";
    SPARK_RETURN_IF_ERROR(connection.Exec("BEGIN IMMEDIATE").WithContext(context));
    Status status = connection.Exec(kCreateSchemaVersion);
    if (status.ok()) status = connection.Exec(migration.sql);
    if (status.ok()) {
      Result<internal::Statement> insert = connection.Prepare(
          "INSERT INTO schema_version (version, description, applied_at_ms) VALUES (?1, ?2, ?3)");
      if (insert.ok()) {
        status = insert->Bind(1, int64_t{migration.version})
                     .Bind(2, migration.description)
                     .Bind(3, now_ms)
                     .Run();
      } else {
        status = insert.status();
      }
    }
    if (status.ok()) {
      status = connection.Exec("PRAGMA user_version=" + std::to_string(migration.version));
    }
    if (status.ok()) status = connection.Exec("COMMIT");
    if (!status.ok()) {
      if (!connection.autocommit()) connection.Exec("ROLLBACK").IgnoreError();
      return status.WithContext(context);
    }
  }
  return latest;
}

}  // namespace spark::store
