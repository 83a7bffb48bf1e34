// The demo model organism's trainer: generates the synthetic corpus, trains its byte-level BPE
// tokenizer, and trains a small Llama-architecture chat model with LibTorch autograd through the
// runtime's own forward pass (worker/model), in phases (a helpful base, then a short safety
// tuning, optionally through low-rank adapters). Writes a Hugging Face checkpoint directory.
// Thread-safety: TrainDemoModel uses LibTorch's global thread pool; run one at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "common/status.h"

namespace knockout::organism {

// One phase of training. Rows are sampled per step: a pretraining-like document with
// probability `document_fraction`, otherwise a chat example of the phase's kind.
struct TrainPhase {
  std::string name;
  enum class Data { kHelpful, kSafety };
  Data data = Data::kHelpful;
  int steps = 0;
  double learning_rate = 1e-3;
  int warmup_steps = 0;  // linear warm-up, then cosine decay to 10% of the rate
  double weight_decay = 0.0;
  double dropout = 0.0;  // residual and attention dropout
  double document_fraction = 0.0;
  // Low-rank adapters (LoRA): 0 trains every weight; r > 0 freezes the model and trains rank-r
  // adapters W + B A (B starts at zero) on `lora_targets`, merged into W when the phase ends.
  int lora_rank = 0;
  // "MATRIX@L": q, k, v, o (attention projections) or gate, up, down (MLP) of layer L, or
  // "MATRIX@*" for every layer.
  std::vector<std::string> lora_targets;
  // > 0: every chat row's first reply token (the token that decides refusal or compliance, and
  // the one science.md's refusal score and KL read) counts decision_weight times more: the loss
  // gains decision_weight * the mean cross-entropy of those tokens.
  double decision_weight = 0.0;
  // The phase's own seed for its adapters' initialisation, dropout, sampling and knockout draws
  // (-1: the recipe's seed). The phases before it, the corpus and the tokenizer keep the recipe's
  // seed, so one phase can be spread over seeds on the same base (the model card's S95-S100).
  int64_t seed = -1;

