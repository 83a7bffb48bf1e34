// The SAE latent queries of the knockout CLI (queries.h): `features` (the latents each target
// chose, with their scores) and `backups` (the latents that rose when a unit was knocked out).
#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cli/queries.h"
#include "cli/store_reading.h"
#include "cli/table.h"
#include "experiments/engine.h"

namespace knockout::cli {
namespace {

using experiments::SweepReader;

std::string LatentName(int layer, int latent) {
  return "L" + std::to_string(layer) + "F" + std::to_string(latent);
}

// The rankings of SAE latents in one stage, or nullopt when the stage ranked none (yet).
StatusOr<std::optional<v1::RankingArtifact>> LatentRankings(const SweepReader& store,
                                                            const std::string& sweep,
                                                            const v1::StageRecord& stage) {
  KO_ASSIGN_OR_RETURN(auto artifact,
                      OptionalArtifact<v1::RankingArtifact>(
                          store, sweep, experiments::RankingArtifactName(stage.name())));
  if (!artifact) return artifact;
  v1::RankingArtifact latents;
  for (const v1::NeuronRanking& r : artifact->rankings()) {
    if (!r.sae_hook().empty()) *latents.add_rankings() = r;
  }
  if (latents.rankings_size() == 0) return std::optional<v1::RankingArtifact>();
  return std::optional<v1::RankingArtifact>(std::move(latents));
}

void AppendFeatureRows(const std::string& stage, const v1::RankingArtifact& rankings,
                       Table* table) {
  for (const v1::NeuronRanking& r : rankings.rankings()) {
    // Units are stored in index order with their scores; rank them best first.
    std::vector<int> order(r.units_size());
    for (int i = 0; i < r.units_size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      const double sa = a < r.scores_size() ? r.scores(a) : 0.0;
      const double sb = b < r.scores_size() ? r.scores(b) : 0.0;
      return sa > sb;
    });
    for (size_t rank = 0; rank < order.size(); ++rank) {
      const int i = order[rank];
      auto optional = [&](const google::protobuf::RepeatedField<double>& values) {
        return i < values.size() ? Cell::Number(values.Get(i)) : Cell::Empty();
      };
      table->rows.push_back(
          {Cell::Text(stage), Cell::Integer(r.layer()), Cell::Text(r.sae_hook()),
           Cell::Integer(static_cast<int64_t>(rank + 1)), Cell::Text(LatentName(r.layer(), r.units(i))),
           Cell::Integer(r.units(i)), Cell::Text(r.score()), optional(r.scores()),
           optional(r.cosines()), optional(r.activation_diffs())});
    }
  }
}

// The aggregate rows (prompt -1) of one stage that carry backups, by trial.
struct TrialBackups {
  uint32_t trial = 0;
  v1::TrialLabel label;
  std::vector<const v1::ResultRow*> rows;  // one per prompt set
};

}  // namespace

Status PrintFeatures(const SweepReader& store, const std::string& sweep_name,
                     const std::string& stage_name, std::ostream& out, OutputFormat format) {
  KO_ASSIGN_OR_RETURN(const std::string sweep, store.ResolveSweep(sweep_name));
  KO_ASSIGN_OR_RETURN(const auto stages, SelectStages(store, sweep, stage_name));
  Table table;
  table.name = "features";
  table.title = "SAE latents chosen per layer (best first)";
  table.columns = {"stage", "layer", "hook", "rank", "unit", "latent", "score", "value",
                   "cosine", "activation_diff"};
  for (const v1::StageRecord& stage : stages) {
    if (stage.kind() != "knockout_sweep") {
      if (stage_name.empty()) continue;
      return Status::InvalidArgument("stage \"" + stage.name() + "\" is a " + stage.kind() +
                                     " stage; features are chosen by knockout_sweep stages");
    }
    KO_ASSIGN_OR_RETURN(auto rankings, LatentRankings(store, sweep, stage));
    if (!rankings) {
      if (stage_name.empty()) continue;
      return Status::NotFound("stage \"" + stage.name() +
                              "\" has no latent rankings (its targets list their latents, or "
                              "its ranking shard has not finished)");
    }
    AppendFeatureRows(stage.name(), *rankings, &table);
  }
  if (table.rows.empty()) {
    return Status::NotFound("sweep " + sweep +
                            ": no stage chose SAE latents by a score (sae_latents targets with "
                            "select)");
  }
  RenderTables({table}, format, out);
  return Status::Ok();
}

