#include "tests/cluster/cluster.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "common/clock.h"

namespace spark::cluster {

namespace fs = std::filesystem;
using nlohmann::json;
using std::chrono::milliseconds;

int64_t NowMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool WaitUntil(const std::function<bool()>& predicate, milliseconds timeout, milliseconds poll) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (predicate()) return true;
    std::this_thread::sleep_for(poll);
  }
  return predicate();
}

Binaries FindBinaries() {
  Binaries b;
  const std::string build = SPARK_BINARY_DIR;
  b.controller = build + "/controller/spark-controller";
  b.agent = build + "/agent/spark-agent";
  b.shard = build + "/engine/shard/spark-shard";
  b.model_tool = build + "/engine/tools/spark-model";
  for (const std::string* path : {&b.controller, &b.agent, &b.shard, &b.model_tool}) {
    if (!fs::exists(*path)) b.missing += (b.missing.empty() ? "" : ", ") + *path;
  }
  return b;
}

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Tail(const std::string& path, int lines) {
  std::deque<std::string> last;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    last.push_back(line);
    if (static_cast<int>(last.size()) > lines) last.pop_front();
  }
  std::string out;
  for (const std::string& l : last) out += l + "\n";
  return out;
}

std::string RandomHex(int digits) {
  static std::mt19937_64 rng(std::random_device{}());
  std::string out;
  for (int i = 0; i < digits; ++i) out += "0123456789abcdef"[rng() % 16];
  return out;
}

std::string NewBootId() {
  return RandomHex(8) + "-" + RandomHex(4) + "-" + RandomHex(4) + "-" + RandomHex(4) + "-" +
         RandomHex(12);
}

std::vector<std::string> Cmdline(pid_t pid) {
  std::string raw = ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
  std::vector<std::string> args;
  std::string current;
  for (char c : raw) {
    if (c == '\0') {
      args.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  return args;
}

bool IsZombie(pid_t pid) {
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

std::atomic<int> g_cluster_counter{0};

// The iproute2 binary ("" when not installed).
const std::string& IpTool() {
  static const std::string path = [] {
    for (const char* candidate : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
      if (fs::exists(candidate)) return std::string(candidate);
    }
    return std::string();
  }();
  return path;
}

}  // namespace

Result<std::vector<std::string>> UnitExecStart(const std::string& unit_path) {
  std::ifstream in(unit_path);
  if (!in) return NotFound("cannot read the unit file " + unit_path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with("ExecStart=")) continue;
    std::istringstream words(line.substr(std::string("ExecStart=").size()));
    std::vector<std::string> args;
    std::string word;
    while (words >> word) args.push_back(word);
    if (args.empty()) break;
    return args;
  }
  return InvalidArgument(unit_path + " has no ExecStart= command");
}

std::map<std::string, std::string> UnitEnvironment(const std::string& unit_path) {
  std::map<std::string, std::string> env;
  std::ifstream in(unit_path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with("Environment=")) continue;
    std::istringstream words(line.substr(std::string("Environment=").size()));
    std::string word;
    while (words >> word) {
      const size_t eq = word.find('=');
      if (eq != std::string::npos) env[word.substr(0, eq)] = word.substr(eq + 1);
    }
  }
  return env;
}

std::string TomlString(const std::string& value) {
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string RewriteToml(const std::string& text, const std::map<std::string, std::string>& values) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::map<std::string, bool> done;
  std::string table;
  std::vector<std::string> out;
  // Keys of `table` not written yet, emitted before the next table starts (or at the end).
  auto flush = [&](const std::string& ending) {
    for (const auto& [key, value] : values) {
      const size_t dot = key.rfind('.');
      const std::string key_table = dot == std::string::npos ? "" : key.substr(0, dot);
      if (key_table == ending && !done[key]) {
        out.push_back(key.substr(dot == std::string::npos ? 0 : dot + 1) + " = " + value);
        done[key] = true;
      }
    }
  };
  for (const std::string& line : lines) {
    if (line.starts_with("[")) {
      flush(table);
      table = line.substr(1, line.find(']') - 1);
      out.push_back(line);
      continue;
    }
    const size_t eq = line.find('=');
    if (!line.starts_with("#") && eq != std::string::npos) {
      std::string key = line.substr(0, eq);
      while (!key.empty() && key.back() == ' ') key.pop_back();
      const std::string full = table.empty() ? key : table + "." + key;
      auto it = values.find(full);
      if (it != values.end()) {
        out.push_back(key + " = " + it->second);
        done[full] = true;
        continue;
      }
    }
    out.push_back(line);
  }
  flush(table);
  std::string result;
  for (const std::string& line : out) result += line + "\n";
  return result;
}

