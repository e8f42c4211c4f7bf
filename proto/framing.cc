#include "proto/framing.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

#include "common/check.h"

namespace spark::proto {
namespace {

using spark::v1::Envelope;
using spark::v1::ErrorCode;

void PutLe32(uint32_t v, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

uint32_t GetLe32(const char* in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  return v;
}

// Appends `v` as a protobuf base-128 varint.
void AppendVarint(uint32_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

std::string Hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 0xF]);
  }
  return out;
}

std::string Truncated(size_t frame_bytes, std::string_view what) {
  return "truncated or corrupt frame (" + std::to_string(frame_bytes) +
         " bytes): " + std::string(what);
}

}  // namespace

std::string EncodeEnvelope(const Envelope& envelope) {
  // Field 1 (protocol_version) is absent from the serialization when it is 0 and would come
  // first in canonical field order otherwise, so prefixing tag+varint yields exactly the bytes of
  // the envelope with protocol_version set, without copying the message.
  const bool fill_version = envelope.protocol_version() == 0;
  const uint32_t version = fill_version ? kProtocolVersion : envelope.protocol_version();
  std::string version_field;
  if (fill_version) {
    version_field.push_back(static_cast<char>(0x08));  // field 1, wire type 0 (varint)
    AppendVarint(version, &version_field);
  }
  const size_t message_bytes = envelope.ByteSizeLong();
  const size_t body_bytes = version_field.size() + message_bytes;
  SPARK_CHECK_LE(body_bytes, static_cast<size_t>(INT_MAX))
      << "envelope (" << BodyName(envelope) << ") is too large to serialize";

  std::string frame(kFrameHeaderBytes + body_bytes, '\0');
  std::memcpy(frame.data(), kFrameMagic.data(), kFrameMagic.size());
  PutLe32(version, frame.data() + 4);
  PutLe32(static_cast<uint32_t>(body_bytes), frame.data() + 8);
  std::memcpy(frame.data() + kFrameHeaderBytes, version_field.data(), version_field.size());
  char* message_out = frame.data() + kFrameHeaderBytes + version_field.size();
  SPARK_CHECK(envelope.SerializeToArray(message_out, static_cast<int>(message_bytes)))
      << "serializing envelope (" << BodyName(envelope) << ") failed";
  return frame;
}

Result<Envelope> DecodeEnvelope(std::string_view frame) {
  const size_t n = frame.size();
  if (n == 0) {
    return DataLoss(
        "empty frame (0 bytes): expected a spark frame; the peer sent an empty message");
  }
  const size_t magic_bytes = std::min(n, kFrameMagic.size());
  if (frame.substr(0, magic_bytes) != kFrameMagic.substr(0, magic_bytes)) {
    return DataLoss("not a spark frame (" + std::to_string(n) + " bytes): magic is 0x" +
                    Hex(frame.substr(0, magic_bytes)) + ", expected \"SPRK\"; the peer is not " +
                    "a spark process or is connected to the wrong port");
  }
  if (n < kFrameHeaderBytes) {
    return DataLoss(Truncated(n, "shorter than the 12-byte header; the message was cut short"));
  }
  const uint32_t version = GetLe32(frame.data() + 4);
  if (version != kProtocolVersion) {
    return FailedPrecondition("protocol version " + std::to_string(version) +
                              " is not supported by this build (speaks " +
                              std::to_string(kProtocolVersion) + "); upgrade the older side");
  }
  const uint32_t body_bytes = GetLe32(frame.data() + 8);
  if (body_bytes > kMaxBodyBytes) {
    return DataLoss(Truncated(n, "header announces a " + std::to_string(body_bytes) +
                                     "-byte body, over the limit of " +
                                     std::to_string(kMaxBodyBytes) +
                                     " bytes; the frame is corrupt or the sender is broken"));
  }
  const size_t present = n - kFrameHeaderBytes;
  if (present < body_bytes) {
    return DataLoss(Truncated(n, "header announces " + std::to_string(body_bytes) +
                                     " body bytes but only " + std::to_string(present) +
                                     " arrived; the message was cut short"));
  }
  if (present > body_bytes) {
    return DataLoss(Truncated(n, std::to_string(present - body_bytes) +
                                     " trailing bytes after the " + std::to_string(body_bytes) +
                                     "-byte body; frames must not be concatenated or padded"));
  }

  Envelope envelope;
  if (!envelope.ParseFromArray(frame.data() + kFrameHeaderBytes, static_cast<int>(body_bytes))) {
    return DataLoss(Truncated(n, "the body does not parse as spark.v1.Envelope; the sender uses " +
                                     std::string("another schema or the bytes were damaged")));
  }
  if (envelope.protocol_version() != version) {
    if (envelope.protocol_version() == 0) {
      return DataLoss(Truncated(n, "the envelope carries no protocol_version; frames must be " +
                                       std::string("built with spark::proto::EncodeEnvelope")));
    }
    return DataLoss(Truncated(n, "the envelope says protocol version " +
                                     std::to_string(envelope.protocol_version()) +
                                     " but the header says " + std::to_string(version) +
                                     "; frames must be built with spark::proto::EncodeEnvelope"));
  }
  if (envelope.body_case() == Envelope::BODY_NOT_SET) {
    return Unimplemented("envelope from '" + envelope.sender_id() + "' (sequence " +
                         std::to_string(envelope.sequence()) +
                         ") has no body: the sender sent a message type this build does not "
                         "know (upgrade the older side) or forgot to set one");
  }
  return envelope;
}

