// Framing of spark wire messages: one spark.v1.Envelope per frame (one ZMQ message).
//
// Frame layout (all integers little-endian), fixed for every protocol version so that any build
// can read the version of any frame and reject it clearly:
//
//   offset  size  field
//   0       4     magic "SPRK" (0x53 0x50 0x52 0x4B)
//   4       4     u32 protocol version of the sender (kProtocolVersion)
//   8       4     u32 body length N in bytes (at most kMaxBodyBytes)
//   12      N     body: the serialized Envelope (protobuf)
//
// A frame is exactly 12 + N bytes. Protobuf alone cannot tell a truncated buffer from a shorter
// message, so the length field is what makes truncation and trailing garbage detectable.
//
// DecodeEnvelope accepts a frame only when the magic matches, the version is kProtocolVersion,
// the length is exact, the body parses, the envelope's protocol_version equals the header's, and
// a body is set. Failures (never a crash, whatever the bytes):
//   kDataLoss            empty frame, bad magic, truncated or corrupt frame, trailing bytes,
//                        body over kMaxBodyBytes, envelope/header version mismatch;
//   kFailedPrecondition  a protocol version this build does not speak;
//   kUnimplemented       an envelope without a body (or with a body type this build does not know).
//
// Thread safety: pure functions, safe from any thread. No ownership is taken.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"
#include "spark.pb.h"

namespace spark::proto {

// Protocol version this build speaks. Bump on a change that older peers cannot ignore.
inline constexpr uint32_t kProtocolVersion = 1;

// First four bytes of every frame.
inline constexpr std::string_view kFrameMagic = "SPRK";

// Bytes before the body: magic, version, length.
inline constexpr size_t kFrameHeaderBytes = 12;

// Largest body DecodeEnvelope accepts (tokenizer files are the largest messages, tens of MB).
inline constexpr uint32_t kMaxBodyBytes = 256u << 20;

// Serializes `envelope` into one frame. The header carries envelope.protocol_version, or
// kProtocolVersion when it is 0 (in which case the body carries kProtocolVersion too).
// Aborts if the envelope cannot be serialized (over 2 GiB: a sender bug).
std::string EncodeEnvelope(const spark::v1::Envelope& envelope);

// Parses one frame produced by EncodeEnvelope; see the file comment for what is rejected.
Result<spark::v1::Envelope> DecodeEnvelope(std::string_view frame);

// Name of the body's oneof field ("node_registration", "token_chunk"), or "none" when no body is
// set. The view points into the protobuf descriptor pool and stays valid for the process.
std::string_view BodyName(const spark::v1::Envelope& envelope);

// Converts between Status and the wire Error; code and message survive a round trip.
// ErrorFromStatus of an OK status gives ERROR_CODE_UNSPECIFIED (do not send it). StatusFromError
// maps ERROR_CODE_UNSPECIFIED and codes this build does not know to kInternal, so a received
// Error never becomes an OK Status.
spark::v1::Error ErrorFromStatus(const Status& status, uint64_t in_reply_to_sequence = 0);
Status StatusFromError(const spark::v1::Error& error);

}  // namespace spark::proto