Status Cluster::UnitCommand(const std::string& unit, const std::string& config,
                            const std::map<std::string, std::string>& config_values,
                            const std::string& config_path, const std::string& binary,
                            SpawnOptions* options) {
  const std::string source = SPARK_SOURCE_DIR;
  SPARK_ASSIGN_OR_RETURN(std::vector<std::string> exec, UnitExecStart(source + "/systemd/" + unit));
  const std::string packaged_config = "/etc/spark/" + config;
  bool config_seen = false;
  for (std::string& arg : exec) {
    if (arg == packaged_config) {
      arg = config_path;
      config_seen = true;
    } else if (arg.starts_with("/usr/bin/")) {
      arg = binary;
    }
  }
  if (!config_seen) return InvalidArgument(unit + "'s ExecStart does not use " + packaged_config);
  std::ofstream(config_path) << RewriteToml(ReadFile(source + "/systemd/" + config), config_values);
  options->args.insert(options->args.end(), exec.begin(), exec.end());
  for (const auto& [key, value] : UnitEnvironment(source + "/systemd/" + unit)) {
    options->env[key] = value;
  }
  return Status::Ok();
}

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  binaries_ = FindBinaries();
  const int id = (static_cast<int>(getpid()) * 7 + g_cluster_counter++) % 9000 + 1000;
  id_ = std::to_string(id);
  std::string pattern = (fs::temp_directory_path() / ("spark-cluster-" + id_ + "-XXXXXX")).string();
  SPARK_CHECK(mkdtemp(pattern.data()) != nullptr) << "mkdtemp failed";
  root_ = pattern;
  agents_.resize(static_cast<size_t>(options_.agents));
}

Cluster::~Cluster() {
  // Agents first, gracefully: they stop their shards.
  for (Agent& agent : agents_) {
    if (agent.process) agent.process->Kill(SIGTERM).IgnoreError();
  }
  for (Agent& agent : agents_) {
    if (!agent.process) continue;
    Result<std::optional<ExitInfo>> exited = agent.process->WaitFor(milliseconds(8000));
    if (!exited.ok() || !exited->has_value()) agent.process->Kill(SIGKILL).IgnoreError();
    agent.process.reset();
  }
  for (pid_t pid : ShardPids()) kill(pid, SIGKILL);
  db_.reset();
  client_.reset();
  if (controller_) {
    controller_->Kill(SIGKILL).IgnoreError();
    controller_.reset();
  }
  TearDownNetwork();
  if (std::getenv("SPARK_CLUSTER_KEEP") == nullptr) {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }
}

Status Cluster::Run(const std::vector<std::string>& args) {
  SpawnOptions options;
  options.args = args;
  if (options.args[0] == "ip") options.args[0] = IpTool();
  options.stdout_path = root_ + "/setup.log";
  options.stderr_path = root_ + "/setup.log";
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<Process> process, launcher_.Spawn(options));
  SPARK_ASSIGN_OR_RETURN(std::optional<ExitInfo> info, process->WaitFor(milliseconds(60000)));
  if (!info.has_value()) return DeadlineExceeded("command timed out: " + args[0]);
  if (!info->success()) {
    std::string command;
    for (const std::string& a : args) command += a + " ";
    return Internal("command failed (" + info->ToString() + "): " + command + "\n" +
                    Tail(root_ + "/setup.log", 10));
  }
  return Status::Ok();
}

