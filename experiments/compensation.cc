#include "experiments/compensation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <tuple>
#include <utility>

namespace knockout::experiments {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string RowName(const v1::ResultRow& row) {
  return "trial " + std::to_string(row.trial()) + " (prompt set \"" + row.prompt_set() + "\")";
}

// The value `key` of `row`, or NaN if absent.
double ValueOr(const v1::ResultRow& row, const std::string& key, double fallback) {
  const auto it = row.values().find(key);
  return it == row.values().end() ? fallback : it->second;
}

StatusOr<double> RequiredValue(const v1::ResultRow& row, const std::string& key) {
  const auto it = row.values().find(key);
  if (it == row.values().end()) {
    std::string have;
    for (const auto& [name, value] : row.values()) have += (have.empty() ? "" : ", ") + name;
    return Status::InvalidArgument(RowName(row) + ": aggregate row has no value \"" + key +
                                   "\" (has: " + (have.empty() ? "none" : have) + ")");
  }
  if (!std::isfinite(it->second)) {
    return Status::InvalidArgument(RowName(row) + ": value \"" + key + "\" is not finite");
  }
  return it->second;
}

int Sign(double x) { return x > 0 ? 1 : (x < 0 ? -1 : 0); }

// "heads+mlp_out", "attn_out+mlp_out", ...: the kinds of the row's readings, in kind order.
std::string ReadKinds(const v1::ResultRow& row) {
  std::set<int> kinds;
  for (const v1::UnitReading& r : row.downstream()) kinds.insert(r.kind());
  if (kinds.empty()) return "none";
  std::string out;
  for (int kind : kinds) {
    const char* name = kind == v1::UnitReading::HEAD       ? "heads"
                       : kind == v1::UnitReading::ATTN_OUT ? "attn_out"
                       : kind == v1::UnitReading::MLP_OUT  ? "mlp_out"
                                                           : "units";
    out += (out.empty() ? "" : "+") + std::string(name);
  }
  return out;
}

std::vector<UnitChange> RankBackups(const v1::ResultRow& row, int reference_sign, int top_n,
                                    double* explained) {
  std::vector<UnitChange> changes;
  changes.reserve(row.downstream_size());
  *explained = 0;
  for (const v1::UnitReading& reading : row.downstream()) {
    UnitChange change;
    change.kind = reading.kind();
    change.layer = reading.layer();
    change.unit = reading.unit();
    change.clean = reading.clean();
    change.ablated = reading.ablated();
    change.change = reading.ablated() - reading.clean();
    change.compensating = reference_sign != 0 && change.change * reference_sign < 0;
    *explained += change.change;
    changes.push_back(change);
  }
  std::sort(changes.begin(), changes.end(), [](const UnitChange& a, const UnitChange& b) {
    if (a.compensating != b.compensating) return a.compensating;
    const double abs_a = std::fabs(a.change), abs_b = std::fabs(b.change);
    if (abs_a != abs_b) return abs_a > abs_b;
    return std::tie(a.layer, a.unit) < std::tie(b.layer, b.unit);
  });
  if (top_n >= 0 && changes.size() > static_cast<size_t>(top_n)) changes.resize(top_n);
  return changes;
}

}  // namespace

int CompensationReferenceSign(double te, double de) {
  if (std::fabs(de) >= kCompensationTiny) return Sign(de);
  if (std::fabs(te) >= kCompensationTiny) return Sign(te);
  return 0;
}

StatusOr<std::vector<CompensationRow>> ComputeCompensation(
    const std::vector<v1::ResultRow>& aggregate_rows,
    const std::map<uint32_t, v1::TrialLabel>& labels, int top_n) {
  std::vector<CompensationRow> out;
  std::set<std::pair<uint32_t, std::string>> seen;
  for (const v1::ResultRow& row : aggregate_rows) {
    if (row.prompt() >= 0) continue;
    // Every prompt of the row was left out (non-finite values: ResultRow.error): nothing to show.
    if (row.values().count("prompts") && row.values().at("prompts") == 0) continue;
    if (!seen.emplace(row.trial(), row.prompt_set()).second) {
      return Status::InvalidArgument(RowName(row) + ": more than one aggregate row");
    }
    const auto label = labels.find(row.trial());
    if (label == labels.end()) {
      return Status::InvalidArgument(RowName(row) + ": no trial label (not in any shard)");
    }
    CompensationRow result;
    result.trial = row.trial();
    result.label = label->second;
    result.prompt_set = row.prompt_set();
    KO_ASSIGN_OR_RETURN(result.te, RequiredValue(row, "te"));
    // A group of latents over several layers, and a direction ablated at every layer
    // (science.md's directional ablation), have no single write that is "direct": they have TE
    // but no DE (and so no C); every other trial must have its DE.
    const bool no_single_unit =
        (result.label.unit_kind() == "sae_latents" && result.label.layer() < 0) ||
        result.label.ablation() == "directional";
    if (no_single_unit && !row.values().count("de")) {
      result.de = kNaN;
    } else {
      KO_ASSIGN_OR_RETURN(result.de, RequiredValue(row, "de"));
    }
    result.refusal_score = ValueOr(row, "refusal_score", kNaN);
    result.clean_refusal_score = ValueOr(row, "clean_refusal_score", kNaN);
    result.c = result.te - result.de;
    const bool de_matters = std::fabs(result.de) >= kCompensationTiny &&
                            std::fabs(result.de) >= kRatioMinDeShare * std::fabs(result.te);
    result.ratio = de_matters ? result.c / std::fabs(result.de) : kNaN;
    result.norm_effect = ValueOr(row, "norm_effect", kNaN);
    result.norm_share =
        std::fabs(result.c) < kCompensationTiny ? kNaN : result.norm_effect / result.c;
    result.downstream_count = static_cast<size_t>(row.downstream_size());
    result.latent_backups.assign(row.backups().begin(), row.backups().end());
    if (top_n >= 0 && result.latent_backups.size() > static_cast<size_t>(top_n)) {
      result.latent_backups.resize(static_cast<size_t>(top_n));
    }
    result.read = ReadKinds(row);
    result.top_backups = RankBackups(row, CompensationReferenceSign(result.te, result.de), top_n,
                                     &result.explained);
    result.unexplained = result.c - result.norm_effect - result.explained;
    out.push_back(std::move(result));
  }
  std::stable_sort(out.begin(), out.end(), [](const CompensationRow& a, const CompensationRow& b) {
    const auto key_a = std::make_tuple(a.label.layer(), a.label.unit(), a.trial);
    const auto key_b = std::make_tuple(b.label.layer(), b.label.unit(), b.trial);
    if (key_a != key_b) return key_a < key_b;
    return a.prompt_set < b.prompt_set;
  });
  return out;
}

}  // namespace knockout::experiments