std::string_view BodyName(const Envelope& envelope) {
  static const google::protobuf::OneofDescriptor* const kBody =
      Envelope::descriptor()->FindOneofByName("body");
  const google::protobuf::FieldDescriptor* field =
      envelope.GetReflection()->GetOneofFieldDescriptor(envelope, kBody);
  if (field == nullptr) return "none";
  return field->name();
}

spark::v1::Error ErrorFromStatus(const Status& status, uint64_t in_reply_to_sequence) {
  spark::v1::Error error;
  ErrorCode code = spark::v1::ERROR_CODE_UNSPECIFIED;
  switch (status.code()) {
    case StatusCode::kOk:
      code = spark::v1::ERROR_CODE_UNSPECIFIED;
      break;
    case StatusCode::kInvalidArgument:
      code = spark::v1::ERROR_CODE_INVALID_ARGUMENT;
      break;
    case StatusCode::kNotFound:
      code = spark::v1::ERROR_CODE_NOT_FOUND;
      break;
    case StatusCode::kAlreadyExists:
      code = spark::v1::ERROR_CODE_ALREADY_EXISTS;
      break;
    case StatusCode::kFailedPrecondition:
      code = spark::v1::ERROR_CODE_FAILED_PRECONDITION;
      break;
    case StatusCode::kOutOfRange:
      code = spark::v1::ERROR_CODE_OUT_OF_RANGE;
      break;
    case StatusCode::kUnimplemented:
      code = spark::v1::ERROR_CODE_UNIMPLEMENTED;
      break;
    case StatusCode::kUnavailable:
      code = spark::v1::ERROR_CODE_UNAVAILABLE;
      break;
    case StatusCode::kDeadlineExceeded:
      code = spark::v1::ERROR_CODE_DEADLINE_EXCEEDED;
      break;
    case StatusCode::kCancelled:
      code = spark::v1::ERROR_CODE_CANCELLED;
      break;
    case StatusCode::kResourceExhausted:
      code = spark::v1::ERROR_CODE_RESOURCE_EXHAUSTED;
      break;
    case StatusCode::kDataLoss:
      code = spark::v1::ERROR_CODE_DATA_LOSS;
      break;
    case StatusCode::kPermissionDenied:
      code = spark::v1::ERROR_CODE_PERMISSION_DENIED;
      break;
    case StatusCode::kInternal:
      code = spark::v1::ERROR_CODE_INTERNAL;
      break;
  }
  error.set_code(code);
  error.set_message(status.message());
  error.set_in_reply_to_sequence(in_reply_to_sequence);
  return error;
}

Status StatusFromError(const spark::v1::Error& error) {
  switch (error.code()) {
    case spark::v1::ERROR_CODE_INVALID_ARGUMENT:
      return InvalidArgument(error.message());
    case spark::v1::ERROR_CODE_NOT_FOUND:
      return NotFound(error.message());
    case spark::v1::ERROR_CODE_ALREADY_EXISTS:
      return AlreadyExists(error.message());
    case spark::v1::ERROR_CODE_FAILED_PRECONDITION:
      return FailedPrecondition(error.message());
    case spark::v1::ERROR_CODE_OUT_OF_RANGE:
      return OutOfRange(error.message());
    case spark::v1::ERROR_CODE_UNIMPLEMENTED:
      return Unimplemented(error.message());
    case spark::v1::ERROR_CODE_UNAVAILABLE:
      return Unavailable(error.message());
    case spark::v1::ERROR_CODE_DEADLINE_EXCEEDED:
      return DeadlineExceeded(error.message());
    case spark::v1::ERROR_CODE_CANCELLED:
      return Cancelled(error.message());
    case spark::v1::ERROR_CODE_RESOURCE_EXHAUSTED:
      return ResourceExhausted(error.message());
    case spark::v1::ERROR_CODE_DATA_LOSS:
      return DataLoss(error.message());
    case spark::v1::ERROR_CODE_PERMISSION_DENIED:
      return PermissionDenied(error.message());
    case spark::v1::ERROR_CODE_INTERNAL:
      return Internal(error.message());
    default:
      break;
  }
  return Internal("peer error with unknown code " + std::to_string(error.code()) + ": " +
                  error.message());
}

}  // namespace spark::proto
