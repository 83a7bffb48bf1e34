// Compensation (self-repair, the "hydra effect"; science.md "Direct effect, total effect,
// compensation"): from the aggregate result rows of a knockout_sweep stage, the total effect TE,
// the direct effect DE, the compensation C = TE - DE, the final norm's share of C, and the
// downstream units that grew back. Pure functions over values: thread-safe, no store access.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "knockout/v1/sweep.pb.h"

namespace knockout::experiments {

// One downstream unit's linearised direct effect on the metric in the clean and the ablated run
// (v1::UnitReading), and its change.
struct UnitChange {
  // HEAD (unit = head), ATTN_OUT or MLP_OUT; KIND_UNSPECIFIED for rows stored before kinds
  // (unit 0 = attn_out, 1 = mlp_out, or a head when the swept unit was a head).
  v1::UnitReading::Kind kind = v1::UnitReading::KIND_UNSPECIFIED;
  int32_t layer = 0;
  int32_t unit = 0;
  double clean = 0;
  double ablated = 0;
  double change = 0;          // ablated - clean
  bool compensating = false;  // change opposes the knocked-out unit's direct effect (see below)
};

// The compensation of one knocked-out unit (one trial) on one prompt set, from its aggregate row
// (the mean over prompts).
struct CompensationRow {
  uint32_t trial = 0;
  v1::TrialLabel label;  // what was knocked out: unit_kind, layer, unit, ablation, positions...
  std::string prompt_set;
  double refusal_score = 0;        // ablated run; NaN if the row lacks it
  double clean_refusal_score = 0;  // NaN if the row lacks it
  double te = 0;                   // total effect: M(ablated) - M(clean)
  double de = 0;                   // direct effect: downstream and final-norm scale frozen;
                                   // NaN for a group of SAE latents over several layers
                                   // and for directional ablation (every layer)
  double c = 0;                    // compensation: te - de
  // c / |de|; NaN (shown as "-") unless |de| >= kRatioMinDeShare * |te| and |de| >=
  // kCompensationTiny: where the direct effect is negligible against the total, the ratio is
  // noise divided by almost nothing.
  double ratio = 0;
  double norm_effect = 0;          // part of te due to the final norm's scale; NaN if absent
  double norm_share = 0;           // norm_effect / c; NaN if |c| < kCompensationTiny or norm_effect absent
  double explained = 0;            // sum of every downstream unit's change (not only the top)
  // c - norm_effect - explained: what the recorded downstream units and the final norm do not
  // account for (units of other kinds, the metric's non-linearity). NaN if norm_effect absent.
  double unexplained = 0;
  size_t downstream_count = 0;     // readings the row carried (0: compensation not recorded)
  // Which downstream units were read (and so make up `explained`): e.g. "heads+mlp_out" after a
  // head, "attn_out+mlp_out" after a neuron or a direction; "none" without readings.
  std::string read;
  // The top `top_n` downstream units: compensating ones first, each group by |change|
  // descending (ties: layer, unit).
  std::vector<UnitChange> top_backups;
  // SAE latents downstream whose activation rose most (ResultRow.backups, stages with backups),
  // as stored (the top latents by mean rise), at most `top_n` of them.
  std::vector<v1::UnitReading> latent_backups;
};

// |x| below this counts as zero for the ratios.
inline constexpr double kCompensationTiny = 1e-12;
// C / |DE| is reported only where |DE| is at least this fraction of |TE|.
inline constexpr double kRatioMinDeShare = 0.05;

// Which way "growing back" points. Knocking out u removes its direct contribution, moving the
// metric by DE; a backup unit's direct effect changes the other way and pushes the metric back
// toward its clean value. So a change is compensating when change * sign(DE) < 0. When |DE| is
// below kCompensationTiny (a unit that acts only through later units) the reference is TE:
// compensating units oppose the total effect. sign(TE) alone would be wrong when self-repair
// over-corrects (TE and DE of opposite signs): the backups then share TE's sign.
// Returns +1 or -1 (the sign of the reference), or 0 if both are below kCompensationTiny (no
// change is then compensating).
int CompensationReferenceSign(double te, double de);

// One CompensationRow per (trial, prompt set) aggregate row in `aggregate_rows` (rows with
// prompt >= 0 are skipped, so SweepStore::Rows output of either kind may be passed), sorted by
// (layer, unit, trial, prompt_set): stable and natural for tables; callers re-sort for display.
// `labels` maps a trial index to its label (Shard.trials). `top_n` < 0 keeps every downstream
// unit; 0 keeps none.
// Errors (InvalidArgument, naming the trial and prompt set): a row without "te" or "de" in its
// values, or with a non-finite te/de; a trial without a label; two aggregate rows for the same
// (trial, prompt set). An aggregate row whose every prompt was left out (`prompts` 0: their
// values were non-finite) is skipped.
StatusOr<std::vector<CompensationRow>> ComputeCompensation(
    const std::vector<v1::ResultRow>& aggregate_rows,
    const std::map<uint32_t, v1::TrialLabel>& labels, int top_n);

}  // namespace knockout::experiments
