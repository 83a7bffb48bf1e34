// The read-only queries of the `knockout` CLI over a sweep store: status, results tables,
// compensation, direction export. Each writes to a std::ostream (or a file) and returns a Status;
// none prints to stdout/stderr or exits, so cli/main.cc decides how errors are shown.
// Thread-safety: the functions keep no state; they may run concurrently on one SweepStore (which
// is thread-safe) as long as each has its own output stream / path.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "common/status.h"
#include "experiments/sweep_reader.h"

namespace knockout::cli {

// Output formats of tables. kTable: aligned columns for people, floating-point numbers with 4
// significant digits, long cells cut at 120 characters; kCsv: RFC 4180 quoting, one header line
// per table, full precision (several tables as one long table: a first column `table`, then
// every column once, empty where a row's table lacks it); kJsonl:
// one JSON object per row, keys in column order plus "table" (what the row is: "results",
// "candidates", ...), full precision, NaN as null.
enum class OutputFormat { kTable, kCsv, kJsonl };

// "pending", "running", "done", "failed", "cancelled" ("unknown" otherwise).
std::string RunStateName(v1::RunState state);

// "table", "csv" or "jsonl". InvalidArgument listing those for anything else.
StatusOr<OutputFormat> ParseOutputFormat(const std::string& name);

// Lists every sweep (id, name, state, created time, error) with its stages (index, name, kind,
// state, shards done/total, trials); stages of the spec not yet expanded are listed as
// "waiting". `sweep_or_empty`: a sweep id or name (the latest of that name) to show only that
// sweep. Errors: NotFound from SweepStore::ResolveSweep (it lists what exists); store errors.
// `format` csv or jsonl: one row per stage (sweep id, name, state, created, error, then the
// stage's index, name, kind, state, shards done and total, trials), stages not yet expanded as
// "waiting".
Status PrintStatus(const experiments::SweepReader& store, const std::string& sweep_or_empty,
                   std::ostream& out, OutputFormat format = OutputFormat::kTable);

struct ResultsQuery {
  std::string sweep;  // id or name (the latest sweep of that name)
  std::string stage;  // a stage name; empty: every stage, one table (or two) each
  // FIELD=VALUE filters, all of which a row must pass. FIELD is a column of the printed table:
  // stage, trial, unit_kind, layer, unit, ablation, positions, direction, coefficient, role,
  // prompt_set, prompt, a value key (refusal_score, te, de, kl, ...), or a column of the other
  // tables (position, norm, condition, refused, ...). Compared as numbers when the cell and VALUE
  // both parse as numbers (relative tolerance 1e-9), as text otherwise; booleans match
  // true/false/1/0. positions/position values are read as selectors (formats/positions.h) and
  // compared in canonical text ("[ 3, -1 ]" finds "[3,-1]"; a malformed one is an error).
  // A table without the column is left out; a field no table has is an error.
  std::vector<std::string> where;
  bool per_prompt = false;  // per-prompt rows / completions instead of aggregates
  OutputFormat format = OutputFormat::kTable;
};

// Prints the results of one stage or of every stage, by stage kind:
// - knockout_sweep, select_direction (and any kind with result rows): "results": the rows
//   joined with their trial labels (from the stage's shards): stage, trial, unit_kind, layer,
//   unit, ablation, positions, direction, coefficient, role, prompt_set, prompt (per_prompt
//   only), then the value keys sorted. Aggregate rows (means over a shard's prompts) by default.
// - select_direction, also "candidates": layer, position, bypass, induce, kl, passed, rejected,
//   chosen (once the stage is finished).
// - extract_directions: "directions": one row per direction artifact: layer, position, hook,
//   norm, positive_count, negative_count, dim.
// - generate, orthogonalize: "refusal": refusal rate per (condition, prompt_set) with counts;
//   per_prompt: "completions": condition, prompt_set, prompt, refused, instruction, text.
//   orthogonalize also "checkpoint": the written output directory and its direction.
// Errors: NotFound (sweep); InvalidArgument for an unknown stage (lists the stages), a filter
// that is not FIELD=VALUE, or a field no printed table has (lists the columns); Corruption if a
// stored artifact does not parse; store errors.
Status PrintResults(const experiments::SweepReader& store, const ResultsQuery& query,
                    std::ostream& out);

// Per knocked-out unit and prompt set, sorted by |TE| descending: stage, trial, unit ("L3H2",
// "L3N17", "L3.attn_out", "L3.mlp_out", "L3.direction"), ablation, positions, prompt_set, te, de,
// c (= te - de), c/|de|, norm_share (final norm's share of c), explained (sum of the downstream
// units' changes), and "backups": up to `top` downstream units that grew back (their direct
// effect moved against the unit's, see experiments/compensation.h), largest first, as
// "L4H2 +0.31, L5H0 +0.12" (jsonl: a list of objects). Downstream units of whole-layer and
// direction knockouts are named L<layer>.attn_out (unit 0) and L<layer>.mlp_out (unit 1).
// `stage`: a knockout_sweep stage; empty: every knockout_sweep stage with downstream readings.
// Errors: NotFound (sweep; or, with no stage given, no knockout_sweep stage has downstream
// readings); InvalidArgument (unknown stage, listing them; a stage that is not a knockout_sweep;
// top < 0); the errors of experiments::ComputeCompensation (a row without te/de names its
// trial); store errors.
// `columns`: print only these columns, in this order (empty: all).
Status PrintCompensation(const experiments::SweepReader& store, const std::string& sweep,
                         const std::string& stage, int top, std::ostream& out,
                         OutputFormat format = OutputFormat::kTable,
                         const std::vector<std::string>& columns = {});

// Writes every direction of a sweep to one safetensors file at `path` (atomically: a temporary
// file renamed over it): each DirectionArtifact as float32 [d_model] "<stage>/L<layer>/<position>"
// (e.g. "extract/L3/post_inst[-1]"), and each selection's chosen direction as "<stage>/best".
// __metadata__ holds "format" ("pt", the convention), "knockout_format" ("directions/1"),
// "sweep" (the id), and per tensor name a JSON object string: stage, layer, position, hook,
// norm, positive_count, negative_count, and for "best" source_stage (the extract stage).
// Errors: NotFound (sweep; or it has no direction artifacts yet); Corruption (an artifact does
// not parse); InvalidArgument/IOError from model::WriteSafetensors (naming the path).
Status ExportDirections(const experiments::SweepReader& store, const std::string& sweep,
                        const std::string& path);

// Per layer, the cosine between the selected refusal direction's position (of each selection's
// extract stage) and every other extracted direction at that layer (e.g. the harmfulness
// direction at t_inst; Zhao et al.), with both norms. NotFound if the sweep has no selection or
// no other extracted direction.
Status PrintDirectionCosines(const experiments::SweepReader& store, const std::string& sweep,
                             std::ostream& out, OutputFormat format = OutputFormat::kTable);

// SAE latents (sae_queries.cc). `knockout features`: the latents each sae_latents target
// chose, per stage and layer, from the stage's rankings (RANK shard): stage, layer, hook, rank
// (1 = best), unit (L3F856), latent, score (decoder_cosine, activation_diff,
// cosine_and_activation), value (the ranking score), cosine (with the selection's direction,
// when it had one), activation_diff (positive minus negative set, when it had sets).
// `stage`: a knockout_sweep stage; empty: every stage with latent rankings. Errors: NotFound
// (sweep; no stage ranked latents; the stage's ranking is not done yet), InvalidArgument
// (unknown stage), Corruption (the ranking artifact does not parse).
Status PrintFeatures(const experiments::SweepReader& store, const std::string& sweep,
                     const std::string& stage, std::ostream& out,
                     OutputFormat format = OutputFormat::kTable);

struct BackupsQuery {
  std::string sweep;
  std::string stage;  // a knockout_sweep stage with backups (required)
  std::string unit;   // the knocked-out unit's name, e.g. L3F856, L3F[12,856], L3H2 (required)
  int top = 10;       // backups per trial and prompt set (<= what the sweep stored)
  OutputFormat format = OutputFormat::kTable;
};

// `knockout backups`: the latents that rose when `unit` was knocked out, per trial (ablation x
// positions) and prompt set, dormant ones first, then by mean rise: stage, trial, unit, role,
// ablation, positions, prompt_set, prompts, backup (L5F12), hook, dormant, clean, ablated, rise
// (mean over prompts of ablated - clean), spread (its standard deviation over prompts), cosine
// (with the backups' direction), de_clean, de_ablated, de_change. Errors: NotFound (sweep; no
// trial knocks out `unit`, listing some that exist; the stage stored no backups),
// InvalidArgument (unknown stage; top < 1).
Status PrintBackups(const experiments::SweepReader& store, const BackupsQuery& query,
                    std::ostream& out);

// `knockout screen-check` (screen_queries.cc): for an attribution_screen stage, every unit a
// later knockout_sweep verified (targets with `from: STAGE`): "screen_units" (verify_stage,
// prompt_set, ablation, positions, unit, chosen: top or random, screen_rank, estimate, te,
// error = estimate - te), "screen_hooks" (integrated gradients only: per hook and positions,
// the exact effect of ablating all its screened units at once, their summed attributions and
// the residual: completeness), and "screen_check" per (verify stage, prompt set, ablation,
// positions): units, spearman (the screen's estimates vs the real TE), top_k, top_k_recall
// (the fraction of the real top k among the verified units, by the screen's rank key, that
// the screen put in its top k), random_units. In table format one line per group then names
// the Spearman rank correlation and one the recall. Errors: InvalidArgument (no stage given,
// or not an attribution_screen stage); NotFound (the screen or every verifying stage has not
// finished, or none refers to it); store errors.
Status PrintScreenCheck(const experiments::SweepReader& store, const std::string& sweep,
                        const std::string& stage, std::ostream& out,
                        OutputFormat format = OutputFormat::kTable);

}  // namespace knockout::cli
