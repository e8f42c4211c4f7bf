#include "controller/http/router.h"

#include <algorithm>
#include <set>

namespace spark::http {
namespace {

// Splits "/a/b/c" into {"a","b","c"}; "/" into {}; "/a/" into {"a",""}.
std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> out;
  if (path.empty() || path == "/") return out;
  path.remove_prefix(1);
  while (true) {
    size_t slash = path.find('/');
    out.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

}  // namespace

Result<size_t> Router::Add(Method method, std::string_view pattern) {
  if (pattern.empty() || pattern.front() != '/') {
    return InvalidArgument("route pattern \"" + std::string(pattern) +
                           "\" must be an absolute path starting with '/'");
  }
  Route route{method, std::string(pattern), {}};
  std::set<std::string, std::less<>> names;
  for (std::string_view segment : SplitPath(pattern)) {
    bool opens = segment.find('{') != std::string_view::npos;
    bool closes = segment.find('}') != std::string_view::npos;
    if (!opens && !closes) {
      route.segments.push_back({std::string(segment), false});
      continue;
    }
    if (segment.size() < 3 || segment.front() != '{' || segment.back() != '}' ||
        segment.find_first_of("{}", 1) != segment.size() - 1) {
      return InvalidArgument("route pattern \"" + std::string(pattern) + "\": segment \"" +
                             std::string(segment) +
                             "\" is not a parameter; write a whole segment as {name}");
    }
    std::string name(segment.substr(1, segment.size() - 2));
    if (!names.insert(name).second) {
      return InvalidArgument("route pattern \"" + std::string(pattern) + "\" uses parameter {" +
                             name + "} twice; give each parameter its own name");
    }
    route.segments.push_back({std::move(name), true});
  }
  for (const Route& existing : routes_) {
    if (existing.method == method && existing.pattern == pattern) {
      return InvalidArgument("route " + std::string(MethodName(method)) + " " +
                             std::string(pattern) + " is registered twice");
    }
  }
  routes_.push_back(std::move(route));
  return routes_.size() - 1;
}

Router::Match Router::Find(Method method, std::string_view raw_path) const {
  std::vector<std::string_view> segments = SplitPath(raw_path);
  Match result;
  // For the best route: a vector of "is literal" per segment; lexicographically larger wins.
  std::vector<bool> best_rank;
  bool have_best = false;
  std::vector<Method> allowed;
  for (size_t id = 0; id < routes_.size(); ++id) {
    const Route& route = routes_[id];
    if (route.segments.size() != segments.size()) continue;
    bool matches = true;
    std::vector<bool> rank(segments.size());
    for (size_t i = 0; i < segments.size() && matches; ++i) {
      const Segment& seg = route.segments[i];
      if (seg.is_param) {
        matches = !segments[i].empty();
      } else {
        matches = seg.text == segments[i];
        rank[i] = true;
      }
    }
    if (!matches) continue;
    if (route.method != method) {
      if (std::find(allowed.begin(), allowed.end(), route.method) == allowed.end()) {
        allowed.push_back(route.method);
      }
      continue;
    }
    if (!have_best || rank > best_rank) {
      have_best = true;
      best_rank = std::move(rank);
      result.route_id = id;
    }
  }
  if (!have_best) {
    if (!allowed.empty()) {
      result.kind = MatchKind::kMethodNotAllowed;
      result.allowed = std::move(allowed);
    }
    return result;
  }
  const Route& route = routes_[result.route_id];
  for (size_t i = 0; i < segments.size(); ++i) {
    if (!route.segments[i].is_param) continue;
    Result<std::string> value = PercentDecode(segments[i], /*plus_is_space=*/false);
    if (!value.ok()) {
      result.kind = MatchKind::kBadPath;
      result.error = value.status().message();
      result.params.clear();
      return result;
    }
    result.params.emplace(route.segments[i].text, std::move(*value));
  }
  result.kind = MatchKind::kFound;
  return result;
}

}  // namespace spark::http
