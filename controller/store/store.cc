#include "controller/store/store.h"

#include <fcntl.h>
#include <sys/file.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/check.h"
#include "common/fd.h"
#include "controller/store/schema.h"
#include "controller/store/sqlite.h"

namespace spark::store {

using internal::Connection;
using internal::Statement;

namespace {

int64_t UnixMs(Clock::WallTimePoint time) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
}

// --- JSON fields ---

// Normalises "" to "{}" and rejects text that is not JSON, naming the field.
Result<std::string> CheckJson(std::string_view field, const std::string& text) {
  if (text.empty()) return std::string("{}");
  if (!nlohmann::json::accept(text)) {
    return InvalidArgument(std::string(field) + " is not valid JSON: " +
                           (text.size() > 60 ? text.substr(0, 57) + "..." : text) +
                           "; send a JSON document");
  }
  return text;
}

std::string EncodeStringList(const std::vector<std::string>& values) {
  return nlohmann::json(values).dump();
}

Result<std::vector<std::string>> DecodeStringList(std::string_view column,
                                                  const std::string& text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> values;
  bool ok = json.is_array();
  if (ok) {
    for (const nlohmann::json& item : json) {
      if (!item.is_string()) {
        ok = false;
        break;
      }
      values.push_back(item.get<std::string>());
    }
  }
  if (!ok) {
    return DataLoss(std::string(column) + " holds " + text +
                    ", not a JSON list of strings; the database was modified outside spark");
  }
  return values;
}

template <typename T>
Result<T> Column(Result<T> parsed, std::string_view column) {
  if (!parsed.ok()) {
    return DataLoss(std::string(column) + ": " + parsed.status().message() +
                    "; the database was modified outside spark");
  }
  return parsed;
}

// --- row readers (column order fixed by the k*Columns strings) ---

constexpr std::string_view kNodeColumns =
    "name, boot_id, agent_version, backend, facts_json, state, registered_at_ms, last_seen_at_ms";

Result<NodeRecord> ReadNode(const Statement& row) {
  NodeRecord node;
  node.name = row.ColumnText(0);
  node.boot_id = row.ColumnText(1);
  node.agent_version = row.ColumnText(2);
  node.backend = row.ColumnText(3);
  node.facts_json = row.ColumnText(4);
  SPARK_ASSIGN_OR_RETURN(node.state, Column(ParseNodeState(row.ColumnText(5)), "nodes.state"));
  node.registered_at_ms = row.ColumnInt(6);
  node.last_seen_at_ms = row.ColumnInt(7);
  return node;
}

constexpr std::string_view kDeploymentColumns =
    "id, name, model_path, tp, backend, pinned_nodes_json, options_json, desired, state, "
    "generation, restarts, last_error, deleted, created_at_ms, updated_at_ms";

Result<DeploymentRecord> ReadDeployment(const Statement& row) {
  DeploymentRecord d;
  d.id = row.ColumnInt(0);
  d.name = row.ColumnText(1);
  d.model_path = row.ColumnText(2);
  d.tp = static_cast<int>(row.ColumnInt(3));
  d.backend = row.ColumnText(4);
  SPARK_ASSIGN_OR_RETURN(d.pinned_nodes,
                         DecodeStringList("deployments.pinned_nodes_json", row.ColumnText(5)));
  d.options_json = row.ColumnText(6);
  SPARK_ASSIGN_OR_RETURN(d.desired, Column(ParseDesired(row.ColumnText(7)), "deployments.desired"));
  SPARK_ASSIGN_OR_RETURN(d.state,
                         Column(ParseDeploymentState(row.ColumnText(8)), "deployments.state"));
  d.generation = row.ColumnInt(9);
  d.restarts = static_cast<int>(row.ColumnInt(10));
  d.last_error = row.ColumnText(11);
  d.deleted = row.ColumnInt(12) != 0;
  d.created_at_ms = row.ColumnInt(13);
  d.updated_at_ms = row.ColumnInt(14);
  return d;
}

constexpr std::string_view kRunSelect =
    "SELECT r.id, r.deployment_id, d.name, r.generation, r.state, r.started_at_ms, "
    "r.ready_at_ms, r.ended_at_ms, r.end_reason, r.placement_json "
    "FROM runs r JOIN deployments d ON d.id = r.deployment_id ";

Result<RunRecord> ReadRun(const Statement& row) {
  RunRecord run;
  run.id = row.ColumnInt(0);
  run.deployment_id = row.ColumnInt(1);
  run.deployment = row.ColumnText(2);
  run.generation = row.ColumnInt(3);
  SPARK_ASSIGN_OR_RETURN(run.state, Column(ParseRunState(row.ColumnText(4)), "runs.state"));
  run.started_at_ms = row.ColumnInt(5);
  run.ready_at_ms = row.ColumnInt(6);
  run.ended_at_ms = row.ColumnInt(7);
  run.end_reason = row.ColumnText(8);
  SPARK_ASSIGN_OR_RETURN(run.placement, DecodeStringList("runs.placement_json", row.ColumnText(9)));
  return run;
}

constexpr std::string_view kMemberColumns =
    "run_id, rank, node_name, pid, phase, exit_status, signal, failure_reason, updated_at_ms";

Result<RunMemberRecord> ReadMember(const Statement& row) {
  RunMemberRecord m;
  m.run_id = row.ColumnInt(0);
  m.rank = static_cast<int>(row.ColumnInt(1));
  m.node_name = row.ColumnText(2);
  m.pid = row.ColumnInt(3);
  SPARK_ASSIGN_OR_RETURN(m.phase, Column(ParseMemberPhase(row.ColumnText(4)), "run_members.phase"));
  if (!row.ColumnIsNull(5)) m.exit_status = static_cast<int>(row.ColumnInt(5));
  if (!row.ColumnIsNull(6)) m.signal = static_cast<int>(row.ColumnInt(6));
  m.failure_reason = row.ColumnText(7);
  m.updated_at_ms = row.ColumnInt(8);
  return m;
}

constexpr std::string_view kEventColumns =
    "id, ts_ms, kind, deployment, node, run_id, generation, message, data_json";

Result<EventRecord> ReadEvent(const Statement& row) {
  EventRecord e;
  e.id = row.ColumnInt(0);
  e.ts_ms = row.ColumnInt(1);
  e.kind = row.ColumnText(2);
  e.deployment = row.ColumnText(3);
  e.node = row.ColumnText(4);
  e.run_id = row.ColumnInt(5);
  e.generation = row.ColumnInt(6);
  e.message = row.ColumnText(7);
  e.data_json = row.ColumnText(8);
  return e;
}

constexpr std::string_view kTuningColumns =
    "device_class, key, config_json, measured_us, updated_at_ms";

Result<KernelTuning> ReadTuning(const Statement& row) {
  KernelTuning t;
  t.device_class = row.ColumnText(0);
  t.key = row.ColumnText(1);
  t.config_json = row.ColumnText(2);
  t.measured_us = row.ColumnDouble(3);
  t.updated_at_ms = row.ColumnInt(4);
  return t;
}

// --- query helpers ---

template <typename T, typename BindFn, typename ReadFn>
Result<std::vector<T>> QueryAll(Connection& connection, const std::string& sql, BindFn bind,
                                ReadFn read) {
  SPARK_ASSIGN_OR_RETURN(Statement statement, connection.Prepare(sql));
  bind(statement);
  std::vector<T> rows;
  while (true) {
    SPARK_ASSIGN_OR_RETURN(bool has_row, statement.Step());
    if (!has_row) break;
    SPARK_ASSIGN_OR_RETURN(T value, read(statement));
    rows.push_back(std::move(value));
  }
  return rows;
}

template <typename T, typename BindFn, typename ReadFn>
Result<std::optional<T>> QueryOne(Connection& connection, const std::string& sql, BindFn bind,
                                  ReadFn read) {
  SPARK_ASSIGN_OR_RETURN(Statement statement, connection.Prepare(sql));
  bind(statement);
  SPARK_ASSIGN_OR_RETURN(bool has_row, statement.Step());
  if (!has_row) return std::optional<T>();
  SPARK_ASSIGN_OR_RETURN(T value, read(statement));
  return std::optional<T>(std::move(value));
}

std::string Quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

// Builds "UPDATE table SET a = ?1, b = ?2 ... WHERE <where>" with binds applied in order.
class UpdateBuilder {
 public:
  template <typename V>
  void Set(std::string_view column, V value) {
    columns_.emplace_back(column);
    binds_.push_back([value = std::move(value)](Statement& s, int i) { s.Bind(i, value); });
  }
  void SetNull(std::string_view column) {
    columns_.emplace_back(column);
    binds_.push_back([](Statement& s, int i) { s.BindNull(i); });
  }
  // Runs the update and returns the number of changed rows. `where` numbers its parameters from
  // ?100 up (SET takes ?1..?N), and `bind_where` binds them.
  template <typename BindWhere>
  Result<int64_t> Run(Connection& connection, std::string_view table, std::string_view where,
                      BindWhere bind_where) {
    std::string sql = "UPDATE " + std::string(table) + " SET ";
    for (size_t i = 0; i < columns_.size(); ++i) {
      sql += (i == 0 ? "" : ", ") + columns_[i] + " = ?" + std::to_string(i + 1);
    }
    sql += " WHERE " + std::string(where);
    SPARK_ASSIGN_OR_RETURN(Statement statement, connection.Prepare(sql));
    for (size_t i = 0; i < binds_.size(); ++i) binds_[i](statement, static_cast<int>(i) + 1);
    bind_where(statement);
    SPARK_RETURN_IF_ERROR(statement.Run());
    return connection.Changes();
  }

