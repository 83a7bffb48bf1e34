#include "worker/model/hooks.h"

#include <ATen/ATen.h>

#include <cstdlib>

namespace knockout::model {
namespace {

constexpr int kPerLayerKinds = 7;  // resid_pre .. resid_post

struct KindName {
  HookKind kind;
  const char* suffix;
};
constexpr KindName kLayerHooks[] = {
    {HookKind::kResidPre, "hook_resid_pre"}, {HookKind::kAttnZ, "attn.hook_z"},
    {HookKind::kAttnOut, "hook_attn_out"},   {HookKind::kResidMid, "hook_resid_mid"},
    {HookKind::kMlpPost, "mlp.hook_post"},   {HookKind::kMlpOut, "hook_mlp_out"},
    {HookKind::kResidPost, "hook_resid_post"},
};

std::string ShapeString(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

std::string HookPoint::Name() const {
  switch (kind) {
    case HookKind::kEmbed: return "hook_embed";
    case HookKind::kFinalScale: return "ln_final.hook_scale";
    case HookKind::kFinalNormalized: return "ln_final.hook_normalized";
    default: break;
  }
  for (const KindName& k : kLayerHooks) {
    if (k.kind == kind) return "blocks." + std::to_string(layer) + "." + k.suffix;
  }
  return "unknown";
}

StatusOr<HookPoint> HookPoint::Parse(const std::string& name, int64_t num_layers) {
  if (name == "hook_embed") return Embed();
  if (name == "ln_final.hook_scale") return FinalScale();
  if (name == "ln_final.hook_normalized") return FinalNormalized();
  const std::string prefix = "blocks.";
  if (name.compare(0, prefix.size(), prefix) == 0) {
    size_t dot = name.find('.', prefix.size());
    std::string digits = name.substr(prefix.size(), dot - prefix.size());
    if (dot != std::string::npos && !digits.empty() && digits.size() < 10 &&
        digits.find_first_not_of("0123456789") == std::string::npos) {
      int64_t layer = std::stoll(digits);
      std::string suffix = name.substr(dot + 1);
      for (const KindName& k : kLayerHooks) {
        if (suffix != k.suffix) continue;
        if (layer >= num_layers) {
          return Status::InvalidArgument(name + ": layer " + std::to_string(layer) +
                                         " out of range, model has " +
                                         std::to_string(num_layers) + " layers");
        }
        return HookPoint{k.kind, layer};
      }
    }
  }
  return Status::InvalidArgument(
      "unknown hook point \"" + name +
      "\" (expected hook_embed, blocks.{l}.hook_resid_pre, blocks.{l}.attn.hook_z, "
      "blocks.{l}.hook_attn_out, blocks.{l}.hook_resid_mid, blocks.{l}.mlp.hook_post, "
      "blocks.{l}.hook_mlp_out, blocks.{l}.hook_resid_post, ln_final.hook_scale or "
      "ln_final.hook_normalized)");
}

std::vector<HookPoint> AllHookPoints(int64_t num_layers) {
  std::vector<HookPoint> hooks = {HookPoint::Embed()};
  for (int64_t l = 0; l < num_layers; ++l) {
    for (const KindName& k : kLayerHooks) hooks.push_back({k.kind, l});
  }
  hooks.push_back(HookPoint::FinalScale());
  hooks.push_back(HookPoint::FinalNormalized());
  return hooks;
}

std::vector<int64_t> HookActivationShape(const ModelConfig& c, const HookPoint& hook) {
  switch (hook.kind) {
    case HookKind::kAttnZ: return {c.num_heads, c.head_dim};
    case HookKind::kMlpPost: return {c.intermediate_size};
    case HookKind::kFinalScale: return {1};
    default: return {c.hidden_size};
  }
}

// ---------------------------------------------------------------------------------------------
// Intervention

Intervention Intervention::Zero() { return Intervention(); }

Intervention Intervention::Mean(at::Tensor mean) {
  Intervention i;
  i.kind_ = Kind::kMean;
  i.value_ = std::move(mean);
  return i;
}

Intervention Intervention::Resample(at::Tensor source) {
  Intervention i;
  i.kind_ = Kind::kResample;
  i.value_ = std::move(source);
  return i;
}

Intervention Intervention::Directional(at::Tensor direction) {
  Intervention i;
  i.kind_ = Kind::kDirectional;
  i.value_ = std::move(direction);
  return i;
}

Intervention Intervention::Add(at::Tensor direction, double coefficient) {
  Intervention i;
  i.kind_ = Kind::kAdd;
  i.value_ = std::move(direction);
  i.coefficient_ = coefficient;
  return i;
}

Intervention Intervention::Custom(std::shared_ptr<const ActivationEdit> edit) {
  Intervention i;
  i.kind_ = Kind::kCustom;
  i.edit_ = std::move(edit);
  return i;
}

Intervention Intervention::OnUnits(std::vector<int64_t> units) const {
  Intervention i = *this;
  i.units_ = std::move(units);
  return i;
}

const char* Intervention::KindName() const {
  switch (kind_) {
    case Kind::kZero: return "zero";
    case Kind::kMean: return "mean";
    case Kind::kResample: return "resample";
    case Kind::kDirectional: return "directional";
    case Kind::kAdd: return "add";
    case Kind::kCustom: return edit_ ? edit_->Name() : "custom";
  }
  return "unknown";
}

Status Intervention::Validate(const ModelConfig& config, const HookPoint& hook) const {
  const std::vector<int64_t> trailing = HookActivationShape(config, hook);
  const std::string where = hook.Name() + ": " + KindName() + " intervention: ";
  if (kind_ == Kind::kCustom) {
    if (!edit_) return Status::InvalidArgument(where + "no edit given");
    if (!units_.empty()) return Status::InvalidArgument(where + "units apply to zero, mean and resample only");
    return edit_->Validate(config, hook);
  }
  if (!units_.empty()) {
    if (kind_ == Kind::kDirectional || kind_ == Kind::kAdd) {
      return Status::InvalidArgument(where + "units apply to zero, mean and resample only");
    }
    for (int64_t u : units_) {
      if (u < 0 || u >= trailing[0]) {
        return Status::InvalidArgument(where + "unit " + std::to_string(u) +
                                       " out of range [0, " + std::to_string(trailing[0]) + ")");
      }
    }
  }
  switch (kind_) {
    case Kind::kZero: return Status::Ok();
    case Kind::kMean:
      if (!value_.defined() || value_.sizes().vec() != trailing) {
        return Status::InvalidArgument(
            where + "mean must have shape " + ShapeString(trailing) + ", got " +
            (value_.defined() ? ShapeString(value_.sizes()) : std::string("nothing")));
      }
      return Status::Ok();
    case Kind::kResample: {
      bool ok = value_.defined() && value_.dim() == static_cast<int64_t>(trailing.size()) + 2;
      for (size_t i = 0; ok && i < trailing.size(); ++i) ok = value_.size(i + 2) == trailing[i];
      if (!ok) {
        return Status::InvalidArgument(
            where + "source must have shape [B, T] + " + ShapeString(trailing) + ", got " +
            (value_.defined() ? ShapeString(value_.sizes()) : std::string("nothing")));
      }
      return Status::Ok();
    }
    case Kind::kCustom: return Status::Ok();
    case Kind::kDirectional:
    case Kind::kAdd:
      if (!value_.defined() || value_.dim() != 1 || value_.size(0) != trailing.back()) {
        return Status::InvalidArgument(
            where + "direction must have shape [" + std::to_string(trailing.back()) + "], got " +
            (value_.defined() ? ShapeString(value_.sizes()) : std::string("nothing")));
      }
      return Status::Ok();
  }
  return Status::Internal(where + "unknown kind");
}

at::Tensor Intervention::Apply(const at::Tensor& x, int64_t offset) const {
  const auto options = x.options();
  switch (kind_) {
    case Kind::kDirectional: {
      // science.md: x - (x . r_hat) r_hat with r_hat = r / (|r| + 1e-8); the projection is
      // computed in float32 at least so that bf16 activations lose no more than their rounding.
      at::Tensor r = value_.to(x.device(), at::kFloat);
      at::Tensor r_hat = r / (r.norm() + 1e-8);
      at::Tensor x32 = x.to(at::kFloat);
      at::Tensor projection = at::matmul(x32, r_hat).unsqueeze(-1);
      return (x32 - projection * r_hat).to(x.scalar_type());
    }
    case Kind::kAdd:
      return x + (value_.to(options) * coefficient_);
    case Kind::kCustom:
      return edit_->Apply(x, offset);
    default:
      break;
  }
  // zero / mean / resample: a replacement value, possibly only at some units (axis 2).
  at::Tensor replacement;
  if (kind_ == Kind::kZero) {
    replacement = at::zeros_like(x);
  } else if (kind_ == Kind::kMean) {
    replacement = value_.to(options).expand(x.sizes());
  } else {
    // Resample: columns [offset, offset + T) of the source; beyond it, x is kept.
    const int64_t t = x.size(1);
    const int64_t available = std::max<int64_t>(0, std::min(t, value_.size(1) - offset));
    at::Tensor part = value_.narrow(1, std::min(offset, value_.size(1)), available).to(options);
    replacement = available == t ? part : at::cat({part, x.narrow(1, available, t - available)}, 1);
  }
  if (units_.empty()) return replacement;
  at::Tensor index = at::tensor(units_, at::TensorOptions().dtype(at::kLong)).to(x.device());
  at::Tensor out = x.clone();
  out.index_copy_(2, index, replacement.index_select(2, index));
  return out;
}

// ---------------------------------------------------------------------------------------------
// HookRegistry

HookRegistry::HookRegistry(const ModelConfig& config)
    : config_(config),
      active_(Index(HookPoint::FinalNormalized()) + 1, false),
      cached_(active_.size(), false),
      sites_(active_.size()) {}

size_t HookRegistry::Index(const HookPoint& hook) const {
  switch (hook.kind) {
    case HookKind::kEmbed: return 0;
    case HookKind::kFinalScale: return 1 + config_.num_layers * kPerLayerKinds;
    case HookKind::kFinalNormalized: return 2 + config_.num_layers * kPerLayerKinds;
    default:
      return 1 + hook.layer * kPerLayerKinds + (static_cast<int>(hook.kind) -
                                                static_cast<int>(HookKind::kResidPre));
  }
}

void HookRegistry::Cache(const HookPoint& hook) {
  cached_[Index(hook)] = true;
  active_[Index(hook)] = true;
}

Status HookRegistry::Cache(const std::string& name) {
  KO_ASSIGN_OR_RETURN(HookPoint hook, HookPoint::Parse(name, config_.num_layers));
  Cache(hook);
  return Status::Ok();
}

void HookRegistry::CacheAll() {
  for (const HookPoint& hook : AllHookPoints(config_.num_layers)) Cache(hook);
}

Status HookRegistry::Intervene(InterventionSite site) {
  const HookPoint& hook = site.hook;
  if (hook.layer >= config_.num_layers ||
      (hook.layer < 0 && hook.kind != HookKind::kEmbed && hook.kind != HookKind::kFinalScale &&
       hook.kind != HookKind::kFinalNormalized)) {
    return Status::InvalidArgument(hook.Name() + ": layer out of range, model has " +
                                   std::to_string(config_.num_layers) + " layers");
  }
  KO_RETURN_IF_ERROR(site.intervention.Validate(config_, hook));
  if (site.rows.defined() && (site.rows.dim() != 1 || site.rows.scalar_type() != at::kBool)) {
    return Status::InvalidArgument(hook.Name() + ": rows mask must be a 1-D bool tensor [B]");
  }
  if (site.positions.defined() &&
      ((site.positions.dim() != 1 && site.positions.dim() != 2) ||
       site.positions.scalar_type() != at::kBool)) {
    return Status::InvalidArgument(hook.Name() +
                                   ": positions mask must be a bool tensor [T] or [B, T]");
  }
  active_[Index(hook)] = true;
  sites_[Index(hook)].push_back(std::move(site));
  return Status::Ok();
}

void HookRegistry::ClearInterventions() {
  for (size_t i = 0; i < sites_.size(); ++i) {
    sites_[i].clear();
    active_[i] = cached_[i];
  }
}

StatusOr<at::Tensor> HookRegistry::Cached(const std::string& name) const {
  auto it = cache_.find(name);
  if (it == cache_.end()) {
    return Status::NotFound(name + ": not cached (ask the registry to cache it before the pass)");
  }
  return it->second;
}

// Bool mask [B, T] (or undefined for "everywhere") of where `site` applies to columns
// [offset, offset + T) of a batch of B rows.
at::Tensor HookRegistry::SiteMask(const InterventionSite& site, const at::Tensor& x,
                                  int64_t offset) const {
  const int64_t b = x.size(0);
  const int64_t t = x.size(1);
  if (!site.rows.defined() && !site.positions.defined() && site.on_generated) return at::Tensor();
  const auto bool_options = at::TensorOptions().dtype(at::kBool).device(x.device());
  at::Tensor mask;
  if (site.positions.defined()) {
    at::Tensor positions = site.positions.to(x.device());
    if (positions.dim() == 1) positions = positions.unsqueeze(0).expand({b, positions.size(0)});
    const int64_t prompt = positions.size(1);
    const int64_t inside = std::max<int64_t>(0, std::min(t, prompt - offset));
    at::Tensor head = positions.narrow(1, std::min(offset, prompt), inside);
    at::Tensor tail = at::full({b, t - inside}, site.on_generated, bool_options);
    mask = at::cat({head, tail}, 1);
  } else {
    // No position mask: every prompt column; generated columns only if on_generated.
    const int64_t prompt = prompt_length_ < 0 ? offset + t : prompt_length_;
    const int64_t inside = std::max<int64_t>(0, std::min(t, prompt - offset));
    mask = at::cat({at::ones({b, inside}, bool_options),
                    at::full({b, t - inside}, site.on_generated, bool_options)},
                   1);
  }
  if (site.rows.defined()) mask = mask & site.rows.to(x.device()).unsqueeze(1);
  return mask;
}

// `site` applied to rows `rows` (int64, CPU) of `x` only; the other rows are returned as they are.
at::Tensor HookRegistry::RunOnRows(const InterventionSite& site, const at::Tensor& x,
                                   int64_t offset, const at::Tensor& rows) const {
  const at::Tensor index = rows.to(x.device());
  const at::Tensor part = x.index_select(0, index);
  InterventionSite subset = site;
  subset.rows = at::Tensor();
  if (site.positions.defined() && site.positions.dim() == 2) {
    subset.positions = site.positions.index_select(0, rows.to(site.positions.device()));
  }
  at::Tensor edited = site.intervention.Apply(part, offset);
  const at::Tensor mask = SiteMask(subset, part, offset);
  if (mask.defined()) {
    std::vector<int64_t> shape = mask.sizes().vec();
    shape.resize(part.dim(), 1);
    edited = at::where(mask.view(shape), edited, part);
  }
  return x.index_copy(0, index, edited.to(x.scalar_type()));
}

at::Tensor HookRegistry::Run(const HookPoint& hook, at::Tensor x, int64_t offset) {
  const size_t index = Index(hook);
  if (!active_[index]) return x;
  for (const InterventionSite& site : sites_[index]) {
    // A site on some rows only (one trial of a batch of trials) is computed on those rows alone:
    // an edit as costly as an SAE encode must not run over every other trial's rows. Resample
    // sources are indexed by batch row, so resample runs over the whole batch.
    if (site.rows.defined() && site.intervention.kind() != Intervention::Kind::kResample &&
        site.rows.size(0) == x.size(0)) {
      const at::Tensor rows = site.rows.to(at::kCPU).nonzero().flatten();
      if (rows.numel() == 0) continue;
      if (rows.numel() < x.size(0)) {
        x = RunOnRows(site, x, offset, rows);
        continue;
      }
    }
    at::Tensor edited = site.intervention.Apply(x, offset);
    at::Tensor mask = SiteMask(site, x, offset);
    if (!mask.defined()) {
      x = edited;
      continue;
    }
    std::vector<int64_t> shape = mask.sizes().vec();
    shape.resize(x.dim(), 1);
    x = at::where(mask.view(shape), edited, x);
  }
  if (cached_[index]) {
    const std::string name = hook.Name();
    auto it = cache_.find(name);
    if (offset > 0 && it != cache_.end() && it->second.size(1) == offset &&
        it->second.size(0) == x.size(0)) {
      it->second = at::cat({it->second, x}, 1);  // a generation step continues the pass
    } else {
      cache_[name] = x;
    }
  }
  return x;
}

}  // namespace knockout::model
