// spark-serve-bench: load generator for spark-controller's OpenAI-compatible endpoint.
//
//   spark-serve-bench --url http://127.0.0.1:8080 --model tiny-glm [--api-key-file F]
//                     [--clients 256] [--requests N] [--max-tokens 32] [--prompt-tokens 24]
//                     [--data-endpoint tcp://127.0.0.1:P [--relay-clients N] [--relay-requests N]
//                      [--relay-sequential] [--skip-chat]] [--controller-pid PID] [--json OUT]
//
// Phase "chat": `clients` concurrent streaming clients (SSE, keep-alive connections) send
// `requests` chat completions (ignore_eos, exactly max_tokens tokens each) and the tool reports
// requests/s, output tokens/s, time to first token (TTFT), inter-token latency (ITL: the gaps
// between token arrivals a client sees) and time per output token, with p50/p90/p99.
//
// Phase "relay" (with --data-endpoint): the controller's added latency. `relay-clients` clients
// stream /v1/completions over token-id prompts through the controller, and `relay-clients`
// clients send the same requests (same prompt ids and sampling) straight to the rank-0 shard's
// data plane with the controller's own protocol: both at once by default (the same engine load
// on both sides; 4 waves per side, the first left out of the figures: whichever burst reaches the
// engine first gets the earlier queue positions), or with --relay-sequential one request at a
// time alternating the sides (the uncontended cost; background load hits both sides alike). Relay
// overhead per token = token delivery latency through HTTP minus directly, where a token's delivery
// latency is its arrival time minus its request's send time: a constant delay the controller adds
// to every token (its queueing, HTTP and JSON work, detokenization, SSE writing) shifts this by
// that delay; mean and p50 are given, and the TTFT p50 difference. With --controller-pid the
// controller's CPU time per token is reported too (user + system time from /proc over the phase,
// less its idle rate measured for 2 s before the phase).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <future>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/load/data_plane_load.h"
#include "tests/load/sse_load.h"
#include "tests/load/stream_trace.h"

