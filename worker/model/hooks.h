// Hook points, interventions and the hook registry: how callers observe and edit a forward pass.
//
// Hook points carry TransformerLens names (science.md): `hook_embed`, `blocks.{l}.hook_resid_pre`,
// `blocks.{l}.attn.hook_z`, `blocks.{l}.hook_attn_out`, `blocks.{l}.hook_resid_mid`,
// `blocks.{l}.mlp.hook_post`, `blocks.{l}.hook_mlp_out`, `blocks.{l}.hook_resid_post`,
// `ln_final.hook_scale`, `ln_final.hook_normalized`. A HookRegistry, passed to one forward pass,
// caches the activations it is asked for and applies interventions with a per-row and
// per-position mask, so that different rows of one batch carry different interventions.
//
// Thread-safety: Intervention is an immutable value. A HookRegistry is mutated by the forward
// pass that uses it (its cache): use one registry per concurrent forward pass.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "formats/config.h"

namespace knockout::model {

// The architecture comes from formats/ (torch-free config.json reader); the runtime names it
// unqualified.
using formats::Family;
using formats::ModelConfig;
using formats::RopeScaling;

enum class HookKind : uint8_t {
  kEmbed,            // hook_embed                  [B, T, d_model]
  kResidPre,         // blocks.{l}.hook_resid_pre   [B, T, d_model]
  kAttnZ,            // blocks.{l}.attn.hook_z      [B, T, n_heads, d_head]
  kAttnOut,          // blocks.{l}.hook_attn_out    [B, T, d_model]
  kResidMid,         // blocks.{l}.hook_resid_mid   [B, T, d_model]
  kMlpPost,          // blocks.{l}.mlp.hook_post    [B, T, d_mlp]
  kMlpOut,           // blocks.{l}.hook_mlp_out     [B, T, d_model]
  kResidPost,        // blocks.{l}.hook_resid_post  [B, T, d_model]
  kFinalScale,       // ln_final.hook_scale         [B, T, 1], float32: sqrt(mean(x^2) + eps)
  kFinalNormalized,  // ln_final.hook_normalized    [B, T, d_model]: x / scale, before the weight
};

struct HookPoint {
  HookKind kind = HookKind::kEmbed;
  int64_t layer = -1;  // -1 for the layer-less hooks (embed, ln_final)

  static HookPoint Embed() { return {HookKind::kEmbed, -1}; }
  static HookPoint ResidPre(int64_t l) { return {HookKind::kResidPre, l}; }
  static HookPoint AttnZ(int64_t l) { return {HookKind::kAttnZ, l}; }
  static HookPoint AttnOut(int64_t l) { return {HookKind::kAttnOut, l}; }
  static HookPoint ResidMid(int64_t l) { return {HookKind::kResidMid, l}; }
  static HookPoint MlpPost(int64_t l) { return {HookKind::kMlpPost, l}; }
  static HookPoint MlpOut(int64_t l) { return {HookKind::kMlpOut, l}; }
  static HookPoint ResidPost(int64_t l) { return {HookKind::kResidPost, l}; }
  static HookPoint FinalScale() { return {HookKind::kFinalScale, -1}; }
  static HookPoint FinalNormalized() { return {HookKind::kFinalNormalized, -1}; }

  // The TransformerLens name, e.g. "blocks.3.attn.hook_z".
  std::string Name() const;
  // Parses a name; InvalidArgument naming it if unknown or if its layer is not in
  // [0, num_layers) ("blocks.9.hook_resid_pre: layer 9 out of range, model has 6 layers").
  static StatusOr<HookPoint> Parse(const std::string& name, int64_t num_layers);

  bool operator==(const HookPoint& o) const { return kind == o.kind && layer == o.layer; }
  bool operator<(const HookPoint& o) const {
    return layer != o.layer ? layer < o.layer : kind < o.kind;
  }
};

// Every hook point of a model, in the order a forward pass reaches them.
std::vector<HookPoint> AllHookPoints(int64_t num_layers);
// The activation shape at a hook without the leading [B, T] (e.g. {n_heads, d_head} at hook_z).
std::vector<int64_t> HookActivationShape(const ModelConfig& config, const HookPoint& hook);

// An edit computed outside the model runtime (SAE latent interventions, worker/sae): applied to
// the activation `x` [B, T, ...] of columns [offset, offset + T) like any intervention (the
// registry masks rows and positions). Implementations are immutable and thread-safe.
class ActivationEdit {
 public:
  virtual ~ActivationEdit() = default;
  virtual const char* Name() const = 0;
  virtual Status Validate(const ModelConfig& config, const HookPoint& hook) const = 0;
  virtual at::Tensor Apply(const at::Tensor& x, int64_t offset) const = 0;
};

// One way of replacing an activation; a value, composable by registering several at a hook
// (they apply in registration order). Formulas (science.md):
//   zero:        x <- 0
//   mean:        x <- mean                     (mean over a reference set, given)
//   resample:    x <- source[b, t]             (activations of other prompts, given per row)
//   directional: x <- x - (x . r_hat) r_hat,   r_hat = r / (|r| + 1e-8)
//   add:         x <- x + c r                  (r unnormalised)
//   custom:      x <- edit.Apply(x)            (an ActivationEdit, e.g. an SAE latent edit)
// `OnUnits` restricts an intervention to some indices of axis 2 of the activation: heads at
// attn.hook_z, neurons at mlp.hook_post (per-head / per-neuron ablation); elsewhere dimensions.
class Intervention {
 public:
  enum class Kind { kZero, kMean, kResample, kDirectional, kAdd, kCustom };

