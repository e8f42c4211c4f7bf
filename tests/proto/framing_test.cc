#include "proto/framing.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "spark.pb.h"

namespace spark::proto {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::OneofDescriptor;
using google::protobuf::Reflection;
using google::protobuf::util::MessageDifferencer;
using spark::v1::Envelope;

const OneofDescriptor* BodyOneof() { return Envelope::descriptor()->FindOneofByName("body"); }

// Sets every field of `msg` (recursively) to a non-default value derived from `*counter`, so a
// round trip that drops or mangles any field is caught. Within a real oneof only the member at
// index `variant % member count` is set. Map keys are distinct, bytes hold 0x00 and 0xFF.
void FillAll(Message* msg, int variant, int* counter) {
  const Descriptor* d = msg->GetDescriptor();
  const Reflection* r = msg->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (const OneofDescriptor* o = f->real_containing_oneof()) {
      if (o->field(variant % o->field_count()) != f) continue;
    }
    const int n = f->is_repeated() ? 3 : 1;
    for (int k = 0; k < n; ++k) {
      const int v = ++*counter;
      const bool rep = f->is_repeated();
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32:
          rep ? r->AddInt32(msg, f, -v) : r->SetInt32(msg, f, -v);
          break;
        case FieldDescriptor::CPPTYPE_INT64:
          rep ? r->AddInt64(msg, f, -int64_t{v} << 33) : r->SetInt64(msg, f, -int64_t{v} << 33);
          break;
        case FieldDescriptor::CPPTYPE_UINT32:
          rep ? r->AddUInt32(msg, f, 0x80000000u + v) : r->SetUInt32(msg, f, 0x80000000u + v);
          break;
        case FieldDescriptor::CPPTYPE_UINT64:
          rep ? r->AddUInt64(msg, f, (uint64_t{1} << 63) + v)
              : r->SetUInt64(msg, f, (uint64_t{1} << 63) + v);
          break;
        case FieldDescriptor::CPPTYPE_FLOAT:
          rep ? r->AddFloat(msg, f, v + 0.25f) : r->SetFloat(msg, f, v + 0.25f);
          break;
        case FieldDescriptor::CPPTYPE_DOUBLE:
          rep ? r->AddDouble(msg, f, v + 0.125) : r->SetDouble(msg, f, v + 0.125);
          break;
        case FieldDescriptor::CPPTYPE_BOOL:
          rep ? r->AddBool(msg, f, true) : r->SetBool(msg, f, true);
          break;
        case FieldDescriptor::CPPTYPE_ENUM: {
          const auto* e = f->enum_type();
          const auto* value = e->value(e->value_count() - 1 - (v % (e->value_count() - 1)));
          rep ? r->AddEnum(msg, f, value) : r->SetEnum(msg, f, value);
          break;
        }
        case FieldDescriptor::CPPTYPE_STRING: {
          std::string s = f->type() == FieldDescriptor::TYPE_BYTES
                              ? std::string("\x00\xff\x01", 3) + std::to_string(v)
                              : f->name() + "-" + std::to_string(v) + "-\u00e9";
          rep ? r->AddString(msg, f, s) : r->SetString(msg, f, s);
          break;
        }
        case FieldDescriptor::CPPTYPE_MESSAGE:
          FillAll(rep ? r->AddMessage(msg, f) : r->MutableMessage(msg, f), variant, counter);
          break;
      }
    }
  }
}

// Fails for every field of `msg` (recursively) that holds its default value, skipping oneof
// members that are not set. Proves that FillAll reached every field and the decoder kept it.
void ExpectAllFieldsSet(const Message& msg, const std::string& path) {
  const Descriptor* d = msg.GetDescriptor();
  const Reflection* r = msg.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const std::string name = path + "." + f->name();
    if (const OneofDescriptor* o = f->real_containing_oneof()) {
      if (r->GetOneofFieldDescriptor(msg, o) != f) continue;
    }
    if (f->is_repeated()) {
      EXPECT_EQ(r->FieldSize(msg, f), 3) << name;
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !f->is_map()) {
        for (int k = 0; k < r->FieldSize(msg, f); ++k) {
          ExpectAllFieldsSet(r->GetRepeatedMessage(msg, f, k), name);
        }
      }
      continue;
    }
    EXPECT_TRUE(r->HasField(msg, f)) << name << " has its default value";
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && r->HasField(msg, f)) {
      ExpectAllFieldsSet(r->GetMessage(msg, f), name);
    }
  }
}

