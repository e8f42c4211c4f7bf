#include "controller/rest_api.h"

#include <google/protobuf/util/json_util.h>

#include <charconv>
#include <memory>

#include "common/log.h"
#include "controller/http/auth.h"
#include "controller/http/json.h"
#include "controller/openai_error.h"
#include "engine/runtime/moe_tuning_cache.h"

namespace spark::controller {

using http::ErrorResponse;
using http::ErrorResponseFromStatus;
using http::JsonResponse;
using http::Method;
using http::Request;
using http::Response;
using http::ResponseWriter;
using nlohmann::json;

namespace {

json ProtoJson(const google::protobuf::Message& message) {
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(message, &text, options).ok()) {
    return json::object();
  }
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return parsed.is_discarded() ? json::object() : parsed;
}

json ParseOr(const std::string& text, json fallback) {
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return parsed.is_discarded() ? fallback : parsed;
}

Response ErrorFor(const Status& status) { return OpenAiErrorResponse(status); }

Result<int64_t> IntQuery(const Request& r, const std::string& name, int64_t fallback, int64_t low,
                         int64_t high) {
  std::optional<std::string> text = r.Query(name);
  if (!text) return fallback;
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (ec != std::errc() || end != text->data() + text->size() || value < low || value > high) {
    return InvalidArgument("query parameter \"" + name + "\" must be an integer between " +
                           std::to_string(low) + " and " + std::to_string(high) + ", got \"" +
                           *text + "\"");
  }
  return value;
}

Result<DeployRequest> ParseDeployRequest(const json& body) {
  DeployRequest request;
  try {
    if (!body.contains("name") || !body["name"].is_string()) {
      return InvalidArgument("\"name\" is required: a string naming the model");
    }
    request.name = body["name"].get<std::string>();
    if (!body.contains("path") || !body["path"].is_string()) {
      return InvalidArgument("\"path\" is required: the checkpoint directory on the nodes");
    }
    request.model_path = body["path"].get<std::string>();
    if (body.contains("tp")) {
      if (!body["tp"].is_number_integer()) return InvalidArgument("\"tp\" must be an integer");
      const int64_t tp = body["tp"].get<int64_t>();
      if (tp < 1 || tp > 64) {
        return InvalidArgument("\"tp\" must be between 1 and 64, got " + std::to_string(tp));
      }
      request.tp = static_cast<int>(tp);
    }
    if (body.contains("backend") && !body["backend"].is_null()) {
      if (!body["backend"].is_string()) {
        return InvalidArgument("\"backend\" must be \"cpu\" or \"cuda\"");
      }
      request.backend = body["backend"].get<std::string>();
    }
    if (body.contains("nodes") && !body["nodes"].is_null()) {
      if (!body["nodes"].is_array()) {
        return InvalidArgument("\"nodes\" must be an array of node names");
      }
      for (const json& node : body["nodes"]) {
        if (!node.is_string()) return InvalidArgument("\"nodes\" must hold node names (strings)");
        request.nodes.push_back(node.get<std::string>());
      }
    }
    if (body.contains("options")) request.options = body["options"];
    if (body.contains("engine_options")) {
      if (body.contains("options")) {
        return InvalidArgument("give either \"options\" or \"engine_options\", not both");
      }
      request.options = body["engine_options"];
    }
    for (auto it = body.begin(); it != body.end(); ++it) {
      const std::string& key = it.key();
      if (key != "name" && key != "path" && key != "tp" && key != "backend" && key != "nodes" &&
          key != "options" && key != "engine_options") {
        return InvalidArgument("unknown field \"" + key +
                               "\"; fields: name, path, tp, backend, nodes, options");
      }
    }
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("bad deploy request: ") + e.what());
  }
  return request;
}

// Answers a writer with a model view (status `ok_status`) or the error.
std::function<void(Result<DeploymentView>)> AnswerModel(std::shared_ptr<ResponseWriter> writer,
                                                        int ok_status) {
  return [writer, ok_status](Result<DeploymentView> view) {
    writer->Send(view.ok() ? JsonResponse(ok_status, DeploymentJson(*view))
                           : ErrorFor(view.status()));
  };
}

}  // namespace

