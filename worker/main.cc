// knockout-worker: the worker process.
//   knockout-worker --coordinator HOST:PORT [--device cuda:0] [--threads N] [--capacity N]
//                   [--batch-rows N] [--token-file F] [--tls-ca F [--tls-cert F --tls-key F]]
//                   [--tls-server-name N] [--name N]
// runs the agent (worker/agent): it leases shards from the coordinator, runs them, reports the
// results, and keeps retrying while the coordinator is unreachable. SIGTERM/SIGINT release the
// leases it holds and exit 0 at once, even with a shard still executing; a fatal error (protocol
// mismatch, refused token, unreadable file) prints one line `knockout-worker: <error>` and
// exits 1. Log lines go to stderr. Its subcommands are the model runtime's tools:
//   knockout-worker forward --model DIR --ids 1,2,3 [--ids ...] [--json] [--full-logits]
//                           [--sae PATH [--hook NAME] --sae-clamp LATENT=VALUE ...]
//   knockout-worker models inspect DIR [--json]
//   knockout-worker models init-random --out DIR [sizes...]
//   knockout-worker sae inspect PATH | sae encode --model DIR --sae PATH --ids ... (sae_commands.h)
//   knockout-worker train-sae --model DIR --hook NAME --prompts FILE... --out DIR ... (train_sae_command.h)
//   knockout-worker tokenize --tokenizer PATH (--text T | --file F) [--json] [--special]
//                            [--chat [--template NAME|STRING] [--system S]]
//   knockout-worker generate --model DIR (--prompt T | --prompts FILE) [--max-new-tokens N]
//                            [--json [--with-ids]] [--sae PATH [--hook NAME] --sae-clamp L=V ...]
// Every failure prints one line naming the file, field or flag at fault and exits non-zero.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>

#include <malloc.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <optional>
#include <map>
#include <sstream>
#include <thread>

#include "common/version.h"
#include "formats/checkpoint_files.h"
#include "formats/config.h"
#include "formats/safetensors.h"
#include "worker/model/hooks.h"
#include "worker/model/model.h"
#include "worker/runtime_flags.h"
#include "worker/sae_commands.h"
#ifdef KNOCKOUT_HAVE_TOKENIZER
#include "formats/prompt_set.h"
#include "worker/chat/chat_generation.h"
#include "worker/train_sae_command.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#endif
#ifdef KNOCKOUT_HAVE_AGENT
#include <atomic>
#include <csignal>
#include <cstdlib>

#include "worker/agent/agent.h"
#endif