// One envelope per body type (and per oneof variant inside the body), every field set.
std::vector<Envelope> FilledEnvelopes() {
  std::vector<Envelope> out;
  const OneofDescriptor* body = BodyOneof();
  for (int i = 0; i < body->field_count(); ++i) {
    for (int variant = 0; variant < 2; ++variant) {
      Envelope env;
      env.set_protocol_version(kProtocolVersion);
      env.set_sender_id("node-a");
      env.set_generation(42);
      env.set_sequence(1000 + i);
      env.set_sender_incarnation(0xDEADBEEFCAFEull);
      int counter = 100 * i;
      FillAll(env.GetReflection()->MutableMessage(&env, body->field(i)), variant, &counter);
      out.push_back(env);
    }
  }
  return out;
}

// Hand-written, realistic instances: one per body type. Adding a message to the oneof without
// adding an instance here fails EveryBodyTypeHasAHandWrittenInstance.
std::vector<Envelope> HandWrittenEnvelopes() {
  std::vector<Envelope> out;
  auto next = [&out](std::string sender, uint64_t generation) -> Envelope& {
    Envelope& env = out.emplace_back();
    env.set_sender_id(std::move(sender));
    env.set_generation(generation);
    env.set_sequence(out.size());
    env.set_sender_incarnation(7);
    return env;
  };

  {
    auto* reg = next("spark-n0", 0).mutable_node_registration();
    reg->set_node_name("spark-n0");
    reg->set_boot_id("3f1c2a9e-4d7b-4c1e-9f0a-2b8d6e5c4a31");
    reg->set_agent_version("0.1.0");
    reg->set_backend(spark::v1::BACKEND_CUDA);
    auto* gpu = reg->add_gpus();
    gpu->set_index(0);
    gpu->set_name("NVIDIA GB10");
    gpu->set_compute_capability_major(12);
    gpu->set_compute_capability_minor(1);
    gpu->set_total_memory_bytes(128ull << 30);
    gpu->set_free_memory_bytes(119ull << 30);
    gpu->set_shared_memory_per_block_optin_bytes(101376);
    gpu->set_multiprocessor_count(48);
    gpu->set_uuid("GPU-5a1e0f7c-93d2-4b61-a3c8-1f2e3d4c5b6a");
    gpu->set_unified_memory(true);
    auto* rdma = reg->add_rdma_devices();
    rdma->set_name("rocep1s0f0");
    rdma->set_port(1);
    rdma->set_state(spark::v1::RDMA_PORT_STATE_ACTIVE);
    rdma->set_link_speed_gbps(200);
    rdma->set_active_mtu_bytes(4096);
    rdma->set_gid_index(3);
    rdma->set_gid("0000:0000:0000:0000:0000:ffff:c0a8:6401");
    rdma->set_netdev("enp1s0f0np0");
    rdma->set_link_layer("Ethernet");
    (*reg->mutable_nccl_env())["NCCL_SOCKET_IFNAME"] = "enp1s0f0np0";
    (*reg->mutable_nccl_env())["NCCL_IB_HCA"] = "rocep1s0f0";
    auto* shard = reg->add_shards();
    shard->set_deployment("glm47");
    shard->set_run_id(17);
    shard->set_generation(9);
    shard->set_rank(1);
    shard->set_pid(4242);
    shard->set_phase(spark::v1::SHARD_PHASE_READY);
    auto* check = reg->add_preflight();
    check->set_check("rdma_port_active");
    check->set_ok(false);
    check->set_message("rocep1s0f0 port 1 is DOWN");
    check->set_fix("check the cable and `ip link set enp1s0f0np0 up`");
  }
  {
    auto* ack = next("controller", 0).mutable_registration_ack();
    ack->set_node_id(3);
    ack->set_heartbeat_interval_ms(1000);
    ack->set_controller_time_unix_ms(1767225600000);
  }
  {
    auto* hb = next("spark-n0", 0).mutable_heartbeat();
    hb->set_node_name("spark-n0");
    hb->set_boot_id("3f1c2a9e-4d7b-4c1e-9f0a-2b8d6e5c4a31");
    hb->set_monotonic_ms(987654321);
    auto* shard = hb->add_shards();
    shard->set_deployment("glm47");
    shard->set_run_id(17);
    shard->set_generation(9);
    shard->set_rank(0);
    shard->set_pid(4241);
    shard->set_phase(spark::v1::SHARD_PHASE_LOADING);
  }
  {
    auto* ack = next("controller", 0).mutable_heartbeat_ack();
    ack->set_acked_sequence(3);
    ack->set_controller_time_unix_ms(1767225601000);
  }
  {
    auto* a = next("controller", 9).mutable_shard_assignment();
    a->set_deployment("glm47");
    a->set_run_id(17);
    a->set_generation(9);
    a->set_rank(1);
    a->set_world_size(4);
    a->set_model_path("/models/GLM-4.7-FP8");
    a->set_backend(spark::v1::BACKEND_CUDA);
    auto* o = a->mutable_options();
    o->set_tp(4);
    o->set_max_batch(64);
    o->set_max_seq_len(202752);
    o->set_kv_cache_fraction(0.85);
    o->set_kv_cache_bytes(0);
    o->set_load_format(spark::v1::LOAD_FORMAT_DUMMY);
    o->set_dtype("bfloat16");
    o->set_shared_memory_cap_bytes(101376);
    o->mutable_speculative()->set_steps(3);
    o->mutable_speculative()->set_topk(1);
    o->mutable_speculative()->set_draft_tokens(4);
    o->set_seed(1234);
    (*o->mutable_extra())["moe_backend"] = "triton";
    a->mutable_rendezvous()->set_kind(spark::v1::RENDEZVOUS_KIND_NCCL);
    a->mutable_rendezvous()->set_controller_address("tcp://10.0.0.1:5600");
    a->mutable_rendezvous()->set_key_prefix("glm47/9/");
    a->mutable_rendezvous()->set_timeout_ms(120000);
    a->set_data_listen_address("tcp://0.0.0.0:5701");
    (*a->mutable_nccl_env())["NCCL_IB_GID_INDEX"] = "3";
    a->set_deadline_ms(900000);
    a->set_gpu_index(0);
  }
  {
    auto* s = next("spark-n1", 9).mutable_shard_status();
    s->set_deployment("glm47");
    s->set_run_id(17);
    s->set_generation(9);
    s->set_rank(1);
    s->set_phase(spark::v1::SHARD_PHASE_FAILED);
    s->mutable_progress()->set_bytes_done(1ull << 34);
    s->mutable_progress()->set_bytes_total(1ull << 36);
    s->mutable_progress()->set_fraction(0.25);
    s->set_failure_reason("ncclCommInitRank timed out after 120000 ms; rank 3 never joined");
    s->set_exit_status(0);  // explicitly 0: presence must survive the round trip
    s->set_signal(9);
    s->add_log_tail("loading layer 12/92");
    s->add_log_tail("NCCL WARN Net : Connection closed by remote peer");
    s->set_data_endpoint("");
    s->set_pid(5151);
    s->set_started_unix_ms(1767225600000);
    s->set_phase_since_unix_ms(1767225700000);
    s->set_reported_unix_ms(1767225700001);
  }
  {
    auto* s = next("controller", 9).mutable_stop_shard();
    s->set_deployment("glm47");
    s->set_run_id(17);
    s->set_generation(9);
    s->set_rank(2);
    s->set_grace_period_ms(15000);
    s->set_reason("rank 1 failed; the group is restarted");
  }
  {
    auto* p = next("glm47/0", 9).mutable_rendezvous_publish();
    p->set_deployment("glm47");
    p->set_generation(9);
    p->set_rank(0);
    std::string id(128, '\0');
    for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<char>(i * 37);
    p->set_nccl_unique_id(id);
  }
  {
    auto* l = next("glm47/1", 9).mutable_rendezvous_lookup();
    l->set_deployment("glm47");
    l->set_generation(9);
    l->set_rank(1);
    l->set_key("glm47/9/rank/0");
    l->set_timeout_ms(30000);
  }
  {
    auto* r = next("controller", 9).mutable_rendezvous_reply();
    r->set_key("glm47/9/rank/0");
    r->set_value(std::string("\x0a\x00\x00\x01\x16\x00", 6));
    r->set_found(true);
  }
  {
    auto* info = next("controller", 9).mutable_rendezvous_info();
    info->set_deployment("glm47");
    info->set_generation(9);
    info->set_world_size(4);
    info->set_nccl_unique_id(std::string(128, '\x7f'));
    info->set_init_timeout_ms(120000);
  }
  {
    auto* g = next("controller", 9).mutable_generate_request();
    g->set_request_id("chatcmpl-8f14e45f");
    for (int t : {151331, 151333, 9707, 11, 1879, 0, 151336}) g->add_prompt_token_ids(t);
    auto* s = g->mutable_sampling();
    s->set_temperature(0.7f);
    s->set_top_p(0.95f);
    s->set_top_k(40);
    s->set_min_p(0.05f);
    s->set_seed(0);  // explicit seed 0 differs from "no seed"
    s->set_repetition_penalty(1.1f);
    s->set_presence_penalty(0.5f);
    s->set_frequency_penalty(-0.5f);
    s->set_max_tokens(512);
    s->add_stop_token_ids(151329);
    s->add_stop_token_ids(151336);
    s->set_logprobs(true);
    s->set_top_logprobs(5);
    s->set_ignore_eos(false);
    g->set_echo(true);
    g->set_return_prompt_logprobs(true);
  }
  {
    auto* c = next("glm47/0", 9).mutable_token_chunk();
    c->set_request_id("chatcmpl-8f14e45f");
    c->add_token_ids(9707);
    c->add_token_ids(151329);
    for (int i = 0; i < 2; ++i) {
      auto* lp = c->add_logprobs();
      lp->set_logprob(-0.125f * (i + 1));
      auto* top = lp->add_top_logprobs();
      top->set_token_id(9707 + i);
      top->set_logprob(-0.125f);
    }
    c->add_prompt_logprobs()->set_logprob(-3.5f);
    c->set_finish_reason(spark::v1::FINISH_REASON_STOP);
    c->mutable_usage()->set_prompt_tokens(7);
    c->mutable_usage()->set_completion_tokens(2);
    c->mutable_usage()->set_cached_prompt_tokens(4);
    c->mutable_usage()->set_draft_tokens(3);
    c->mutable_usage()->set_accepted_draft_tokens(1);
    c->mutable_timings()->set_queue_ms(0.5);
    c->mutable_timings()->set_time_to_first_token_ms(41.25);
    c->mutable_timings()->set_prefill_ms(40.0);
    c->mutable_timings()->set_decode_ms(12.5);
    c->add_echo_token_ids(151331);
  }
  {
    auto* c = next("controller", 9).mutable_cancel_request();
    c->set_request_id("chatcmpl-8f14e45f");
    c->set_reason("client disconnected");
  }
  {
    auto* t = next("spark-n0", 9).mutable_tokenizer_files();
    t->set_deployment("glm47");
    t->set_generation(9);
    t->set_run_id(17);
    auto* f = t->add_files();
    f->set_name("tokenizer_config.json");
    f->set_content("{\"chat_template\": \"[gMASK]<sop>{% for m in messages %}...\"}");
    f->set_sha256("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
  }
  {
    auto* e = next("controller", 9).mutable_error();
    e->set_code(spark::v1::ERROR_CODE_FAILED_PRECONDITION);
    e->set_message("generation 8 is stale (current 9); restart the shard with the new assignment");
    e->set_in_reply_to_sequence(12);
  }
  {
    auto* t = next("spark-n0", 0).mutable_moe_tuning_report();
    t->set_node_name("spark-n0");
    auto* r = t->add_records();
    r->set_device_name("NVIDIA GB10");
    r->set_compute_capability_major(12);
    r->set_compute_capability_minor(1);
    r->set_smem_limit_bytes(101376);
    r->set_format("fp8-per-channel");
    r->set_gemm("gate_up");
    r->set_experts(160);
    r->set_n(768);
    r->set_k(5120);
    r->set_top_k(8);
    r->set_batch(64);
    r->set_block_m(32);
    r->set_block_n(128);
    r->set_block_k_bytes(128);
    r->set_warps(4);
    r->set_stages(4);
    r->set_split_k(2);
    r->set_measured_us(41.5);
    r->set_tuned_unix_ms(1796601600000);
    r->set_source("tuner");
  }
  return out;
}

std::set<int> BodyCases(const std::vector<Envelope>& envelopes) {
  std::set<int> cases;
  for (const Envelope& env : envelopes) cases.insert(env.body_case());
  return cases;
}

std::set<int> AllBodyCases() {
  std::set<int> cases;
  const OneofDescriptor* body = BodyOneof();
  for (int i = 0; i < body->field_count(); ++i) cases.insert(body->field(i)->number());
  return cases;
}

void ExpectRoundTrip(const Envelope& original) {
  Envelope expected = original;
  if (expected.protocol_version() == 0) expected.set_protocol_version(kProtocolVersion);
  const std::string frame = EncodeEnvelope(original);
  Result<Envelope> decoded = DecodeEnvelope(frame);
  ASSERT_TRUE(decoded.ok()) << BodyName(original) << ": " << decoded.status().ToString();
  std::string diff;
  MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(expected, *decoded)) << BodyName(original) << ": " << diff;
  EXPECT_TRUE(MessageDifferencer::Equals(expected, *decoded)) << BodyName(original);
  // The body is the envelope with its version set (field 1 first); map entry order is not
  // deterministic, so sizes are compared rather than bytes.
  EXPECT_EQ(frame.size() - kFrameHeaderBytes, expected.ByteSizeLong()) << BodyName(original);
  EXPECT_EQ(frame.substr(kFrameHeaderBytes, 2), std::string("\x08\x01")) << BodyName(original);
}

