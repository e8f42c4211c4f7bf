// spark-serve-bench: load generator for spark-controller's OpenAI-compatible endpoint.
//
//   spark-serve-bench --url http://127.0.0.1:8080 --model tiny-glm [--api-key-file F]
//                     [--clients 256] [--requests N] [--max-tokens 32] [--prompt-tokens 24]
//                     [--data-endpoint tcp://127.0.0.1:P --relay-clients N]
//                     [--controller-pid PID] [--json OUT]
//
// Phase "chat": `clients` concurrent streaming clients (SSE, keep-alive connections) send
// `requests` chat completions (ignore_eos, exactly max_tokens tokens each) and the tool reports
// requests/s, output tokens/s, time to first token (TTFT), inter-token latency (ITL: the gaps
// between token arrivals a client sees) and time per output token, with p50/p90/p99.
//
// Phase "relay" (with --data-endpoint): the controller's added latency. `relay-clients` clients
// stream /v1/completions over token-id prompts through the controller while, at the same time,
// `relay-clients` clients send the same requests (same prompt ids and sampling) straight to the
// rank-0 shard's data plane, so that both see the same engine load. Relay overhead per token =
// mean token delivery latency through HTTP minus directly, where a token's delivery latency is
// its arrival time minus the request's send time (the controller's queueing, HTTP and JSON work,
// detokenization and SSE writing, per token); the TTFT difference is reported too. With
// --controller-pid the controller's CPU time per relayed token is given as well (user + system
// time from /proc over the phase).
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <atomic>
#include <cstdio>
#include <fstream>
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
  {
    const int requests = o.requests > 0 ? o.requests : 2 * o.clients;
    SseLoadOptions chat = http;
    chat.clients = o.clients;
    Counter counter(requests);
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
      const double us_per_token = cpu * 1e6 / static_cast<double>(stats.tokens);
      std::printf("  controller CPU: %.2f s, %.1f us per streamed token\n", cpu, us_per_token);
      report["chat"]["controller_cpu_s"] = cpu;
      report["chat"]["controller_cpu_us_per_token"] = us_per_token;
    }
    if (stats.failed > 0) status = 1;
  }

  // Phase 2: relay overhead, HTTP and direct side by side.
  if (!o.data_endpoint.empty()) {
    const int per_side = o.relay_clients > 0 ? o.relay_clients : std::max(1, o.clients / 2);
    const int requests = o.relay_requests > 0 ? o.relay_requests : 2 * per_side;
    const std::vector<std::vector<int32_t>> prompts = MakePrompts(requests, o.prompt_tokens);
    Counter http_counter(requests);
    Counter direct_counter(requests);
    std::vector<StreamTrace> direct_traces;
    Status direct_status;
    double direct_wall = 0;
    const double cpu0 = o.controller_pid > 0 ? CpuSeconds(o.controller_pid) : -1;
    std::thread direct([&] {
      DataPlaneLoadOptions options;
      options.endpoint = o.data_endpoint;
      options.clients = per_side;
      const Clock::time_point start = Clock::now();
      Result<std::vector<StreamTrace>> traces =
          DataPlaneLoad(options).Run([&]() -> std::optional<spark::v1::GenerateRequest> {
            std::optional<int> i = direct_counter.Next();
            if (!i) return std::nullopt;
            spark::v1::GenerateRequest r;
            r.set_request_id("serve-bench-" + std::to_string(getpid()) + "-" + std::to_string(*i));
            for (int32_t id : prompts[static_cast<size_t>(*i)]) r.add_prompt_token_ids(id);
            spark::v1::SamplingParams* s = r.mutable_sampling();
            s->set_temperature(0);
            s->set_top_p(1);
            s->set_top_k(0);
            s->set_min_p(0);
            s->set_repetition_penalty(1);
            s->set_max_tokens(static_cast<uint32_t>(o.max_tokens));
            s->set_ignore_eos(true);
            return r;
          });
      direct_wall = Seconds(Clock::now() - start);
      if (traces.ok()) {
        direct_traces = std::move(*traces);
      } else {
        direct_status = traces.status();
      }
    });
    SseLoadOptions relay = http;
    relay.clients = per_side;
    const Clock::time_point start = Clock::now();
    std::vector<StreamTrace> http_traces = SseLoad(relay).Run(
        [&]() -> std::optional<SseRequest> {
          std::optional<int> i = http_counter.Next();
          if (!i) return std::nullopt;
          json body = {{"model", o.model},
                       {"prompt", prompts[static_cast<size_t>(*i)]},
                       {"stream", true},
                       {"stream_options", {{"include_usage", true}}},
                       {"max_tokens", o.max_tokens},
                       {"ignore_eos", true},
                       {"temperature", 0}};
          return SseRequest{"/v1/completions", body.dump()};
        },
        CountCompletionTokens);
    const double http_wall = Seconds(Clock::now() - start);
    direct.join();
    if (!direct_status.ok()) {
      std::fprintf(stderr, "spark-serve-bench: direct data plane: %s\n",
                   direct_status.ToString().c_str());
      return 1;
    }
    LoadStats via_http = Analyze(http_traces, http_wall);
    LoadStats direct_stats = Analyze(direct_traces, direct_wall);
    const std::string side = std::to_string(per_side) + " clients";
    std::printf("%s", FormatStats("relay, through the controller (HTTP /v1/completions, token-id "
                                  "prompts, " +
                                      side + ")",
                                  via_http)
                          .c_str());
    std::printf("%s", FormatStats("relay, direct to the rank-0 data plane (same requests, " + side +
                                      ", at the same time)",
                                  direct_stats)
                          .c_str());
    const double per_token = via_http.token_latency_ms.mean - direct_stats.token_latency_ms.mean;
    const double ttft = via_http.ttft_ms.p50 - direct_stats.ttft_ms.p50;
    std::printf(
        "  controller relay overhead: %+.3f ms per token (mean token delivery latency, HTTP - "
        "direct), %+.3f ms on TTFT p50\n",
        per_token, ttft);
    report["relay"] = {{"clients_per_side", per_side},
                       {"http", StatsJson(via_http)},
                       {"direct", StatsJson(direct_stats)},
                       {"overhead_ms_per_token", per_token},
                       {"overhead_ttft_p50_ms", ttft}};
    if (o.controller_pid > 0 && via_http.tokens > 0) {
      const double cpu = CpuSeconds(o.controller_pid) - cpu0;
      const double us_per_token = cpu * 1e6 / static_cast<double>(via_http.tokens);
      std::printf("  controller CPU: %.2f s, %.1f us per relayed token\n", cpu, us_per_token);
      report["relay"]["controller_cpu_us_per_token"] = us_per_token;
    }
    if (via_http.failed > 0 || direct_stats.failed > 0) status = 1;
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
  app.add_option("--relay-requests", o.relay_requests,
                 "relay phase requests per side (default 2 x relay clients)");
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