 private:
  std::vector<std::string> columns_;
  std::vector<std::function<void(Statement&, int)>> binds_;
};

}  // namespace

// --- ReadTxn ---

Result<NodeRecord> ReadTxn::GetNode(std::string_view name) {
  SPARK_ASSIGN_OR_RETURN(
      std::optional<NodeRecord> node,
      QueryOne<NodeRecord>(
          connection_, "SELECT " + std::string(kNodeColumns) + " FROM nodes WHERE name = ?1",
          [&](Statement& s) { s.Bind(1, name); }, ReadNode));
  if (!node) return NotFound("node " + Quoted(name) + " is not registered");
  return *std::move(node);
}

Result<std::vector<NodeRecord>> ReadTxn::ListNodes() {
  return QueryAll<NodeRecord>(
      connection_, "SELECT " + std::string(kNodeColumns) + " FROM nodes ORDER BY name",
      [](Statement&) {}, ReadNode);
}

Result<DeploymentRecord> ReadTxn::GetDeployment(std::string_view name) {
  SPARK_ASSIGN_OR_RETURN(
      std::optional<DeploymentRecord> d,
      QueryOne<DeploymentRecord>(
          connection_,
          "SELECT " + std::string(kDeploymentColumns) + " FROM deployments WHERE name = ?1",
          [&](Statement& s) { s.Bind(1, name); }, ReadDeployment));
  if (!d) return NotFound("deployment " + Quoted(name) + " does not exist");
  return *std::move(d);
}