namespace spark::load {
namespace {

using nlohmann::json;

struct Options {
  std::string url = "http://127.0.0.1:8080";
  std::string model = "tiny-glm";
  std::string api_key_file;
  int clients = 256;
  int requests = 0;  // 0: 2 * clients
  int max_tokens = 32;
  int prompt_tokens = 24;
  std::string data_endpoint;
  int relay_clients = 0;   // 0: clients / 2
  int relay_requests = 0;  // 0: 2 * relay_clients per side
  bool relay_sequential = false;
  bool skip_chat = false;
  int controller_pid = 0;
  std::string json_out;
};

// CPU seconds (user + system) of a process; negative when unreadable.
double CpuSeconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream fields(stat.substr(paren + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);  // utime, stime
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The controller's CPU use (seconds per second) while no request runs, over `window`.
double IdleCpuRate(int pid, std::chrono::milliseconds window) {
  const double before = CpuSeconds(pid);
  std::this_thread::sleep_for(window);
  const double after = CpuSeconds(pid);
  return before < 0 || after < 0 ? 0
                                 : (after - before) / std::chrono::duration<double>(window).count();
}

// The controller's CPU microseconds per token over a phase, its idle rate taken out.
double CpuUsPerToken(double cpu_s, double idle_rate, double wall_s, size_t tokens) {
  return std::max(0.0, cpu_s - idle_rate * wall_s) * 1e6 / static_cast<double>(tokens);
}

json StatsJson(const LoadStats& s) {
  auto p = [](const Percentiles& x) {
    return json{{"mean", x.mean}, {"p50", x.p50}, {"p90", x.p90},
                {"p99", x.p99},   {"max", x.max}, {"n", x.count}};
  };
  return {{"requests", s.requests},
          {"failed", s.failed},
          {"first_error", s.first_error},
          {"wall_s", s.wall_s},
          {"requests_per_s", s.requests_per_s},
          {"output_tokens_per_s", s.output_tokens_per_s},
          {"tokens", s.tokens},
          {"ttft_ms", p(s.ttft_ms)},
          {"itl_ms", p(s.itl_ms)},
          {"tpot_ms", p(s.tpot_ms)},
          {"token_delivery_ms", p(s.token_latency_ms)},
          {"e2e_ms", p(s.e2e_ms)}};
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Counts requests handed out; thread-safe.
class Counter {
 public:
  explicit Counter(int limit) : limit_(limit) {}
  std::optional<int> Next() {
    const int i = next_.fetch_add(1);
    if (i >= limit_) return std::nullopt;
    return i;
  }

 private:
  int limit_;
  std::atomic<int> next_{0};
};

std::vector<std::vector<int32_t>> MakePrompts(int count, int length) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> id(10, 400);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(count));
  for (auto& p : prompts) {
    for (int i = 0; i < length; ++i) p.push_back(id(rng));
  }
  return prompts;
}

// The relay phase: the same token-id requests through the controller (HTTP /v1/completions)
// and straight to the rank-0 data plane. Concurrent (default): both sides at once with
// `relay_clients` clients each, so that both see the same engine load. Sequential: one request
// at a time, alternating direct and HTTP, so that background load on the machine hits both sides
// alike and the sides never contend.
Result<json> RunRelay(const Options& o, const SseLoadOptions& http) {
  const int per_side =
      o.relay_sequential ? 1 : (o.relay_clients > 0 ? o.relay_clients : std::max(1, o.clients / 2));
  const int requests =
      o.relay_requests > 0 ? o.relay_requests : (o.relay_sequential ? 48 : 4 * per_side);
  const std::vector<std::vector<int32_t>> prompts = MakePrompts(requests, o.prompt_tokens);
  auto direct_request = [&](int i) {
    spark::v1::GenerateRequest r;
    r.set_request_id("serve-bench-" + std::to_string(getpid()) + "-" + std::to_string(i));
    for (int32_t id : prompts[static_cast<size_t>(i)]) r.add_prompt_token_ids(id);
    spark::v1::SamplingParams* s = r.mutable_sampling();
    s->set_temperature(0);
    s->set_top_p(1);
    s->set_top_k(0);
    s->set_min_p(0);
    s->set_repetition_penalty(1);
    s->set_max_tokens(static_cast<uint32_t>(o.max_tokens));
    s->set_ignore_eos(true);
    return r;
  };
  auto http_request = [&](int i) {
    json body = {{"model", o.model},
                 {"prompt", prompts[static_cast<size_t>(i)]},
                 {"stream", true},
                 {"stream_options", {{"include_usage", true}}},
                 {"max_tokens", o.max_tokens},
                 {"ignore_eos", true},
                 {"temperature", 0}};
    return SseRequest{"/v1/completions", body.dump()};
  };

  DataPlaneLoadOptions direct_options;
  direct_options.endpoint = o.data_endpoint;
  direct_options.clients = per_side;
  SseLoadOptions http_options = http;
  http_options.clients = per_side;
  std::vector<StreamTrace> direct_traces, http_traces;
  double direct_wall = 0, http_wall = 0;
  const double idle_rate =
      o.controller_pid > 0 ? IdleCpuRate(o.controller_pid, std::chrono::milliseconds(2000)) : 0;
  const double cpu0 = o.controller_pid > 0 ? CpuSeconds(o.controller_pid) : -1;

  if (o.relay_sequential) {
    DataPlaneLoad direct(direct_options);
    SseLoad through(http_options);
    for (int i = 0; i < requests; ++i) {
      bool given = false;
      Clock::time_point start = Clock::now();
      SPARK_ASSIGN_OR_RETURN(std::vector<StreamTrace> d,
                             direct.Run([&]() -> std::optional<spark::v1::GenerateRequest> {
                               if (given) return std::nullopt;
                               given = true;
                               start = Clock::now();
                               return direct_request(i);
                             }));
      direct_wall += Seconds(Clock::now() - start);
      direct_traces.insert(direct_traces.end(), d.begin(), d.end());
      given = false;
      start = Clock::now();
      std::vector<StreamTrace> h = through.Run(
          [&]() -> std::optional<SseRequest> {
            if (given) return std::nullopt;
            given = true;
            return http_request(i);
          },
          CountCompletionTokens);
      http_wall += Seconds(Clock::now() - start);
      http_traces.insert(http_traces.end(), h.begin(), h.end());
    }
  } else {
    Counter http_counter(requests);
    Counter direct_counter(requests);
    Status direct_status;
    std::promise<void> ready;
    std::future<void> ready_future = ready.get_future();
    bool ready_signalled = false;
    std::thread direct_thread([&] {
      Clock::time_point start;
      direct_options.on_ready = [&] {
        ready_signalled = true;
        start = Clock::now();
        ready.set_value();
      };
      DataPlaneLoad direct(direct_options);
      Result<std::vector<StreamTrace>> traces =
          direct.Run([&]() -> std::optional<spark::v1::GenerateRequest> {
            std::optional<int> i = direct_counter.Next();
            if (!i) return std::nullopt;
            return direct_request(*i);
          });
      direct_wall = Seconds(Clock::now() - start);
      if (traces.ok()) {
        direct_traces = std::move(*traces);
      } else {
        direct_status = traces.status();
      }
      if (!ready_signalled) ready.set_value();
    });
    ready_future.wait();  // both sides start together
    const Clock::time_point start = Clock::now();
    http_traces = SseLoad(http_options)
                      .Run(
                          [&]() -> std::optional<SseRequest> {
                            std::optional<int> i = http_counter.Next();
                            if (!i) return std::nullopt;
                            return http_request(*i);
                          },
                          CountCompletionTokens);
    http_wall = Seconds(Clock::now() - start);
    direct_thread.join();
    SPARK_RETURN_IF_ERROR(direct_status.WithContext("direct data plane"));
  }

  if (!o.relay_sequential) {
    // Steady state only: the first wave of each side is left out (which side's burst reaches
    // the engine first decides its queue position, not the relay).
    for (std::vector<StreamTrace>* traces : {&http_traces, &direct_traces}) {
      std::sort(traces->begin(), traces->end(),
                [](const StreamTrace& a, const StreamTrace& b) { return a.sent < b.sent; });
      const size_t skip = std::min(traces->size(), static_cast<size_t>(per_side));
      traces->erase(traces->begin(), traces->begin() + static_cast<std::ptrdiff_t>(skip));
    }
  }
  LoadStats via_http = Analyze(http_traces, http_wall);
  LoadStats direct_stats = Analyze(direct_traces, direct_wall);
  const std::string how = o.relay_sequential
                              ? std::string("one request at a time, alternating the sides")
                              : std::to_string(per_side) + " clients per side, both sides at once";
  std::printf("%s", FormatStats("relay, through the controller (HTTP /v1/completions, token-id "
                                "prompts; " +
                                    how + ")",
                                via_http)
                        .c_str());
  std::printf(
      "%s", FormatStats("relay, straight to the rank-0 data plane (the same requests; " + how + ")",
                        direct_stats)
                .c_str());
  const double mean_delta = via_http.token_latency_ms.mean - direct_stats.token_latency_ms.mean;
  const double p50_delta = via_http.token_latency_ms.p50 - direct_stats.token_latency_ms.p50;
  const double ttft_delta = via_http.ttft_ms.p50 - direct_stats.ttft_ms.p50;
  std::printf(
      "  controller relay overhead per token (token delivery latency, HTTP - direct): mean "
      "%+.3f ms, p50 %+.3f ms; TTFT p50 %+.3f ms\n",
      mean_delta, p50_delta, ttft_delta);
  json out = {{"clients_per_side", per_side},
              {"sequential", o.relay_sequential},
              {"http", StatsJson(via_http)},
              {"direct", StatsJson(direct_stats)},
              {"overhead_ms_per_token_mean", mean_delta},
              {"overhead_ms_per_token_p50", p50_delta},
              {"overhead_ttft_p50_ms", ttft_delta}};
  if (o.controller_pid > 0 && via_http.tokens > 0) {
    const double cpu = CpuSeconds(o.controller_pid) - cpu0;
    const double us_per_token =
        CpuUsPerToken(cpu, idle_rate, http_wall + direct_wall, via_http.tokens);
    std::printf(
        "  controller CPU: %.2f s over the phase (idle %.1f%%), %.1f us per relayed token\n", cpu,
        idle_rate * 100, us_per_token);
    out["controller_cpu_us_per_token"] = us_per_token;
  }
  return out;
}

int Run(const Options& o) {
  std::string authority = o.url;
  if (authority.rfind("http://", 0) == 0) authority = authority.substr(7);
  while (!authority.empty() && authority.back() == '/') authority.pop_back();
  const size_t colon = authority.rfind(':');
  if (colon == std::string::npos) {
    std::fprintf(stderr, "spark-serve-bench: --url %s has no port; use http://HOST:PORT\n",
                 o.url.c_str());
    return 2;
  }
  SseLoadOptions http;
  http.host = authority.substr(0, colon);
  if (http.host == "localhost") http.host = "127.0.0.1";
  http.port = static_cast<uint16_t>(std::stoi(authority.substr(colon + 1)));
  if (!o.api_key_file.empty()) {
    std::ifstream in(o.api_key_file);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line[0] != '#') {
        http.bearer_token = line;
        break;
      }
    }
    if (http.bearer_token.empty()) {
      std::fprintf(stderr, "spark-serve-bench: no key in --api-key-file %s\n",
                   o.api_key_file.c_str());
      return 2;
    }
  }
  json report = {{"clients", o.clients},
                 {"max_tokens", o.max_tokens},
                 {"prompt_tokens", o.prompt_tokens},
                 {"hardware_threads", std::thread::hardware_concurrency()}};
  int status = 0;

