#include "controller/http/router.h"

#include <gtest/gtest.h>

namespace spark::http {
namespace {

TEST(HttpRouterTest, LiteralAndParameterRoutes) {
  Router router;
  size_t models = *router.Add(Method::kGet, "/api/v1/models");
  size_t model = *router.Add(Method::kGet, "/api/v1/models/{name}");
  size_t restart = *router.Add(Method::kPost, "/api/v1/models/{name}/restart");
  size_t del = *router.Add(Method::kDelete, "/api/v1/models/{name}");
  size_t root = *router.Add(Method::kGet, "/");
  EXPECT_EQ(models, 0u);
  EXPECT_EQ(root, 4u);

  auto m = router.Find(Method::kGet, "/api/v1/models");
  EXPECT_EQ(m.kind, Router::MatchKind::kFound);
  EXPECT_EQ(m.route_id, models);
  EXPECT_TRUE(m.params.empty());

  m = router.Find(Method::kGet, "/api/v1/models/glm-4.5");
  EXPECT_EQ(m.kind, Router::MatchKind::kFound);
  EXPECT_EQ(m.route_id, model);
  EXPECT_EQ(m.params.at("name"), "glm-4.5");

  m = router.Find(Method::kPost, "/api/v1/models/a%2Fb%20c/restart");
  EXPECT_EQ(m.kind, Router::MatchKind::kFound);
  EXPECT_EQ(m.route_id, restart);
  EXPECT_EQ(m.params.at("name"), "a/b c");

  m = router.Find(Method::kDelete, "/api/v1/models/x");
  EXPECT_EQ(m.route_id, del);

  m = router.Find(Method::kGet, "/");
  EXPECT_EQ(m.kind, Router::MatchKind::kFound);
  EXPECT_EQ(m.route_id, root);
}

TEST(HttpRouterTest, NotFoundAndMethodNotAllowed) {
  Router router;
  ASSERT_TRUE(router.Add(Method::kGet, "/api/v1/models/{name}").ok());
  ASSERT_TRUE(router.Add(Method::kDelete, "/api/v1/models/{name}").ok());
  EXPECT_EQ(router.Find(Method::kGet, "/api/v1/models").kind, Router::MatchKind::kNotFound);
  EXPECT_EQ(router.Find(Method::kGet, "/api/v1/models/").kind, Router::MatchKind::kNotFound);
  EXPECT_EQ(router.Find(Method::kGet, "/api/v1/models/a/b").kind, Router::MatchKind::kNotFound);
  EXPECT_EQ(router.Find(Method::kGet, "/api/v1/models//").kind, Router::MatchKind::kNotFound);
  EXPECT_EQ(router.Find(Method::kGet, "").kind, Router::MatchKind::kNotFound);

  auto m = router.Find(Method::kPost, "/api/v1/models/glm");
  EXPECT_EQ(m.kind, Router::MatchKind::kMethodNotAllowed);
  EXPECT_EQ(m.allowed, (std::vector<Method>{Method::kGet, Method::kDelete}));
}

TEST(HttpRouterTest, LiteralBeatsParameter) {
  Router router;
  size_t param = *router.Add(Method::kGet, "/models/{name}");
  size_t literal = *router.Add(Method::kGet, "/models/defaults");
  size_t deep_param = *router.Add(Method::kGet, "/{a}/x");
  size_t deep_literal = *router.Add(Method::kGet, "/models/{b}");  // same shape, other name
  (void)deep_literal;
  EXPECT_EQ(router.Find(Method::kGet, "/models/defaults").route_id, literal);
  EXPECT_EQ(router.Find(Method::kGet, "/models/glm").route_id, param);  // registered first
  EXPECT_EQ(router.Find(Method::kGet, "/models/x").route_id, param);    // literal first segment
  EXPECT_EQ(router.Find(Method::kGet, "/other/x").route_id, deep_param);
}

TEST(HttpRouterTest, BadPatternsAndDuplicates) {
  Router router;
  EXPECT_EQ(router.Add(Method::kGet, "relative").status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(router.Add(Method::kGet, "").ok());
  EXPECT_FALSE(router.Add(Method::kGet, "/a/{}").ok());
  EXPECT_FALSE(router.Add(Method::kGet, "/a/{name").ok());
  EXPECT_FALSE(router.Add(Method::kGet, "/a/x{name}").ok());
  EXPECT_FALSE(router.Add(Method::kGet, "/a/{n}{m}").ok());
  EXPECT_FALSE(router.Add(Method::kGet, "/a/{n}/{n}").ok());
  ASSERT_TRUE(router.Add(Method::kGet, "/a/{n}").ok());
  auto dup = router.Add(Method::kGet, "/a/{n}");
  EXPECT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("twice"), std::string::npos);
  EXPECT_TRUE(router.Add(Method::kPost, "/a/{n}").ok());
}

TEST(HttpRouterTest, BadEscapeInParameter) {
  Router router;
  ASSERT_TRUE(router.Add(Method::kGet, "/m/{name}").ok());
  auto m = router.Find(Method::kGet, "/m/a%zz");
  EXPECT_EQ(m.kind, Router::MatchKind::kBadPath);
  EXPECT_FALSE(m.error.empty());
}

}  // namespace
}  // namespace spark::http