namespace {

using knockout::Status;
using knockout::StatusOr;
namespace kf = knockout::formats;
namespace km = knockout::model;
using nlohmann::json;

using knockout::worker::AddRuntimeFlags;
using knockout::worker::ApplyRuntimeFlags;
using knockout::worker::RuntimeFlags;

int Fail(const Status& status) {
  std::cerr << "knockout-worker: " << status.ToString() << "\n";
  return 1;
}

// --- forward ---------------------------------------------------------------------------------

struct ForwardFlags {
  RuntimeFlags runtime;
  std::string model;
  std::vector<std::string> ids;
  bool json = false;
  bool full_logits = false;
  int top_k = 10;
  knockout::worker::SaeForwardFlags sae;  // --sae, --hook, --sae-clamp
};

int RunForward(const ForwardFlags& flags) {
  auto options = ApplyRuntimeFlags(flags.runtime);
  if (!options.ok()) return Fail(options.status());
  std::vector<std::vector<int64_t>> sequences;
  for (const std::string& text : flags.ids) {
    auto ids = knockout::worker::ParseIdList(text);
    if (!ids.ok()) return Fail(ids.status());
    sequences.push_back(*ids);
  }
  auto model = km::Model::Load(flags.model, *options);
  if (!model.ok()) return Fail(model.status());
  const km::ModelConfig& config = (*model)->config();
  // One left-padded batch: the same path sweeps take (padding must not change the numbers).
  km::Batch batch = km::MakeLeftPaddedBatch(sequences, config.pad_token_id.value_or(0),
                                            (*model)->device());
  km::ForwardRequest request;
  request.input_ids = batch.input_ids;
  request.attention_mask = batch.attention_mask;
  request.logits = km::ForwardRequest::Logits::kLastPosition;
  auto sae_hooks = knockout::worker::SaeForwardHooks(flags.sae, **model);
  if (!sae_hooks.ok()) return Fail(sae_hooks.status());
  request.hooks = sae_hooks->get();
  auto result = (*model)->Forward(request);
  if (!result.ok()) return Fail(result.status().WithContext(flags.model));
  at::Tensor last = result->logits.select(1, 0).to(at::kCPU).to(at::kDouble);  // [B, V]
  const int64_t k = std::min<int64_t>(flags.top_k, config.vocab_size);
  for (size_t i = 0; i < sequences.size(); ++i) {
    at::Tensor row = last[i];
    json out;
    out["ids"] = sequences[i];
    if (flags.full_logits) {
      out["logits"] = std::vector<double>(row.data_ptr<double>(), row.data_ptr<double>() + row.numel());
    } else {
      auto top = row.topk(k);
      at::Tensor values = std::get<0>(top).contiguous();
      at::Tensor indices = std::get<1>(top).contiguous();
      json entries = json::array();
      for (int64_t j = 0; j < k; ++j) {
        entries.push_back({{"token", indices[j].item<int64_t>()}, {"logit", values[j].item<double>()}});
      }
      out["logits"] = entries;
    }
    if (flags.json) {
      std::cout << out.dump() << "\n";
    } else {
      std::cout << "sequence " << i << " (" << sequences[i].size() << " tokens): top "
                << (flags.full_logits ? config.vocab_size : k) << " logits\n";
      if (!flags.full_logits) {
        for (const json& e : out["logits"]) {
          std::cout << "  token " << e["token"] << "  logit " << e["logit"].get<double>() << "\n";
        }
      }
    }
  }
  return 0;
}

// --- models inspect --------------------------------------------------------------------------

int RunInspect(const std::string& dir, bool as_json) {
  auto config = kf::LoadModelConfig(dir);
  if (!config.ok()) return Fail(config.status());
  auto files = kf::CheckpointWeightFiles(dir);
  if (!files.ok()) return Fail(files.status());
  std::map<std::string, int64_t> dtype_params;
  int64_t tensors = 0, bytes = 0;
  json file_list = json::array();
  for (const std::string& path : *files) {
    auto file = kf::SafetensorsFile::Open(path);  // maps lazily: only the header is read
    if (!file.ok()) return Fail(file.status());
    for (const kf::TensorInfo& info : (*file)->header().tensors) {
      dtype_params[kf::DTypeName(info.dtype)] += info.num_elements();
      bytes += info.num_bytes();
      ++tensors;
    }
    file_list.push_back(path);
  }
  const km::ModelConfig& c = *config;
  json hooks = json::array();
  for (const km::HookPoint& hook : km::AllHookPoints(c.num_layers)) hooks.push_back(hook.Name());
  json out = {
      {"architecture", c.architecture},
      {"family", kf::FamilyName(c.family)},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_layers", c.num_layers},
      {"num_heads", c.num_heads},
      {"num_kv_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"attention_bias", c.attention_bias},
      {"rope_theta", c.rope_theta},
      {"rope_scaling", c.rope_scaling ? (c.rope_scaling->type == kf::RopeScaling::Type::kLlama3
                                             ? "llama3"
                                             : "linear")
                                      : "none"},
      {"torch_dtype", c.torch_dtype},
      {"files", file_list},
      {"tensors", tensors},
      {"weight_bytes", bytes},
      {"parameters_by_dtype", dtype_params},
      {"hook_points", hooks},
  };
  if (c.sliding_window) out["sliding_window"] = *c.sliding_window;
  if (as_json) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  int64_t params = 0;
  for (const auto& [name, n] : dtype_params) params += n;
  std::cout << dir << "\n"
            << "  architecture   " << c.architecture << " (" << kf::FamilyName(c.family) << ")\n"
            << "  layers         " << c.num_layers << "\n"
            << "  d_model        " << c.hidden_size << "\n"
            << "  heads          " << c.num_heads << " query, " << c.num_kv_heads
            << " key/value, d_head " << c.head_dim << "\n"
            << "  d_mlp          " << c.intermediate_size << "\n"
            << "  vocab          " << c.vocab_size << (c.tie_word_embeddings ? " (tied)" : "")
            << "\n"
            << "  rope           theta " << c.rope_theta << ", scaling "
            << out["rope_scaling"].get<std::string>() << "\n"
            << "  parameters     " << params << " in " << tensors << " tensors, " << bytes
            << " bytes, " << file_list.size() << " file(s)\n"
            << "  dtypes        ";
  for (const auto& [name, n] : dtype_params) std::cout << " " << name << ":" << n;
  std::cout << "\n  hook points    " << hooks.size() << ": hook_embed, blocks.{0.."
            << c.num_layers - 1
            << "}.{hook_resid_pre, attn.hook_z, hook_attn_out, hook_resid_mid, mlp.hook_post, "
               "hook_mlp_out, hook_resid_post}, ln_final.{hook_scale, hook_normalized}\n";
  return 0;
}

// --- models init-random ----------------------------------------------------------------------

struct InitFlags {
  std::string out;
  std::string architecture = "LlamaForCausalLM";
  int64_t layers = 4, hidden = 128, heads = 4, kv_heads = 2, intermediate = 344, vocab = 1024;
  bool tied = false;
  uint64_t seed = 0;
  double init_std = 0.02;
  std::string dtype = "f32";
};

int RunInitRandom(const InitFlags& flags) {
  json config_json = {
      {"architectures", {flags.architecture}},   {"vocab_size", flags.vocab},
      {"hidden_size", flags.hidden},             {"intermediate_size", flags.intermediate},
      {"num_hidden_layers", flags.layers},       {"num_attention_heads", flags.heads},
      {"num_key_value_heads", flags.kv_heads},   {"tie_word_embeddings", flags.tied},
      {"rms_norm_eps", 1e-5},                    {"max_position_embeddings", 2048},
      {"bos_token_id", 1},                       {"eos_token_id", 2},
  };
  auto config = kf::ParseModelConfig(config_json.dump(), "init-random flags");
  if (!config.ok()) return Fail(config.status());
  auto storage = km::ParseComputeDType(flags.dtype);
  if (!storage.ok()) return Fail(storage.status());
  auto model = km::Model::Random(*config, flags.seed, flags.init_std, km::LoadOptions());
  Status saved = model->Save(flags.out, *storage);
  if (!saved.ok()) return Fail(saved);
  int64_t parameters = 0;
  for (const auto& [name, tensor] : model->NamedParameters()) parameters += tensor.numel();
  std::cout << "wrote a random " << flags.architecture << " (" << flags.layers << " layers, d_model "
            << flags.hidden << ", " << parameters << " parameters) to " << flags.out << "\n";
  return 0;
}

// --- tokenize --------------------------------------------------------------------------------

#ifdef KNOCKOUT_HAVE_TOKENIZER
namespace kt = knockout::tokenizer;

struct TokenizeFlags {
  std::string tokenizer;
  std::vector<std::string> texts;
  std::string file;
  bool json = false;
  bool special = false;
  bool chat = false;
  std::string chat_template;  // family name or custom template; empty: detect
  std::string system;
};

StatusOr<kt::ChatTemplate> ChooseTemplate(const kt::Tokenizer& tokenizer, const std::string& spec) {
  if (spec.empty()) return kt::ChatTemplate::Detect(tokenizer);
  if (spec.find("{instruction}") != std::string::npos) return kt::ChatTemplate::Custom(spec);
  KO_ASSIGN_OR_RETURN(kt::ChatTemplate::Family family, kt::ChatTemplate::ParseFamily(spec));
  return kt::ChatTemplate::BuiltIn(family, tokenizer.special_tokens().bos.value_or(""));
}

json TokenStrings(const kt::Tokenizer& tokenizer, const std::vector<int64_t>& ids) {
  json tokens = json::array();
  for (int64_t id : ids) tokens.push_back(tokenizer.IdToToken(id).value_or(""));
  return tokens;
}

int RunTokenize(const TokenizeFlags& flags) {
  auto tokenizer = kt::Tokenizer::Load(flags.tokenizer);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  // Inputs: each --text, then each line of --file (its line number kept for errors).
  std::vector<std::pair<std::string, std::string>> inputs;  // (where, text)
  for (const std::string& text : flags.texts) inputs.emplace_back("--text", text);
  if (!flags.file.empty()) {
    std::ifstream in(flags.file, std::ios::binary);
    if (!in) return Fail(Status::NotFound(flags.file + ": cannot open"));
    std::string line;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      inputs.emplace_back(flags.file + ":" + std::to_string(number), line);
    }
  }
  std::optional<kt::ChatTemplate> chat;
  if (flags.chat) {
    auto chosen = ChooseTemplate(**tokenizer, flags.chat_template);
    if (!chosen.ok()) return Fail(chosen.status().WithContext(flags.tokenizer));
    chat = *chosen;
  }
  for (const auto& [where, text] : inputs) {
    json out;
    if (chat) {
      auto prompt = kt::TokenizeChat(**tokenizer, *chat, text, flags.system);
      if (!prompt.ok()) return Fail(prompt.status().WithContext(where));
      out = {{"instruction", text},
             {"template", chat->FamilyName()},
             {"rendered", chat->Render(text, flags.system).text()},
             {"ids", prompt->ids},
             {"tokens", TokenStrings(**tokenizer, prompt->ids)},
             {"instruction_range", {prompt->instruction_begin, prompt->instruction_end}},
             {"post_inst_range", {prompt->post_begin, prompt->size()}},
             {"inst_last", prompt->inst_last()}};
    } else {
      auto encoding = (*tokenizer)->Encode(text, flags.special);
      if (!encoding.ok()) return Fail(encoding.status().WithContext(where));
      out = {{"text", text}, {"ids", encoding->ids}, {"tokens", encoding->tokens}};
    }
    if (flags.json) {
      std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    } else {
      std::cout << out["ids"].size() << " tokens:";
      for (size_t i = 0; i < out["ids"].size(); ++i) {
        std::cout << " " << out["tokens"][i].get<std::string>() << "(" << out["ids"][i] << ")";
      }
      std::cout << "\n";
      if (chat) {
        std::cout << "  instruction " << out["instruction_range"].dump() << ", post_inst "
                  << out["post_inst_range"].dump() << ", inst_last " << out["inst_last"] << "\n";
      }
    }
  }
  return 0;
}
#endif

}  // namespace

