#include "tokenizer/bpe.h"

#include <algorithm>
#include <functional>

#include "tokenizer/unicode.h"

namespace knockout::tokenizer::internal {
namespace {

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

}  // namespace

void PairMap::Reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;
  slots_.assign(cap, Slot());
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  size_ = 0;
}

bool PairMap::Insert(uint64_t key, uint64_t value) {
  if ((size_ + 1) * 2 > slots_.size()) {
    std::vector<Slot> old = std::move(slots_);
    Reserve(std::max<size_t>(16, old.size()));
    for (const Slot& s : old) {
      if (s.key != kEmpty) Insert(s.key, s.value);
    }
  }
  size_t i = Hash(key);
  while (slots_[i].key != kEmpty) {
    if (slots_[i].key == key) return false;
    i = (i + 1) & mask_;
  }
  slots_[i] = Slot{key, value};
  ++size_;
  return true;
}

uint64_t StringIdMap::HashBytes(std::string_view s) {
  // Eight bytes at a time with a multiply-xorshift mix: tokens are short, so this beats a
  // byte-at-a-time hash, and quality only needs to be good enough for linear probing.
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ULL;
  uint64_t h = s.size() * kMul;
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t w;
    __builtin_memcpy(&w, p, 8);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t w = 0;
    __builtin_memcpy(&w, p, n);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
  }
  h *= 0xBF58476D1CE4E5B9ULL;
  h ^= h >> 31;
  return h;
}

void StringIdMap::Build(std::vector<std::string_view> keys, std::vector<int32_t> ids) {
  keys_ = std::move(keys);
  ids_ = std::move(ids);
  size_t cap = 16;
  while (cap < keys_.size() * 2) cap <<= 1;
  slots_.assign(cap, Slot());
  mask_ = cap - 1;
  for (size_t e = 0; e < keys_.size(); ++e) {
    const uint64_t h = HashBytes(keys_[e]);
    const auto tag = static_cast<uint32_t>(h >> 32);
    size_t i = static_cast<size_t>(h) & mask_;
    bool duplicate = false;
    while (slots_[i].entry >= 0) {
      if (slots_[i].tag == tag && keys_[slots_[i].entry] == keys_[e]) {
        duplicate = true;
        break;
      }
      i = (i + 1) & mask_;
    }
    if (!duplicate) slots_[i] = Slot{tag, static_cast<int32_t>(e)};
  }
}

StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const Json& model, const std::string& path) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  KO_ASSIGN_OR_RETURN(const Json* vocab, GetObject(model, "vocab", path));
  const std::string vocab_path = Field(path, "vocab");

  int64_t max_id = -1;
  const int64_t limit = MaxTokenId(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    KO_ASSIGN_OR_RETURN(int64_t id, AsInt(it.value(), vocab_path + "[\"" + it.key() + "\"]"));
    if (id < 0 || id > limit) {
      return Status::InvalidArgument(vocab_path + "[\"" + it.key() + "\"]: id " +
                                     std::to_string(id) + " out of range");
    }
    max_id = std::max(max_id, id);
  }
  m->id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  m->id_used_.assign(static_cast<size_t>(max_id + 1), false);
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    const auto id = static_cast<size_t>(it.value().get<int64_t>());
    // When two strings share an id, the first keeps it for decoding; both still encode.
    if (!m->id_used_[id]) {
      m->id_to_token_[id] = it.key();
      m->id_used_[id] = true;
    }
  }
  std::vector<int32_t> alias_ids;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    if (m->id_to_token_[id] != it.key()) {
      m->alias_tokens_.push_back(it.key());
      alias_ids.push_back(id);
    }
  }
  // id_to_token_ and alias_tokens_ are final now, so views into them stay valid.
  std::vector<std::string_view> keys;
  std::vector<int32_t> key_ids;
  keys.reserve(vocab->size());
  key_ids.reserve(vocab->size());
  for (size_t id = 0; id < m->id_to_token_.size(); ++id) {
    if (!m->id_used_[id]) continue;
    keys.push_back(m->id_to_token_[id]);
    key_ids.push_back(static_cast<int32_t>(id));
  }
  for (size_t k = 0; k < alias_ids.size(); ++k) {
    keys.push_back(m->alias_tokens_[k]);
    key_ids.push_back(alias_ids[k]);
  }
  m->vocab_.Build(std::move(keys), std::move(key_ids));

  KO_ASSIGN_OR_RETURN(m->unk_token_, GetOptString(model, "unk_token", path));
  if (m->unk_token_) {
    auto id = m->TokenToId(*m->unk_token_);
    if (!id) {
      return Status::InvalidArgument(Field(path, "unk_token") + ": \"" + *m->unk_token_ +
                                     "\" is not in the vocabulary");
    }
    m->unk_id_ = id;
  }
  KO_ASSIGN_OR_RETURN(m->fuse_unk_, GetBool(model, "fuse_unk", false, path));
  KO_ASSIGN_OR_RETURN(m->byte_fallback_, GetBool(model, "byte_fallback", false, path));
  KO_ASSIGN_OR_RETURN(m->ignore_merges_, GetBool(model, "ignore_merges", false, path));
  KO_ASSIGN_OR_RETURN(auto prefix, GetOptString(model, "continuing_subword_prefix", path));
  KO_ASSIGN_OR_RETURN(auto suffix, GetOptString(model, "end_of_word_suffix", path));
  m->continuing_subword_prefix_ = prefix.value_or("");
  m->end_of_word_suffix_ = suffix.value_or("");
  if (const Json* dropout = Member(model, "dropout")) {
    if (!dropout->is_number()) return TypeError(Field(path, "dropout"), "a number", *dropout);
    if (dropout->get<double>() > 0.0) {
      return Status::Unimplemented(Field(path, "dropout") +
                                   ": BPE dropout (random merges) is not supported");
    }
  }
  for (int b = 0; b < 256; ++b) {
    static const char* kHex = "0123456789ABCDEF";
    const std::string name = std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
    auto id = m->TokenToId(name);
    m->byte_ids_[b] = id ? *id : -1;
  }

  // A merge joins two symbols into a vocabulary token, so no merge can span a point where the
  // character before "▁" never precedes "▁" inside a token. Collect the characters that do.
  m->cut_at_metaspace_ = prefix.value_or("").empty() && suffix.value_or("").empty();
  if (m->cut_at_metaspace_) {
    for (const std::string& t : m->id_to_token_) {
      size_t pos = 0;
      while ((pos = t.find(kMetaspace, pos + 1)) != std::string::npos && pos > 0) {
        size_t start = pos - 1;
        while (start > 0 && (static_cast<unsigned char>(t[start]) & 0xC0) == 0x80) --start;
        const std::string prev = t.substr(start, pos - start);
        if (prev != kMetaspace &&
            std::find(m->glued_to_metaspace_.begin(), m->glued_to_metaspace_.end(), prev) ==
                m->glued_to_metaspace_.end()) {
          m->glued_to_metaspace_.push_back(prev);
        }
      }
    }
    for (const std::string& t : m->alias_tokens_) {
      if (t.find(kMetaspace, 1) != std::string::npos) m->cut_at_metaspace_ = false;
    }
  }

  KO_ASSIGN_OR_RETURN(const Json* merges, GetArray(model, "merges", path));
  const std::string merges_path = Field(path, "merges");
  m->merges_.Reserve(merges->size());
  const size_t prefix_len = m->continuing_subword_prefix_.size();
  std::string merged;
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const Json& entry = (*merges)[rank];
    auto entry_path = [&] { return Index(merges_path, rank); };  // built only for errors
    std::string_view a, b;
    if (entry.is_string()) {
      // Legacy form "a b": the first space separates the pair.
      const std::string& s = entry.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos) {
        return Status::InvalidArgument(entry_path() + ": expected \"left right\", got \"" + s +
                                       "\"");
      }
      a = std::string_view(s).substr(0, space);
      b = std::string_view(s).substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      a = entry[0].get_ref<const std::string&>();
      b = entry[1].get_ref<const std::string&>();
    } else {
      return TypeError(entry_path(), "a \"left right\" string or a [left, right] pair", entry);
    }
    auto ida = m->TokenToId(a);
    auto idb = m->TokenToId(b);
    if (!ida || !idb) {
      return Status::InvalidArgument(entry_path() + ": token \"" + std::string(ida ? b : a) +
                                     "\" is not in the vocabulary");
    }
    merged.assign(a.data(), a.size());
    if (b.size() >= prefix_len && b.substr(0, prefix_len) == m->continuing_subword_prefix_) {
      merged.append(b.substr(prefix_len));
    } else {
      merged.append(b);
    }
    auto idm = m->TokenToId(merged);
    if (!idm) {
      return Status::InvalidArgument(entry_path() + ": merged token \"" + merged +
                                     "\" is not in the vocabulary");
    }
    // A repeated pair keeps its first (lowest) rank.
    m->merges_.Insert(PairKey(*ida, *idb),
                      (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(*idm));
  }
  return m;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const int32_t* id = vocab_.Find(token);
  if (id == nullptr) return std::nullopt;
  return *id;
}

