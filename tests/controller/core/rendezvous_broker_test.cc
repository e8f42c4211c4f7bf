#include "controller/rendezvous_broker.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace spark::controller {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

TEST(RendezvousBrokerTest, LookupOfAPublishedKeyAnswersAtOnce) {
  RendezvousBroker broker;
  broker.OpenScope("m", 3, {"a", "b"});
  EXPECT_TRUE(broker.Publish("m", 3, 0, "m/3/rank0", "addr0", "shard/m/3/0").empty());
  Clock::TimePoint now{};
  auto reply = broker.Lookup("m", 3, 1, "m/3/rank0", milliseconds(1000), "shard/m/3/1", now);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->routing_id, "shard/m/3/1");
  EXPECT_EQ(reply->generation, 3u);
  EXPECT_TRUE(reply->reply.found());
  EXPECT_EQ(reply->reply.value(), "addr0");
  EXPECT_TRUE(reply->reply.error().empty());
}

TEST(RendezvousBrokerTest, WaitingLookupIsAnsweredByThePublish) {
  RendezvousBroker broker;
  broker.OpenScope("m", 1, {"a", "b"});
  Clock::TimePoint now{};
  EXPECT_FALSE(broker.Lookup("m", 1, 0, "k", milliseconds(1000), "shard/m/1/0", now));
  EXPECT_FALSE(broker.Lookup("m", 1, 1, "k", milliseconds(1000), "shard/m/1/1", now));
  EXPECT_EQ(broker.waiting(), 2u);
  EXPECT_EQ(broker.NextDeadline(), now + milliseconds(1000));
  auto replies = broker.Publish("m", 1, 1, "k", "v", "shard/m/1/1");
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[0].routing_id, "shard/m/1/0");
  EXPECT_EQ(replies[1].routing_id, "shard/m/1/1");
  for (const auto& r : replies) EXPECT_EQ(r.reply.value(), "v");
  EXPECT_EQ(broker.waiting(), 0u);
  EXPECT_FALSE(broker.NextDeadline().has_value());
}

TEST(RendezvousBrokerTest, TimeoutNamesTheRanksThatNeverPublished) {
  RendezvousBroker broker;
  broker.OpenScope("m", 2, {"node-a", "node-b", "node-c"});
  Clock::TimePoint now{};
  broker.Publish("m", 2, 0, "rank0", "x", "shard/m/2/0");
  EXPECT_FALSE(broker.Lookup("m", 2, 0, "rank1", milliseconds(500), "shard/m/2/0", now));
  EXPECT_TRUE(broker.Expire(now + milliseconds(499)).empty());
  auto replies = broker.Expire(now + milliseconds(500));
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_FALSE(replies[0].reply.found());
  EXPECT_THAT(replies[0].reply.error(), HasSubstr("not published within 500 ms"));
  EXPECT_THAT(replies[0].reply.error(),
              HasSubstr("ranks that have not joined: 1 (node node-b), 2 (node node-c)"));
  EXPECT_EQ(broker.MissingRanks("m", 2), (std::vector<uint32_t>{1, 2}));
}

TEST(RendezvousBrokerTest, GenerationsDoNotShareKeys) {
  RendezvousBroker broker;
  broker.OpenScope("m", 1, {"a"});
  broker.Publish("m", 1, 0, "k", "old", "shard/m/1/0");
  broker.CloseScope("m", 1, "failed");
  broker.OpenScope("m", 2, {"a"});
  Clock::TimePoint now{};
  EXPECT_FALSE(broker.Lookup("m", 2, 0, "k", milliseconds(100), "shard/m/2/0", now));
  // The closed generation is refused outright.
  auto stale = broker.Lookup("m", 1, 0, "k", milliseconds(100), "shard/m/1/0", now);
  ASSERT_TRUE(stale.has_value());
  EXPECT_THAT(stale->reply.error(), HasSubstr("stale or unknown generation"));
  auto publish = broker.Publish("m", 1, 0, "k", "v", "shard/m/1/0");
  ASSERT_EQ(publish.size(), 1u);
  EXPECT_FALSE(publish[0].reply.error().empty());
}

TEST(RendezvousBrokerTest, ClosingAScopeAnswersItsWaiters) {
  RendezvousBroker broker;
  broker.OpenScope("m", 1, {"a", "b"});
  Clock::TimePoint now{};
  EXPECT_FALSE(broker.Lookup("m", 1, 0, "k", milliseconds(1000), "shard/m/1/0", now));
  auto replies = broker.CloseScope("m", 1, "node b is dead");
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_THAT(replies[0].reply.error(), HasSubstr("node b is dead"));
  EXPECT_FALSE(broker.HasScope("m", 1));
}

TEST(RendezvousBrokerTest, RankOutsideTheGroupIsRefused) {
  RendezvousBroker broker;
  broker.OpenScope("m", 1, {"a", "b"});
  auto reply = broker.Lookup("m", 1, 2, "k", milliseconds(100), "shard/m/1/2", Clock::TimePoint{});
  ASSERT_TRUE(reply.has_value());
  EXPECT_THAT(reply->reply.error(), HasSubstr("outside the group"));
}

}  // namespace
}  // namespace spark::controller