std::string Le32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

std::string Frame(uint32_t version, std::string_view body) {
  return std::string(kFrameMagic) + Le32(version) + Le32(static_cast<uint32_t>(body.size())) +
         std::string(body);
}

Envelope SmallHeartbeat() {
  Envelope env;
  env.set_sender_id("a");
  env.mutable_heartbeat();
  return env;
}

TEST(FramingTest, EveryBodyTypeHasAHandWrittenInstance) {
  EXPECT_EQ(BodyCases(HandWrittenEnvelopes()), AllBodyCases())
      << "add an instance of the new Envelope body type to HandWrittenEnvelopes()";
  EXPECT_EQ(BodyCases(FilledEnvelopes()), AllBodyCases());
  EXPECT_EQ(AllBodyCases().size(), 17u);
}

TEST(FramingTest, HandWrittenEnvelopesRoundTrip) {
  for (const Envelope& env : HandWrittenEnvelopes()) {
    ASSERT_EQ(env.protocol_version(), 0u);  // EncodeEnvelope fills it in
    ExpectRoundTrip(env);
  }
}

TEST(FramingTest, EveryFieldOfEveryBodyRoundTrips) {
  int oneof_variants = 0;
  for (const Envelope& env : FilledEnvelopes()) {
    ExpectRoundTrip(env);
    Result<Envelope> decoded = DecodeEnvelope(EncodeEnvelope(env));
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    ExpectAllFieldsSet(*decoded, "Envelope");
    if (decoded->has_rendezvous_publish()) ++oneof_variants;
  }
  EXPECT_EQ(oneof_variants, 2);  // nccl_unique_id and kv both exercised
}

