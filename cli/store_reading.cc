// What several queries read from a sweep store (store_reading.h).
#include "cli/store_reading.h"

#include <ctime>

#include <algorithm>

namespace knockout::cli {

std::string UtcTime(uint64_t unix_ms, bool readable) {
  const std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  if (gmtime_r(&seconds, &tm) == nullptr) return std::to_string(unix_ms) + " ms";
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), readable ? "%Y-%m-%d %H:%M:%S UTC" : "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

using experiments::SweepReader;

StatusOr<std::vector<v1::StageRecord>> SelectStages(const SweepReader& store,
                                                    const std::string& sweep,
                                                    const std::string& name) {
  KO_ASSIGN_OR_RETURN(auto stages, store.ListStages(sweep));
  if (name.empty()) return stages;
  for (const v1::StageRecord& stage : stages) {
    if (stage.name() == name) return std::vector<v1::StageRecord>{stage};
  }
  KO_ASSIGN_OR_RETURN(const v1::SweepRecord record, store.GetSweep(sweep));
  std::vector<std::string> names;
  for (const v1::StageRecord& stage : stages) names.push_back(stage.name());
  for (const v1::Stage& stage : record.spec().stages()) {
    if (stage.name() == name) {
      return Status::FailedPrecondition("sweep " + sweep + ": stage \"" + name +
                                        "\" has not started yet (no shards)");
    }
    if (std::find(names.begin(), names.end(), stage.name()) == names.end()) {
      names.push_back(stage.name());
    }
  }
  std::string list;
  for (const std::string& stage : names) list += (list.empty() ? "" : ", ") + stage;
  return Status::InvalidArgument("sweep " + sweep + " has no stage \"" + name + "\"; stages: " +
                                 (list.empty() ? "none" : list));
}

StatusOr<std::map<uint32_t, v1::TrialLabel>> TrialLabels(const SweepReader& store,
                                                         const std::string& sweep,
                                                         uint32_t stage) {
  return store.TrialLabels(sweep, stage);  // the label index, not every shard
}

std::string UnitName(const std::string& unit_kind, int layer, int unit) {
  const std::string prefix = "L" + std::to_string(layer);
  if (unit_kind == "head") return prefix + "H" + std::to_string(unit);
  if (unit_kind == "neuron") return prefix + "N" + std::to_string(unit);
  if (unit_kind.empty()) return prefix + "#" + std::to_string(unit);
  if (unit < 0) return prefix + "." + unit_kind;
  return prefix + "." + unit_kind + "#" + std::to_string(unit);
}

std::string TrialUnitName(const v1::TrialLabel& label) {
  if (!label.unit_name().empty()) return label.unit_name();
  return UnitName(label.unit_kind(), label.layer(), label.unit());
}

}  // namespace knockout::cli
