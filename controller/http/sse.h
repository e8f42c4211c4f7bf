// Server-sent events (text/event-stream) framing for streaming responses.
//
//   writer->StartStream(200, SseHeaders());
//   writer->Write(SseEvent(chunk.dump()));
//   writer->Write(SseEvent("[DONE]"));
//   writer->End();
//
// Thread safety: free functions; safe from any thread.
#pragma once

#include <string>
#include <string_view>

#include "controller/http/message.h"

namespace spark::http {

// One event: an optional "event: <name>" line, then one "data: <line>" per line of `data`
// (\n, \r\n and \r all split lines), then a blank line. `event` must not contain newlines.
std::string SseEvent(std::string_view data, std::string_view event = {});
// A comment line (": text\n\n"), e.g. a keep-alive ping that clients ignore.
std::string SseComment(std::string_view text);
// Content-Type: text/event-stream, Cache-Control: no-cache, X-Accel-Buffering: no.
Headers SseHeaders();

}  // namespace spark::http