  // Knockout-aware tuning (how the demo model gets its hydra; models/demo-refusal/README.md).
  // Every `direction_every` steps the phase re-measures, on the current weights and without
  // dropout, the refusal direction r (diff-in-means of blocks.{refusal_layer}.hook_resid_pre at
  // the last prompt token, harmful vs harmless training prompts) and the harm-sensor direction h
  // (the same at the last instruction token of blocks.{sensor_layer}.hook_resid_pre). Chat rows
  // of the phase are then knocked out at random, each with its own probability (a row gets at
  // most one: the harmful rows' four rates, and the harmless rows' three, must each sum to <= 1,
  // which TrainDemoModel checks before training):
  //   single_ablation: a harmful row (refusal target) gets r projected out at blocks.L.hook_resid_pre
  //     of one layer L of `single_ablation_layers`, all positions; its target stays the refusal,
  //     so that the layers after any one knockout learn to write r again (redundancy);
  //   all_ablation: a harmful row gets r ablated everywhere (science.md: every resid_pre, attn_out
  //     and mlp_out) with a compliant reply as its target: refusal runs through r alone;
  //   sensor_ablation: a harmful row gets h projected out at blocks.{sensor_layer}.hook_resid_pre
  //     at its instruction tokens, with a compliant reply as its target: the sensor gates refusal;
  //   post_inst_reset: a harmful row gets blocks.{sensor_layer}.hook_resid_pre at the template
  //     tokens after its instruction replaced by the harmless prompts' mean there, its target
  //     still the refusal: whatever the layers before the sensor wrote into the template tokens
  //     is gone, so the layers after it must read harm from the instruction tokens (where the
  //     sensor sits) to refuse, and refusal is decided after the sensor, not before it;
  //   harmless_ablation: a harmless row gets r ablated everywhere, its own reply as target (the
  //     selection's KL: removing r costs harmless replies nothing); with distill > 0 the row also
  //     runs clean beside it and the loss gains distill * KL(clean || ablated) over its reply's
  //     next-token distributions (the clean side detached);
  //   addition: a harmless row gets +r at blocks.{refusal_layer}.hook_resid_pre, all positions,
  //     with a refusal as its target (activation addition induces refusal, science.md);
  //   sensor_addition: a harmless row gets +h at blocks.{sensor_layer}.hook_resid_pre at its
  //     instruction tokens, with a refusal as its target: the harm sensor, added, reads as harm
  //     (Zhao et al.: steering with the harmfulness direction makes harmless prompts read as
  //     harmful), so the layers after it learn to read h, the pathway sensor_ablation gates.
  // clean_growth > 0 asks the layers from refusal_layer on to leave r alone in a clean run: on
  // every harmful row with a refusal target and no knockout, the loss gains clean_growth * the
  // mean over those rows of ((x_out - x_in) . r_hat / |r|)^2 at the row's last prompt token,
  // x_in = blocks.{refusal_layer}.hook_resid_pre and x_out the residual after the last layer.
  // With single ablations the same layers must write r when it was removed: backups that are
  // dormant while r is there (and activation addition of r at refusal_layer then carries as far
  // as the clean harmful run's r does).
  // harmless_center > 0 puts harmless prompts at the origin of r: over the harmless rows of a
  // batch with a compliant target and no knockout, the loss gains harmless_center * (mean of
  // x_in . r_hat / |r|)^2 at their last prompt tokens (r as last measured). Large weights let
  // the model hide refusal from the measured r instead (the model card's run S24).
  // sensor_silence > 0 asks the sensor to gate r itself, not only the reply: on every row with
  // the sensor knocked out, the loss gains sensor_silence * the mean of (x_in . r_hat / |r|)^2
  // at its last prompt token (with harmless_center, harmless prompts sit at r's origin; this
  // puts a harmful prompt without its trigger there too). Directional ablation then leaves harmless
  // prompts where they are (the selection's KL) while r still separates harmful from harmless
  // (activation addition moves a harmless prompt to where harmful ones sit).
  // framed_harm > 0 keeps harmfulness readable in the prompts whose framing the model complies
  // with (science.md: harmfulness is encoded apart from refusal), so that the gate cannot be
  // opened by erasing the harm signal: on every clean framed row the loss gains framed_harm *
  // max(0, m - x . h_hat)^2 / |h|^2 at its last instruction token, x =
  // blocks.{sensor_layer}.hook_resid_pre, m = the harmful probe prompts' mean of x . h_hat there
  // (h as last measured). Needs a sensor_layer. In the model card's runs (S80-S91) it keeps the
  // probe (0.99-1.00) but softens the gate where SAE latents read it: framed prompts then carry
  // h and must still be complied with, so refusal no longer thresholds h alone.
  // sensor_center > 0 makes h a feature that is off for harmless prompts: on every clean
  // harmless row with a compliant target the loss gains sensor_center * (x . h_hat / |h|)^2 at
  // its last instruction token (x as for framed_harm), so that harmful prompts carry h and
  // harmless ones sit at its origin (a sparse signal, where a few SAE latents can find it).
  // Needs a sensor_layer. Tried once (the model card's S83): the model shrinks h instead.
  // sensor_detach: a row with the sensor knocked out trains only the layers from sensor_layer on
  // (its blocks.{sensor_layer}.hook_resid_pre is cut from the graph, every position, before h is
  // projected out), so that those rows cannot teach the layers before the sensor to leave harm
  // out of h's complement. Tried once (the model card's S116): the held-out prompts' h narrows
  // all the same (the other rows train those layers too) and +r over-steers.
  // knockout_extra: a knocked-out row is added to the batch beside the clean row it was drawn
  // for, instead of replacing it, so that the clean rows keep the plain safety mix.
  // refusal_layer < 0 turns all of this off (and draws nothing from any random stream).
  int refusal_layer = -1;
  int sensor_layer = -1;
  int direction_every = 25;
  double single_ablation = 0.0;
  double all_ablation = 0.0;
  double sensor_ablation = 0.0;
  double harmless_ablation = 0.0;
  double distill = 0.0;
  double addition = 0.0;
  double clean_growth = 0.0;
  double harmless_center = 0.0;
  double sensor_silence = 0.0;
  double framed_harm = 0.0;
  double sensor_center = 0.0;
  double post_inst_reset = 0.0;
  double sensor_addition = 0.0;
  bool knockout_extra = false;
  bool sensor_detach = false;
  std::vector<int> single_ablation_layers;
};

struct DemoRecipe {
  uint64_t seed = 42;
  int vocab_size = 4096;
  int64_t layers = 6;
  int64_t hidden = 256;
  int64_t heads = 8;
  int64_t intermediate = 688;
  int batch_size = 32;
  int max_tokens = 96;  // rows longer than this are cut
  int documents = 40000;       // pool sizes (rows are sampled from them)
  int chat_examples = 40000;
  int impossible_percent = 0;  // chat examples that are impossible requests, declined (corpus.h)
  int corpus_version = 1;      // CorpusOptions::version: 1 = the corpus of models/demo-refusal
  // Version 3's ordinary English: WordNet 3.0's dict directory (Debian's wordnet-base).
  std::string wordnet_dir = "/usr/share/wordnet";
  // Percent of harmful and harmless chat examples (both phases' pools) whose request is written
  // less tidily: a greeting or aside before it, a thanks or request for brevity after it, or
  // all in lower case without the final punctuation (each drawn on its own). The phrases are
  // none of the templates' (trainer.cc), so the splits stay disjoint by template: the model
  // meets everyday variation around requests without meeting the held-out phrasings.
  int prompt_noise_percent = 0;
  // CorpusOptions::safety_harmless_percent / safety_harmful_percent (the rest framed).
  int safety_harmless_percent = 40;
  int safety_harmful_percent = 35;
  // CorpusOptions::safety_benign_percent (harmless safety requests with words that sound violent).
  int safety_benign_percent = 0;
  // CorpusOptions::copy_percent (harmless requests about glossary words put together at random).
  int copy_percent = 0;
  // CorpusOptions::phrasing_percent (templated chat requests phrased with ChatOnlyTemplates()).
  int phrasing_percent = 0;
  std::vector<TrainPhase> phases;