Status Cluster::SetUpNetwork() {
  const int id = std::stoi(id_);
  const std::string subnet =
      "10." + std::to_string(100 + (id / 250) % 100) + "." + std::to_string(id % 250) + ".";
  bridge_ = "spb" + id_;
  controller_address_ = subnet + "1";
  network_up_ = true;
  SPARK_RETURN_IF_ERROR(Run({"ip", "link", "add", bridge_, "type", "bridge"}));
  SPARK_RETURN_IF_ERROR(Run({"ip", "addr", "add", controller_address_ + "/24", "dev", bridge_}));
  SPARK_RETURN_IF_ERROR(Run({"ip", "link", "set", bridge_, "up"}));
  for (size_t i = 0; i < agents_.size(); ++i) {
    Agent& a = agents_[i];
    a.ns = "spn" + id_ + "-" + std::to_string(i);
    a.host_veth = "spv" + id_ + "h" + std::to_string(i);
    const std::string peer = "spv" + id_ + "p" + std::to_string(i);
    a.address = subnet + std::to_string(10 + i);
    SPARK_RETURN_IF_ERROR(Run({"ip", "netns", "add", a.ns}));
    SPARK_RETURN_IF_ERROR(Run({"ip", "netns", "exec", a.ns, "ip", "link", "set", "lo", "up"}));
    SPARK_RETURN_IF_ERROR(
        Run({"ip", "link", "add", a.host_veth, "type", "veth", "peer", "name", peer}));
    SPARK_RETURN_IF_ERROR(Run({"ip", "link", "set", peer, "netns", a.ns}));
    SPARK_RETURN_IF_ERROR(Run({"ip", "link", "set", a.host_veth, "master", bridge_}));
    SPARK_RETURN_IF_ERROR(Run({"ip", "link", "set", a.host_veth, "up"}));
    SPARK_RETURN_IF_ERROR(
        Run({"ip", "netns", "exec", a.ns, "ip", "addr", "add", a.address + "/24", "dev", peer}));
    SPARK_RETURN_IF_ERROR(Run({"ip", "netns", "exec", a.ns, "ip", "link", "set", peer, "up"}));
  }
  // The bridge must forward between the namespaces and the host at once.
  return Status::Ok();
}

void Cluster::TearDownNetwork() {
  if (!network_up_) return;
  for (const Agent& a : agents_) {
    if (!a.host_veth.empty()) Run({"ip", "link", "del", a.host_veth}).IgnoreError();
    if (!a.ns.empty()) Run({"ip", "netns", "del", a.ns}).IgnoreError();
  }
  Run({"ip", "link", "del", bridge_}).IgnoreError();
  network_up_ = false;
}

Status Cluster::Start() {
  if (!binaries_.missing.empty()) {
    return FailedPrecondition("binaries not built: " + binaries_.missing);
  }
  model_dir_ = root_ + "/model";
  SPARK_RETURN_IF_ERROR(Run({binaries_.model_tool, "tiny", model_dir_}));
  netns_ = options_.allow_netns && geteuid() == 0 && !IpTool().empty() &&
           std::getenv("SPARK_CLUSTER_NO_NETNS") == nullptr;
  if (netns_) {
    Status st = SetUpNetwork();
    if (!st.ok()) {
      std::fprintf(stderr, "cluster: network namespaces unavailable (%s); using loopback\n",
                   st.ToString().c_str());
      TearDownNetwork();
      netns_ = false;
    }
  }
  if (!netns_) {
    controller_address_ = "127.0.0.1";
    for (Agent& a : agents_) a.address = "127.0.0.1";
  }
  if (options_.secure) SPARK_RETURN_IF_ERROR(SetUpKeys());
  SPARK_RETURN_IF_ERROR(StartController());
  for (int i = 0; i < agents(); ++i) SPARK_RETURN_IF_ERROR(StartAgent(i, /*new_boot_id=*/true));
  bool registered = WaitUntil(
      [&] {
        for (int i = 0; i < agents(); ++i) {
          json n = Node(node(i));
          if (n.is_null() || n.value("state", "") != "alive") return false;
        }
        return true;
      },
      milliseconds(20000));
  if (!registered) return DeadlineExceeded("agents did not register within 20 s\n" + LogTails());
  return Status::Ok();
}

std::string Cluster::keys_dir(int agent) const {
  return root_ + "/keys/" + (agent < 0 ? std::string("controller") : node(agent));
}

Status Cluster::SetUpKeys() {
  SPARK_RETURN_IF_ERROR(Run({binaries_.controller, "keygen", "--keys", keys_dir(-1)}));
  for (int i = 0; i < agents(); ++i) {
    SPARK_RETURN_IF_ERROR(Run({binaries_.agent, "keygen", "--keys", keys_dir(i)}));
    std::error_code ec;
    fs::copy_file(keys_dir(-1) + "/controller.pub", keys_dir(i) + "/controller.pub",
                  fs::copy_options::overwrite_existing, ec);
    if (ec) return Internal("cannot copy controller.pub: " + ec.message());
    fs::create_directories(keys_dir(-1) + "/trusted");
    fs::copy_file(keys_dir(i) + "/agent.pub", keys_dir(-1) + "/trusted/" + node(i) + ".pub",
                  fs::copy_options::overwrite_existing, ec);
    if (ec) return Internal("cannot copy agent.pub: " + ec.message());
  }
  return Status::Ok();
}