Result<DeploymentRecord> ReadTxn::GetDeploymentById(int64_t id) {
  SPARK_ASSIGN_OR_RETURN(
      std::optional<DeploymentRecord> d,
      QueryOne<DeploymentRecord>(
          connection_,
          "SELECT " + std::string(kDeploymentColumns) + " FROM deployments WHERE id = ?1",
          [&](Statement& s) { s.Bind(1, id); }, ReadDeployment));
  if (!d) return NotFound("deployment with id " + std::to_string(id) + " does not exist");
  return *std::move(d);
}

Result<std::vector<DeploymentRecord>> ReadTxn::ListDeployments(bool include_deleted) {
  return QueryAll<DeploymentRecord>(
      connection_,
      "SELECT " + std::string(kDeploymentColumns) + " FROM deployments" +
          (include_deleted ? "" : " WHERE deleted = 0") + " ORDER BY name",
      [](Statement&) {}, ReadDeployment);
}

Result<RunDetail> ReadTxn::GetRun(int64_t run_id) {
  SPARK_ASSIGN_OR_RETURN(std::optional<RunRecord> run,
                         QueryOne<RunRecord>(
                             connection_, std::string(kRunSelect) + "WHERE r.id = ?1",
                             [&](Statement& s) { s.Bind(1, run_id); }, ReadRun));
  if (!run) return NotFound("run " + std::to_string(run_id) + " does not exist");
  RunDetail detail{.run = *std::move(run), .members = {}};
  SPARK_ASSIGN_OR_RETURN(detail.members, ListRunMembers(run_id));
  return detail;
}

Result<std::vector<RunRecord>> ReadTxn::ListRuns(const RunFilter& filter) {
  if (filter.limit < 1) {
    return InvalidArgument("run list limit must be at least 1, got " +
                           std::to_string(filter.limit));
  }
  std::string sql = std::string(kRunSelect);
  if (!filter.deployment.empty()) sql += "WHERE d.name = ?2 ";
  sql += "ORDER BY r.id DESC LIMIT ?1";
  return QueryAll<RunRecord>(
      connection_, sql,
      [&](Statement& s) {
        s.Bind(1, int64_t{filter.limit});
        if (!filter.deployment.empty()) s.Bind(2, std::string_view(filter.deployment));
      },
      ReadRun);
}

Result<std::vector<RunDetail>> ReadTxn::ListOpenRuns() {
  SPARK_ASSIGN_OR_RETURN(
      std::vector<RunRecord> runs,
      QueryAll<RunRecord>(
          connection_, std::string(kRunSelect) + "WHERE r.state != 'ended' ORDER BY r.id",
          [](Statement&) {}, ReadRun));
  std::vector<RunDetail> details;
  details.reserve(runs.size());
  for (RunRecord& run : runs) {
    SPARK_ASSIGN_OR_RETURN(std::vector<RunMemberRecord> members, ListRunMembers(run.id));
    details.push_back(RunDetail{.run = std::move(run), .members = std::move(members)});
  }
  return details;
}

Result<std::optional<RunDetail>> ReadTxn::GetOpenRun(std::string_view deployment) {
  SPARK_ASSIGN_OR_RETURN(
      std::optional<RunRecord> run,
      QueryOne<RunRecord>(
          connection_, std::string(kRunSelect) + "WHERE d.name = ?1 AND r.state != 'ended'",
          [&](Statement& s) { s.Bind(1, deployment); }, ReadRun));
  if (!run) return std::optional<RunDetail>();
  RunDetail detail{.run = *std::move(run), .members = {}};
  SPARK_ASSIGN_OR_RETURN(detail.members, ListRunMembers(detail.run.id));
  return std::optional<RunDetail>(std::move(detail));
}

Result<std::vector<RunMemberRecord>> ReadTxn::ListRunMembers(int64_t run_id) {
  return QueryAll<RunMemberRecord>(
      connection_,
      "SELECT " + std::string(kMemberColumns) + " FROM run_members WHERE run_id = ?1 ORDER BY rank",
      [&](Statement& s) { s.Bind(1, run_id); }, ReadMember);
}

Result<std::vector<EventRecord>> ReadTxn::ListEvents(int64_t since_id, int limit,
                                                     std::string_view deployment) {
  if (limit < 1 || limit > 10000) {
    return InvalidArgument("event list limit must be between 1 and 10000, got " +
                           std::to_string(limit));
  }
  std::string sql = "SELECT " + std::string(kEventColumns) + " FROM events WHERE id > ?1";
  if (!deployment.empty()) sql += " AND deployment = ?3";
  sql += " ORDER BY id LIMIT ?2";
  return QueryAll<EventRecord>(
      connection_, sql,
      [&](Statement& s) {
        s.Bind(1, since_id).Bind(2, int64_t{limit});
        if (!deployment.empty()) s.Bind(3, deployment);
      },
      ReadEvent);
}

Result<int64_t> ReadTxn::LastEventId() {
  SPARK_ASSIGN_OR_RETURN(std::string id,
                         connection_.QueryText("SELECT COALESCE(MAX(id), 0) FROM events"));
  return std::stoll(id);
}