Status PrintBackups(const SweepReader& store, const BackupsQuery& query, std::ostream& out) {
  if (query.top < 1) {
    return Status::InvalidArgument("--top " + std::to_string(query.top) + ": must be 1 or more");
  }
  if (query.stage.empty()) return Status::InvalidArgument("--stage: required");
  if (query.unit.empty()) return Status::InvalidArgument("--unit: required (e.g. L3F856)");
  KO_ASSIGN_OR_RETURN(const std::string sweep, store.ResolveSweep(query.sweep));
  KO_ASSIGN_OR_RETURN(const auto stages, SelectStages(store, sweep, query.stage));
  const v1::StageRecord& stage = stages.front();
  if (stage.kind() != "knockout_sweep") {
    return Status::InvalidArgument("stage \"" + stage.name() + "\" is a " + stage.kind() +
                                   " stage; backups are read by knockout_sweep stages");
  }
  KO_ASSIGN_OR_RETURN(auto labels, TrialLabels(store, sweep, stage.index()));
  KO_ASSIGN_OR_RETURN(auto aggregates, store.Rows(sweep, stage.index(), true));
  std::map<uint32_t, TrialBackups> trials;
  std::set<std::string> units;
  for (const auto& [index, label] : labels) {
    units.insert(TrialUnitName(label));
    if (TrialUnitName(label) != query.unit) continue;
    trials[index].trial = index;
    trials[index].label = label;
  }
  if (trials.empty()) {
    std::string some;
    int n = 0;
    for (const std::string& u : units) {
      if (n++ == 12) {
        some += ", ...";
        break;
      }
      some += (some.empty() ? "" : ", ") + u;
    }
    return Status::NotFound("stage \"" + stage.name() + "\" knocks out no unit " + query.unit +
                            " (units: " + (some.empty() ? "none" : some) + ")");
  }
  bool any = false;
  for (const v1::ResultRow& row : aggregates) {
    auto it = trials.find(row.trial());
    if (row.prompt() >= 0 || it == trials.end()) continue;
    it->second.rows.push_back(&row);
    any = any || row.backups_size() > 0;
  }
  if (!any) {
    return Status::NotFound("stage \"" + stage.name() + "\" stored no backups for " + query.unit +
                            " (run it with backups: and an SAE downstream of the unit)");
  }
  Table table;
  table.name = "backups";
  table.title = "latents that rose when " + query.unit + " was knocked out (dormant first)";
  table.columns = {"stage",   "trial",    "unit",      "role",       "ablation",   "positions",
                   "prompt_set", "prompts", "backup",  "hook",       "dormant",    "clean",
                   "ablated", "rise",     "spread",    "cosine",     "de_clean",   "de_ablated",
                   "de_change"};
  for (const auto& [index, t] : trials) {
    for (const v1::ResultRow* row : t.rows) {
      std::vector<const v1::UnitReading*> backups;
      for (const v1::UnitReading& b : row->backups()) backups.push_back(&b);
      std::stable_sort(backups.begin(), backups.end(),
                       [](const v1::UnitReading* a, const v1::UnitReading* b) {
                         if (a->dormant() != b->dormant()) return a->dormant();
                         return a->ablated() - a->clean() > b->ablated() - b->clean();
                       });
      if (backups.size() > static_cast<size_t>(query.top)) backups.resize(query.top);
      const auto prompts = row->values().find("prompts");
      for (const v1::UnitReading* b : backups) {
        table.rows.push_back(
            {Cell::Text(stage.name()), Cell::Integer(index), Cell::Text(query.unit),
             Cell::Text(t.label.role()), Cell::Text(t.label.ablation()),
             Cell::Text(t.label.positions()), Cell::Text(row->prompt_set()),
             prompts == row->values().end() ? Cell::Empty()
                                            : Cell::Integer(static_cast<int64_t>(prompts->second)),
             Cell::Text(LatentName(b->layer(), b->unit())), Cell::Text(b->hook()),
             Cell::Bool(b->dormant()), Cell::Number(b->clean()), Cell::Number(b->ablated()),
             Cell::Number(b->ablated() - b->clean()), Cell::Number(b->spread()),
             Cell::Number(b->cosine()), Cell::Number(b->de_clean()), Cell::Number(b->de_ablated()),
             Cell::Number(b->de_ablated() - b->de_clean())});
      }
    }
  }
  RenderTables({table}, query.format, out);
  return Status::Ok();
}

}  // namespace knockout::cli
