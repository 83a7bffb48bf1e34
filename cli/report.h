// `knockout report SWEEP --out report.html`: one self-contained HTML page of a sweep, for people
// to look at and print. Torch-free; reads through a SweepReader (a local store or a coordinator),
// so it works on a sweep that is still running (it shows what exists so far).
//
// Charts are inline SVG written here, not a vendored chart library: the figures are four simple
// kinds (heatmap, lines, bars, scatter), the page needs no script at all (so it cannot fetch
// anything: a Content-Security-Policy of default-src 'none' says so to the browser), prints as
// it looks, and every number is also in an HTML table and a CSV download beside its figure.
// Sections, as the sweep's stages have them:
//   - the sweep: name, id, state, dates, model, prompt sets, stages, where it was read from, the
//     spec (JSON);
//   - selection: bypass per layer and position (chosen marked, rejected hollow) and the
//     candidates with the filter that rejected them;
//   - generate / orthogonalize: refusal rate per condition and prompt set, example completions;
//   - heads: layer x head heatmaps of TE, DE and C = TE - DE (diverging scale centred on zero,
//     values on hover and in a table), per ablation, positions and prompt set;
//   - directions: the effect per layer per position (inst_last vs post_inst ...), and the cosine
//     per layer of the refusal direction with the other extracted directions (harmfulness);
//   - whole layers (attn_out, mlp_out), neurons: effect per layer / the strongest units;
//   - SAE latents: upstream vs downstream knockouts with TE, DE, C; for the strongest downstream
//     ones, the latents that rose to replace them (clean vs ablated activation, dormant marked);
//     the latents each target chose;
//   - attribution screens: screen estimate vs verified TE (scatter), Spearman per group.
// Thread-safety: stateless.
#pragma once

#include <ostream>
#include <string>

#include "common/status.h"
#include "experiments/sweep_reader.h"

namespace knockout::cli {

struct ReportOptions {
  std::string sweep;   // id or name (the latest sweep of that name)
  std::string source;  // where it was read from, as the page says: "store DIR", "coordinator ADDR"
  int max_heatmaps = 12;     // per stage (one per ablation x positions x prompt set x value)
  int examples_per_cell = 2; // example completions per condition and prompt set
};

// Writes the page to `out`. Errors: NotFound (sweep); the store's errors.
Status WriteReport(const experiments::SweepReader& store, const ReportOptions& options,
                   std::ostream& out);

// Writes the page to `path` atomically (a temporary file renamed over it): nothing half-written
// on error. IOError naming the path.
Status WriteReportFile(const experiments::SweepReader& store, const ReportOptions& options,
                       const std::string& path);

}  // namespace knockout::cli