Result<KernelTuning> ReadTxn::GetKernelTuning(std::string_view device_class, std::string_view key) {
  SPARK_ASSIGN_OR_RETURN(
      std::optional<KernelTuning> tuning,
      QueryOne<KernelTuning>(
          connection_,
          "SELECT " + std::string(kTuningColumns) +
              " FROM kernel_tunings WHERE device_class = ?1 AND key = ?2",
          [&](Statement& s) { s.Bind(1, device_class).Bind(2, key); }, ReadTuning));
  if (!tuning) {
    return NotFound("no kernel tuning stored for device class " + Quoted(device_class) +
                    " and key " + Quoted(key));
  }
  return *std::move(tuning);
}

Result<std::vector<KernelTuning>> ReadTxn::ListKernelTunings(std::string_view device_class) {
  if (device_class.empty()) {
    return QueryAll<KernelTuning>(
        connection_,
        "SELECT " + std::string(kTuningColumns) + " FROM kernel_tunings ORDER BY device_class, key",
        [](Statement&) {}, ReadTuning);
  }
  return QueryAll<KernelTuning>(
      connection_,
      "SELECT " + std::string(kTuningColumns) +
          " FROM kernel_tunings WHERE device_class = ?1 ORDER BY key",
      [&](Statement& s) { s.Bind(1, device_class); }, ReadTuning);
}

// --- WriteTxn: nodes ---

Result<NodeRecord> WriteTxn::UpsertNode(const NodeRecord& node) {
  if (node.name.empty()) return InvalidArgument("node name is empty; give the agent --node-name");
  SPARK_ASSIGN_OR_RETURN(std::string facts, CheckJson("node facts_json", node.facts_json));
  SPARK_ASSIGN_OR_RETURN(
      Statement insert,
      connection_.Prepare("INSERT INTO nodes (name, boot_id, agent_version, backend, "
                          "facts_json, state, registered_at_ms, last_seen_at_ms) "
                          "VALUES (?1, ?2, ?3, ?4, ?5, 'alive', ?6, ?6) "
                          "ON CONFLICT (name) DO UPDATE SET boot_id = excluded.boot_id, "
                          "agent_version = excluded.agent_version, backend = excluded.backend, "
                          "facts_json = excluded.facts_json, state = 'alive', "
                          "registered_at_ms = excluded.registered_at_ms, "
                          "last_seen_at_ms = excluded.last_seen_at_ms"));
  SPARK_RETURN_IF_ERROR(insert.Bind(1, std::string_view(node.name))
                            .Bind(2, std::string_view(node.boot_id))
                            .Bind(3, std::string_view(node.agent_version))
                            .Bind(4, std::string_view(node.backend))
                            .Bind(5, std::string_view(facts))
                            .Bind(6, now_ms_)
                            .Run());
  return GetNode(node.name);
}

Status WriteTxn::TouchNode(std::string_view name) {
  UpdateBuilder update;
  update.Set("last_seen_at_ms", now_ms_);
  SPARK_ASSIGN_OR_RETURN(int64_t changed, update.Run(connection_, "nodes", "name = ?100",
                                                     [&](Statement& s) { s.Bind(100, name); }));
  if (changed == 0) return NotFound("node " + Quoted(name) + " is not registered");
  return Status();
}

Status WriteTxn::SetNodeState(std::string_view name, NodeState state) {
  UpdateBuilder update;
  update.Set("state", NodeStateName(state));
  SPARK_ASSIGN_OR_RETURN(int64_t changed, update.Run(connection_, "nodes", "name = ?100",
                                                     [&](Statement& s) { s.Bind(100, name); }));
  if (changed == 0) return NotFound("node " + Quoted(name) + " is not registered");
  return Status();
}

Status WriteTxn::DeleteNode(std::string_view name) {
  SPARK_ASSIGN_OR_RETURN(Statement del, connection_.Prepare("DELETE FROM nodes WHERE name = ?1"));
  SPARK_RETURN_IF_ERROR(del.Bind(1, name).Run());
  if (connection_.Changes() == 0) return NotFound("node " + Quoted(name) + " is not registered");
  return Status();
}

// --- WriteTxn: deployments ---

Result<DeploymentRecord> WriteTxn::CreateDeployment(const DeploymentSpec& spec) {
  if (spec.name.empty()) return InvalidArgument("deployment name is empty; give it a name");
  if (spec.model_path.empty()) {
    return InvalidArgument("deployment " + Quoted(spec.name) +
                           ": model path is empty; give the checkpoint directory");
  }
  if (spec.tp < 1) {
    return InvalidArgument("deployment " + Quoted(spec.name) + ": tp must be at least 1, got " +
                           std::to_string(spec.tp));
  }
  SPARK_ASSIGN_OR_RETURN(std::string options,
                         CheckJson("deployment options_json", spec.options_json));
  const std::string pinned = EncodeStringList(spec.pinned_nodes);

  Result<DeploymentRecord> existing = GetDeployment(spec.name);
  if (existing.ok()) {
    if (!existing->deleted) {
      return AlreadyExists("deployment " + Quoted(spec.name) +
                           " already exists; delete it first or choose another name");
    }
    SPARK_ASSIGN_OR_RETURN(std::optional<RunDetail> open, GetOpenRun(spec.name));
    if (open.has_value()) {
      return FailedPrecondition("deployment " + Quoted(spec.name) +
                                " is still being stopped (run " + std::to_string(open->run.id) +
                                " has not ended); retry once it is stopped");
    }
    SPARK_ASSIGN_OR_RETURN(
        Statement revive,
        connection_.Prepare("UPDATE deployments SET model_path = ?2, tp = ?3, backend = ?4, "
                            "pinned_nodes_json = ?5, options_json = ?6, desired = 'running', "
                            "state = 'pending', restarts = 0, last_error = '', deleted = 0, "
                            "created_at_ms = ?7, updated_at_ms = ?7 WHERE id = ?1"));
    SPARK_RETURN_IF_ERROR(revive.Bind(1, existing->id)
                              .Bind(2, std::string_view(spec.model_path))
                              .Bind(3, int64_t{spec.tp})
                              .Bind(4, std::string_view(spec.backend))
                              .Bind(5, std::string_view(pinned))
                              .Bind(6, std::string_view(options))
                              .Bind(7, now_ms_)
                              .Run());
    return GetDeploymentById(existing->id);
  }
  if (existing.status().code() != StatusCode::kNotFound) return existing.status();

  SPARK_ASSIGN_OR_RETURN(
      Statement insert,
      connection_.Prepare("INSERT INTO deployments (name, model_path, tp, backend, "
                          "pinned_nodes_json, options_json, desired, state, created_at_ms, "
                          "updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', 'pending', "
                          "?7, ?7)"));
  SPARK_RETURN_IF_ERROR(insert.Bind(1, std::string_view(spec.name))
                            .Bind(2, std::string_view(spec.model_path))
                            .Bind(3, int64_t{spec.tp})
                            .Bind(4, std::string_view(spec.backend))
                            .Bind(5, std::string_view(pinned))
                            .Bind(6, std::string_view(options))
                            .Bind(7, now_ms_)
                            .Run());
  return GetDeploymentById(connection_.LastInsertRowId());
}

