#include "controller/placement.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace spark::controller {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

PlacementRequest Request(int tp, std::vector<std::string> previous = {},
                         std::vector<std::string> pinned = {}, std::string backend = "") {
  PlacementRequest request;
  request.deployment = "m";
  request.tp = tp;
  request.previous = std::move(previous);
  request.pinned = std::move(pinned);
  request.backend = std::move(backend);
  return request;
}

PlacementCandidate Node(std::string name) {
  PlacementCandidate c;
  c.name = std::move(name);
  c.backend = "cpu";
  return c;
}

TEST(PlacementTest, PicksEligibleNodesInNameOrder) {
  PlacementRequest request = Request(2);
  auto placement = PlaceRun(request, {Node("c"), Node("a"), Node("b")});
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_THAT(*placement, ElementsAre("a", "b"));
}

TEST(PlacementTest, KeepsThePreviousPlacementRankByRank) {
  PlacementRequest request = Request(2, {"c", "a"});
  auto placement = PlaceRun(request, {Node("a"), Node("b"), Node("c")});
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_THAT(*placement, ElementsAre("c", "a"));
}

TEST(PlacementTest, ReplacesOnlyTheLostNodeOfThePreviousPlacement) {
  std::vector<PlacementCandidate> nodes = {Node("a"), Node("b"), Node("c")};
  nodes[2].alive = false;  // c died
  PlacementRequest request = Request(2, {"c", "b"});
  auto placement = PlaceRun(request, nodes);
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_THAT(*placement, ElementsAre("a", "b"));
}

TEST(PlacementTest, SkipsDeadFailedPreflightOtherBackendUsedAndDrainingNodes) {
  std::vector<PlacementCandidate> nodes = {Node("a"), Node("b"), Node("c"),
                                           Node("d"), Node("e"), Node("f")};
  nodes[0].alive = false;
  nodes[1].preflight_ok = false;
  nodes[1].preflight_problem = "model_path: missing";
  nodes[2].backend = "cuda";
  nodes[3].used_by = "other";
  nodes[4].draining = true;
  PlacementRequest request = Request(2, {}, {}, "cpu");
  auto placement = PlaceRun(request, nodes);
  ASSERT_FALSE(placement.ok());
  EXPECT_EQ(placement.status().code(), StatusCode::kUnavailable);
  const std::string& message = placement.status().message();
  EXPECT_THAT(message, HasSubstr("needs 2 nodes with the cpu backend, 1 eligible (f)"));
  EXPECT_THAT(message, HasSubstr("a: not connected"));
  EXPECT_THAT(message, HasSubstr("b: preflight failed: model_path: missing"));
  EXPECT_THAT(message, HasSubstr("c: runs the cuda backend, not cpu"));
  EXPECT_THAT(message, HasSubstr("d: used by deployment \"other\""));
  EXPECT_THAT(message, HasSubstr("e: still stopping shards"));
}

TEST(PlacementTest, ANodeUsedByTheSameDeploymentIsEligible) {
  std::vector<PlacementCandidate> nodes = {Node("a"), Node("b")};
  nodes[0].used_by = "m";
  PlacementRequest request = Request(2);
  auto placement = PlaceRun(request, nodes);
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_THAT(*placement, ElementsAre("a", "b"));
}

TEST(PlacementTest, PinnedNodesAreUsedInRankOrder) {
  PlacementRequest request = Request(2, {}, {"c", "a"});
  auto placement = PlaceRun(request, {Node("a"), Node("b"), Node("c")});
  ASSERT_TRUE(placement.ok()) << placement.status().ToString();
  EXPECT_THAT(*placement, ElementsAre("c", "a"));
}

TEST(PlacementTest, PinnedNodeThatCannotRunFailsNamingIt) {
  std::vector<PlacementCandidate> nodes = {Node("a"), Node("b"), Node("c")};
  nodes[2].alive = false;
  PlacementRequest request = Request(2, {}, {"c", "x"});
  auto placement = PlaceRun(request, nodes);
  ASSERT_FALSE(placement.ok());
  EXPECT_THAT(placement.status().message(), HasSubstr("c: not connected"));
  EXPECT_THAT(placement.status().message(), HasSubstr("x: not registered"));
}

TEST(PlacementTest, PinnedCountMustEqualTp) {
  PlacementRequest request = Request(2, {}, {"a"});
  auto placement = PlaceRun(request, {Node("a"), Node("b")});
  ASSERT_FALSE(placement.ok());
  EXPECT_EQ(placement.status().code(), StatusCode::kInvalidArgument);
}

TEST(PlacementTest, AnyBackendAcceptsEveryBackend) {
  std::vector<PlacementCandidate> nodes = {Node("a"), Node("b")};
  nodes[1].backend = "cuda";
  PlacementRequest request = Request(2);
  EXPECT_TRUE(PlaceRun(request, nodes).ok());
}

}  // namespace
}  // namespace spark::controller