TEST(FramingTest, OptionalFieldPresenceSurvives) {
  for (const Envelope& env : HandWrittenEnvelopes()) {
    Result<Envelope> decoded = DecodeEnvelope(EncodeEnvelope(env));
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    if (decoded->has_shard_status()) {
      EXPECT_TRUE(decoded->shard_status().has_exit_status());
      EXPECT_EQ(decoded->shard_status().exit_status(), 0);
      EXPECT_EQ(decoded->shard_status().signal(), 9);
    }
    if (decoded->has_generate_request()) {
      EXPECT_TRUE(decoded->generate_request().sampling().has_seed());
      EXPECT_EQ(decoded->generate_request().sampling().seed(), 0u);
    }
    if (decoded->has_rendezvous_publish()) {
      const std::string& id = decoded->rendezvous_publish().nccl_unique_id();
      ASSERT_EQ(id.size(), 128u);
      EXPECT_EQ(id[0], '\0');
      EXPECT_EQ(static_cast<unsigned char>(id[7]), static_cast<unsigned char>(7 * 37));
    }
  }
  Envelope no_seed;
  no_seed.mutable_generate_request()->mutable_sampling()->set_max_tokens(1);
  Result<Envelope> decoded = DecodeEnvelope(EncodeEnvelope(no_seed));
  ASSERT_TRUE(decoded.ok());
  EXPECT_FALSE(decoded->generate_request().sampling().has_seed());
}

