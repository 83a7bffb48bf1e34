// The sweep engine: turns a spec into stages and deterministic shards, and moves a sweep through
// them over the store — expand a stage, hand out its pending shards, commit results, run the
// stage's finaliser (diff-in-means reduction, direction selection), expand the next stage.
// Every transition is one store write batch, so a process killed at any point resumes where
// the store says it was. Torch-free: the embedded runner drives it today, the coordinator later.
//
// Thread-safety: not thread-safe; one engine per sweep driver (commits may come from one thread
// that owns the engine).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "experiments/spec.h"
#include "experiments/sweep_store.h"
#include "knockout/v1/sweep.pb.h"

namespace knockout::experiments {

// The sweep id of a spec: "<name>-<8 hex digits>", a hash of the spec's canonical
// (deterministic) serialisation without `source`. A filled spec (spec_inputs.h) holds its
// inputs — every prompt set's prompts after `limit` and the model's shape with config.json's
// digest — so submitting the same spec on the same inputs resumes the same sweep, and an
// edited prompt file or config starts a new one. Reads no file.
StatusOr<std::string> SweepIdFor(const v1::SweepSpec& spec);

// "extract_directions", "select_direction", "knockout_sweep", "generate", "orthogonalize"
// (StageRecord.kind), or "unknown".
const char* StageKindName(const v1::Stage& stage);

// Artifact names (sweep_store.h): direction/<stage>/L<layer:03>/<position>, selection/<stage>.
std::string DirectionArtifactName(const std::string& stage, int layer, const std::string& position);
std::string SelectionArtifactName(const std::string& stage);
std::string OrthogonalizeArtifactName(const std::string& stage);
std::string RankingArtifactName(const std::string& stage);
// screen/<stage>: an attribution_screen's ScreenArtifact (units in rank order).
std::string ScreenArtifactName(const std::string& stage);

// The label kind (TrialLabel.unit_kind) of a target kind's single units: head, neuron,
// direction, attn_out, mlp_out, sae_latent ("" for none).
const char* UnitKindLabel(v1::Target::Kind kind);
// The units of `target`'s kind (within its layers) that `screen` scored, best first, each unit
// once (screened at several positions: its best rank): a `from: STAGE` target knocks out the
// first top_k of these and draws its `random` ones from the rest; `knockout screen-check`
// reads the same list to tell the two apart.
std::vector<v1::ScreenUnit> ScreenCandidates(const v1::Target& target,
                                             const v1::ScreenArtifact& screen);

class SweepEngine {
 public:
  // `store` must outlive the engine. `shape` is the model's: from the spec (ModelRef.shape,
  // filled in by the CLI: spec_inputs.h); the engine opens no model file. Neuron targets with
  // top_k are ranked by the workers: such a knockout_sweep stage expands to one RANK shard
  // (index 0), and its trial shards (from index 1) join the stage when the rankings are
  // committed (artifact ranking/<stage>).
  SweepEngine(SweepStore* store, ModelShape shape) : store_(store), shape_(shape) {}

  // Where an orthogonalize stage without `output:` writes its checkpoint:
  // <root>/<sweep>/<stage>. Empty (the default): <store directory>/checkpoints, right only when
  // the workers see the store's directory (the embedded runner; a store on shared storage). On
  // a cluster whose workers do not (Kubernetes), the coordinator's --checkpoint-root names
  // shared storage.
  void set_checkpoint_root(std::string root) { checkpoint_root_ = std::move(root); }

  // Creates the sweep of `spec` with `priority` (SweepRecord.priority), or finds it if it
  // exists (`*resumed` = true; a FAILED or CANCELLED sweep is set RUNNING again, so that its
  // failed shards and finaliser are retried; the priority is updated to the one given). The spec
  // must be validated already. Returns the sweep id.
  StatusOr<std::string> Submit(const v1::SweepSpec& spec, bool* resumed, uint32_t priority = 0);
  // The same with the id already computed by SweepIdFor(spec) (reads no file).
  StatusOr<std::string> Submit(const v1::SweepSpec& spec, const std::string& id, bool* resumed,
                               uint32_t priority = 0);

  // Brings the sweep to its next runnable state: finalises a stage whose shards are all done,
  // expands the next stage, marks the sweep DONE after the last. Returns the pending shards of
  // the current stage, or nothing when the sweep is DONE (FailedPrecondition when it is FAILED
  // or CANCELLED: it runs again only when submitted again). A finaliser that cannot
  // produce its artifact (no candidate passes the selection filters) fails the sweep with that
  // reason, and the error is returned. `want_shards` false (the coordinator, which loads its
  // queue from the pending keys): the pending shards are not read (an empty list comes back),
  // only whether there are any, so that a stage of a million shards is not read whole.
  StatusOr<std::vector<v1::ShardRecord>> Advance(const std::string& sweep, bool want_shards = true);

  // Stores a shard's result (first commit wins; see SweepStore::CommitShard).
  Status Commit(const v1::ShardResult& result, uint32_t attempt);
  // Marks the sweep FAILED with `error` (e.g. a shard that cannot run).
  Status Fail(const std::string& sweep, const std::string& error);

  // The shards of stage `index` of `spec` (exposed for `knockout validate` and tests): reads the
  // prompt sets and the artifacts of earlier stages from the store.
  StatusOr<std::vector<v1::Shard>> Expand(const v1::SweepSpec& spec, const std::string& sweep,
                                          uint32_t index) const;

 private:
  // The stage's artifacts; result rows it computes (an attribution screen's) go to `rows`.
  StatusOr<std::vector<std::pair<std::string, std::string>>> Finalize(
      const v1::SweepRecord& sweep, uint32_t index, std::vector<v1::ResultRow>* rows) const;
  // A ranked knockout stage whose RANK shard is done: stores the rankings (ranking/<stage>) and
  // its trial shards in one batch.
  Status ExtendRankedStage(const v1::SweepRecord& sweep, v1::StageRecord stage) const;

  SweepStore* store_;
  ModelShape shape_;
  std::string checkpoint_root_;
};

// How many shards and trials each stage will have, without a store or a model run: what
// `knockout validate` prints. Stages that depend on earlier results (selection candidates)
// are counted from the spec (candidates = layers x positions).
struct StagePlan {
  std::string name;
  std::string kind;
  uint64_t shards = 0;
  uint64_t trials = 0;
  uint64_t prompts = 0;
};
StatusOr<std::vector<StagePlan>> PlanSweep(const v1::SweepSpec& spec, const ModelShape& shape);

}  // namespace knockout::experiments
