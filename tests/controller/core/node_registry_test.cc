#include "controller/node_registry.h"

#include <gtest/gtest.h>

namespace spark::controller {
namespace {

using std::chrono::milliseconds;

spark::v1::NodeRegistration Registration(const std::string& name, const std::string& boot_id) {
  spark::v1::NodeRegistration r;
  r.set_node_name(name);
  r.set_boot_id(boot_id);
  r.set_backend(spark::v1::BACKEND_CPU);
  auto* check = r.add_preflight();
  check->set_check("model_dir");
  check->set_ok(true);
  return r;
}

spark::v1::Heartbeat Beat(const std::string& name, const std::string& boot_id) {
  spark::v1::Heartbeat h;
  h.set_node_name(name);
  h.set_boot_id(boot_id);
  return h;
}

TEST(NodeRegistryTest, DeadAfterThreeMissedIntervals) {
  NodeRegistry registry(milliseconds(1000), 3);
  Clock::TimePoint t0{std::chrono::seconds(100)};
  registry.Register(Registration("a", "boot1"), 7, "agent/a", "", t0);
  EXPECT_TRUE(registry.IsAlive("a"));
  EXPECT_EQ(registry.Find("a")->backend, "cpu");
  EXPECT_EQ(registry.NextDeadline(), t0 + milliseconds(3000));
  EXPECT_EQ(registry.Heartbeat(Beat("a", "boot1"), 7, t0 + milliseconds(1000)),
            HeartbeatResult::kOk);
  EXPECT_TRUE(registry.ExpireDead(t0 + milliseconds(3999)).empty());
  auto dead = registry.ExpireDead(t0 + milliseconds(4000));
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0], "a");
  EXPECT_FALSE(registry.IsAlive("a"));
  EXPECT_TRUE(registry.ExpireDead(t0 + milliseconds(9000)).empty());  // reported once
}

TEST(NodeRegistryTest, HeartbeatFromUnknownDeadOrOtherIncarnationMustRegister) {
  NodeRegistry registry(milliseconds(1000), 3);
  Clock::TimePoint t0{std::chrono::seconds(100)};
  EXPECT_EQ(registry.Heartbeat(Beat("a", "boot1"), 7, t0), HeartbeatResult::kMustRegister);
  registry.Register(Registration("a", "boot1"), 7, "agent/a", "", t0);
  EXPECT_EQ(registry.Heartbeat(Beat("a", "boot1"), 8, t0), HeartbeatResult::kMustRegister);
  registry.MarkDead("a");
  EXPECT_EQ(registry.Heartbeat(Beat("a", "boot1"), 7, t0), HeartbeatResult::kMustRegister);
}

TEST(NodeRegistryTest, HeartbeatWithANewBootIdMeansReboot) {
  NodeRegistry registry(milliseconds(1000), 3);
  Clock::TimePoint t0{std::chrono::seconds(100)};
  registry.Register(Registration("a", "boot1"), 7, "agent/a", "", t0);
  EXPECT_EQ(registry.Heartbeat(Beat("a", "boot2"), 7, t0), HeartbeatResult::kRebooted);
  EXPECT_FALSE(registry.IsAlive("a"));
}

TEST(NodeRegistryTest, ClassifiesRegistrations) {
  NodeRegistry registry(milliseconds(1000), 3);
  Clock::TimePoint t0{std::chrono::seconds(100)};
  EXPECT_EQ(registry.Register(Registration("a", "b1"), 1, "agent/a", "", t0).kind,
            RegistrationKind::kFirst);
  RegistrationOutcome again = registry.Register(Registration("a", "b1"), 1, "agent/a", "", t0);
  EXPECT_EQ(again.kind, RegistrationKind::kReconnect);
  EXPECT_TRUE(again.was_alive);
  EXPECT_EQ(registry.Register(Registration("a", "b1"), 2, "agent/a", "", t0).kind,
            RegistrationKind::kAgentRestarted);
  EXPECT_EQ(registry.Register(Registration("a", "b2"), 3, "agent/a", "", t0).kind,
            RegistrationKind::kRebooted);
}

TEST(NodeRegistryTest, SeededNodeDetectsARebootAtItsFirstRegistration) {
  NodeRegistry registry(milliseconds(1000), 3);
  registry.Seed("a", "b1", "cpu");
  registry.Seed("b", "c1", "cpu");
  EXPECT_FALSE(registry.IsAlive("a"));
  Clock::TimePoint t0{std::chrono::seconds(100)};
  EXPECT_EQ(registry.Register(Registration("a", "b1"), 5, "agent/a", "", t0).kind,
            RegistrationKind::kFirst);
  EXPECT_EQ(registry.Register(Registration("b", "c2"), 5, "agent/b", "", t0).kind,
            RegistrationKind::kRebooted);
}

TEST(NodeRegistryTest, FailedPreflightIsRecordedWithItsFix) {
  NodeRegistry registry(milliseconds(1000), 3);
  spark::v1::NodeRegistration r = Registration("a", "b1");
  auto* check = r.add_preflight();
  check->set_check("gpu_visible");
  check->set_ok(false);
  check->set_message("no GPU");
  check->set_fix("install the driver");
  registry.Register(r, 1, "agent/a", "KEY", Clock::TimePoint{});
  const NodeEntry* entry = registry.Find("a");
  ASSERT_NE(entry, nullptr);
  EXPECT_FALSE(entry->preflight_ok);
  EXPECT_EQ(entry->preflight_problem, "gpu_visible: no GPU (fix: install the driver)");
  EXPECT_EQ(entry->curve_public_key, "KEY");
}

}  // namespace
}  // namespace spark::controller