Result<DeploymentRecord> WriteTxn::UpdateDeployment(std::string_view name,
                                                    const DeploymentPatch& patch) {
  UpdateBuilder update;
  if (patch.desired) update.Set("desired", DesiredName(*patch.desired));
  if (patch.state) update.Set("state", DeploymentStateName(*patch.state));
  if (patch.restarts) update.Set("restarts", int64_t{*patch.restarts});
  if (patch.last_error) update.Set("last_error", std::string_view(*patch.last_error));
  if (patch.deleted) update.Set("deleted", int64_t{*patch.deleted ? 1 : 0});
  std::string pinned;
  if (patch.pinned_nodes) {
    pinned = EncodeStringList(*patch.pinned_nodes);
    update.Set("pinned_nodes_json", std::string_view(pinned));
  }
  std::string options;
  if (patch.options_json) {
    SPARK_ASSIGN_OR_RETURN(options, CheckJson("deployment options_json", *patch.options_json));
    update.Set("options_json", std::string_view(options));
  }
  update.Set("updated_at_ms", now_ms_);
  SPARK_ASSIGN_OR_RETURN(int64_t changed, update.Run(connection_, "deployments", "name = ?100",
                                                     [&](Statement& s) { s.Bind(100, name); }));
  if (changed == 0) return NotFound("deployment " + Quoted(name) + " does not exist");
  return GetDeployment(name);
}

// --- WriteTxn: runs ---

Result<RunDetail> WriteTxn::CreateRun(std::string_view deployment,
                                      const std::vector<std::string>& placement) {
  SPARK_ASSIGN_OR_RETURN(DeploymentRecord d, GetDeployment(deployment));
  if (d.deleted) {
    return FailedPrecondition("deployment " + Quoted(deployment) +
                              " is deleted; deploy it again before starting a run");
  }
  if (static_cast<int>(placement.size()) != d.tp) {
    return InvalidArgument("deployment " + Quoted(deployment) + " has tp " + std::to_string(d.tp) +
                           " but the placement names " + std::to_string(placement.size()) +
                           " nodes");
  }
  for (size_t rank = 0; rank < placement.size(); ++rank) {
    if (placement[rank].empty()) {
      return InvalidArgument("placement of deployment " + Quoted(deployment) + ": rank " +
                             std::to_string(rank) + " has no node");
    }
  }
  SPARK_ASSIGN_OR_RETURN(std::optional<RunDetail> open, GetOpenRun(deployment));
  if (open.has_value()) {
    return FailedPrecondition("deployment " + Quoted(deployment) + " still has run " +
                              std::to_string(open->run.id) + " (generation " +
                              std::to_string(open->run.generation) +
                              ") open; end it before starting another");
  }
  const int64_t generation = d.generation + 1;
  SPARK_ASSIGN_OR_RETURN(Statement insert_run,
                         connection_.Prepare("INSERT INTO runs (deployment_id, generation, state, "
                                             "started_at_ms, placement_json) "
                                             "VALUES (?1, ?2, 'starting', ?3, ?4)"));
  SPARK_RETURN_IF_ERROR(insert_run.Bind(1, d.id)
                            .Bind(2, generation)
                            .Bind(3, now_ms_)
                            .Bind(4, std::string_view(EncodeStringList(placement)))
                            .Run());
  const int64_t run_id = connection_.LastInsertRowId();
  SPARK_ASSIGN_OR_RETURN(Statement bump,
                         connection_.Prepare("UPDATE deployments SET generation = ?2, "
                                             "updated_at_ms = ?3 WHERE id = ?1"));
  SPARK_RETURN_IF_ERROR(bump.Bind(1, d.id).Bind(2, generation).Bind(3, now_ms_).Run());
  for (size_t rank = 0; rank < placement.size(); ++rank) {
    SPARK_ASSIGN_OR_RETURN(Statement member,
                           connection_.Prepare("INSERT INTO run_members (run_id, rank, node_name, "
                                               "phase, updated_at_ms) "
                                               "VALUES (?1, ?2, ?3, 'assigned', ?4)"));
    SPARK_RETURN_IF_ERROR(member.Bind(1, run_id)
                              .Bind(2, static_cast<int64_t>(rank))
                              .Bind(3, std::string_view(placement[rank]))
                              .Bind(4, now_ms_)
                              .Run());
  }
  return GetRun(run_id);
}