Status Cluster::StartController() {
  const std::string port_file = root_ + "/controller.ports.json";
  fs::remove(port_file);
  SpawnOptions options;
  options.args = {binaries_.controller,
                  "--db",
                  db_path(),
                  "--http-listen",
                  "127.0.0.1:" + std::to_string(http_port_),
                  "--agent-listen",
                  agent_endpoint_.empty() ? "tcp://" + controller_address_ + ":*" : agent_endpoint_,
                  "--port-file",
                  port_file,
                  "--log-sink",
                  "stderr",
                  "--log-level",
                  "info",
                  "--stop-grace-ms",
                  "3000"};
  if (options_.secure) {
    options.args.insert(options.args.end(), {"--keys", keys_dir(-1)});
  } else {
    options.args.push_back("--insecure");
  }
  if (options_.packaged_units) {
    std::map<std::string, std::string> config = {
        {"db", TomlString(db_path())},
        {"http_listen", TomlString("127.0.0.1:" + std::to_string(http_port_))},
        {"agent_listen", TomlString(options.args[6])},
        {"port_file", TomlString(port_file)},
        {"insecure", options_.secure ? "false" : "true"},
        {"keys", TomlString(keys_dir(-1))},
        {"stop_grace_ms", "3000"},
        {"log.sink", TomlString("stderr")}};
    options.args.clear();
    SPARK_RETURN_IF_ERROR(UnitCommand("spark-controller.service", "controller.toml", config,
                                      root_ + "/controller.toml", binaries_.controller, &options));
  }
  for (const std::string& flag : options_.controller_flags) options.args.push_back(flag);
  options.stdout_path = controller_log();
  options.stderr_path = controller_log();
  SPARK_ASSIGN_OR_RETURN(controller_, launcher_.Spawn(options));
  if (!WaitUntil([&] { return fs::exists(port_file); }, milliseconds(15000), milliseconds(10))) {
    return DeadlineExceeded("spark-controller did not start within 15 s:\n" +
                            Tail(controller_log(), 20));
  }
  json ports = json::parse(ReadFile(port_file), nullptr, false);
  if (ports.is_discarded()) return DataLoss("bad port file " + port_file);
  http_port_ = ports["http_port"].get<uint16_t>();
  agent_endpoint_ = ports["agent_endpoint"].get<std::string>();
  client_.reset();
  return Status::Ok();
}

void Cluster::KillController() {
  if (!controller_) return;
  controller_->Kill(SIGKILL).IgnoreError();
  controller_->WaitFor(milliseconds(10000)).status().IgnoreError();
  controller_.reset();
  client_.reset();
}

bool Cluster::ControllerRunning() {
  if (!controller_) return false;
  Result<std::optional<ExitInfo>> exited = controller_->TryWait();
  return exited.ok() && !exited->has_value();
}

std::string Cluster::agent_log(int index) const {
  return root_ + "/agent-" + std::to_string(index) + ".log";
}

