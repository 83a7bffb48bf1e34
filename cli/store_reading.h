// Reading a sweep store for the CLI's queries (queries.cc, sae_queries.cc): the stages a query
// covers, the trial labels of a stage, and artifacts that may not exist yet. Private to cli/.
// Thread-safety: stateless functions over a thread-safe SweepReader.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "experiments/sweep_reader.h"

namespace knockout::cli {

// A Unix time in milliseconds as UTC text: "2023-11-14T22:13:20Z" (`readable`: "2023-11-14
// 22:13:20 UTC").
std::string UtcTime(uint64_t unix_ms, bool readable = false);

// The stages a query covers: every expanded stage, or the one named `name`.
// InvalidArgument for an unknown name (listing the stages); FailedPrecondition for a stage of
// the spec that has not been expanded yet.
StatusOr<std::vector<v1::StageRecord>> SelectStages(const experiments::SweepReader& store,
                                                    const std::string& sweep,
                                                    const std::string& name);

// Trial index -> label, from the stage's shards (a trial may sit in several: same label).
StatusOr<std::map<uint32_t, v1::TrialLabel>> TrialLabels(const experiments::SweepReader& store,
                                                         const std::string& sweep,
                                                         uint32_t stage);

// A unit's short name: L3H2 (head), L3N17 (neuron), L3.attn_out, L3.mlp_out, L3.direction.
std::string UnitName(const std::string& unit_kind, int layer, int unit);
// What a trial knocked out: its label's unit_name (SAE latents: L3F856, L3F[12,856]) or else
// UnitName of its kind, layer and unit.
std::string TrialUnitName(const v1::TrialLabel& label);

template <typename Message>
StatusOr<Message> ParseArtifact(const std::string& sweep, const std::string& name,
                                const std::string& bytes) {
  Message message;
  if (!message.ParseFromString(bytes)) {
    return Status::Corruption("sweep " + sweep + ": artifact '" + name + "' (" +
                              std::to_string(bytes.size()) + " bytes) does not parse as " +
                              message.GetTypeName());
  }
  return message;
}

// An artifact that may not exist yet (the stage has not finished): nullopt when NotFound.
template <typename Message>
StatusOr<std::optional<Message>> OptionalArtifact(const experiments::SweepReader& store,
                                                  const std::string& sweep,
                                                  const std::string& name) {
  auto bytes = store.GetArtifact(sweep, name);
  if (!bytes.ok()) {
    if (bytes.status().code() == StatusCode::kNotFound) return std::optional<Message>();
    return bytes.status();
  }
  KO_ASSIGN_OR_RETURN(Message message, ParseArtifact<Message>(sweep, name, *bytes));
  return std::optional<Message>(std::move(message));
}

}  // namespace knockout::cli