json DeploymentJson(const DeploymentView& view) {
  const store::DeploymentRecord& r = view.record;
  json members = json::array();
  for (const MemberView& m : view.members) {
    json member = {{"rank", m.rank},
                   {"node", m.node},
                   {"phase", store::MemberPhaseName(m.phase)},
                   {"pid", m.pid},
                   {"progress", m.progress}};
    if (m.exit_status) member["exit_status"] = *m.exit_status;
    if (m.signal) member["signal"] = *m.signal;
    if (!m.failure_reason.empty()) member["failure_reason"] = m.failure_reason;
    members.push_back(std::move(member));
  }
  json out = {{"name", r.name},
              {"path", r.model_path},
              {"tp", r.tp},
              {"backend", r.backend},
              {"nodes", r.pinned_nodes},
              {"options", ParseOr(r.options_json, json::object())},
              {"desired", store::DesiredName(r.desired)},
              {"state", store::DeploymentStateName(r.state)},
              {"generation", r.generation},
              {"restarts", r.restarts},
              {"last_error", r.last_error},
              {"created_at_ms", r.created_at_ms},
              {"updated_at_ms", r.updated_at_ms},
              {"serving", view.serving},
              {"waiting_reason", view.waiting_reason},
              {"members", members}};
  if (view.speculative) {
    const spark::v1::SpeculativeStats& s = *view.speculative;
    out["speculative"] = {{"verify_steps", s.verify_steps()},
                          {"drafted_tokens", s.drafted_tokens()},
                          {"accepted_tokens", s.accepted_tokens()},
                          {"emitted_tokens", s.emitted_tokens()},
                          {"acceptance_length", AcceptanceLength(s)},
                          {"draft_ms", s.draft_ms()},
                          {"verify_ms", s.verify_ms()}};
  } else {
    out["speculative"] = nullptr;
  }
  if (view.run_id != 0) {
    out["run"] = {{"id", view.run_id},
                  {"state", view.run_state},
                  {"started_at_ms", view.run_started_unix_ms}};
  } else {
    out["run"] = nullptr;
  }
  return out;
}

json NodeJson(const NodeView& view) {
  json shards = json::array();
  for (const spark::v1::ShardSummary& s : view.shards) shards.push_back(ProtoJson(s));
  json facts = ProtoJson(view.registration);
  return {{"name", view.name},
          {"state", view.state},
          {"boot_id", view.boot_id},
          {"agent_version", view.agent_version},
          {"backend", view.backend},
          {"last_seen_ms_ago", view.last_seen_ms_ago},
          {"preflight_ok", view.preflight_ok},
          {"preflight_problem", view.preflight_problem},
          {"used_by", view.used_by},
          {"shards", shards},
          {"gpus", facts.value("gpus", json::array())},
          {"rdma_devices", facts.value("rdma_devices", json::array())},
          {"nccl_env", facts.value("nccl_env", json::object())},
          {"preflight", facts.value("preflight", json::array())}};
}

json RunJson(const store::RunRecord& run, const std::vector<store::RunMemberRecord>& members) {
  json ms = json::array();
  for (const store::RunMemberRecord& m : members) {
    json member = {{"rank", m.rank},
                   {"node", m.node_name},
                   {"pid", m.pid},
                   {"phase", store::MemberPhaseName(m.phase)},
                   {"updated_at_ms", m.updated_at_ms}};
    member["exit_status"] = m.exit_status ? json(*m.exit_status) : json(nullptr);
    member["signal"] = m.signal ? json(*m.signal) : json(nullptr);
    member["failure_reason"] = m.failure_reason;
    ms.push_back(std::move(member));
  }
  return {{"id", run.id},
          {"model", run.deployment},
          {"generation", run.generation},
          {"state", store::RunStateName(run.state)},
          {"started_at_ms", run.started_at_ms},
          {"ready_at_ms", run.ready_at_ms},
          {"ended_at_ms", run.ended_at_ms},
          {"end_reason", run.end_reason},
          {"placement", run.placement},
          {"members", ms}};
}

json EventJson(const store::EventRecord& e) {
  return {{"id", e.id},
          {"ts_ms", e.ts_ms},
          {"kind", e.kind},
          {"model", e.deployment},
          {"node", e.node},
          {"run_id", e.run_id},
          {"generation", e.generation},
          {"message", e.message},
          {"data", ParseOr(e.data_json, json::object())}};
}