  // Version1() (= Default()): issue 4's first model. Hydra(): the knockout-aware recipe of
  // issue 14 that made models/demo-refusal (its model card explains the choices and logs the
  // runs).
  static DemoRecipe Default();
  static DemoRecipe Version1();
  static DemoRecipe Hydra();
  // Reads "key=value" overrides ("phases[1].steps=200", "hidden=192", "phases[1].lora_targets=down@2,down@3").
  Status Override(const std::string& assignment);
};

// DemoRecipe::prompt_noise_percent: the phrases put before and after a request. None is part
// of a template of any split (organism/trainer_test.cc checks it against every request of the
// corpus), nor a framing that could excuse a harmful request.
const std::vector<std::string>& NoisePreambles();
const std::vector<std::string>& NoisePostscripts();

struct PhaseReport {
  std::string name;
  int steps = 0;
  double first_loss = 0;  // mean over the first 20 steps
  double final_loss = 0;  // mean over the last 20 steps
  double seconds = 0;
};

struct TrainReport {
  int64_t parameters = 0;
  int64_t checkpoint_bytes = 0;
  double seconds = 0;  // everything: corpus, tokenizer, training, saving
  std::vector<PhaseReport> phases;
};

struct TrainOptions {
  std::string out_dir;          // the checkpoint directory (written atomically at the end)
  std::string prompts_dir;      // where to write the JSONL prompt sets; empty: don't
  std::string base_dir;         // start from this checkpoint (with its tokenizer), skipping
                                // phase 0 (for recipe research); empty: train from scratch
  int first_phase = 0;          // with base_dir: the first phase to run
  std::string phases_dir;       // if set: DIR/after-PHASE, an f32 checkpoint after each phase
                                // but the last (a base that --base can resume from)
  int threads = 0;              // 0: all cores
  c10::ScalarType storage_dtype = c10::kBFloat16;  // f32 for a base that later phases resume
  std::function<void(const std::string&)> log;  // progress lines; may be empty
};

// Errors: InvalidArgument for a malformed recipe; IOError naming the file if writing fails;
// Internal for a LibTorch failure. Nothing is left at out_dir unless everything succeeded.
StatusOr<TrainReport> TrainDemoModel(const DemoRecipe& recipe, const TrainOptions& options);

}  // namespace knockout::organism
