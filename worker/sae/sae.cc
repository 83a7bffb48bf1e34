#include "worker/sae/sae.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <utility>

namespace knockout::sae {
namespace {

using formats::SaeArchitecture;
using formats::SaeNormalization;

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool Encodable(model::HookKind kind) {
  switch (kind) {
    case model::HookKind::kResidPre:
    case model::HookKind::kResidMid:
    case model::HookKind::kResidPost:
    case model::HookKind::kAttnOut:
    case model::HookKind::kMlpOut:
    case model::HookKind::kAttnZ:
      return true;
    default:
      return false;
  }
}

// A float32 tensor on `device` from one of the file's tensors, whose shape must be `shape`; an
// empty `tensor` is allowed (undefined result) unless `required`.
StatusOr<at::Tensor> ToTensor(const formats::SaeTensor& tensor, const std::vector<int64_t>& shape,
                              const std::string& label, bool required, c10::Device device) {
  if (tensor.empty() && tensor.shape.empty()) {
    if (required) return Status::InvalidArgument(label + ": missing");
    return at::Tensor();
  }
  if (tensor.shape != shape) {
    return Status::InvalidArgument(label + ": shape " + ShapeString(tensor.shape) +
                                   ", expected " + ShapeString(shape));
  }
  const int64_t numel =
      std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
  if (static_cast<int64_t>(tensor.values.size()) != numel) {
    return Status::InvalidArgument(label + ": " + std::to_string(tensor.values.size()) +
                                   " values for shape " + ShapeString(shape));
  }
  at::Tensor cpu = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  std::copy(tensor.values.begin(), tensor.values.end(), cpu.data_ptr<float>());
  return cpu.to(device);
}

at::Tensor LongIndex(const std::vector<int64_t>& latents, c10::Device device) {
  return at::tensor(latents, at::TensorOptions().dtype(at::kLong)).to(device);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Loading

StatusOr<std::shared_ptr<const Sae>> Sae::Load(const std::string& path,
                                               const std::string& hook_override,
                                               const model::ModelConfig& config,
                                               c10::Device device, c10::ScalarType dtype) {
  KO_ASSIGN_OR_RETURN(formats::SaeWeights weights, formats::ReadSae(path, hook_override));
  if (weights.path.empty()) weights.path = path;
  return FromWeights(weights, config, device, dtype);
}

StatusOr<std::shared_ptr<const Sae>> Sae::FromWeights(const formats::SaeWeights& weights,
                                                      const model::ModelConfig& config,
                                                      c10::Device device,
                                                      c10::ScalarType dtype) {
  const formats::SaeConfig& c = weights.config;
  const std::string name = weights.path.empty() ? std::string("SAE") : weights.path;
  if (c.hook.empty()) {
    return Status::InvalidArgument(name +
                                   ": no hook known (the file names none): give the hook "
                                   "(--hook, or the spec's saes: entry)");
  }
  auto parsed = model::HookPoint::Parse(c.hook, config.num_layers);
  if (!parsed.ok()) return parsed.status().WithContext(name);
  const model::HookPoint hook = *parsed;
  auto encodable = SaeHookWidth(config, hook);
  if (!encodable.ok()) return encodable.status().WithContext(name);
  const int64_t width = *encodable;
  const std::vector<int64_t> shape = model::HookActivationShape(config, hook);
  if (c.d_in != width) {
    return Status::InvalidArgument(name + ": d_in " + std::to_string(c.d_in) +
                                   " differs from the width " + std::to_string(width) + " of " +
                                   hook.Name() + " " + ShapeString(shape) + " in this model");
  }
  if (c.d_sae <= 0) {
    return Status::InvalidArgument(name + ": d_sae " + std::to_string(c.d_sae) +
                                   " is not positive");
  }
  if (c.architecture == SaeArchitecture::kTopK && (c.k <= 0 || c.k > c.d_sae)) {
    return Status::InvalidArgument(name + ": k " + std::to_string(c.k) + " outside [1, d_sae = " +
                                   std::to_string(c.d_sae) + "]");
  }
  if (c.normalization == SaeNormalization::kExpectedAverageOnlyIn &&
      !(std::isfinite(c.scaling_factor) && c.scaling_factor > 0)) {
    return Status::InvalidArgument(name + ": scaling_factor " + std::to_string(c.scaling_factor) +
                                   " is not a positive number");
  }
  const bool gated = c.architecture == SaeArchitecture::kGated;
  const bool jumprelu = c.architecture == SaeArchitecture::kJumpRelu;
  std::shared_ptr<Sae> sae(new Sae());
  sae->config_ = c;
  sae->path_ = weights.path;
  sae->hook_ = hook;
  sae->hook_shape_ = shape;
  try {
    auto load = [&](const formats::SaeTensor& t, std::vector<int64_t> s, const char* label,
                    bool required) {
      return ToTensor(t, s, name + ": " + label, required, device);
    };
    KO_ASSIGN_OR_RETURN(sae->W_enc_, load(weights.W_enc, {c.d_in, c.d_sae}, "W_enc", true));
    KO_ASSIGN_OR_RETURN(sae->W_dec_, load(weights.W_dec, {c.d_sae, c.d_in}, "W_dec", true));
    // Gated SAEs (SAELens) have no b_enc: the gate and the magnitude have their own biases.
    KO_ASSIGN_OR_RETURN(sae->b_enc_, load(weights.b_enc, {c.d_sae}, "b_enc", !gated));
    KO_ASSIGN_OR_RETURN(sae->b_dec_, load(weights.b_dec, {c.d_in}, "b_dec", true));
    KO_ASSIGN_OR_RETURN(sae->threshold_, load(weights.threshold, {c.d_sae}, "threshold", jumprelu));
    KO_ASSIGN_OR_RETURN(sae->b_gate_, load(weights.b_gate, {c.d_sae}, "b_gate", gated));
    KO_ASSIGN_OR_RETURN(sae->r_mag_, load(weights.r_mag, {c.d_sae}, "r_mag", gated));
    KO_ASSIGN_OR_RETURN(sae->b_mag_, load(weights.b_mag, {c.d_sae}, "b_mag", gated));
    if (gated) sae->mag_factor_ = at::exp(sae->r_mag_);
  } catch (const c10::Error& e) {
    return Status::Internal(name + ": " + e.what_without_backtrace());
  }
  return std::shared_ptr<const Sae>(std::move(sae));
}

// ---------------------------------------------------------------------------------------------
// Encode / decode

std::string Sae::Label() const { return path_.empty() ? std::string("SAE") : path_; }

at::Tensor Sae::Flatten(const at::Tensor& x) const {
  const int64_t trailing = static_cast<int64_t>(hook_shape_.size());
  if (trailing > 1 && x.dim() >= trailing) {
    bool matches = true;
    for (int64_t i = 0; i < trailing; ++i) {
      matches = matches && x.size(x.dim() - trailing + i) == hook_shape_[i];
    }
    if (matches) return x.flatten(x.dim() - trailing, x.dim() - 1);
  }
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == config_.d_in, Label(), ": activation of shape ",
              x.sizes(), " has no trailing d_in = ", config_.d_in, " (hook ", hook_.Name(), ")");
  return x;
}

at::Tensor Sae::Scale(const at::Tensor& x) const {
  at::Tensor x32 = Flatten(x).to(W_dec_.device(), at::kFloat);
  switch (config_.normalization) {
    case SaeNormalization::kNone:
      break;
    case SaeNormalization::kExpectedAverageOnlyIn:
      return at::full_like(x32.narrow(-1, 0, 1), config_.scaling_factor);
    case SaeNormalization::kConstantNormRescale:
      return std::sqrt(static_cast<double>(config_.d_in)) /
             x32.norm(2, {-1}, /*keepdim=*/true).clamp_min(1e-12);
  }
  return at::ones_like(x32.narrow(-1, 0, 1));
}

at::Tensor Sae::Centred(const at::Tensor& x32, const at::Tensor& scale) const {
  at::Tensor centred = config_.normalization == SaeNormalization::kNone ? x32 : x32 * scale;
  if (config_.apply_b_dec_to_input) centred = centred - b_dec_;
  return centred;
}

at::Tensor Sae::Activate(const at::Tensor& linear, const at::Tensor& index) const {
  // `linear` = x_c W_enc[:, index] (all latents when index is undefined).
  auto pick = [&](const at::Tensor& v) { return index.defined() ? v.index_select(0, index) : v; };
  switch (config_.architecture) {
    case SaeArchitecture::kStandard:
      return at::relu(linear + pick(b_enc_));
    case SaeArchitecture::kJumpRelu: {
      at::Tensor pre = linear + pick(b_enc_);
      return at::relu(pre) * (pre > pick(threshold_)).to(at::kFloat);
    }
    case SaeArchitecture::kGated: {
      at::Tensor gate = linear + pick(b_gate_);
      // x_c (W_enc * exp(r_mag)) = (x_c W_enc) * exp(r_mag): exp(r_mag) scales columns.
      at::Tensor magnitude = linear * pick(mag_factor_) + pick(b_mag_);
      return (gate > 0).to(at::kFloat) * at::relu(magnitude);
    }
    case SaeArchitecture::kTopK: {
      TORCH_CHECK(!index.defined(), "topk latents need the full encode");
      at::Tensor pre = linear + b_enc_;
      auto top = pre.topk(config_.k, -1);
      return at::zeros_like(pre).scatter_(-1, std::get<1>(top), at::relu(std::get<0>(top)));
    }
  }
  return linear;
}

at::Tensor Sae::PreActivations(const at::Tensor& x) const {
  at::Tensor x32 = Flatten(x).to(W_dec_.device(), at::kFloat);
  at::Tensor linear = at::matmul(Centred(x32, Scale(x32)), W_enc_);
  return linear + (config_.architecture == SaeArchitecture::kGated ? b_gate_ : b_enc_);
}

at::Tensor Sae::Encode(const at::Tensor& x) const {
  at::Tensor x32 = Flatten(x).to(W_dec_.device(), at::kFloat);
  return Activate(at::matmul(Centred(x32, Scale(x32)), W_enc_), at::Tensor());
}

at::Tensor Sae::Decode(const at::Tensor& f) const {
  at::Tensor out = at::matmul(f.to(W_dec_.device(), at::kFloat), W_dec_) + b_dec_;
  if (config_.normalization == SaeNormalization::kExpectedAverageOnlyIn) {
    out = out / config_.scaling_factor;
  }
  return out;
}

at::Tensor Sae::Reconstruct(const at::Tensor& x) const {
  at::Tensor x32 = Flatten(x).to(W_dec_.device(), at::kFloat);
  at::Tensor scale = Scale(x32);
  at::Tensor f = Activate(at::matmul(Centred(x32, scale), W_enc_), at::Tensor());
  at::Tensor out = at::matmul(f, W_dec_) + b_dec_;
  return config_.normalization == SaeNormalization::kNone ? out : out / scale;
}

at::Tensor Sae::EncodeColumns(const at::Tensor& x32, const Columns& columns,
                              const at::Tensor& scale) const {
  if (config_.architecture == SaeArchitecture::kTopK) {
    at::Tensor f = Activate(at::matmul(Centred(x32, scale), W_enc_), at::Tensor());
    return f.index_select(-1, columns.index);
  }
  // (x s - b_dec) W = (x W) s - b_dec W, s being per token (or constant).
  at::Tensor linear = at::matmul(x32, columns.W);
  if (config_.normalization != SaeNormalization::kNone) linear = linear * scale;
  if (config_.apply_b_dec_to_input) linear = linear - columns.b_dec_W;
  return Activate(linear, columns.index);
}

at::Tensor Sae::EncodeLatents(const at::Tensor& x, const std::vector<int64_t>& latents) const {
  at::Tensor x32 = Flatten(x).to(W_dec_.device(), at::kFloat);
  return EncodeColumns(x32, EncoderColumns(latents), Scale(x32));
}

at::Tensor Sae::DecoderRows(const std::vector<int64_t>& latents) const {
  return W_dec_.index_select(0, LongIndex(latents, W_dec_.device()));
}

Status Sae::CheckLatents(const std::vector<int64_t>& latents) const {
  for (int64_t latent : latents) {
    if (latent < 0 || latent >= config_.d_sae) {
      return Status::InvalidArgument(Label() + ": latent " + std::to_string(latent) +
                                     " out of range [0, " + std::to_string(config_.d_sae) + ")");
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Latent interventions

const char* LatentOpName(LatentEdit::Op op) {
  switch (op) {
    case LatentEdit::Op::kZero: return "zero";
    case LatentEdit::Op::kClamp: return "clamp";
    case LatentEdit::Op::kScale: return "scale";
    case LatentEdit::Op::kMean: return "mean";
  }
  return "unknown";
}

// x' = x + ((f' - f)[latents] W_dec[latents]) / s: the edited latents' change of decode, the
// error term x - decode(f) and every other latent kept.
class LatentIntervention : public model::ActivationEdit {
 public:
  LatentIntervention(std::shared_ptr<const Sae> sae, LatentEdit edit)
      : sae_(std::move(sae)), edit_(std::move(edit)) {
    const c10::Device device = sae_->W_dec().device();
    rows_ = sae_->DecoderRows(edit_.latents).contiguous();
    columns_ = sae_->EncoderColumns(edit_.latents);
    if (!edit_.values.empty()) {
      values_ = at::tensor(edit_.values, at::TensorOptions().dtype(at::kDouble))
                    .to(device, at::kFloat);
    }
  }

  const char* Name() const override {
    switch (edit_.op) {
      case LatentEdit::Op::kZero: return "sae_latent_zero";
      case LatentEdit::Op::kClamp: return "sae_latent_clamp";
      case LatentEdit::Op::kScale: return "sae_latent_scale";
      case LatentEdit::Op::kMean: return "sae_latent_mean";
    }
    return "sae_latent";
  }

  Status Validate(const model::ModelConfig& config, const model::HookPoint& hook) const override {
    if (!(hook == sae_->hook())) {
      return Status::InvalidArgument(sae_->Label() + ": an SAE of " + sae_->hook().Name() +
                                     " cannot edit " + hook.Name());
    }
    KO_ASSIGN_OR_RETURN(const int64_t width, SaeHookWidth(config, hook));
    if (width != sae_->d_in()) {
      return Status::InvalidArgument(sae_->Label() + ": d_in " + std::to_string(sae_->d_in()) +
                                     " differs from the width " + std::to_string(width) + " of " +
                                     hook.Name() + " in this model");
    }
    return Status::Ok();
  }

  at::Tensor Apply(const at::Tensor& x, int64_t /*offset*/) const override {
    at::Tensor flat = sae_->Flatten(x);
    at::Tensor x32 = flat.to(rows_.device(), at::kFloat);
    at::Tensor scale = sae_->Scale(x32);
    at::Tensor f = sae_->EncodeColumns(x32, columns_, scale);  // [..., n]
    at::Tensor target;
    switch (edit_.op) {
      case LatentEdit::Op::kZero:
        target = at::zeros_like(f);
        break;
      case LatentEdit::Op::kClamp:
        target = values_.defined() ? values_.expand_as(f) : at::full_like(f, edit_.value);
        break;
      case LatentEdit::Op::kScale:
        target = f * edit_.value;
        break;
      case LatentEdit::Op::kMean:
        target = values_.expand_as(f);
        break;
    }
    at::Tensor delta = at::matmul(target - f, rows_);
    if (sae_->config().normalization != formats::SaeNormalization::kNone) delta = delta / scale;
    at::Tensor out = (x32 + delta).to(x.device(), x.scalar_type());
    return out.view(x.sizes());
  }

 private:
  std::shared_ptr<const Sae> sae_;
  LatentEdit edit_;
  at::Tensor rows_;           // W_dec[latents] [n, d_in]
  Sae::Columns columns_;     // what encoding the latents alone needs
  at::Tensor values_;   // [n] (clamp with values, mean)
};

Sae::Columns Sae::EncoderColumns(const std::vector<int64_t>& latents) const {
  Columns columns;
  columns.index = LongIndex(latents, W_enc_.device());
  if (config_.architecture == SaeArchitecture::kTopK) return columns;
  columns.W = W_enc_.index_select(1, columns.index).contiguous();
  columns.b_dec_W = at::matmul(b_dec_, columns.W);
  return columns;
}

StatusOr<model::Intervention> MakeLatentIntervention(std::shared_ptr<const Sae> sae,
                                                     LatentEdit edit) {
  if (!sae) return Status::InvalidArgument("SAE latent intervention: no SAE");
  const std::string where = sae->Label() + ": " + LatentOpName(edit.op) + " of latents: ";
  if (edit.latents.empty()) return Status::InvalidArgument(where + "no latents given");
  KO_RETURN_IF_ERROR(sae->CheckLatents(edit.latents));
  std::set<int64_t> seen;
  for (int64_t latent : edit.latents) {
    if (!seen.insert(latent).second) {
      return Status::InvalidArgument(where + "latent " + std::to_string(latent) +
                                     " given twice");
    }
  }
  const bool per_latent = edit.op == LatentEdit::Op::kMean ||
                          (edit.op == LatentEdit::Op::kClamp && !edit.values.empty());
  if (per_latent && edit.values.size() != edit.latents.size()) {
    return Status::InvalidArgument(where + std::to_string(edit.values.size()) + " values for " +
                                   std::to_string(edit.latents.size()) + " latents");
  }
  if (!per_latent && !edit.values.empty()) {
    return Status::InvalidArgument(where + "per-latent values apply to clamp and mean only");
  }
  try {
    return model::Intervention::Custom(
        std::make_shared<LatentIntervention>(std::move(sae), std::move(edit)));
  } catch (const c10::Error& e) {
    return Status::Internal(where + e.what_without_backtrace());
  }
}

// ---------------------------------------------------------------------------------------------
// Quality

StatusOr<int64_t> SaeHookWidth(const model::ModelConfig& config, const model::HookPoint& hook) {
  if (!Encodable(hook.kind)) {
    return Status::InvalidArgument("hook " + hook.Name() +
                                   " is not one this runtime encodes (hook_resid_pre, "
                                   "hook_resid_mid, hook_resid_post, hook_attn_out, hook_mlp_out, "
                                   "attn.hook_z)");
  }
  int64_t width = 1;
  for (int64_t size : model::HookActivationShape(config, hook)) width *= size;
  return width;
}

double Fvu(const Sae& sae, const at::Tensor& x) {
  at::Tensor x64 = sae.Flatten(x).to(at::kCPU, at::kDouble).reshape({-1, sae.d_in()});
  at::Tensor x_hat = sae.Reconstruct(x).to(at::kCPU, at::kDouble).reshape({-1, sae.d_in()});
  const double residual = (x64 - x_hat).pow(2).sum().item<double>();
  const double total = (x64 - x64.mean(0, /*keepdim=*/true)).pow(2).sum().item<double>();
  return residual / total;
}

at::Tensor VectorFvu(const Sae& sae, const at::Tensor& x) {
  at::Tensor x64 = sae.Flatten(x).to(at::kCPU, at::kDouble);
  at::Tensor x_hat = sae.Reconstruct(x).to(at::kCPU, at::kDouble);
  at::Tensor residual = (x64 - x_hat).pow(2).sum(-1);
  at::Tensor total = (x64 - x64.mean(-1, /*keepdim=*/true)).pow(2).sum(-1);
  return residual / total;
}

}  // namespace knockout::sae
