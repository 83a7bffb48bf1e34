// `knockout screen-check` (queries.h): an attribution screen's estimates next to the real
// knockouts of the stages that verified it (knockout_sweep targets with `from: SCREEN`), with
// Spearman's rank correlation and the top-k recall (experiments/screen_check.h).
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cli/queries.h"
#include "cli/store_reading.h"
#include "cli/table.h"
#include "experiments/engine.h"
#include "experiments/screen_check.h"

namespace knockout::cli {
namespace {

using experiments::SweepReader;

// What identifies a unit across stages: kind, layer, unit, positions.
using UnitKey = std::tuple<std::string, int, int, std::string>;

UnitKey KeyOf(const v1::TrialLabel& label) {
  return {label.unit_kind(), label.layer(), label.unit(), label.positions()};
}

struct Pair {
  std::string unit;
  uint32_t rank = 0, kind_rank = 0;
  bool top = false;
  double estimate = 0, te = 0;
};

}  // namespace

Status PrintScreenCheck(const SweepReader& store, const std::string& sweep_name,
                        const std::string& stage_name, std::ostream& out, OutputFormat format) {
  if (stage_name.empty()) return Status::InvalidArgument("--stage: required (an attribution_screen stage)");
  KO_ASSIGN_OR_RETURN(const std::string sweep, store.ResolveSweep(sweep_name));
  KO_ASSIGN_OR_RETURN(const auto stages, SelectStages(store, sweep, stage_name));
  const v1::StageRecord& stage = stages.front();
  if (stage.kind() != "attribution_screen") {
    return Status::InvalidArgument("stage \"" + stage.name() + "\" is a " + stage.kind() +
                                   " stage; screen-check reads attribution_screen stages");
  }
  KO_ASSIGN_OR_RETURN(auto screen, OptionalArtifact<v1::ScreenArtifact>(
                                       store, sweep, experiments::ScreenArtifactName(stage.name())));
  if (!screen) {
    return Status::NotFound("stage \"" + stage.name() + "\" has not finished (no screen yet)");
  }
  // The screen's estimate per (unit, prompt set), and pooled.
  std::map<UnitKey, const v1::ScreenUnit*> by_key;
  std::map<UnitKey, uint32_t> kind_rank;  // rank among the units of its kind (1 = best)
  std::map<std::string, uint32_t> seen;
  for (const v1::ScreenUnit& unit : screen->units()) {
    by_key[KeyOf(unit.label())] = &unit;
    kind_rank[KeyOf(unit.label())] = ++seen[unit.label().unit_kind()];
  }
  KO_ASSIGN_OR_RETURN(auto screen_rows, store.Rows(sweep, stage.index(), true));
  std::map<std::pair<uint32_t, std::string>, double> per_set;
  for (const v1::ResultRow& row : screen_rows) {
    auto it = row.values().find("score");
    if (it != row.values().end()) per_set[{row.trial(), row.prompt_set()}] = it->second;
  }

  KO_ASSIGN_OR_RETURN(const v1::SweepRecord record, store.GetSweep(sweep));
  KO_ASSIGN_OR_RETURN(const auto all_stages, store.ListStages(sweep));
  Table units;
  units.name = "screen_units";
  units.title = "screened units verified by knockouts (screen rank order)";
  units.columns = {"verify_stage", "prompt_set", "ablation", "positions", "unit", "chosen",
                   "screen_rank", "kind_rank", "estimate", "te", "error"};
  Table summary;
  summary.name = "screen_check";
  summary.title = "how well the screen (" + screen->method() + ", " + screen->metric() + ", " +
                  screen->ablation() + ") predicted the real knockouts";
  summary.columns = {"verify_stage", "prompt_set", "ablation", "positions", "unit_kind", "units",
                     "spearman", "top_k", "top_k_recall", "random_units"};
  std::vector<std::string> lines;
  std::vector<std::string> waiting;
  for (int s = static_cast<int>(stage.index()) + 1; s < record.spec().stages_size(); ++s) {
    const v1::Stage& spec_stage = record.spec().stages(s);
    if (!spec_stage.has_knockout_sweep()) continue;
    std::map<std::string, std::set<std::pair<int, int>>> top;  // kind -> top units
    for (const v1::Target& target : spec_stage.knockout_sweep().targets()) {
      if (target.from() != stage.name()) continue;
      // The engine's own choice: the first top_k of the screen's candidates.
      const auto candidates = experiments::ScreenCandidates(target, *screen);
      const size_t k = std::min<size_t>(target.top_k(), candidates.size());
      for (size_t i = 0; i < k; ++i) {
        top[experiments::UnitKindLabel(target.kind())].insert(
            {candidates[i].label().layer(), candidates[i].label().unit()});
      }
    }
    if (top.empty()) continue;
    const bool finished = std::any_of(all_stages.begin(), all_stages.end(), [&](const v1::StageRecord& r) {
      return r.index() == static_cast<uint32_t>(s) && r.state() == v1::DONE;
    });
    if (!finished) {
      waiting.push_back(spec_stage.name());
      continue;
    }
    KO_ASSIGN_OR_RETURN(auto labels, TrialLabels(store, sweep, static_cast<uint32_t>(s)));
    KO_ASSIGN_OR_RETURN(auto rows, store.Rows(sweep, static_cast<uint32_t>(s), true));
    // (prompt set, ablation, positions, unit kind) -> pairs
    std::map<std::tuple<std::string, std::string, std::string, std::string>, std::vector<Pair>> groups;
    for (const v1::ResultRow& row : rows) {
      const auto label = labels.find(row.trial());
      const auto te = row.values().find("te");
      if (label == labels.end() || te == row.values().end()) continue;
      const auto unit = by_key.find(KeyOf(label->second));
      if (unit == by_key.end()) continue;  // a trial of another target
      Pair pair;
      pair.unit = TrialUnitName(label->second);
      pair.rank = unit->second->rank();
      pair.kind_rank = kind_rank[KeyOf(label->second)];
      pair.top = top[label->second.unit_kind()].count({label->second.layer(), label->second.unit()}) > 0;
      const auto set_score = per_set.find({unit->second->trial(), row.prompt_set()});
      pair.estimate = set_score != per_set.end() ? set_score->second : unit->second->score();
      pair.te = te->second;
      groups[{row.prompt_set(), label->second.ablation(), label->second.positions(),
              label->second.unit_kind()}]
          .push_back(pair);
    }
    for (auto& [key, pairs] : groups) {
      const auto& [set, ablation, positions, kind] = key;
      std::sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) { return a.rank < b.rank; });
      std::vector<double> estimates, tes, real_key;
      std::vector<bool> chosen;
      size_t randoms = 0;
      for (const Pair& p : pairs) {
        units.rows.push_back({Cell::Text(spec_stage.name()), Cell::Text(set), Cell::Text(ablation),
                              Cell::Text(positions), Cell::Text(p.unit),
                              Cell::Text(p.top ? "top" : "random"), Cell::Integer(p.rank),
                              Cell::Integer(p.kind_rank),
                              Cell::Number(p.estimate), Cell::Number(p.te),
                              Cell::Number(p.estimate - p.te)});
        estimates.push_back(p.estimate);
        tes.push_back(p.te);
        chosen.push_back(p.top);
        randoms += p.top ? 0 : 1;
        if (screen->rank() == "negative") {
          real_key.push_back(-p.te);
        } else if (screen->rank() == "positive") {
          real_key.push_back(p.te);
        } else {
          real_key.push_back(std::fabs(p.te));
        }
      }
      const double rho = experiments::Spearman(estimates, tes);
      const double recall = experiments::TopKRecall(chosen, real_key);
      const size_t k = pairs.size() - randoms;
      summary.rows.push_back({Cell::Text(spec_stage.name()), Cell::Text(set), Cell::Text(ablation),
                              Cell::Text(positions), Cell::Text(kind),
                              Cell::Integer(static_cast<int64_t>(pairs.size())),
                              Cell::Number(rho), Cell::Integer(static_cast<int64_t>(k)),
                              Cell::Number(recall), Cell::Integer(static_cast<int64_t>(randoms))});
      std::ostringstream line;
      line << "Spearman rank correlation, screen estimate vs real TE (" << kind << "s, "
           << spec_stage.name() << ", " << set << ", " << ablation << ", " << positions
           << "): " << FormatDouble(rho, 4) << " over " << pairs.size() << " units";
      lines.push_back(line.str());
      std::ostringstream recall_line;
      recall_line << kind << "s: top-" << k << " recall " << FormatDouble(recall, 4)
                  << " (the share of the real top " << k << " by "
                  << (screen->rank() == "magnitude" ? "|TE|" : screen->rank() + " TE")
                  << " among the " << pairs.size() << " verified that the screen ranked in its top "
                  << k << ")";
      if (randoms == 0) recall_line << " (no random units verified: add `random: N` to the target)";
      lines.push_back(recall_line.str());
    }
  }
  if (summary.rows.empty()) {
    std::string message = "no finished knockout_sweep stage verifies screen \"" + stage.name() +
                          "\" (a target with `from: " + stage.name() + "`)";
    if (!waiting.empty()) message += "; waiting for: " + waiting.front();
    return Status::NotFound(message);
  }
  Table hooks;
  hooks.name = "screen_hooks";
  hooks.title = "every unit of a hook ablated at once: exact effect vs the sum of attributions";
  hooks.columns = {"hook", "positions", "effect", "attributed", "residual"};
  for (const v1::ScreenHookEffect& h : screen->hooks()) {
    hooks.rows.push_back({Cell::Text(h.hook()), Cell::Text(h.positions()), Cell::Number(h.effect()),
                          Cell::Number(h.attributed()), Cell::Number(h.attributed() - h.effect())});
  }
  // Hook effects exist for integrated gradients only (completeness).
  if (hooks.rows.empty()) {
    RenderTables({units, summary}, format, out);
  } else {
    RenderTables({units, hooks, summary}, format, out);
  }
  if (format == OutputFormat::kTable) {
    out << "\n";
    for (const std::string& line : lines) out << line << "\n";
  }
  return Status::Ok();
}

}  // namespace knockout::cli