TEST(FramingTest, FrameLayoutIsStable) {
  // Golden bytes: magic, version 1, length 8, then field 1 = 1, field 2 = "a", field 18 = {}.
  const std::string expected("SPRK\x01\x00\x00\x00\x08\x00\x00\x00\x08\x01\x12\x01\x61\x92\x01\x00",
                             20);
  EXPECT_EQ(EncodeEnvelope(SmallHeartbeat()), expected);
  Envelope with_version = SmallHeartbeat();
  with_version.set_protocol_version(1);
  EXPECT_EQ(EncodeEnvelope(with_version), expected);
}

TEST(FramingTest, HeaderCarriesVersionAndExactLength) {
  for (const Envelope& env : HandWrittenEnvelopes()) {
    const std::string frame = EncodeEnvelope(env);
    ASSERT_GE(frame.size(), kFrameHeaderBytes);
    EXPECT_EQ(frame.substr(0, 4), "SPRK");
    EXPECT_EQ(frame.substr(4, 4), Le32(kProtocolVersion));
    EXPECT_EQ(frame.substr(8, 4), Le32(static_cast<uint32_t>(frame.size() - kFrameHeaderBytes)));
  }
}

TEST(FramingTest, RejectsUnknownProtocolVersion) {
  Envelope env = SmallHeartbeat();
  env.set_protocol_version(7);
  const std::string frame = EncodeEnvelope(env);
  EXPECT_EQ(frame.substr(4, 4), Le32(7));
  Result<Envelope> decoded = DecodeEnvelope(frame);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(decoded.status().message(),
            "protocol version 7 is not supported by this build (speaks 1); upgrade the older side");

  // Version 0 in the header (a sender that never set one) is rejected the same way.
  Result<Envelope> zero = DecodeEnvelope(Frame(0, SmallHeartbeat().SerializeAsString()));
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(zero.status().message(),
            "protocol version 0 is not supported by this build (speaks 1); upgrade the older side");
}

