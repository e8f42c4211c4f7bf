#include "agent/keys.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

TEST(KeysTest, MissingKeysNameTheFileAndTheKeygenCommand) {
  testing::TempDir dir;
  Result<AgentKeys> keys = LoadAgentKeys(dir.File("keys"));
  ASSERT_FALSE(keys.ok());
  EXPECT_EQ(keys.status().code(), StatusCode::kNotFound);
  const std::string& m = keys.status().message();
  EXPECT_NE(m.find(dir.File("keys/agent.key")), std::string::npos) << m;
  EXPECT_NE(m.find("spark-agent keygen --keys " + dir.File("keys")), std::string::npos) << m;
  EXPECT_NE(m.find("--insecure"), std::string::npos) << m;
}

TEST(KeysTest, KeygenWritesAPairThatLoadsOnceTheControllerKeyIsThere) {
  testing::TempDir dir;
  const std::string keys_dir = dir.File("keys");
  Result<std::string> pub = GenerateAgentKeys(keys_dir, false);
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  EXPECT_TRUE(IsValidCurveKey(*pub));
  struct stat st {};
  ASSERT_EQ(::stat((keys_dir + "/agent.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(keys_dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(*ReadCurvePublicKeyFile(keys_dir + "/agent.pub"), *pub);

  // No controller.pub yet.
  Result<AgentKeys> missing = LoadAgentKeys(keys_dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("controller.pub"), std::string::npos);

  Result<CurveKeyPair> controller = GenerateCurveKeyPair();
  ASSERT_TRUE(controller.ok());
  ASSERT_TRUE(WriteCurvePublicKeyFile(keys_dir + "/controller.pub", controller->public_key).ok());
  Result<AgentKeys> keys = LoadAgentKeys(keys_dir);
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  EXPECT_EQ(keys->own.public_key, *pub);
  EXPECT_EQ(keys->controller_public, controller->public_key);

  // A second keygen refuses to overwrite, unless forced.
  Result<std::string> again = GenerateAgentKeys(keys_dir, false);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists);
  Result<std::string> forced = GenerateAgentKeys(keys_dir, true);
  ASSERT_TRUE(forced.ok());
  EXPECT_NE(*forced, *pub);
  EXPECT_NE(KeygenInstructions(keys_dir, *forced).find("trusted/<node>.pub"), std::string::npos);
}

TEST(KeysTest, ASecretKeyReadableByOthersIsRefusedWithTheFix) {
  testing::TempDir dir;
  const std::string keys_dir = dir.File("keys");
  ASSERT_TRUE(GenerateAgentKeys(keys_dir, false).ok());
  ASSERT_EQ(::chmod((keys_dir + "/agent.key").c_str(), 0644), 0);
  Result<AgentKeys> keys = LoadAgentKeys(keys_dir);
  ASSERT_FALSE(keys.ok());
  EXPECT_EQ(keys.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(keys.status().message().find("chmod 600"), std::string::npos)
      << keys.status().message();
}

}  // namespace
}  // namespace spark::agent
