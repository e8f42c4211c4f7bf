#include "controller/sparkctl.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "controller/http/client.h"
#include "controller/trusted_keys.h"

namespace spark::controller {
namespace {

using nlohmann::json;

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr int kExitWaitFailed = 4;

// Left-aligned columns separated by two spaces.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print(std::ostream& out) const {
    std::vector<size_t> widths;
    for (const auto& row : rows_) {
      widths.resize(std::max(widths.size(), row.size()));
      for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
    }
    for (const auto& row : rows_) {
      std::string line;
      for (size_t i = 0; i < row.size(); ++i) {
        line += row[i];
        if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out << line << "\n";
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string Str(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>().empty() ? "-" : v.get<std::string>();
  return v.dump();
}

std::string Join(const json& array, const char* separator = ",") {
  std::string out;
  if (!array.is_array()) return "-";
  for (const json& item : array) out += (out.empty() ? "" : separator) + Str(item);
  return out.empty() ? "-" : out;
}

std::string Truncate(std::string text, size_t width) {
  if (text.size() > width) text = text.substr(0, width - 3) + "...";
  return text;
}

std::string Time(const json& ms) {
  if (!ms.is_number_integer() || ms.get<int64_t>() <= 0) return "-";
  const time_t seconds = static_cast<time_t>(ms.get<int64_t>() / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

std::string Duration(int64_t ms) {
  if (ms < 0) return "-";
  if (ms < 10000) return std::to_string(ms) + "ms";
  if (ms < 600000) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms / 60000) + "m";
}

struct Context {
  std::string url;
  bool json_output = false;
  std::string token;
  std::ostream* out;
  std::ostream* err;
};

// Performs one request; prints the error and returns its exit code on failure.
struct Reply {
  int exit_code = 0;
  json body;
};

Reply Call(const Context& ctx, http::Method method, const std::string& target,
           const json& body = nullptr) {
  Reply reply;
  http::HttpClientOptions options;
  options.bearer_token = ctx.token;
  options.connect_timeout = std::chrono::seconds(5);
  options.request_timeout = std::chrono::seconds(60);
  Result<http::HttpClient> client = http::HttpClient::Create(ctx.url, options);
  if (!client.ok()) {
    *ctx.err << "sparkctl: " << client.status().message() << "\n";
    reply.exit_code = kExitUsage;
    return reply;
  }
  Result<http::ClientResponse> response =
      body.is_null() ? client->Send(method, target, "") : client->Send(method, target, body.dump());
  if (!response.ok()) {
    *ctx.err << "sparkctl: cannot reach the controller at " << ctx.url << ": "
             << response.status().message()
             << "\n(is spark-controller running? set --controller or SPARK_CONTROLLER)\n";
    reply.exit_code = kExitUnreachable;
    return reply;
  }
  Result<json> parsed = response->Json();
  if (response->status >= 400) {
    std::string message = response->body;
    if (parsed.ok() && parsed->contains("error") && (*parsed)["error"].is_object()) {
      message = (*parsed)["error"].value("message", response->body);
    }
    *ctx.err << "sparkctl: error " << response->status << ": " << message << "\n";
    reply.exit_code = kExitError;
    reply.body = parsed.ok() ? *parsed : json(nullptr);
    return reply;
  }
  if (!parsed.ok()) {
    *ctx.err << "sparkctl: the controller answered with something that is not JSON: "
             << parsed.status().message() << "\n";
    reply.exit_code = kExitError;
    return reply;
  }
  reply.body = std::move(*parsed);
  return reply;
}

void PrintModelTable(std::ostream& out, const json& models) {
  Table table({"NAME", "STATE", "GEN", "TP", "SERVING", "RESTARTS", "NODES", "LAST_ERROR"});
  for (const json& m : models) {
    std::string nodes;
    for (const json& member : m.value("members", json::array())) {
      nodes += (nodes.empty() ? "" : ",") + Str(member["node"]);
    }
    table.Add({Str(m["name"]), Str(m["state"]), Str(m["generation"]), Str(m["tp"]),
               m.value("serving", false) ? "yes" : "no", Str(m["restarts"]),
               nodes.empty() ? "-" : nodes, Truncate(Str(m["last_error"]), 60)});
  }
  table.Print(out);
}

void PrintModel(std::ostream& out, const json& m) {
  out << "name:        " << Str(m["name"]) << "\n"
      << "path:        " << Str(m["path"]) << "\n"
      << "tp:          " << Str(m["tp"]) << "\n"
      << "backend:     " << Str(m["backend"]) << "\n"
      << "desired:     " << Str(m["desired"]) << "\n"
      << "state:       " << Str(m["state"]) << "\n"
      << "serving:     " << (m.value("serving", false) ? "yes" : "no") << "\n"
      << "generation:  " << Str(m["generation"]) << "\n"
      << "restarts:    " << Str(m["restarts"]) << "\n";
  if (!m["run"].is_null()) {
    out << "run:         " << Str(m["run"]["id"]) << " (" << Str(m["run"]["state"]) << ", started "
        << Time(m["run"]["started_at_ms"]) << ")\n";
  }
  if (!Str(m["waiting_reason"]).empty() && Str(m["waiting_reason"]) != "-") {
    out << "waiting:     " << Str(m["waiting_reason"]) << "\n";
  }
  if (Str(m["last_error"]) != "-") out << "last error:  " << Str(m["last_error"]) << "\n";
  if (!m["options"].empty()) out << "options:     " << m["options"].dump() << "\n";
  if (m.contains("speculative") && m["speculative"].is_object()) {
    const json& spec = m["speculative"];
    const uint64_t drafted = spec.value("drafted_tokens", uint64_t{0});
    const uint64_t accepted = spec.value("accepted_tokens", uint64_t{0});
    char line[256];
    std::snprintf(line, sizeof(line),
                  "%.2f tokens per verify (%llu verifies), %llu/%llu drafts accepted (%.0f%%), "
                  "draft %.1f s, verify %.1f s",
                  spec.value("acceptance_length", 0.0),
                  static_cast<unsigned long long>(spec.value("verify_steps", uint64_t{0})),
                  static_cast<unsigned long long>(accepted),
                  static_cast<unsigned long long>(drafted),
                  drafted > 0 ? 100.0 * static_cast<double>(accepted) / drafted : 0.0,
                  spec.value("draft_ms", 0.0) / 1000.0, spec.value("verify_ms", 0.0) / 1000.0);
    out << "speculative: " << line << "\n";
  }
  if (!m["members"].empty()) {
    out << "\n";
    Table table({"RANK", "NODE", "PHASE", "PID", "PROGRESS", "EXIT"});
    for (const json& member : m["members"]) {
      std::string exit = "-";
      if (member.contains("signal")) exit = "signal " + Str(member["signal"]);
      if (member.contains("exit_status")) exit = "code " + Str(member["exit_status"]);
      const int percent = static_cast<int>(member.value("progress", 0.0) * 100);
      table.Add({Str(member["rank"]), Str(member["node"]), Str(member["phase"]), Str(member["pid"]),
                 std::to_string(percent) + "%", exit});
    }
    table.Print(out);
  }
}

int Nodes(const Context& ctx) {
  Reply r = Call(ctx, http::Method::kGet, "/api/v1/nodes");
  if (r.exit_code != 0) return r.exit_code;
  if (ctx.json_output) {
    *ctx.out << r.body.dump(2) << "\n";
    return 0;
  }
  Table table({"NAME", "STATE", "BACKEND", "LAST_SEEN", "PREFLIGHT", "GPUS", "SHARDS", "USED_BY"});
  for (const json& n : r.body["nodes"]) {
    const int64_t seen = n.value("last_seen_ms_ago", int64_t{-1});
    table.Add({Str(n["name"]), Str(n["state"]), Str(n["backend"]),
               seen < 0 ? "-" : Duration(seen) + " ago",
               n.value("preflight_ok", false) ? "ok" : Truncate(Str(n["preflight_problem"]), 40),
               std::to_string(n.value("gpus", json::array()).size()),
               std::to_string(n.value("shards", json::array()).size()), Join(n["used_by"])});
  }
  table.Print(*ctx.out);
  return 0;
}

// `sparkctl keys ...`: the controller's key directory on this machine (controller/trusted_keys.h).
struct KeysCommand {
  std::string dir = "/etc/spark/keys";
  std::string node;
  std::string key;
  bool force = false;
  bool agent = false;
  bool controller = false;
};

int KeysFailed(const Context& ctx, const Status& status) {
  *ctx.err << "sparkctl keys: " << status.message() << "\n";
  return status.code() == StatusCode::kInvalidArgument ? kExitUsage : kExitError;
}

int KeysList(const Context& ctx, const KeysCommand& k) {
  Result<std::vector<TrustedKey>> trusted = ListTrustedKeys(k.dir);
  if (!trusted.ok()) return KeysFailed(ctx, trusted.status());
  Result<std::string> controller_key = ReadLocalPublicKey(k.dir, "controller.pub");
  Result<std::string> agent_key = ReadLocalPublicKey(k.dir, "agent.pub");
  std::string agent_trusted_as;
  for (const TrustedKey& t : *trusted) {
    if (agent_key.ok() && t.public_key == *agent_key) agent_trusted_as = t.node;
  }
  if (ctx.json_output) {
    json out = {{"keys_dir", k.dir}, {"trusted", json::array()}};
    out["controller_public_key"] = controller_key.ok() ? json(*controller_key) : json(nullptr);
    out["agent_public_key"] = agent_key.ok() ? json(*agent_key) : json(nullptr);
    out["agent_trusted_as"] = agent_trusted_as.empty() ? json(nullptr) : json(agent_trusted_as);
    for (const TrustedKey& t : *trusted) {
      out["trusted"].push_back({{"node", t.node}, {"public_key", t.public_key}, {"file", t.path}});
    }
    *ctx.out << out.dump(2) << "\n";
    return 0;
  }
  *ctx.out << "controller public key: "
           << (controller_key.ok() ? *controller_key + "  (copy " + k.dir +
                                         "/controller.pub to every node's key directory)"
                                   : std::string("- (no controller key pair in " + k.dir + ")"))
           << "\n";
  if (agent_key.ok()) {
    *ctx.out << "this machine's agent key: " << *agent_key << "  "
             << (agent_trusted_as.empty() ? "(not trusted here)"
                                          : "(trusted as " + agent_trusted_as + ")")
             << "\n";
  }
  *ctx.out << "trusted agents (" << trusted->size() << ", " << k.dir << "/trusted):\n";
  Table table({"NODE", "PUBLIC KEY", "FILE"});
  for (const TrustedKey& t : *trusted) {
    table.Add({t.node, t.public_key.empty() ? "(unreadable)" : t.public_key, t.path});
  }
  table.Print(*ctx.out);
  return 0;
}

int KeysShow(const Context& ctx, const KeysCommand& k) {
  if (k.node.empty()) {
    Result<std::string> key = ReadLocalPublicKey(k.dir, "controller.pub");
    if (!key.ok()) key = ReadLocalPublicKey(k.dir, "agent.pub");
    if (!key.ok()) {
      return KeysFailed(
          ctx, NotFound("neither controller.pub nor agent.pub in " + k.dir + "; pass --keys DIR"));
    }
    *ctx.out << *key << "\n";
    return 0;
  }
  Result<std::vector<TrustedKey>> trusted = ListTrustedKeys(k.dir);
  if (!trusted.ok()) return KeysFailed(ctx, trusted.status());
  for (const TrustedKey& t : *trusted) {
    if (t.node == k.node) {
      *ctx.out << t.public_key << "\n";
      return 0;
    }
  }
  return KeysFailed(ctx, NotFound("node " + k.node + " is not trusted in " + k.dir + "/trusted"));
}

int Keys(const Context& ctx, const KeysCommand& k, const std::string& action) {
  if (action == "list") return KeysList(ctx, k);
  if (action == "show") return KeysShow(ctx, k);
  if (action == "trust") {
    Result<TrustedKey> t = TrustAgentKey(k.dir, k.node, k.key, k.force);
    if (!t.ok()) return KeysFailed(ctx, t.status());
    *ctx.out << "trusted " << t->node << " (" << t->public_key << ") in " << t->path
             << "; the controller accepts it within 10 s\n";
    return 0;
  }
  if (action == "revoke") {
    if (Status st = RevokeAgentKey(k.dir, k.node); !st.ok()) return KeysFailed(ctx, st);
    *ctx.out << "revoked " << k.node
             << ": new connections with its key are refused within 10 s (restart "
                "spark-controller to drop one that is open; its runs are adopted)\n";
    return 0;
  }
  if (action == "rotate") {
    if (k.agent == k.controller) {
      *ctx.err << "sparkctl keys rotate: pass --agent or --controller (see sparkctl keys --help)\n";
      return kExitUsage;
    }
    Result<std::string> key = k.agent ? RotateAgentKey(k.dir) : RotateControllerKey(k.dir);
    if (!key.ok()) return KeysFailed(ctx, key.status());
    if (k.agent) {
      *ctx.out << "new agent key " << *key << " in " << k.dir
               << "/agent.pub; trust it on the controller (sparkctl keys trust NODE '" << *key
               << "' --force) and restart spark-agent\n";
    } else {
      *ctx.out << "new controller key " << *key << " in " << k.dir
               << "/controller.pub; copy it to every node's key directory as controller.pub, "
                  "then restart spark-controller and every spark-agent\n";
    }
    return 0;
  }
  return kExitUsage;
}

}  // namespace

int RunSparkctl(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app("sparkctl: command-line client of spark-controller", "sparkctl");
  app.require_subcommand(1);
  Context ctx;
  ctx.out = &out;
  ctx.err = &err;
  const char* env_url = std::getenv("SPARK_CONTROLLER");
  ctx.url = env_url != nullptr && *env_url != '\0' ? env_url : "http://127.0.0.1:8080";
  const char* env_token = std::getenv("SPARK_API_TOKEN");
  if (env_token != nullptr) ctx.token = env_token;
  const char* env_admin_key = std::getenv("SPARK_ADMIN_KEY");
  if (env_admin_key != nullptr && *env_admin_key != '\0') ctx.token = env_admin_key;
  std::string admin_key_file;
  app.add_option("--controller", ctx.url,
                 "controller URL (default $SPARK_CONTROLLER or "
                 "http://127.0.0.1:8080)");
  app.add_flag("--json", ctx.json_output, "print the controller's JSON");
  app.add_option("--token", ctx.token,
                 "admin bearer token (default $SPARK_ADMIN_KEY, else $SPARK_API_TOKEN)");
  app.add_option("--admin-key-file", admin_key_file,
                 "read the admin key from FILE (the first line that is not a # comment)");
  app.fallthrough();

  CLI::App* nodes = app.add_subcommand("nodes", "list the registered nodes");
  std::string name, path, backend, node_list, runs_model, events_model, wait_state = "ready";
  int tp = 1, runs_limit = 20, events_limit = 100, wait_timeout_s = 120;
  int64_t since = 0;
  std::vector<std::string> option_pairs;
  CLI::App* deploy = app.add_subcommand("deploy", "deploy a model");
  deploy->add_option("name", name, "model name")->required();
  deploy->add_option("--path", path, "checkpoint directory on the nodes")->required();
  deploy->add_option("--tp", tp, "tensor-parallel size (number of nodes)");
  deploy->add_option("--backend", backend, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  deploy->add_option("--nodes", node_list, "pin ranks to nodes: a,b,...");
  deploy->add_option("--option", option_pairs,
                     "engine option KEY=VALUE (repeatable); extra.KEY=V and speculative.steps=N "
                     "(topk, draft_tokens) set fields of the extra and speculative objects");
  CLI::App* ls = app.add_subcommand("ls", "list the models");
  CLI::App* status = app.add_subcommand("status", "show one model");
  status->add_option("name", name, "model name")->required();
  CLI::App* undeploy = app.add_subcommand("undeploy", "stop and remove a model");
  undeploy->add_option("name", name, "model name")->required();
  CLI::App* restart = app.add_subcommand("restart", "start a new run of a model");
  restart->add_option("name", name, "model name")->required();
  CLI::App* runs = app.add_subcommand("runs", "run history");
  runs->add_option("name", runs_model, "model name (default: all)");
  runs->add_option("--limit", runs_limit, "newest N runs");
  CLI::App* events = app.add_subcommand("events", "event log");
  events->add_option("--since", since, "only events after this id");
  events->add_option("--model", events_model, "only events of this model");
  events->add_option("--limit", events_limit, "at most N events");
  CLI::App* tunings = app.add_subcommand(
      "tunings",
      "kernel tunings the controller shares per device class (MoE tile configs and "
      "GEMV splits)");
  std::string tunings_class;
  tunings->add_option("--device-class", tunings_class,
                      "only this device class (e.g. \"NVIDIA GB10/sm121/smem101376\")");
  CLI::App* wait = app.add_subcommand("wait", "wait until a model reaches a state");
  wait->add_option("name", name, "model name")->required();
  wait->add_option("--state", wait_state, "state to wait for (default ready)");
  wait->add_option("--timeout-s", wait_timeout_s, "give up after this long");
  KeysCommand keys_command;
  CLI::App* keys = app.add_subcommand(
      "keys",
      "CURVE keys of the controller's key directory on this machine (agents must be "
      "trusted before they may join)");
  keys->require_subcommand(1);
  keys->add_option("--keys", keys_command.dir, "key directory (default /etc/spark/keys)");
  keys->fallthrough();
  keys->add_subcommand("list", "the controller's key, this machine's agent key, trusted agents");
  CLI::App* keys_show =
      keys->add_subcommand("show", "print a public key: the controller's, or NODE's trusted key");
  keys_show->add_option("node", keys_command.node, "trusted node (default: the controller)");
  CLI::App* keys_trust =
      keys->add_subcommand("trust", "allow the agent with this public key to join as NODE");
  keys_trust->add_option("node", keys_command.node, "node name")->required();
  keys_trust->add_option("key", keys_command.key, "Z85 public key, or an agent.pub file")
      ->required();
  keys_trust->add_flag("--force", keys_command.force, "replace NODE's key / trust a key twice");
  CLI::App* keys_revoke = keys->add_subcommand("revoke", "stop trusting NODE's key");
  keys_revoke->add_option("node", keys_command.node, "node name")->required();
  CLI::App* keys_rotate =
      keys->add_subcommand("rotate", "replace this machine's agent or controller key pair");
  keys_rotate->add_flag("--agent", keys_command.agent, "the agent key pair (agent.key)");
  keys_rotate->add_flag("--controller", keys_command.controller,
                        "the controller key pair (controller.key)");

  std::vector<std::string> reversed(args.size() > 1 ? args.begin() + 1 : args.end(), args.end());
  std::reverse(reversed.begin(), reversed.end());
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    err << "sparkctl: " << e.what() << " (see sparkctl --help)\n";
    return kExitUsage;
  }

  if (!admin_key_file.empty() && app.count("--token") == 0) {
    std::ifstream in(admin_key_file);
    std::string line, key;
    while (key.empty() && std::getline(in, line)) {
      const size_t begin = line.find_first_not_of(" \t\r");
      const size_t end = line.find_last_not_of(" \t\r");
      if (begin != std::string::npos && line[begin] != '#')
        key = line.substr(begin, end - begin + 1);
    }
    if (key.empty()) {
      err << "sparkctl: no admin key in " << admin_key_file
          << " (it must be readable and hold the key on a line of its own)\n";
      return kExitUsage;
    }
    ctx.token = key;
  }

  if (nodes->parsed()) return Nodes(ctx);
  if (keys->parsed()) {
    for (const CLI::App* sub : keys->get_subcommands())
      return Keys(ctx, keys_command, sub->get_name());
  }

  if (deploy->parsed()) {
    json body = {{"name", name}, {"path", path}, {"tp", tp}};
    if (!backend.empty()) body["backend"] = backend;
    if (!node_list.empty()) {
      json list = json::array();
      std::stringstream stream(node_list);
      std::string node;
      while (std::getline(stream, node, ',')) {
        if (!node.empty()) list.push_back(node);
      }
      body["nodes"] = list;
    }
    json options = json::object();
    for (const std::string& pair : option_pairs) {
      const size_t eq = pair.find('=');
      if (eq == std::string::npos || eq == 0) {
        err << "sparkctl: --option \"" << pair << "\" is not KEY=VALUE\n";
        return kExitUsage;
      }
      const std::string key = pair.substr(0, eq);
      const std::string value = pair.substr(eq + 1);
      const size_t dot = key.find('.');
      if (dot != std::string::npos) {
        // Nested objects: extra.KNOB=V, speculative.steps=N.
        const std::string object = key.substr(0, dot);
        const std::string field = key.substr(dot + 1);
        if ((object != "extra" && object != "speculative") || field.empty()) {
          err << "sparkctl: --option \"" << pair
              << "\": only extra.KEY and speculative.FIELD name a field of an object option\n";
          return kExitUsage;
        }
        options[object][field] = value;
      } else {
        options[key] = value;
      }
    }
    if (!options.empty()) body["options"] = options;
    Reply r = Call(ctx, http::Method::kPost, "/api/v1/models", body);
    if (r.exit_code != 0) return r.exit_code;
    if (ctx.json_output) {
      out << r.body.dump(2) << "\n";
    } else {
      out << "deployed " << name << " (state " << Str(r.body["state"])
          << "); follow it with: sparkctl status " << name << "\n";
    }
    return 0;
  }

  if (ls->parsed()) {
    Reply r = Call(ctx, http::Method::kGet, "/api/v1/models");
    if (r.exit_code != 0) return r.exit_code;
    if (ctx.json_output) {
      out << r.body.dump(2) << "\n";
    } else {
      PrintModelTable(out, r.body["models"]);
    }
    return 0;
  }

  if (status->parsed()) {
    Reply r = Call(ctx, http::Method::kGet, "/api/v1/models/" + http::PercentEncode(name));
    if (r.exit_code != 0) return r.exit_code;
    if (ctx.json_output) {
      out << r.body.dump(2) << "\n";
    } else {
      PrintModel(out, r.body);
    }
    return 0;
  }

  if (undeploy->parsed() || restart->parsed()) {
    const bool is_undeploy = undeploy->parsed();
    Reply r =
        is_undeploy
            ? Call(ctx, http::Method::kDelete, "/api/v1/models/" + http::PercentEncode(name))
            : Call(ctx, http::Method::kPost,
                   "/api/v1/models/" + http::PercentEncode(name) + "/restart", json::object());
    if (r.exit_code != 0) return r.exit_code;
    if (ctx.json_output) {
      out << r.body.dump(2) << "\n";
    } else {
      out << (is_undeploy ? "undeploying " : "restarting ") << name << " (state "
          << Str(r.body["state"]) << ")\n";
    }
    return 0;
  }

  if (runs->parsed()) {
    std::string target = "/api/v1/runs?limit=" + std::to_string(runs_limit);
    if (!runs_model.empty()) target += "&model=" + http::PercentEncode(runs_model);
    Reply r = Call(ctx, http::Method::kGet, target);
    if (r.exit_code != 0) return r.exit_code;
    if (ctx.json_output) {
      out << r.body.dump(2) << "\n";
      return 0;
    }
    Table table({"ID", "MODEL", "GEN", "STATE", "STARTED", "READY_AFTER", "LASTED", "PLACEMENT",
                 "END_REASON"});
    for (const json& run : r.body["runs"]) {
      const int64_t started = run.value("started_at_ms", int64_t{0});
      const int64_t ready = run.value("ready_at_ms", int64_t{0});
      const int64_t ended = run.value("ended_at_ms", int64_t{0});
      table.Add({Str(run["id"]), Str(run["model"]), Str(run["generation"]), Str(run["state"]),
                 Time(run["started_at_ms"]), ready > 0 ? Duration(ready - started) : "-",
                 ended > 0 ? Duration(ended - started) : "-", Join(run["placement"]),
                 Truncate(Str(run["end_reason"]), 70)});
    }
    table.Print(out);
    return 0;
  }

  if (events->parsed()) {
    std::string target =
        "/api/v1/events?since=" + std::to_string(since) + "&limit=" + std::to_string(events_limit);
    if (!events_model.empty()) target += "&model=" + http::PercentEncode(events_model);
    Reply r = Call(ctx, http::Method::kGet, target);
    if (r.exit_code != 0) return r.exit_code;
    if (ctx.json_output) {
      out << r.body.dump(2) << "\n";
      return 0;
    }
    Table table({"ID", "TIME", "KIND", "MODEL", "NODE", "MESSAGE"});
    for (const json& e : r.body["events"]) {
      table.Add({Str(e["id"]), Time(e["ts_ms"]), Str(e["kind"]), Str(e["model"]), Str(e["node"]),
                 Str(e["message"])});
    }
    table.Print(out);
    return 0;
  }

  if (tunings->parsed()) {
    std::string target = "/api/v1/tunings";
    if (!tunings_class.empty()) target += "?device_class=" + http::PercentEncode(tunings_class);
    Reply r = Call(ctx, http::Method::kGet, target);
    if (r.exit_code != 0) return r.exit_code;
    if (ctx.json_output) {
      out << r.body.dump(2) << "\n";
      return 0;
    }
    Table table({"DEVICE_CLASS", "KEY", "CHOICE", "US", "SOURCE", "TUNED"});
    for (const json& t : r.body["tunings"]) {
      char us[32];
      std::snprintf(us, sizeof(us), "%.1f", t.value("measured_us", 0.0));
      table.Add({Str(t["device_class"]), Str(t["key"]), Str(t.value("choice", json("-"))), us,
                 Str(t.value("source", json("-"))),
                 Time(t.value("tuned_unix_ms", t.value("updated_at_ms", json(0))))});
    }
    table.Print(out);
    return 0;
  }

  if (wait->parsed()) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_timeout_s);
    std::string last_state;
    while (true) {
      Reply r = Call(ctx, http::Method::kGet, "/api/v1/models/" + http::PercentEncode(name));
      if (r.exit_code == kExitUnreachable || r.exit_code == kExitUsage) return r.exit_code;
      if (r.exit_code == 0) {
        last_state = Str(r.body["state"]);
        if (last_state == wait_state) {
          out << name << " is " << last_state << "\n";
          return 0;
        }
        if (last_state == "failed" && wait_state != "failed") {
          err << "sparkctl: " << name << " failed: " << Str(r.body["last_error"]) << "\n";
          return kExitWaitFailed;
        }
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        err << "sparkctl: " << name << " did not reach \"" << wait_state << "\" within "
            << wait_timeout_s << " s (last state: " << (last_state.empty() ? "-" : last_state)
            << ")\n";
        return kExitWaitFailed;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }
  return kExitUsage;
}

}  // namespace spark::controller