// One stored kernel tuning; MoE records (engine/runtime/moe_tuning_cache.h) also with their GEMM,
// bucket, choice in words, source and tuning time.
json TuningJson(const store::KernelTuning& t) {
  json j = {{"device_class", t.device_class},
            {"key", t.key},
            {"measured_us", t.measured_us},
            {"updated_at_ms", t.updated_at_ms},
            {"record", ParseOr(t.config_json, json::object())}};
  Result<engine::MoeTuningRecord> moe = engine::MoeTuningRecordFromJson(t.config_json);
  if (moe.ok()) {
    j["kernel"] = "moe";
    j["format"] = moe->format;
    j["gemm"] = moe->gemm;
    j["batch"] = moe->batch;
    j["choice"] = moe->gemm == "gemv" ? moe->gemv.ToString() : moe->config.ToString();
    j["source"] = moe->source;
    j["tuned_unix_ms"] = moe->tuned_unix_ms;
    j["kernel_generation"] = moe->kernel_generation;
  }
  return j;
}

Status AddRestRoutes(http::HttpServer& server, Controller& controller, store::Store& store,
                     std::string api_token) {
  ApiAuth auth;
  if (!api_token.empty()) auth.admin_keys = ApiKeySet::FromKeys({api_token});
  return AddRestRoutes(server, controller, store, auth);
}