  // Warm-up: a few requests so that first-use costs stay out of the figures.
  {
    SseLoadOptions warm = http;
    warm.clients = 4;
    Counter counter(8);
    SseLoad(warm).Run(
        [&]() -> std::optional<SseRequest> {
          if (!counter.Next()) return std::nullopt;
          json body = {{"model", o.model},
                       {"messages", {{{"role", "user"}, {"content", "warm up"}}}},
                       {"stream", true},
                       {"max_tokens", 4}};
          return SseRequest{"/v1/chat/completions", body.dump()};
        },
        CountChatTokens);
  }

  // Phase 1: chat at full concurrency.
  if (!o.skip_chat) {
    const int requests = o.requests > 0 ? o.requests : 2 * o.clients;
    SseLoadOptions chat = http;
    chat.clients = o.clients;
    Counter counter(requests);
    const double idle_rate =
        o.controller_pid > 0 ? IdleCpuRate(o.controller_pid, std::chrono::milliseconds(2000)) : 0;
    const double cpu0 = o.controller_pid > 0 ? CpuSeconds(o.controller_pid) : -1;
    const Clock::time_point start = Clock::now();
    std::vector<StreamTrace> traces = SseLoad(chat).Run(
        [&]() -> std::optional<SseRequest> {
          std::optional<int> i = counter.Next();
          if (!i) return std::nullopt;
          json body = {
              {"model", o.model},
              {"messages",
               {{{"role", "user"},
                 {"content", "Request " + std::to_string(*i) +
                                 ": explain tensor parallel inference on small clusters."}}}},
              {"stream", true},
              {"stream_options", {{"include_usage", true}}},
              {"max_tokens", o.max_tokens},
              {"ignore_eos", true},
              {"temperature", 0}};
          return SseRequest{"/v1/chat/completions", body.dump()};
        },
        CountChatTokens);
    const double wall = Seconds(Clock::now() - start);
    LoadStats stats = Analyze(traces, wall);
    std::printf(
        "%s", FormatStats("chat: " + std::to_string(o.clients) + " concurrent streaming clients, " +
                              std::to_string(o.max_tokens) + " tokens per request",
                          stats)
                  .c_str());
    report["chat"] = StatsJson(stats);
    if (o.controller_pid > 0 && stats.tokens > 0) {
      const double cpu = CpuSeconds(o.controller_pid) - cpu0;
      const double us_per_token = CpuUsPerToken(cpu, idle_rate, wall, stats.tokens);
      std::printf(
          "  controller CPU: %.2f s over the phase (idle %.1f%%), %.1f us per streamed token\n",
          cpu, idle_rate * 100, us_per_token);
      report["chat"]["controller_cpu_s"] = cpu;
      report["chat"]["controller_cpu_us_per_token"] = us_per_token;
    }
    if (stats.failed > 0) status = 1;
  }