Result<RunRecord> WriteTxn::MarkRunReady(int64_t run_id) {
  SPARK_ASSIGN_OR_RETURN(RunDetail detail, GetRun(run_id));
  if (detail.run.state == RunState::kEnded) {
    return FailedPrecondition("run " + std::to_string(run_id) + " of deployment " +
                              Quoted(detail.run.deployment) + " has ended; it cannot become ready");
  }
  if (detail.run.state == RunState::kReady) return detail.run;
  SPARK_ASSIGN_OR_RETURN(
      Statement update,
      connection_.Prepare("UPDATE runs SET state = 'ready', ready_at_ms = ?2 WHERE id = ?1"));
  SPARK_RETURN_IF_ERROR(update.Bind(1, run_id).Bind(2, now_ms_).Run());
  detail.run.state = RunState::kReady;
  detail.run.ready_at_ms = now_ms_;
  return detail.run;
}

Result<RunRecord> WriteTxn::EndRun(int64_t run_id, std::string_view end_reason) {
  SPARK_ASSIGN_OR_RETURN(RunDetail detail, GetRun(run_id));
  if (detail.run.state == RunState::kEnded) return detail.run;
  SPARK_ASSIGN_OR_RETURN(Statement update,
                         connection_.Prepare("UPDATE runs SET state = 'ended', ended_at_ms = ?2, "
                                             "end_reason = ?3 WHERE id = ?1"));
  SPARK_RETURN_IF_ERROR(update.Bind(1, run_id).Bind(2, now_ms_).Bind(3, end_reason).Run());
  detail.run.state = RunState::kEnded;
  detail.run.ended_at_ms = now_ms_;
  detail.run.end_reason = std::string(end_reason);
  return detail.run;
}

Result<RunMemberRecord> WriteTxn::UpdateRunMember(int64_t run_id, int rank,
                                                  const RunMemberPatch& patch) {
  UpdateBuilder update;
  if (patch.pid) update.Set("pid", *patch.pid);
  if (patch.phase) update.Set("phase", MemberPhaseName(*patch.phase));
  if (patch.exit_status) update.Set("exit_status", int64_t{*patch.exit_status});
  if (patch.signal) update.Set("signal", int64_t{*patch.signal});
  if (patch.failure_reason) update.Set("failure_reason", std::string_view(*patch.failure_reason));
  update.Set("updated_at_ms", now_ms_);
  SPARK_ASSIGN_OR_RETURN(
      int64_t changed,
      update.Run(connection_, "run_members", "run_id = ?100 AND rank = ?101",
                 [&](Statement& s) { s.Bind(100, run_id).Bind(101, int64_t{rank}); }));
  if (changed == 0) {
    return NotFound("run " + std::to_string(run_id) + " has no rank " + std::to_string(rank));
  }
  SPARK_ASSIGN_OR_RETURN(
      std::optional<RunMemberRecord> member,
      QueryOne<RunMemberRecord>(
          connection_,
          "SELECT " + std::string(kMemberColumns) +
              " FROM run_members WHERE run_id = ?1 AND rank = ?2",
          [&](Statement& s) { s.Bind(1, run_id).Bind(2, int64_t{rank}); }, ReadMember));
  SPARK_CHECK(member.has_value()) << "run member vanished inside its own transaction";
  return *std::move(member);
}

// --- WriteTxn: events and tunings ---

Result<EventRecord> WriteTxn::AppendEvent(const EventRecord& event) {
  if (event.kind.empty()) return InvalidArgument("event kind is empty; give every event a kind");
  EventRecord stored = event;
  SPARK_ASSIGN_OR_RETURN(stored.data_json, CheckJson("event data_json", event.data_json));
  stored.ts_ms = now_ms_;
  SPARK_ASSIGN_OR_RETURN(Statement insert,
                         connection_.Prepare("INSERT INTO events (ts_ms, kind, deployment, node, "
                                             "run_id, generation, message, data_json) "
                                             "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"));
  SPARK_RETURN_IF_ERROR(insert.Bind(1, stored.ts_ms)
                            .Bind(2, std::string_view(stored.kind))
                            .Bind(3, std::string_view(stored.deployment))
                            .Bind(4, std::string_view(stored.node))
                            .Bind(5, stored.run_id)
                            .Bind(6, stored.generation)
                            .Bind(7, std::string_view(stored.message))
                            .Bind(8, std::string_view(stored.data_json))
                            .Run());
  stored.id = connection_.LastInsertRowId();
  return stored;
}

Result<int64_t> WriteTxn::PruneEvents(int64_t keep_newest) {
  if (keep_newest < 0) {
    return InvalidArgument("events to keep must not be negative, got " +
                           std::to_string(keep_newest));
  }
  SPARK_ASSIGN_OR_RETURN(Statement del,
                         connection_.Prepare("DELETE FROM events WHERE id <= (SELECT id FROM "
                                             "events ORDER BY id DESC LIMIT 1 OFFSET ?1)"));
  SPARK_RETURN_IF_ERROR(del.Bind(1, keep_newest).Run());
  return connection_.Changes();
}