Status AddRestRoutes(http::HttpServer& server, Controller& controller, store::Store& store,
                     const ApiAuth& auth) {
  Controller* c = &controller;
  store::Store* s = &store;
  auto guarded = [auth](http::AsyncHandler handler) -> http::AsyncHandler {
    return
        [auth, handler = std::move(handler)](const Request& r, std::shared_ptr<ResponseWriter> w) {
          if (auto denied = auth.CheckAdmin(r)) {
            w->Send(*denied);
            return;
          }
          handler(r, std::move(w));
        };
  };
  auto guarded_sync = [auth](http::SyncHandler handler) -> http::SyncHandler {
    return [auth, handler = std::move(handler)](const Request& r) -> Response {
      if (auto denied = auth.CheckAdmin(r)) return *denied;
      return handler(r);
    };
  };

  SPARK_RETURN_IF_ERROR(server.Add(Method::kGet, "/healthz", [c](const Request&) {
    if (c->Responsive(std::chrono::seconds(5))) return JsonResponse(200, {{"status", "ok"}});
    return ErrorResponse(503, "the controller loop has not run for 5 s", "unavailable_error",
                         "unavailable");
  }));

  SPARK_RETURN_IF_ERROR(server.AddAsync(
      Method::kGet, "/readyz", [c](const Request&, std::shared_ptr<ResponseWriter> w) {
        c->Readiness([w](ReadinessView view) {
          if (view.ready) {
            w->Send(JsonResponse(200, {{"status", "ready"}}));
            return;
          }
          std::string message =
              view.store_ok ? "not ready: " : "store unavailable: " + view.store_error + "; ";
          for (size_t i = 0; i < view.not_ready.size(); ++i) {
            message += (i ? "; " : "") + view.not_ready[i];
          }
          Response response = ErrorResponse(503, message, "unavailable_error", "not_ready");
          json body = json::parse(response.body, nullptr, false);
          body["not_ready"] = view.not_ready;
          body["store_ok"] = view.store_ok;
          response = JsonResponse(503, body);
          response.headers.push_back({"Retry-After", "1"});
          w->Send(response);
        });
      }));

  SPARK_RETURN_IF_ERROR(
      server.AddAsync(Method::kGet, "/api/v1/nodes",
                      guarded([c](const Request&, std::shared_ptr<ResponseWriter> w) {
                        c->ListNodes([w](std::vector<NodeView> nodes) {
                          json list = json::array();
                          for (const NodeView& n : nodes) list.push_back(NodeJson(n));
                          w->Send(JsonResponse(200, {{"nodes", list}}));
                        });
                      })));

  SPARK_RETURN_IF_ERROR(
      server.AddAsync(Method::kPost, "/api/v1/models",
                      guarded([c](const Request& r, std::shared_ptr<ResponseWriter> w) {
                        Result<json> body = http::ParseJsonObject(r);
                        if (!body.ok()) {
                          w->Send(ErrorFor(body.status()));
                          return;
                        }
                        Result<DeployRequest> request = ParseDeployRequest(*body);
                        if (!request.ok()) {
                          w->Send(ErrorFor(request.status()));
                          return;
                        }
                        c->Deploy(std::move(*request), AnswerModel(w, 202));
                      }),
                      {.max_body_bytes = 64 * 1024}));

  SPARK_RETURN_IF_ERROR(
      server.AddAsync(Method::kGet, "/api/v1/models",
                      guarded([c](const Request&, std::shared_ptr<ResponseWriter> w) {
                        c->ListDeployments([w](std::vector<DeploymentView> views) {
                          json list = json::array();
                          for (const DeploymentView& v : views) list.push_back(DeploymentJson(v));
                          w->Send(JsonResponse(200, {{"models", list}}));
                        });
                      })));

  SPARK_RETURN_IF_ERROR(
      server.AddAsync(Method::kGet, "/api/v1/models/{name}",
                      guarded([c](const Request& r, std::shared_ptr<ResponseWriter> w) {
                        c->GetDeployment(r.Param("name"), AnswerModel(w, 200));
                      })));

  SPARK_RETURN_IF_ERROR(
      server.AddAsync(Method::kDelete, "/api/v1/models/{name}",
                      guarded([c](const Request& r, std::shared_ptr<ResponseWriter> w) {
                        c->Undeploy(r.Param("name"), AnswerModel(w, 202));
                      })));

  SPARK_RETURN_IF_ERROR(
      server.AddAsync(Method::kPost, "/api/v1/models/{name}/restart",
                      guarded([c](const Request& r, std::shared_ptr<ResponseWriter> w) {
                        c->Restart(r.Param("name"), AnswerModel(w, 202));
                      })));

  SPARK_RETURN_IF_ERROR(server.Add(
      Method::kGet, "/api/v1/runs", guarded_sync([s](const Request& r) -> Response {
        Result<int64_t> limit = IntQuery(r, "limit", 100, 1, 1000);
        if (!limit.ok()) return ErrorFor(limit.status());
        store::RunFilter filter;
        filter.deployment = r.Query("model").value_or("");
        filter.limit = static_cast<int>(*limit);
        Result<json> runs = s->Read([&](store::ReadTxn& txn) -> Result<json> {
          if (!filter.deployment.empty()) {
            Result<store::DeploymentRecord> d = txn.GetDeployment(filter.deployment);
            if (!d.ok()) {
              return NotFound("model \"" + filter.deployment +
                              "\" not found; list models with GET /api/v1/models");
            }
          }
          SPARK_ASSIGN_OR_RETURN(std::vector<store::RunRecord> records, txn.ListRuns(filter));
          json list = json::array();
          for (const store::RunRecord& run : records) {
            SPARK_ASSIGN_OR_RETURN(std::vector<store::RunMemberRecord> members,
                                   txn.ListRunMembers(run.id));
            list.push_back(RunJson(run, members));
          }
          return list;
        });
        if (!runs.ok()) return ErrorFor(runs.status());
        return JsonResponse(200, {{"runs", *runs}});
      })));

  SPARK_RETURN_IF_ERROR(server.Add(
      Method::kGet, "/api/v1/tunings", guarded_sync([s](const Request& r) -> Response {
        const std::string device_class = r.Query("device_class").value_or("");
        Result<std::vector<store::KernelTuning>> tunings =
            s->Read([&](store::ReadTxn& txn) { return txn.ListKernelTunings(device_class); });
        if (!tunings.ok()) return ErrorFor(tunings.status());
        json list = json::array();
        for (const store::KernelTuning& t : *tunings) list.push_back(TuningJson(t));
        return JsonResponse(200, {{"tunings", list}});
      })));

  SPARK_RETURN_IF_ERROR(server.Add(
      Method::kGet, "/api/v1/events", guarded_sync([s](const Request& r) -> Response {
        Result<int64_t> since = IntQuery(r, "since", 0, 0, INT64_MAX);
        if (!since.ok()) return ErrorFor(since.status());
        Result<int64_t> limit = IntQuery(r, "limit", 1000, 1, 10000);
        if (!limit.ok()) return ErrorFor(limit.status());
        const std::string model = r.Query("model").value_or("");
        Result<std::vector<store::EventRecord>> events = s->Read([&](store::ReadTxn& txn) {
          return txn.ListEvents(*since, static_cast<int>(*limit), model);
        });
        if (!events.ok()) return ErrorFor(events.status());
        json list = json::array();
        int64_t last_id = *since;
        for (const store::EventRecord& e : *events) {
          list.push_back(EventJson(e));
          last_id = std::max(last_id, e.id);
        }
        return JsonResponse(200, {{"events", list}, {"last_id", last_id}});
      })));

  return Status::Ok();
}

}  // namespace spark::controller
