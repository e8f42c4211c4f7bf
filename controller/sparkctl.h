// sparkctl: the command-line client of spark-controller's REST API.
//
//   sparkctl [--controller URL] [--json] [--token T | --admin-key-file F] COMMAND
//     nodes                                       registered nodes
//     deploy NAME --path P --tp N [--backend cpu|cuda] [--nodes a,b] [--option k=v ...]
//     ls                                          models
//     status NAME                                 one model with its members
//     undeploy NAME | restart NAME
//     runs [NAME] [--limit N]                     run history, newest first
//     events [--since ID] [--model NAME]          event log
//     wait NAME [--state ready] [--timeout-s 60]  polls until the model reaches the state
//     keys [--keys DIR] list | show [NODE] | trust NODE KEY|FILE [--force] | revoke NODE |
//          rotate --agent|--controller         the key directory on this machine (trusted_keys.h)
// The admin key (spark-controller --admin-key-file) is --token, else the first key line of
// --admin-key-file, else $SPARK_ADMIN_KEY, else $SPARK_API_TOKEN; sent as a bearer token.
// --controller defaults to $SPARK_CONTROLLER or http://127.0.0.1:8080. --json prints the
// controller's JSON; tables otherwise. `--option extra.KEY=V` goes into options.extra and
// `--option speculative.FIELD=N` (steps, topk, draft_tokens) into options.speculative:
//   sparkctl deploy glm --path /models/glm --tp 2 --option speculative.steps=3
// turns on speculative decoding with 3 draft steps (topk 1, draft_tokens 4); `status` then shows
// its counters (tokens per verify, accepted drafts, draft and verify time).
//
// Exit codes: 0 ok; 1 the controller answered with an error (its message is printed); 2 bad
// command line; 3 the controller could not be reached; 4 `wait` timed out or the model failed.
//
// Thread safety: RunSparkctl may run on several threads at once (no shared state).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace spark::controller {

// args[0] is the program name.
int RunSparkctl(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace spark::controller