TEST(FramingTest, RejectsEnvelopeWithoutOrWithMismatchedVersion) {
  // Header says 1, but the body has no protocol_version field.
  Result<Envelope> missing = DecodeEnvelope(Frame(1, SmallHeartbeat().SerializeAsString()));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(missing.status().message().find("carries no protocol_version"), std::string::npos)
      << missing.status().message();

  Envelope two = SmallHeartbeat();
  two.set_protocol_version(2);
  Result<Envelope> mismatched = DecodeEnvelope(Frame(1, two.SerializeAsString()));
  ASSERT_FALSE(mismatched.ok());
  EXPECT_EQ(mismatched.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(
      mismatched.status().message().find("envelope says protocol version 2 but the header says 1"),
      std::string::npos)
      << mismatched.status().message();
}

TEST(FramingTest, RejectsWrongMagic) {
  std::string frame = EncodeEnvelope(SmallHeartbeat());
  frame[3] = 'X';
  Result<Envelope> decoded = DecodeEnvelope(frame);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(decoded.status().message(),
            "not a spark frame (20 bytes): magic is 0x53505258, expected \"SPRK\"; the peer is "
            "not a spark process or is connected to the wrong port");

  Result<Envelope> http = DecodeEnvelope("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_FALSE(http.ok());
  EXPECT_EQ(http.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(http.status().message().find("magic is 0x47455420"), std::string::npos);

  // A bare protobuf envelope without the frame header is not accepted either.
  Envelope env = SmallHeartbeat();
  env.set_protocol_version(1);
  EXPECT_FALSE(DecodeEnvelope(env.SerializeAsString()).ok());

  // A short frame whose bytes are not a prefix of the magic is a wrong magic, not a truncation.
  Result<Envelope> short_bad = DecodeEnvelope("SX");
  ASSERT_FALSE(short_bad.ok());
  EXPECT_NE(short_bad.status().message().find("not a spark frame (2 bytes)"), std::string::npos);
}

TEST(FramingTest, RejectsEmptyFrame) {
  Result<Envelope> decoded = DecodeEnvelope("");
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(decoded.status().message(),
            "empty frame (0 bytes): expected a spark frame; the peer sent an empty message");
}

TEST(FramingTest, RejectsEveryTruncation) {
  for (const Envelope& env : HandWrittenEnvelopes()) {
    const std::string frame = EncodeEnvelope(env);
    for (size_t len = 1; len < frame.size(); ++len) {
      Result<Envelope> decoded = DecodeEnvelope(std::string_view(frame).substr(0, len));
      ASSERT_FALSE(decoded.ok()) << BodyName(env) << " prefix " << len << " of " << frame.size();
      EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
      const std::string want = "truncated or corrupt frame (" + std::to_string(len) + " bytes): ";
      EXPECT_EQ(decoded.status().message().rfind(want, 0), 0u)
          << BodyName(env) << " prefix " << len << ": " << decoded.status().message();
    }
    EXPECT_FALSE(DecodeEnvelope(std::string_view(frame).substr(0, 0)).ok());
  }
  // The message names both lengths.
  const std::string frame = EncodeEnvelope(SmallHeartbeat());
  Result<Envelope> cut = DecodeEnvelope(std::string_view(frame).substr(0, 15));
  ASSERT_FALSE(cut.ok());
  EXPECT_EQ(cut.status().message(),
            "truncated or corrupt frame (15 bytes): header announces 8 body bytes but only 3 "
            "arrived; the message was cut short");
}

TEST(FramingTest, RejectsTrailingGarbage) {
  const std::string frame = EncodeEnvelope(SmallHeartbeat());
  for (const std::string& extra : {std::string(1, '\0'), std::string("garbage"), frame}) {
    Result<Envelope> decoded = DecodeEnvelope(frame + extra);
    ASSERT_FALSE(decoded.ok());
    EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
    EXPECT_EQ(decoded.status().message(),
              "truncated or corrupt frame (" + std::to_string(frame.size() + extra.size()) +
                  " bytes): " + std::to_string(extra.size()) +
                  " trailing bytes after the 8-byte body; frames must not be concatenated or "
                  "padded");
  }
}

TEST(FramingTest, RejectsOversizedLength) {
  std::string frame = EncodeEnvelope(SmallHeartbeat());
  frame.replace(8, 4, Le32(kMaxBodyBytes + 1));
  Result<Envelope> decoded = DecodeEnvelope(frame);
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(decoded.status().message().find("over the limit of 268435456 bytes"), std::string::npos)
      << decoded.status().message();
}

TEST(FramingTest, RejectsCorruptBody) {
  // 0xFF... is a field tag with an invalid wire type / overlong varint.
  Result<Envelope> decoded = DecodeEnvelope(Frame(1, std::string(8, '\xff')));
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(decoded.status().message().find("does not parse as spark.v1.Envelope"),
            std::string::npos)
      << decoded.status().message();

  // A length-delimited field whose length runs past the body.
  Result<Envelope> overrun = DecodeEnvelope(Frame(1, std::string("\x08\x01\x12\x09\x61", 5)));
  ASSERT_FALSE(overrun.ok());
  EXPECT_EQ(overrun.status().code(), StatusCode::kDataLoss);
}

TEST(FramingTest, RejectsEnvelopeWithoutBody) {
  Envelope env;
  env.set_sender_id("spark-n2");
  env.set_sequence(5);
  Result<Envelope> decoded = DecodeEnvelope(EncodeEnvelope(env));
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(decoded.status().message(),
            "envelope from 'spark-n2' (sequence 5) has no body: the sender sent a message type "
            "this build does not know (upgrade the older side) or forgot to set one");

  // A zero-length body: no version, no body.
  Result<Envelope> empty_body = DecodeEnvelope(Frame(1, ""));
  ASSERT_FALSE(empty_body.ok());
  EXPECT_EQ(empty_body.status().code(), StatusCode::kDataLoss);
}

TEST(FramingTest, UnknownBodyTypeFromNewerSenderIsUnimplemented) {
  // A newer build's message type: field 100 (length-delimited), unknown to this build.
  Envelope env;
  env.set_protocol_version(1);
  env.set_sender_id("new");
  env.set_sequence(9);
  const std::string body = env.SerializeAsString() + std::string("\xa2\x06\x02\x08\x01", 5);
  Result<Envelope> decoded = DecodeEnvelope(Frame(1, body));
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(decoded.status().message().find("from 'new' (sequence 9) has no body"),
            std::string::npos);

  // An unknown field next to a known body is kept and ignored.
  Envelope hb = SmallHeartbeat();
  hb.set_protocol_version(1);
  Result<Envelope> with_unknown =
      DecodeEnvelope(Frame(1, hb.SerializeAsString() + std::string("\xa2\x06\x02\x08\x01", 5)));
  ASSERT_TRUE(with_unknown.ok()) << with_unknown.status().ToString();
  EXPECT_TRUE(with_unknown->has_heartbeat());
}

TEST(FramingTest, BitFlipsNeverCrashAndNeverYieldABodylessEnvelope) {
  google::protobuf::LogSilencer silence;  // invalid UTF-8 in string fields logs otherwise
  const std::vector<Envelope> envelopes = HandWrittenEnvelopes();
  const std::string frame = EncodeEnvelope(envelopes[0]);
  int rejected = 0;
  for (size_t i = 0; i < frame.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string mutated = frame;
      mutated[i] = static_cast<char>(mutated[i] ^ (1 << bit));
      Result<Envelope> decoded = DecodeEnvelope(mutated);
      if (decoded.ok()) {
        EXPECT_NE(decoded->body_case(), Envelope::BODY_NOT_SET);
        EXPECT_EQ(decoded->protocol_version(), kProtocolVersion);
      } else {
        ++rejected;
      }
    }
  }
  // Every flip in the 12 header bytes is caught.
  EXPECT_GE(rejected, 12 * 8);
}

TEST(FramingTest, BodyNameNamesTheOneofField) {
  EXPECT_EQ(BodyName(SmallHeartbeat()), "heartbeat");
  Envelope env;
  EXPECT_EQ(BodyName(env), "none");
  env.mutable_token_chunk();
  EXPECT_EQ(BodyName(env), "token_chunk");
  env.mutable_node_registration();
  EXPECT_EQ(BodyName(env), "node_registration");
  env.mutable_error();
  EXPECT_EQ(BodyName(env), "error");
}

TEST(FramingTest, ErrorStatusConversionRoundTrips) {
  const std::vector<std::pair<StatusCode, spark::v1::ErrorCode>> pairs = {
      {StatusCode::kInvalidArgument, spark::v1::ERROR_CODE_INVALID_ARGUMENT},
      {StatusCode::kNotFound, spark::v1::ERROR_CODE_NOT_FOUND},
      {StatusCode::kAlreadyExists, spark::v1::ERROR_CODE_ALREADY_EXISTS},
      {StatusCode::kFailedPrecondition, spark::v1::ERROR_CODE_FAILED_PRECONDITION},
      {StatusCode::kOutOfRange, spark::v1::ERROR_CODE_OUT_OF_RANGE},
      {StatusCode::kUnimplemented, spark::v1::ERROR_CODE_UNIMPLEMENTED},
      {StatusCode::kUnavailable, spark::v1::ERROR_CODE_UNAVAILABLE},
      {StatusCode::kDeadlineExceeded, spark::v1::ERROR_CODE_DEADLINE_EXCEEDED},
      {StatusCode::kCancelled, spark::v1::ERROR_CODE_CANCELLED},
      {StatusCode::kResourceExhausted, spark::v1::ERROR_CODE_RESOURCE_EXHAUSTED},
      {StatusCode::kDataLoss, spark::v1::ERROR_CODE_DATA_LOSS},
      {StatusCode::kPermissionDenied, spark::v1::ERROR_CODE_PERMISSION_DENIED},
      {StatusCode::kInternal, spark::v1::ERROR_CODE_INTERNAL},
  };
  // Every ErrorCode except UNSPECIFIED is covered.
  EXPECT_EQ(pairs.size() + 1,
            static_cast<size_t>(spark::v1::ErrorCode_descriptor()->value_count()));
  for (const auto& [status_code, error_code] : pairs) {
    const Status status(status_code, "disk full; free space under /var/lib/spark");
    spark::v1::Error error = ErrorFromStatus(status, 77);
    EXPECT_EQ(error.code(), error_code);
    EXPECT_EQ(error.message(), status.message());
    EXPECT_EQ(error.in_reply_to_sequence(), 77u);
    EXPECT_EQ(StatusFromError(error), status);
  }
  EXPECT_EQ(ErrorFromStatus(Status::Ok()).code(), spark::v1::ERROR_CODE_UNSPECIFIED);

  spark::v1::Error unspecified;
  unspecified.set_message("boom");
  Status s = StatusFromError(unspecified);
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_EQ(s.message(), "peer error with unknown code 0: boom");

  spark::v1::Error future;
  future.set_code(static_cast<spark::v1::ErrorCode>(99));
  future.set_message("new");
  EXPECT_EQ(StatusFromError(future).message(), "peer error with unknown code 99: new");
}

}  // namespace
}  // namespace spark::proto