Result<KernelTuning> WriteTxn::UpsertKernelTuning(const KernelTuning& tuning) {
  if (tuning.device_class.empty() || tuning.key.empty()) {
    return InvalidArgument("kernel tuning needs a device class and a key (got " +
                           Quoted(tuning.device_class) + ", " + Quoted(tuning.key) + ")");
  }
  KernelTuning stored = tuning;
  SPARK_ASSIGN_OR_RETURN(stored.config_json,
                         CheckJson("kernel tuning config_json", tuning.config_json));
  stored.updated_at_ms = now_ms_;
  SPARK_ASSIGN_OR_RETURN(
      Statement upsert,
      connection_.Prepare("INSERT INTO kernel_tunings (device_class, key, config_json, "
                          "measured_us, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5) "
                          "ON CONFLICT (device_class, key) DO UPDATE SET "
                          "config_json = excluded.config_json, measured_us = "
                          "excluded.measured_us, updated_at_ms = excluded.updated_at_ms"));
  SPARK_RETURN_IF_ERROR(upsert.Bind(1, std::string_view(stored.device_class))
                            .Bind(2, std::string_view(stored.key))
                            .Bind(3, std::string_view(stored.config_json))
                            .Bind(4, stored.measured_us)
                            .Bind(5, stored.updated_at_ms)
                            .Run());
  return stored;
}

// --- Store ---

struct Store::Shared {
  struct QueuedWrite {
    std::unique_ptr<internal::WriteTask> task;         // a transaction, or
    std::shared_ptr<std::promise<Status>> checkpoint;  // a checkpoint request
  };

  // Destroyed in reverse order: readers, then the writer connection, then the lock.
  UniqueFd lock_fd;
  std::unique_ptr<Connection> writer_connection;

  std::mutex pool_mu;
  std::condition_variable pool_cv;
  std::vector<std::unique_ptr<Connection>> idle_readers;  // guarded by pool_mu

  std::mutex queue_mu;
  std::condition_variable queue_cv;
  std::deque<QueuedWrite> queue;  // guarded by queue_mu
  bool stopping = false;          // guarded by queue_mu

  int commits_since_checkpoint = 0;  // writer thread only
  std::atomic<int64_t> committed{0};
  std::atomic<int64_t> failed{0};
  std::thread writer;
};

namespace {

Result<UniqueFd> LockDatabase(const std::string& path) {
  const std::string lock_path = path + "-lock";
  UniqueFd fd(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) {
    int err = errno;
    return FailedPrecondition("cannot create lock file " + lock_path + ": " + std::strerror(err) +
                              "; check that the database directory exists and is writable");
  }
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    if (err == EWOULDBLOCK) {
      return FailedPrecondition("database " + path + " is in use by another process (" + lock_path +
                                " is locked); stop the other spark-controller or give this one "
                                "another --db");
    }
    return FailedPrecondition("cannot lock " + lock_path + ": " + std::strerror(err));
  }
  return fd;
}

Status RunIntegrityCheck(Connection& connection, bool full) {
  const std::string pragma = full ? "integrity_check" : "quick_check";
  SPARK_ASSIGN_OR_RETURN(Statement check, connection.Prepare("PRAGMA " + pragma));
  std::string problems;
  int count = 0;
  while (true) {
    SPARK_ASSIGN_OR_RETURN(bool row, check.Step());
    if (!row) break;
    // A row may hold several problems, one per line, under a "*** in database main ***" title.
    std::string text = check.ColumnText(0);
    size_t start = 0;
    while (start <= text.size()) {
      size_t end = std::min(text.find('\n', start), text.size());
      std::string line = text.substr(start, end - start);
      start = end + 1;
      if (line.empty() || line == "ok" || line.rfind("*** ", 0) == 0) continue;
      if (++count <= 5) problems += (problems.empty() ? "" : "; ") + line;
    }
  }
  if (count == 0) return Status();
  return DataLoss("database " + connection.path() + " failed " + pragma + " (" +
                  std::to_string(count) + " problems: " + problems +
                  "); restore it from a backup, or move it aside to start with an empty database");
}

Status RunCheckpoint(Connection& connection) {
  SPARK_ASSIGN_OR_RETURN(Statement checkpoint,
                         connection.Prepare("PRAGMA wal_checkpoint(TRUNCATE)"));
  return checkpoint.Run();
}

}  // namespace

Store::Store(StoreOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock), shared_(std::make_unique<Shared>()) {}

Result<std::unique_ptr<Store>> Store::Open(StoreOptions options, Clock& clock) {
  if (options.read_connections < 1) {
    return InvalidArgument("store read_connections must be at least 1, got " +
                           std::to_string(options.read_connections));
  }
  if (options.busy_timeout_ms < 0) {
    return InvalidArgument("store busy_timeout_ms must not be negative");
  }
  if (options.path.empty()) {
    return InvalidArgument("database path is empty; give the controller a file with --db PATH");
  }
  std::unique_ptr<Store> store(new Store(std::move(options), clock));
  Shared& shared = *store->shared_;
  const StoreOptions& opts = store->options_;
  if (opts.exclusive_lock) {
    SPARK_ASSIGN_OR_RETURN(shared.lock_fd, LockDatabase(opts.path));
  }
  SPARK_ASSIGN_OR_RETURN(shared.writer_connection,
                         Connection::Open(opts.path, /*read_only=*/false, opts.busy_timeout_ms));
  SPARK_RETURN_IF_ERROR(RunIntegrityCheck(*shared.writer_connection, opts.full_integrity_check));
  SPARK_ASSIGN_OR_RETURN(
      store->schema_version_,
      ApplyMigrations(*shared.writer_connection, Migrations(), UnixMs(clock.WallNow())));
  if (!opts.writer_sql_for_test.empty()) {
    SPARK_RETURN_IF_ERROR(shared.writer_connection->Exec(opts.writer_sql_for_test));
  }
  for (int i = 0; i < opts.read_connections; ++i) {
    SPARK_ASSIGN_OR_RETURN(std::unique_ptr<Connection> reader,
                           Connection::Open(opts.path, /*read_only=*/true, opts.busy_timeout_ms));
    shared.idle_readers.push_back(std::move(reader));
  }
  Store* self = store.get();
  shared.writer = std::thread([self] { self->WriterLoop(); });
  return store;
}