  static Intervention Zero();
  // `mean` has the activation's trailing shape (HookActivationShape), e.g. [n_heads, d_head].
  static Intervention Mean(at::Tensor mean);
  // `source` is [B, T_source, ...trailing shape], row b replacing row b of the batch; positions
  // at or beyond T_source are left unchanged.
  static Intervention Resample(at::Tensor source);
  // `direction` is 1-D with the activation's last dimension.
  static Intervention Directional(at::Tensor direction);
  static Intervention Add(at::Tensor direction, double coefficient);
  static Intervention Custom(std::shared_ptr<const ActivationEdit> edit);

  // A copy restricted to `units` (indices along axis 2). Not meaningful for directional/add.
  Intervention OnUnits(std::vector<int64_t> units) const;

  Kind kind() const { return kind_; }
  const at::Tensor& value() const { return value_; }
  double coefficient() const { return coefficient_; }
  const std::shared_ptr<const ActivationEdit>& edit() const { return edit_; }
  const std::vector<int64_t>& units() const { return units_; }
  const char* KindName() const;

  // Checks the value's shape against the activation at `hook` of a model with `config`.
  Status Validate(const ModelConfig& config, const HookPoint& hook) const;

  // The activation `x` [B, T, ...] (columns [offset, offset + T) of the sequence) with the
  // intervention applied at every row and position; masking is the registry's job.
  at::Tensor Apply(const at::Tensor& x, int64_t offset) const;

 private:
  Kind kind_ = Kind::kZero;
  at::Tensor value_;
  double coefficient_ = 1.0;
  std::vector<int64_t> units_;
  std::shared_ptr<const ActivationEdit> edit_;  // kCustom
};

// Where an intervention applies.
struct InterventionSite {
  HookPoint hook;
  Intervention intervention;
  // Optional bool [B]: the batch rows that carry the intervention (undefined: all rows).
  at::Tensor rows;
  // Optional bool [T_prompt] or [B, T_prompt]: the prompt columns (after left padding) that carry
  // it (undefined: all prompt columns).
  at::Tensor positions;
  // Whether it also applies at columns >= T_prompt, i.e. to tokens generated after the prompt.
  bool on_generated = true;
};

class HookRegistry {
 public:
  explicit HookRegistry(const ModelConfig& config);

  // Asks the next forward pass to keep the activation at `hook` (the value after this hook's
  // interventions, i.e. what downstream computation sees).
  void Cache(const HookPoint& hook);
  // By name; InvalidArgument for an unknown name or layer.
  Status Cache(const std::string& name);
  void CacheAll();

  // Registers an intervention. InvalidArgument naming the hook if the value's shape or the
  // masks' shapes do not fit.
  Status Intervene(InterventionSite site);
  void ClearInterventions();

  // Cached activations by hook name. A forward pass replaces the entries it produces; a pass over
  // a KV cache (generation) appends to them along the position axis.
  const std::map<std::string, at::Tensor>& cache() const { return cache_; }
  // NotFound naming the hook if it was not cached.
  StatusOr<at::Tensor> Cached(const std::string& name) const;
  void ClearCache() { cache_.clear(); }

  // Called by the model at every hook point with the activation for columns [offset, offset+T).
  // Returns it unchanged (no copy) when nothing is registered at `hook`.
  at::Tensor Run(const HookPoint& hook, at::Tensor x, int64_t offset);

  bool Active(const HookPoint& hook) const { return active_[Index(hook)]; }

  // The number of prompt columns of the batch (generation sets it); columns at or beyond it are
  // generated tokens. -1 (the default): every column is a prompt column.
  void set_prompt_length(int64_t length) { prompt_length_ = length; }
  int64_t prompt_length() const { return prompt_length_; }

 private:
  size_t Index(const HookPoint& hook) const;
  at::Tensor SiteMask(const InterventionSite& site, const at::Tensor& x, int64_t offset) const;
  at::Tensor RunOnRows(const InterventionSite& site, const at::Tensor& x, int64_t offset,
                       const at::Tensor& rows) const;

  ModelConfig config_;
  std::vector<bool> active_;    // by Index(): anything registered
  std::vector<bool> cached_;    // by Index(): cache requested
  std::vector<std::vector<InterventionSite>> sites_;  // by Index()
  std::map<std::string, at::Tensor> cache_;
  int64_t prompt_length_ = -1;
};

}  // namespace knockout::model