#ifdef KNOCKOUT_HAVE_TOKENIZER
// --- generate --------------------------------------------------------------------------------

struct GenerateFlags {
  std::string model;
  std::vector<std::string> prompts;  // --prompt (repeatable)
  std::string prompts_file;          // --prompts FILE (.jsonl/.json/.csv)
  int64_t max_new_tokens = 64;
  int64_t batch_size = 32;
  bool json = false;
  bool with_ids = false;
  std::string chat_template;
  RuntimeFlags runtime;
  knockout::worker::SaeForwardFlags sae;  // --sae, --hook, --sae-clamp: on generated tokens too
};

int RunGenerate(const GenerateFlags& flags) {
  auto options = ApplyRuntimeFlags(flags.runtime);
  if (!options.ok()) return Fail(options.status());
  std::vector<std::string> instructions = flags.prompts;
  if (!flags.prompts_file.empty()) {
    auto prompts = knockout::formats::LoadPromptSet(flags.prompts_file);
    if (!prompts.ok()) return Fail(prompts.status());
    for (const auto& p : *prompts) instructions.push_back(p.instruction);
  }
  for (const std::string& instruction : instructions) {
    Status utf8 = knockout::formats::CheckUtf8(instruction);
    if (!utf8.ok()) return Fail(Status::InvalidArgument("--prompt: " + utf8.message()));
  }
  auto tokenizer = kt::Tokenizer::Load(flags.model);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  auto chat = ChooseTemplate(**tokenizer, flags.chat_template);
  if (!chat.ok()) return Fail(chat.status());
  auto model = km::Model::Load(flags.model, *options);
  if (!model.ok()) return Fail(model.status());
  auto prompts = knockout::chat::TokenizeInstructions(**tokenizer, *chat, instructions);
  if (!prompts.ok()) return Fail(prompts.status());
  knockout::chat::ChatGenerationOptions generation;
  generation.max_new_tokens = flags.max_new_tokens;
  generation.batch_size = flags.batch_size;
  auto sae_hooks = knockout::worker::SaeForwardHooks(flags.sae, **model);
  if (!sae_hooks.ok()) return Fail(sae_hooks.status());
  generation.hooks = sae_hooks->get();
  auto completions = knockout::chat::GenerateCompletions(**model, **tokenizer, *prompts, generation);
  if (!completions.ok()) return Fail(completions.status());
  for (size_t i = 0; i < instructions.size(); ++i) {
    const knockout::chat::Completion& completion = (*completions)[i];
    if (flags.json) {
      json line = {{"instruction", instructions[i]}, {"completion", completion.text}};
      if (flags.with_ids) {
        line["prompt_ids"] = (*prompts)[i].ids;
        line["completion_ids"] = completion.ids;
      }
      std::cout << line.dump() << "\n";
    } else {
      std::cout << "### " << instructions[i] << "\n" << completion.text << "\n\n";
    }
  }
  return 0;
}
#endif


