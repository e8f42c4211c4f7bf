#include "controller/store/records.h"

#include <array>
#include <string>
#include <utility>

namespace spark::store {
namespace {

template <typename Enum, size_t N>
Result<Enum> ParseName(std::string_view name, const std::array<Enum, N>& values,
                       std::string_view (*to_name)(Enum), std::string_view what) {
  std::string accepted;
  for (Enum value : values) {
    if (to_name(value) == name) return value;
    accepted += (accepted.empty() ? "" : ", ") + std::string(to_name(value));
  }
  return InvalidArgument("unknown " + std::string(what) + " '" + std::string(name) +
                         "'; expected one of: " + accepted);
}

}  // namespace

std::string_view NodeStateName(NodeState state) {
  switch (state) {
    case NodeState::kAlive:
      return "alive";
    case NodeState::kDead:
      return "dead";
  }
  return "unknown";
}

Result<NodeState> ParseNodeState(std::string_view name) {
  return ParseName(name, std::array{NodeState::kAlive, NodeState::kDead}, &NodeStateName,
                   "node state");
}

std::string_view DesiredName(Desired desired) {
  switch (desired) {
    case Desired::kRunning:
      return "running";
    case Desired::kStopped:
      return "stopped";
  }
  return "unknown";
}

Result<Desired> ParseDesired(std::string_view name) {
  return ParseName(name, std::array{Desired::kRunning, Desired::kStopped}, &DesiredName,
                   "desired state");
}

std::string_view DeploymentStateName(DeploymentState state) {
  switch (state) {
    case DeploymentState::kPending:
      return "pending";
    case DeploymentState::kLoading:
      return "loading";
    case DeploymentState::kReady:
      return "ready";
    case DeploymentState::kRecovering:
      return "recovering";
    case DeploymentState::kFailed:
      return "failed";
    case DeploymentState::kStopping:
      return "stopping";
    case DeploymentState::kStopped:
      return "stopped";
  }
  return "unknown";
}

Result<DeploymentState> ParseDeploymentState(std::string_view name) {
  return ParseName(
      name,
      std::array{DeploymentState::kPending, DeploymentState::kLoading, DeploymentState::kReady,
                 DeploymentState::kRecovering, DeploymentState::kFailed, DeploymentState::kStopping,
                 DeploymentState::kStopped},
      &DeploymentStateName, "deployment state");
}

std::string_view RunStateName(RunState state) {
  switch (state) {
    case RunState::kStarting:
      return "starting";
    case RunState::kReady:
      return "ready";
    case RunState::kEnded:
      return "ended";
  }
  return "unknown";
}

Result<RunState> ParseRunState(std::string_view name) {
  return ParseName(name, std::array{RunState::kStarting, RunState::kReady, RunState::kEnded},
                   &RunStateName, "run state");
}

std::string_view MemberPhaseName(MemberPhase phase) {
  switch (phase) {
    case MemberPhase::kAssigned:
      return "assigned";
    case MemberPhase::kStarting:
      return "starting";
    case MemberPhase::kRendezvous:
      return "rendezvous";
    case MemberPhase::kLoading:
      return "loading";
    case MemberPhase::kReady:
      return "ready";
    case MemberPhase::kFailed:
      return "failed";
    case MemberPhase::kStopped:
      return "stopped";
  }
  return "unknown";
}

Result<MemberPhase> ParseMemberPhase(std::string_view name) {
  return ParseName(name,
                   std::array{MemberPhase::kAssigned, MemberPhase::kStarting,
                              MemberPhase::kRendezvous, MemberPhase::kLoading, MemberPhase::kReady,
                              MemberPhase::kFailed, MemberPhase::kStopped},
                   &MemberPhaseName, "member phase");
}

}  // namespace spark::store