bool BpeModel::CanCutBefore(std::string_view prev) const {
  // `prev` must start its own symbol (a vocabulary character, not byte-fallback or unk pieces,
  // whose token strings end differently) and must never be glued to a following "▁".
  if (prev == kMetaspace || vocab_.Find(prev) == nullptr) return false;
  return std::find(glued_to_metaspace_.begin(), glued_to_metaspace_.end(), prev) ==
         glued_to_metaspace_.end();
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const int32_t* id = vocab_.Find(word)) {
      ids->push_back(*id);
      return;
    }
  }
  if (!cut_at_metaspace_) {
    TokenizeCached(word, ids);
    return;
  }
  // Metaspace pipelines without a pre-tokenizer hand whole lines (or texts) to the model. Cutting
  // them where no merge can cross gives the same ids, keeps the merge loop short and lets the
  // word cache work.
  size_t start = 0;
  size_t pos = 0;
  while ((pos = word.find(kMetaspace, pos + 1)) != std::string_view::npos) {
    size_t prev = pos - 1;
    while (prev > start && (static_cast<unsigned char>(word[prev]) & 0xC0) == 0x80) --prev;
    if (prev >= start && pos > start && CanCutBefore(word.substr(prev, pos - prev))) {
      TokenizeCached(word.substr(start, pos - start), ids);
      start = pos;
    }
  }
  TokenizeCached(word.substr(start), ids);
}

void BpeModel::TokenizeCached(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.size() >= kMaxCachedWordBytes) {
    MergeWord(word, ids);
    return;
  }
  const size_t h = StringIdMap::HashBytes(word);
  CacheShard& shard = cache_[(h >> 7) % kCacheShards];
  thread_local std::string key;  // reused so that a lookup does not allocate
  key.assign(word.data(), word.size());
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.map.find(key);
    if (it != shard.map.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = ids->size();
  MergeWord(word, ids);
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.map.size() < kCacheShardCapacity) {
    shard.map.emplace(key, std::vector<int32_t>(ids->begin() + before, ids->end()));
  }
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  // Symbols form a doubly linked list over `sym`; a merged-away symbol gets id -1.
  struct Sym {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  std::vector<Sym> sym;
  sym.reserve(word.size());
  auto push = [&sym](int32_t id) {
    const auto n = static_cast<int32_t>(sym.size());
    sym.push_back(Sym{id, n - 1, -1});
    if (n > 0) sym[n - 1].next = n;
  };

  // Initial symbols: one per character, as in the reference. An unknown character becomes its
  // <0xNN> byte tokens (byte_fallback), else the unk token (consecutive ones fused with
  // fuse_unk), else it is dropped.
  bool pending_unk = false;
  std::string buf;
  size_t i = 0;
  while (i < word.size()) {
    const size_t start = i;
    i += Utf8SeqLen(static_cast<unsigned char>(word[i]));
    if (i > word.size()) i = word.size();
    std::string_view piece = word.substr(start, i - start);
    const bool first = start == 0, last = i >= word.size();
    if ((!first && !continuing_subword_prefix_.empty()) || (last && !end_of_word_suffix_.empty())) {
      buf.clear();
      if (!first) buf.append(continuing_subword_prefix_);
      buf.append(piece);
      if (last) buf.append(end_of_word_suffix_);
      piece = buf;
    }
    if (const int32_t* id = vocab_.Find(piece)) {
      if (pending_unk) {
        push(*unk_id_);
        pending_unk = false;
      }
      push(*id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (const char c : piece) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // Like the reference, byte tokens do not flush a pending unk first (it is emitted after
        // them); only reachable with an incomplete set of <0xNN> tokens.
        for (const char c : piece) push(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk && !fuse_unk_) push(*unk_id_);
      pending_unk = true;
    }
  }
  if (pending_unk) push(*unk_id_);

  // Heap of candidate merges keyed by (rank, left position): lowest rank first, then leftmost.
  std::vector<uint64_t> heap;
  heap.reserve(sym.size());
  auto consider = [&](int32_t left) {
    const int32_t right = sym[left].next;
    if (right < 0) return;
    const uint64_t* v = merges_.Find(PairKey(sym[left].id, sym[right].id));
    if (v == nullptr) return;
    heap.push_back(((*v >> 32) << 32) | static_cast<uint32_t>(left));
    std::push_heap(heap.begin(), heap.end(), std::greater<uint64_t>());
  };
  for (int32_t k = 0; k + 1 < static_cast<int32_t>(sym.size()); ++k) consider(k);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<uint64_t>());
    const uint64_t top = heap.back();
    heap.pop_back();
    const auto left = static_cast<int32_t>(top & 0xFFFFFFFFu);
    const uint64_t rank = top >> 32;
    if (sym[left].id < 0) continue;
    const int32_t right = sym[left].next;
    if (right < 0) continue;
    // The entry may be stale: the pair at `left` must still be the one that was queued.
    const uint64_t* v = merges_.Find(PairKey(sym[left].id, sym[right].id));
    if (v == nullptr || (*v >> 32) != rank) continue;
    sym[left].id = static_cast<int32_t>(*v & 0xFFFFFFFFu);
    sym[right].id = -1;
    sym[left].next = sym[right].next;
    if (sym[left].next >= 0) sym[sym[left].next].prev = left;
    if (sym[left].prev >= 0) consider(sym[left].prev);
    consider(left);
  }
  for (int32_t k = sym.empty() ? -1 : 0; k >= 0; k = sym[k].next) ids->push_back(sym[k].id);
}

}  // namespace knockout::tokenizer::internal