Status Cluster::StartAgent(int index, bool new_boot_id) {
  Agent& a = agents_[static_cast<size_t>(index)];
  a.state_dir = root_ + "/agents/" + node(index);
  a.boot_id_file = root_ + "/boot-id-" + node(index);
  fs::create_directories(a.state_dir);
  if (new_boot_id || !fs::exists(a.boot_id_file)) {
    std::ofstream(a.boot_id_file) << NewBootId() << "\n";
  }
  auto shard = options_.shard_binary_override.find(index);
  std::vector<std::string> args;
  if (netns_) args = {IpTool(), "netns", "exec", a.ns};
  std::vector<std::string> agent_args = {
      binaries_.agent,
      "--controller",
      agent_endpoint_,
      "--node-name",
      node(index),
      "--backend",
      "cpu",
      "--state-dir",
      a.state_dir,
      "--shard-binary",
      shard != options_.shard_binary_override.end() ? shard->second : binaries_.shard,
      "--data-listen",
      a.address + ":0",
      "--advertise-host",
      a.address,
      "--boot-id-file",
      a.boot_id_file,
      "--heartbeat-ms",
      "1000",
      "--shutdown-grace-ms",
      "3000",
      "--log-sink",
      "stderr"};
  if (options_.secure) {
    agent_args.insert(agent_args.end(), {"--keys", keys_dir(index)});
  } else {
    agent_args.push_back("--insecure");
  }
  SpawnOptions options;
  if (options_.packaged_units) {
    std::map<std::string, std::string> config = {{"controller", TomlString(agent_endpoint_)},
                                                 {"node_name", TomlString(node(index))},
                                                 {"backend", TomlString("cpu")},
                                                 {"state_dir", TomlString(a.state_dir)},
                                                 {"shard_binary", TomlString(agent_args[10])},
                                                 {"data_listen", TomlString(a.address + ":0")},
                                                 {"advertise_host", TomlString(a.address)},
                                                 {"boot_id_file", TomlString(a.boot_id_file)},
                                                 {"shutdown_grace_ms", "3000"},
                                                 {"insecure", options_.secure ? "false" : "true"},
                                                 {"keys", TomlString(keys_dir(index))},
                                                 {"log.sink", TomlString("stderr")}};
    agent_args.clear();
    SPARK_RETURN_IF_ERROR(UnitCommand("spark-agent.service", "agent.toml", config,
                                      root_ + "/agent-" + node(index) + ".toml", binaries_.agent,
                                      &options));
  }
  args.insert(args.end(), agent_args.begin(), agent_args.end());
  options.args.insert(options.args.begin(), args.begin(), args.end());
  options.stdout_path = agent_log(index);
  options.stderr_path = agent_log(index);
  SPARK_ASSIGN_OR_RETURN(a.process, launcher_.Spawn(options));
  return Status::Ok();
}

void Cluster::KillAgent(int index, bool with_shards) {
  Agent& a = agents_[static_cast<size_t>(index)];
  if (a.process) {
    a.process->Kill(SIGKILL).IgnoreError();
    a.process->WaitFor(milliseconds(10000)).status().IgnoreError();
    a.process.reset();
  }
  if (with_shards) {
    // SIGKILL is delivered asynchronously: wait until every shard is dead (gone or a zombie) so
    // the caller sees the node as really down.
    const auto deadline = std::chrono::steady_clock::now() + milliseconds(10000);
    std::vector<pid_t> alive = ShardPids(index);
    while (!alive.empty() && std::chrono::steady_clock::now() < deadline) {
      for (pid_t pid : alive) kill(pid, SIGKILL);
      std::this_thread::sleep_for(milliseconds(10));
      alive = ShardPids(index);
    }
  }
}

bool Cluster::AgentRunning(int index) {
  Agent& a = agents_[static_cast<size_t>(index)];
  if (!a.process) return false;
  Result<std::optional<ExitInfo>> exited = a.process->TryWait();
  return exited.ok() && !exited->has_value();
}

std::vector<pid_t> Cluster::ShardPids(std::optional<int> agent) const {
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    std::vector<std::string> args = Cmdline(pid);
    if (std::find(args.begin(), args.end(), "--assignment") == args.end()) continue;
    bool ours = false;
    for (size_t i = 0; i < agents_.size(); ++i) {
      if (agent && static_cast<int>(i) != *agent) continue;
      const std::string& dir = agents_[i].state_dir;
      if (dir.empty()) continue;
      for (const std::string& arg : args) {
        if (arg.find(dir + "/") != std::string::npos) ours = true;
      }
    }
    if (ours && !IsZombie(pid)) pids.push_back(pid);
  }
  return pids;
}

Status Cluster::SetPartitioned(int index, bool partitioned) {
  if (!netns_) return FailedPrecondition("partitions need network namespaces (run as root)");
  return Run({"ip", "link", "set", agents_[static_cast<size_t>(index)].host_veth,
              partitioned ? "down" : "up"});
}

http::HttpClient& Cluster::Client() {
  if (!client_) {
    http::HttpClientOptions options;
    options.connect_timeout = milliseconds(2000);
    options.request_timeout = milliseconds(30000);
    Result<http::HttpClient> client =
        http::HttpClient::Create("http://127.0.0.1:" + std::to_string(http_port_), options);
    SPARK_CHECK(client.ok()) << client.status().ToString();
    client_.emplace(std::move(*client));
  }
  return *client_;
}

