# Sourced by the bench scripts: make_random_llama DIR WORKER writes (once) the random
# Llama-shaped model the benchmarks share — 12 layers, d_model 768, 12 heads x 64, MLP 2048,
# vocab 32000, untied lm_head, float32 (134M parameters) — with the demo model's tokenizer files
# (4,000 ids, all < 32000) so that the executor can chat-template instructions for it.
make_random_llama() {
  local dir=$1 worker=$2
  [[ -f $dir/model.safetensors ]] && return 0
  "$worker" models init-random --out "$dir" --architecture LlamaForCausalLM --layers 12 \
    --hidden 768 --heads 12 --kv-heads 12 --intermediate 2048 --vocab 32000 --seed 0 \
    --init-std 0.02 --dtype f32 >/dev/null
  cp models/demo-refusal/tokenizer.json models/demo-refusal/tokenizer_config.json "$dir/"
}
