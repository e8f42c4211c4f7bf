// The controller's REST API on an HttpServer (JSON; every error is
// {"error": {"message", "type", "code"}} with the matching 4xx/5xx status):
//
//   GET    /healthz                        200 while the controller loop runs (liveness)
//   GET    /readyz                         200 when every deployment that should run is ready and
//                                          the store answers; 503 with the reasons otherwise
//   GET    /api/v1/nodes                   {"nodes": [...]}
//   POST   /api/v1/models                  {"name", "path", "tp", "backend"?, "nodes"?, "options"?
//                                          (alias "engine_options";
//                                          controller/deployment_options.h)}
//                                          -> 202 once stored
//   GET    /api/v1/models                  {"models": [...]}
//   GET    /api/v1/models/{name}           one model: state, generation, members, restarts,
//                                          options (normalized), "speculative" (counters of
//                                          speculative decoding: verify_steps, drafted_tokens,
//                                          accepted_tokens, emitted_tokens, acceptance_length,
//                                          draft_ms, verify_ms; null when it is off)
//   DELETE /api/v1/models/{name}           202: undeploy (shards stopped)
//   POST   /api/v1/models/{name}/restart   202: new run, restart budget reset
//   GET    /api/v1/runs?model=NAME&limit=N {"runs": [...]} newest first, with members
//   GET    /api/v1/events?since=ID&limit=N&model=NAME  {"events": [...], "last_id"}
//
// The inference endpoints (/v1/*, /metrics) are controller/openai_api.h.
//
// Every route except /healthz and /readyz requires an admin key when one is configured
// (ApiAuth::CheckAdmin, controller/api_keys.h): "Authorization: Bearer <key>".
//
// Thread safety: handlers run on the server's I/O threads and post to the Controller; the JSON
// helpers are pure functions.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "controller/api_keys.h"
#include "controller/controller.h"
#include "controller/http/server.h"
#include "controller/store/store.h"
#include "controller/views.h"

namespace spark::controller {

Status AddRestRoutes(http::HttpServer& server, Controller& controller, store::Store& store,
                     const ApiAuth& auth);
// Same with `api_token` (empty: open) as the one admin key.
Status AddRestRoutes(http::HttpServer& server, Controller& controller, store::Store& store,
                     std::string api_token = "");

nlohmann::json DeploymentJson(const DeploymentView& view);
nlohmann::json NodeJson(const NodeView& view);
nlohmann::json RunJson(const store::RunRecord& run,
                       const std::vector<store::RunMemberRecord>& members);
nlohmann::json EventJson(const store::EventRecord& event);

}  // namespace spark::controller