#ifdef KNOCKOUT_HAVE_AGENT
// --- the agent (--coordinator) ---------------------------------------------------------------


// Set by SIGTERM/SIGINT; the agent polls it (a lock-free atomic store is async-signal-safe).
std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void OnStopSignal(int) { g_stop.store(true); }

// `options`: as parsed from the flags; the stop flag and the log are set here.
int RunAgentProcess(knockout::agent::AgentOptions options) {
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);

  options.stop = &g_stop;
  options.log = &std::cerr;
  // Never destroyed: destroying it waits for a shard still executing, and a stopped worker must
  // exit at once (its leases are released; the shard's work is lost either way).
  auto* agent = new knockout::agent::Agent(std::move(options));
  const Status status = agent->Run();
  const int code = status.ok() ? 0 : Fail(status);
  std::cout.flush();
  std::cerr.flush();
  std::_Exit(code);
}
#endif

// glibc's default dynamic mmap threshold hands freed activation buffers back to the kernel and
// faults them in again on the next pass: ~20% of forward time in page faults on the benchmark
// model (docs/benchmarks.md). Keep large blocks in the heap instead.
void TuneAllocator() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

int main(int argc, char** argv) {
  TuneAllocator();
  CLI::App app{"knockout-worker: runs knockout shards and the model runtime's tools"};
  app.set_version_flag("--version", [] {
    std::vector<std::pair<std::string, std::string>> libraries = {{"LibTorch", TORCH_VERSION}};
#ifdef KNOCKOUT_HAVE_AGENT
    for (auto& library : knockout::rpc::LibraryVersions()) libraries.push_back(library);
#endif
    std::string text = knockout::VersionText("knockout-worker", libraries);
    return text.substr(0, text.size() - 1);  // CLI11 ends the line
  });
  // A subcommand (a tool), or none with --coordinator (the agent).
  app.require_subcommand(0, 1);
#ifdef KNOCKOUT_HAVE_AGENT
  knockout::agent::AgentOptions agent;
  auto* coordinator_opt = app.add_option("--coordinator", agent.channel.address,
                                         "run the worker agent against this coordinator (host:port)");
  app.add_option("--device", agent.device,
                 "agent: cpu or cuda[:N] for every shard (default: as the sweep's model says)");
  app.add_option("--threads", agent.threads, "agent: LibTorch CPU threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--capacity", agent.capacity, "agent: shards leased at once (default 1)")
      ->check(CLI::PositiveNumber);
  app.add_option("--batch-rows", agent.max_batch_rows,
                 "agent: (trial, prompt) rows per forward pass (default 128)")
      ->check(CLI::PositiveNumber);
  // Files are read (and a missing one reported in the one-line error format) by the agent.
  app.add_option("--token-file", agent.channel.token_file,
                 "agent: file holding the bearer token");
  app.add_option("--tls-ca", agent.channel.tls_ca,
                 "agent: PEM CA of the coordinator's certificate (TLS)");
  auto* tls_cert_opt = app.add_option("--tls-cert", agent.channel.tls_cert,
                                      "agent: PEM client certificate (mutual TLS)");
  auto* tls_key_opt =
      app.add_option("--tls-key", agent.channel.tls_key, "agent: PEM client key");
  tls_cert_opt->needs(tls_key_opt);
  tls_key_opt->needs(tls_cert_opt);
  app.add_option("--tls-server-name", agent.channel.tls_server_name,
                 "agent: name to check the coordinator's certificate against");
  app.add_option("--name", agent.name, "agent: worker id prefix (default: the host name)");
  app.add_option("--shard-timeout", agent.shard_timeout_s,
                 "agent: seconds a shard may run before it is given back with an error "
                 "(retried elsewhere); 0: no limit (default 21600, 6 h)")
      ->check(CLI::NonNegativeNumber);
  bool check_flags = false;
  app.add_flag("--check-flags", check_flags,
               "agent: parse the command line, then exit 0 without connecting (deployment checks)");
  // The agent's options mean nothing to the tools: refuse them without --coordinator.
  for (CLI::Option* option : app.get_options()) {
    if (option == coordinator_opt || option == app.get_help_ptr()) continue;
    option->needs(coordinator_opt);
  }
#endif

  ForwardFlags forward;
  CLI::App* forward_cmd = app.add_subcommand("forward", "last-position logits of token sequences");
  forward_cmd->add_option("--model", forward.model, "Hugging Face checkpoint directory")->required();
  forward_cmd->add_option("--ids", forward.ids, "comma-separated token ids (repeat for a batch)")
      ->required();
  forward_cmd->add_flag("--json", forward.json, "one JSON object per sequence, one per line");
  forward_cmd->add_flag("--full-logits", forward.full_logits, "print every logit, not the top k");
  forward_cmd->add_option("--top-k", forward.top_k, "how many logits to print")
      ->check(CLI::PositiveNumber);
  AddRuntimeFlags(forward_cmd, &forward.runtime);
  knockout::worker::AddSaeForwardFlags(forward_cmd, &forward.sae);
  knockout::worker::SaeCommands sae_commands(&app);  // `sae inspect`, `sae encode`

  CLI::App* models_cmd = app.add_subcommand("models", "inspect or create checkpoints");
  models_cmd->require_subcommand(1);
  std::string inspect_dir;
  bool inspect_json = false;
  CLI::App* inspect_cmd = models_cmd->add_subcommand("inspect", "architecture, sizes, hook points");
  inspect_cmd->add_option("dir", inspect_dir, "checkpoint directory")->required();
  inspect_cmd->add_flag("--json", inspect_json, "print JSON");

  InitFlags init;
  CLI::App* init_cmd = models_cmd->add_subcommand("init-random", "write a random checkpoint");
  init_cmd->add_option("--out", init.out, "output directory")->required();
  init_cmd->add_option("--architecture", init.architecture, "LlamaForCausalLM, ...");
  init_cmd->add_option("--layers", init.layers)->check(CLI::PositiveNumber);
  init_cmd->add_option("--hidden", init.hidden)->check(CLI::PositiveNumber);
  init_cmd->add_option("--heads", init.heads)->check(CLI::PositiveNumber);
  init_cmd->add_option("--kv-heads", init.kv_heads)->check(CLI::PositiveNumber);
  init_cmd->add_option("--intermediate", init.intermediate)->check(CLI::PositiveNumber);
  init_cmd->add_option("--vocab", init.vocab)->check(CLI::PositiveNumber);
  init_cmd->add_flag("--tied", init.tied, "tie the unembedding to the embedding");
  init_cmd->add_option("--seed", init.seed);
  init_cmd->add_option("--init-std", init.init_std)->check(CLI::PositiveNumber);
  init_cmd->add_option("--dtype", init.dtype, "storage dtype: f32, bf16 or f16");

#ifdef KNOCKOUT_HAVE_TOKENIZER
  TokenizeFlags tokenize;
  CLI::App* tokenize_cmd =
      app.add_subcommand("tokenize", "token ids of text (optionally through the chat template)");
  tokenize_cmd->add_option("--tokenizer", tokenize.tokenizer,
                           "tokenizer.json, or a directory holding one")->required();
  auto* text_opt = tokenize_cmd->add_option("--text", tokenize.texts, "text to encode (repeatable)");
  auto* file_opt = tokenize_cmd->add_option("--file", tokenize.file, "encode each line of a file");
  tokenize_cmd->add_flag("--json", tokenize.json, "one JSON object per input, one per line");
  tokenize_cmd->add_flag("--special", tokenize.special, "add the BOS/EOS special tokens");
  tokenize_cmd->add_flag("--chat", tokenize.chat,
                         "apply the chat template and report the instruction/post_inst ranges");
  tokenize_cmd->add_option("--template", tokenize.chat_template,
                           "llama3, llama2, chatml, gemma, or a string with {instruction} "
                           "(default: detected from tokenizer_config.json)");
  tokenize_cmd->add_option("--system", tokenize.system, "system prompt (default: none)");
  tokenize_cmd->callback([&] {
    if (text_opt->count() == 0 && file_opt->count() == 0) {
      throw CLI::RequiredError("--text or --file");
    }
  });
#endif

#ifdef KNOCKOUT_HAVE_TOKENIZER
  knockout::worker::TrainSaeCommand train_sae(&app, argc, argv);  // `train-sae`
  GenerateFlags generate;
  CLI::App* generate_cmd =
      app.add_subcommand("generate", "greedy chat completions, one per instruction");
  generate_cmd->add_option("--model", generate.model, "checkpoint directory with tokenizer files")
      ->required();
  auto* prompt_opt = generate_cmd->add_option("--prompt", generate.prompts, "an instruction (repeatable)");
  auto* prompts_opt = generate_cmd->add_option("--prompts", generate.prompts_file,
                                               "prompt set file (.jsonl with `instruction`, .json, .csv)");
  generate_cmd->add_option("--max-new-tokens", generate.max_new_tokens)->check(CLI::PositiveNumber);
  generate_cmd->add_option("--batch-size", generate.batch_size)->check(CLI::PositiveNumber);
  generate_cmd->add_flag("--json", generate.json, "one JSON object per prompt: instruction, completion");
  generate_cmd->add_flag("--with-ids", generate.with_ids,
                         "with --json: also prompt_ids and completion_ids");
  generate_cmd->add_option("--template", generate.chat_template,
                           "chat template (default: detected from tokenizer_config.json)");
  AddRuntimeFlags(generate_cmd, &generate.runtime);
  knockout::worker::AddSaeForwardFlags(generate_cmd, &generate.sae);
  generate_cmd->callback([&] {
    if (prompt_opt->count() == 0 && prompts_opt->count() == 0) {
      throw CLI::RequiredError("--prompt or --prompts");
    }
  });
#endif

  CLI11_PARSE(app, argc, argv);
  const bool any_subcommand = !app.get_subcommands().empty();
#ifdef KNOCKOUT_HAVE_AGENT
  if (coordinator_opt->count() > 0) {
    if (any_subcommand) {
      return Fail(Status::InvalidArgument("--coordinator runs the worker agent and takes no "
                                          "subcommand"));
    }
    if (check_flags) return 0;
    try {
      return RunAgentProcess(std::move(agent));
    } catch (const std::exception& e) {
      return Fail(Status::Internal(e.what()));
    }
  }
#endif
  if (!any_subcommand) {
    std::cerr << app.help();
#ifdef KNOCKOUT_HAVE_AGENT
    return Fail(Status::InvalidArgument("give a subcommand, or --coordinator to run the agent"));
#else
    return Fail(Status::InvalidArgument("give a subcommand"));
#endif
  }
  try {
    if (*forward_cmd) return RunForward(forward);
    if (*inspect_cmd) return RunInspect(inspect_dir, inspect_json);
    if (*init_cmd) return RunInitRandom(init);
    if (sae_commands.Selected()) return sae_commands.Run();
#ifdef KNOCKOUT_HAVE_TOKENIZER
    if (*tokenize_cmd) return RunTokenize(tokenize);
    if (*generate_cmd) return RunGenerate(generate);
    if (train_sae.Selected()) return train_sae.Run();
#endif
  } catch (const std::exception& e) {
    return Fail(Status::Internal(e.what()));
  }
  return 1;
}
