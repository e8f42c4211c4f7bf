#include "controller/trusted_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "common/zmq.h"
#include "controller/agent_plane.h"
#include "tests/controller/core/fakes.h"

namespace spark::controller {
namespace {

using ::testing::HasSubstr;

class TrustedKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    agent_ = *GenerateCurveKeyPair();
    other_ = *GenerateCurveKeyPair();
    ASSERT_TRUE(WriteCurvePublicKeyFile(dir_.path() / "n1-agent.pub", agent_.public_key).ok());
  }
  std::string dir() const { return dir_.path().string(); }
  testing::TempDir dir_;
  CurveKeyPair agent_;
  CurveKeyPair other_;
};

TEST_F(TrustedKeysTest, TrustWritesAKeyFileTheControllerLoads) {
  Result<TrustedKey> t = TrustAgentKey(dir(), "n1", agent_.public_key, false);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->path, dir() + "/trusted/n1.pub");
  // The agent plane's loader sees exactly this key.
  EXPECT_THAT(LoadTrustedKeys(dir()), ::testing::ElementsAre(agent_.public_key));
  struct stat st {};
  ASSERT_EQ(::stat(t->path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  // From a file (an agent.pub copied over), under a second name only with --force.
  Result<TrustedKey> again = TrustAgentKey(dir(), "n2", dir() + "/n1-agent.pub", false);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(), HasSubstr("trusted already as node n1"));
  // The same key under the same name is a no-op.
  EXPECT_TRUE(TrustAgentKey(dir(), "n1", dir() + "/n1-agent.pub", false).ok());
}

TEST_F(TrustedKeysTest, ReplacingANodesKeyNeedsForce) {
  ASSERT_TRUE(TrustAgentKey(dir(), "n1", agent_.public_key, false).ok());
  Result<TrustedKey> replaced = TrustAgentKey(dir(), "n1", other_.public_key, false);
  ASSERT_FALSE(replaced.ok());
  EXPECT_THAT(replaced.status().message(), HasSubstr("--force"));
  ASSERT_TRUE(TrustAgentKey(dir(), "n1", other_.public_key, true).ok());
  Result<std::vector<TrustedKey>> list = ListTrustedKeys(dir());
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].public_key, other_.public_key);
}

TEST_F(TrustedKeysTest, BadInputNamesTheProblem) {
  Result<TrustedKey> bad_name = TrustAgentKey(dir(), "../etc", agent_.public_key, false);
  ASSERT_FALSE(bad_name.ok());
  EXPECT_EQ(bad_name.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_name.status().message(), HasSubstr("node name \"../etc\""));
  Result<TrustedKey> bad_key = TrustAgentKey(dir(), "n1", "not-a-key", false);
  ASSERT_FALSE(bad_key.ok());
  EXPECT_THAT(bad_key.status().message(), HasSubstr("40 Z85 characters"));
  Status revoke = RevokeAgentKey(dir(), "n9");
  EXPECT_EQ(revoke.code(), StatusCode::kNotFound);
  EXPECT_THAT(revoke.message(), HasSubstr("sparkctl keys list"));
  EXPECT_FALSE(TrustAgentKey(dir() + "/missing", "n1", agent_.public_key, false).ok());
}

TEST_F(TrustedKeysTest, RevokeRemovesTheKey) {
  ASSERT_TRUE(TrustAgentKey(dir(), "n1", agent_.public_key, false).ok());
  ASSERT_TRUE(TrustAgentKey(dir(), "n2", other_.public_key, false).ok());
  ASSERT_TRUE(RevokeAgentKey(dir(), "n1").ok());
  EXPECT_THAT(LoadTrustedKeys(dir()), ::testing::ElementsAre(other_.public_key));
}

TEST_F(TrustedKeysTest, RotatingTheLocalAgentKeyUpdatesItsTrust) {
  ASSERT_TRUE(WriteCurveSecretKeyFile(dir_.path() / "agent.key", agent_).ok());
  ASSERT_TRUE(WriteCurvePublicKeyFile(dir_.path() / "agent.pub", agent_.public_key).ok());
  ASSERT_TRUE(TrustAgentKey(dir(), "self", agent_.public_key, false).ok());
  Result<std::string> rotated = RotateAgentKey(dir());
  ASSERT_TRUE(rotated.ok()) << rotated.status().ToString();
  EXPECT_NE(*rotated, agent_.public_key);
  Result<CurveKeyPair> secret = ReadCurveSecretKeyFile(dir_.path() / "agent.key");
  ASSERT_TRUE(secret.ok()) << secret.status().ToString();
  EXPECT_EQ(secret->public_key, *rotated);
  EXPECT_EQ(*ReadLocalPublicKey(dir(), "agent.pub"), *rotated);
  EXPECT_THAT(LoadTrustedKeys(dir()), ::testing::ElementsAre(*rotated));
  // No controller key pair here: nothing to rotate, and the message says where it looked.
  Result<std::string> controller = RotateControllerKey(dir());
  ASSERT_FALSE(controller.ok());
  EXPECT_THAT(controller.status().message(), HasSubstr("controller.key does not exist"));
}

}  // namespace
}  // namespace spark::controller
