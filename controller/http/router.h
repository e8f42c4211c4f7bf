// Router: maps (method, path) to a route by pattern.
//
// Patterns are absolute paths of '/'-separated segments; a segment "{name}" matches any one
// non-empty segment and binds it as a parameter: "/api/v1/models/{name}/restart". A literal
// segment beats a parameter at the same position, so "/api/v1/models/defaults" wins over
// "/api/v1/models/{name}". A trailing '/' on the request path is not ignored ("/healthz/" does
// not match "/healthz"). Matching runs on the raw (still percent-encoded) path; parameter values
// are decoded per segment, so "%2F" inside a parameter is a '/' in its value.
//
// Thread safety: Add before concurrent Match calls; Match is const and safe from many threads.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "controller/http/message.h"

namespace spark::http {

class Router {
 public:
  // Registers `pattern` for `method`, returning the route id that Match reports (0, 1, 2, ... in
  // order of registration). A malformed pattern (not starting with '/', empty "{}", unbalanced
  // braces, a parameter name used twice) or a duplicate (method, pattern) is InvalidArgument.
  Result<size_t> Add(Method method, std::string_view pattern);

  enum class MatchKind { kFound, kNotFound, kMethodNotAllowed, kBadPath };
  struct Match {
    MatchKind kind = MatchKind::kNotFound;
    size_t route_id = 0;                        // kFound
    std::map<std::string, std::string> params;  // kFound: decoded parameter values
    std::vector<Method> allowed;                // kMethodNotAllowed: methods the path accepts
    std::string error;                          // kBadPath: bad percent escape in a parameter
  };
  // `raw_path` is the request path without the query, still percent-encoded.
  Match Find(Method method, std::string_view raw_path) const;

 private:
  struct Segment {
    std::string text;  // literal text, or the parameter name
    bool is_param = false;
  };
  struct Route {
    Method method;
    std::string pattern;
    std::vector<Segment> segments;
  };
  std::vector<Route> routes_;
};

}  // namespace spark::http
