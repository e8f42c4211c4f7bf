// Controller: MoE tuning records (docs/moe-tuning.md). Agents report the records of their cache
// file (MoeTuningReport); the controller keeps them in the store's kernel_tunings table keyed by
// device class, and hands every CUDA assignment the records of the assigned GPU's class.
#include <string>
#include <vector>

#include "common/log.h"
#include "controller/controller.h"
#include "engine/runtime/moe_tuning_cache.h"

namespace spark::controller {
namespace {

constexpr char kMoeKeyPrefix[] = "moe/";

// The GPU of the node's registration with CUDA ordinal `index`, if reported.
const spark::v1::GpuInfo* GpuOf(const spark::v1::NodeRegistration& registration, uint32_t index) {
  for (const spark::v1::GpuInfo& gpu : registration.gpus()) {
    if (gpu.index() == index) return &gpu;
  }
  return nullptr;
}

// Whether `device` is a class that `gpu` can be in (same name and compute capability, a limit
// no higher than the GPU's opt-in shared memory).
bool GpuMatches(const spark::v1::GpuInfo& gpu, const engine::MoeDeviceClass& device) {
  return gpu.name() == device.name &&
         static_cast<int>(gpu.compute_capability_major()) == device.cc_major &&
         static_cast<int>(gpu.compute_capability_minor()) == device.cc_minor &&
         device.smem_limit_bytes <= static_cast<int64_t>(gpu.shared_memory_per_block_optin_bytes());
}

// The device class of `gpu` under a deployment's shared-memory cap (0 = none); nullopt when the
// agent reported too little about the GPU.
std::optional<engine::MoeDeviceClass> MoeDeviceClassOf(const spark::v1::GpuInfo& gpu,
                                                       uint64_t smem_cap_bytes) {
  if (gpu.name().empty() || gpu.shared_memory_per_block_optin_bytes() == 0) return std::nullopt;
  engine::MoeDeviceClass device;
  device.name = gpu.name();
  device.cc_major = static_cast<int>(gpu.compute_capability_major());
  device.cc_minor = static_cast<int>(gpu.compute_capability_minor());
  const uint64_t optin = gpu.shared_memory_per_block_optin_bytes();
  device.smem_limit_bytes =
      static_cast<int64_t>(smem_cap_bytes > 0 && smem_cap_bytes < optin ? smem_cap_bytes : optin);
  return device;
}

}  // namespace

void Controller::HandleMoeTuningReport(const AgentPlane::Inbound& inbound) {
  const spark::v1::MoeTuningReport& report = inbound.envelope.moe_tuning_report();
  const NodeEntry* node = nodes_.Find(inbound.peer.node);
  if (report.node_name() != inbound.peer.node || node == nullptr || !node->alive) {
    ++stats_.dropped_messages;
    SPARK_LOG(WARN).With("peer", inbound.routing_id).With("node_name", report.node_name())
        << "dropped a MoE tuning report from a node that is not registered under that name";
    return;
  }
  std::vector<engine::MoeTuningRecord> accepted;
  std::string first_problem;
  for (const spark::v1::MoeTuningRecord& wire : report.records()) {
    Result<engine::MoeTuningRecord> record = engine::MoeTuningRecordFromProto(wire);
    std::string problem;
    if (!record.ok()) {
      problem = record.status().message();
    } else {
      bool matches = false;
      for (const spark::v1::GpuInfo& gpu : node->registration.gpus()) {
        matches = matches || GpuMatches(gpu, record->device);
      }
      if (!matches) {
        problem = "device class " + record->device.Key() + " is not a GPU of node " + node->name;
      }
    }
    if (!problem.empty()) {
      ++stats_.moe_tunings_rejected;
      if (first_problem.empty()) first_problem = problem;
      continue;
    }
    accepted.push_back(std::move(*record));
  }
  if (!first_problem.empty()) {
    SPARK_LOG(WARN)
            .With("node", node->name)
            .With("rejected", report.records_size() - static_cast<int>(accepted.size()))
        << "rejected MoE tuning records: " << first_problem;
  }
  if (accepted.empty()) return;
  stats_.moe_tunings_received += accepted.size();
  SPARK_LOG(INFO).With("node", node->name).With("records", accepted.size())
      << "received MoE tuning records";
  // Stored under the cache file's merge rule: a record replaces the stored one only when it is of
  // a newer kernel generation, or of the same one and newer (or equally new and faster).
  Fire(
      [accepted](store::WriteTxn& txn) -> Status {
        for (const engine::MoeTuningRecord& r : accepted) {
          engine::MoeTuningCache merged;
          Result<store::KernelTuning> stored = txn.GetKernelTuning(r.device.Key(), r.Key());
          if (stored.ok()) {
            Result<engine::MoeTuningRecord> old =
                engine::MoeTuningRecordFromJson(stored->config_json);
            if (old.ok()) merged.Add(*old).status().IgnoreError();
          } else if (stored.status().code() != StatusCode::kNotFound) {
            return stored.status();
          }
          SPARK_ASSIGN_OR_RETURN(bool changed, merged.Add(r));
          if (!changed) continue;
          store::KernelTuning row;
          row.device_class = r.device.Key();
          row.key = r.Key();
          row.config_json = engine::MoeTuningRecordToJson(r);
          row.measured_us = r.measured_us;
          SPARK_RETURN_IF_ERROR(txn.UpsertKernelTuning(row).status());
        }
        return Status::Ok();
      },
      "MoE tuning records of node " + node->name);
}

std::vector<spark::v1::MoeTuningRecord> Controller::MoeTuningsFor(
    const NodeEntry& node, uint32_t gpu_index, const spark::v1::EngineOptions& engine) const {
  std::vector<spark::v1::MoeTuningRecord> out;
  const spark::v1::GpuInfo* gpu = GpuOf(node.registration, gpu_index);
  if (gpu == nullptr) return out;
  std::optional<engine::MoeDeviceClass> device =
      MoeDeviceClassOf(*gpu, engine.shared_memory_cap_bytes());
  if (!device) return out;
  const std::string device_class = device->Key();
  Result<std::vector<store::KernelTuning>> rows =
      store_.Read([&](store::ReadTxn& txn) { return txn.ListKernelTunings(device_class); });
  if (!rows.ok()) {
    SPARK_LOG(WARN).With("device_class", device_class).With("error", rows.status())
        << "cannot read the stored MoE tunings; the shard tunes what it needs";
    return out;
  }
  for (const store::KernelTuning& row : *rows) {
    if (row.key.rfind(kMoeKeyPrefix, 0) != 0) continue;
    Result<engine::MoeTuningRecord> record = engine::MoeTuningRecordFromJson(row.config_json);
    if (!record.ok() || record->device != *device) {
      SPARK_LOG(WARN).With("device_class", device_class).With("key", row.key)
          << "skipped a stored MoE tuning record that does not parse or match its class";
      continue;
    }
    out.push_back(engine::MoeTuningRecordToProto(*record));
  }
  return out;
}

}  // namespace spark::controller