  // Phase 2: relay overhead.
  if (!o.data_endpoint.empty()) {
    Result<json> relay = RunRelay(o, http);
    if (!relay.ok()) {
      std::fprintf(stderr, "spark-serve-bench: %s\n", relay.status().ToString().c_str());
      return 1;
    }
    report["relay"] = *relay;
    if ((*relay)["http"]["failed"].get<size_t>() > 0 ||
        (*relay)["direct"]["failed"].get<size_t>() > 0) {
      status = 1;
    }
  }

  if (!o.json_out.empty()) {
    std::ofstream(o.json_out) << report.dump(2) << "\n";
  }
  return status;
}

}  // namespace
}  // namespace spark::load

int main(int argc, char** argv) {
  spark::load::Options o;
  CLI::App app("spark-serve-bench: streaming load against spark-controller's OpenAI endpoint");
  // A later flag overrides an earlier one (scripts pass defaults, users append their own).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--url", o.url, "controller base URL http://HOST:PORT")->capture_default_str();
  app.add_option("--model", o.model, "model (deployment) name")->capture_default_str();
  app.add_option("--api-key-file", o.api_key_file, "file whose first key line is the bearer key");
  app.add_option("--clients", o.clients, "concurrent streaming clients")->capture_default_str();
  app.add_option("--requests", o.requests, "chat requests in all (default 2 x clients)");
  app.add_option("--max-tokens", o.max_tokens, "tokens per request (ignore_eos)")
      ->capture_default_str();
  app.add_option("--prompt-tokens", o.prompt_tokens, "relay phase prompt length")
      ->capture_default_str();
  app.add_option("--data-endpoint", o.data_endpoint,
                 "rank-0 data plane tcp://HOST:PORT: adds the relay-overhead phase");
  app.add_option("--relay-clients", o.relay_clients,
                 "relay phase clients per side (default clients / 2)");
  app.add_option(
      "--relay-requests", o.relay_requests,
      "relay phase requests per side (default 4 x relay clients; 48 with --relay-sequential)");
  app.add_flag("--relay-sequential", o.relay_sequential,
               "relay phase: one request at a time, alternating the sides");
  app.add_flag("--skip-chat", o.skip_chat, "only the relay phase");
  app.add_option("--controller-pid", o.controller_pid, "report the controller's CPU per token");
  app.add_option("--json", o.json_out, "also write the figures as JSON here");
  CLI11_PARSE(app, argc, argv);
  if (o.clients < 1 || o.max_tokens < 1 || o.prompt_tokens < 1) {
    std::fprintf(stderr,
                 "spark-serve-bench: --clients, --max-tokens and --prompt-tokens must be "
                 "at least 1\n");
    return 2;
  }
  return spark::load::Run(o);
}