Result<http::ClientResponse> Cluster::Get(const std::string& target) {
  Result<http::ClientResponse> r = Client().Get(target);
  if (!r.ok()) client_.reset();
  return r;
}

Result<http::ClientResponse> Cluster::Post(const std::string& target, const json& body) {
  Result<http::ClientResponse> r = Client().Post(target, body);
  if (!r.ok()) client_.reset();
  return r;
}

Result<http::ClientResponse> Cluster::Delete(const std::string& target) {
  Result<http::ClientResponse> r = Client().Delete(target);
  if (!r.ok()) client_.reset();
  return r;
}

json Cluster::Model(const std::string& name) {
  Result<http::ClientResponse> r = Get("/api/v1/models/" + name);
  if (!r.ok() || r->status != 200) return nullptr;
  Result<json> body = r->Json();
  return body.ok() ? *body : json(nullptr);
}

json Cluster::Node(const std::string& name) {
  Result<http::ClientResponse> r = Get("/api/v1/nodes");
  if (!r.ok() || r->status != 200) return nullptr;
  Result<json> body = r->Json();
  if (!body.ok()) return nullptr;
  for (const json& n : (*body)["nodes"]) {
    if (n.value("name", "") == name) return n;
  }
  return nullptr;
}

int Cluster::Deploy(const std::string& name, int tp, json options, std::vector<std::string> nodes) {
  json body = {{"name", name}, {"path", model_dir_}, {"tp", tp}, {"options", options}};
  if (!nodes.empty()) body["nodes"] = nodes;
  Result<http::ClientResponse> r = Post("/api/v1/models", body);
  return r.ok() ? r->status : 0;
}

json Cluster::WaitModel(const std::string& name, const std::function<bool(const json&)>& predicate,
                        milliseconds timeout) {
  json last;
  const bool ok = WaitUntil(
      [&] {
        last = Model(name);
        return !last.is_null() && predicate(last);
      },
      timeout, milliseconds(50));
  return ok ? last : json(nullptr);
}

json Cluster::WaitReady(const std::string& name, milliseconds timeout) {
  return WaitModel(
      name, [](const json& m) { return m["state"] == "ready" && m["serving"] == true; }, timeout);
}

Result<std::vector<int>> Cluster::Complete(const std::string& model, const std::vector<int>& prompt,
                                           int max_tokens) {
  json body = {{"model", model},
               {"prompt", prompt},
               {"max_tokens", max_tokens},
               {"temperature", 0},
               {"ignore_eos", true}};
  SPARK_ASSIGN_OR_RETURN(http::ClientResponse r, Post("/v1/completions", body));
  SPARK_ASSIGN_OR_RETURN(json j, r.Json());
  if (r.status != 200) {
    return Unavailable("completion failed with " + std::to_string(r.status) + ": " + j.dump());
  }
  std::vector<int> ids;
  for (const json& t : j["choices"][0]["token_ids"]) ids.push_back(t.get<int>());
  return ids;
}

store::Store& Cluster::db() {
  if (!db_) {
    store::StoreOptions options;
    options.path = db_path();
    options.exclusive_lock = false;
    options.read_connections = 2;
    Result<std::unique_ptr<store::Store>> store = store::Store::Open(options, RealClock::Get());
    SPARK_CHECK(store.ok()) << store.status().ToString();
    db_ = std::move(*store);
  }
  return *db_;
}

std::string Cluster::LogTails(int lines) const {
  std::string out = "--- controller log:\n" + Tail(controller_log(), lines);
  for (size_t i = 0; i < agents_.size(); ++i) {
    out +=
        "--- agent " + std::to_string(i) + " log:\n" + Tail(agent_log(static_cast<int>(i)), lines);
  }
  std::error_code ec;
  for (size_t i = 0; i < agents_.size(); ++i) {
    const fs::path logs = fs::path(agents_[i].state_dir) / "logs";
    for (const auto& entry : fs::directory_iterator(logs, ec)) {
      out += "--- shard log " + entry.path().string() + ":\n" +
             Tail(entry.path().string(), std::min(lines, 10));
    }
  }
  return out;
}

}  // namespace spark::cluster