Store::~Store() {
  {
    std::lock_guard lock(shared_->queue_mu);
    shared_->stopping = true;
  }
  shared_->queue_cv.notify_all();
  if (shared_->writer.joinable()) shared_->writer.join();
}

void Store::PostWrite(std::unique_ptr<internal::WriteTask> task) {
  {
    std::lock_guard lock(shared_->queue_mu);
    if (!shared_->stopping && shared_->queue.size() < options_.max_queued_writes) {
      shared_->queue.push_back(Shared::QueuedWrite{.task = std::move(task), .checkpoint = {}});
      shared_->queue_cv.notify_one();
      return;
    }
  }
  if (shared_->stopping) {
    task->Finish(FailedPrecondition("store " + options_.path + " is shutting down"));
  } else {
    task->Finish(ResourceExhausted("store " + options_.path + ": " +
                                   std::to_string(options_.max_queued_writes) +
                                   " writes are already queued; the disk is too slow or the "
                                   "writer is stuck: retry later"));
  }
}

std::future<Status> Store::Checkpoint() {
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> future = promise->get_future();
  {
    std::lock_guard lock(shared_->queue_mu);
    if (!shared_->stopping) {
      shared_->queue.push_back(Shared::QueuedWrite{.task = nullptr, .checkpoint = promise});
      shared_->queue_cv.notify_one();
      return future;
    }
  }
  promise->set_value(FailedPrecondition("store " + options_.path + " is shutting down"));
  return future;
}

void Store::WriterLoop() {
  Shared& shared = *shared_;
  Connection& connection = *shared.writer_connection;
  while (true) {
    Shared::QueuedWrite item;
    {
      std::unique_lock lock(shared.queue_mu);
      shared.queue_cv.wait(lock, [&] { return shared.stopping || !shared.queue.empty(); });
      if (shared.queue.empty()) return;  // stopping, and every queued write has run
      item = std::move(shared.queue.front());
      shared.queue.pop_front();
    }
    if (item.checkpoint) {
      item.checkpoint->set_value(RunCheckpoint(connection));
      shared.commits_since_checkpoint = 0;
      continue;
    }
    Status outcome = connection.Exec("BEGIN IMMEDIATE");
    if (outcome.ok()) {
      WriteTxn txn(connection, UnixMs(clock_.WallNow()));
      try {
        outcome = item.task->Run(txn);
      } catch (const std::exception& e) {
        outcome = Internal(std::string("store write body threw: ") + e.what());
      } catch (...) {
        outcome = Internal("store write body threw a non-standard exception");
      }
      if (outcome.ok()) outcome = connection.Exec("COMMIT");
      if (!outcome.ok() && !connection.autocommit()) connection.Exec("ROLLBACK").IgnoreError();
    }
    (outcome.ok() ? shared.committed : shared.failed).fetch_add(1);
    item.task->Finish(outcome);
    if (outcome.ok() && options_.checkpoint_every_writes > 0 &&
        ++shared.commits_since_checkpoint >= options_.checkpoint_every_writes) {
      // A checkpoint that cannot finish (readers in the way) is retried after the next batch.
      RunCheckpoint(connection).IgnoreError();
      shared.commits_since_checkpoint = 0;
    }
  }
}

Status Store::CheckIntegrity(bool full) {
  return RunRead([full](ReadTxn& txn) { return RunIntegrityCheck(txn.connection_, full); });
}

StoreStats Store::Stats() const {
  StoreStats stats;
  {
    std::lock_guard lock(shared_->queue_mu);
    stats.queued_writes = shared_->queue.size();
  }
  stats.committed = shared_->committed.load();
  stats.failed = shared_->failed.load();
  std::error_code error;
  const auto wal_bytes = std::filesystem::file_size(options_.path + "-wal", error);
  stats.wal_bytes = error ? 0 : static_cast<int64_t>(wal_bytes);
  return stats;
}

Status Store::RunRead(const std::function<Status(ReadTxn&)>& body) {
  std::unique_ptr<Connection> connection;
  {
    std::unique_lock lock(shared_->pool_mu);
    shared_->pool_cv.wait(lock, [&] { return !shared_->idle_readers.empty(); });
    connection = std::move(shared_->idle_readers.back());
    shared_->idle_readers.pop_back();
  }
  Status status = connection->Exec("BEGIN");
  if (status.ok()) {
    ReadTxn txn(*connection);
    status = body(txn);
    // Ends the read transaction; a failure here changes nothing the body saw.
    connection->Exec(connection->autocommit() ? "SELECT 1" : "COMMIT").IgnoreError();
  }
  {
    std::lock_guard lock(shared_->pool_mu);
    shared_->idle_readers.push_back(std::move(connection));
  }
  shared_->pool_cv.notify_one();
  return status;
}

}  // namespace spark::store
