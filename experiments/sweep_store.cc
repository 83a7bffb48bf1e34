#include "experiments/sweep_store.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <tuple>

#include "storage/keys.h"

namespace knockout::experiments {
namespace {

using storage::AppendString;
using storage::AppendUint32;
using storage::Family;
using storage::Store;

// The three kinds of rows under a stage in the results family (the u32 after the stage).
constexpr uint32_t kRowKind = 0;
constexpr uint32_t kPartialSumKind = 1;
constexpr uint32_t kCompletionKind = 2;
constexpr uint32_t kRankingKind = 3;
constexpr uint32_t kLabelKind = 4;

// Keys carry binary lengths and integers: printable bytes are kept so that ids and names stay
// readable in error messages, the rest are shown as \xNN.
std::string PrintableKey(const std::string& key) {
  std::string out;
  for (unsigned char c : key) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buffer[5];
      std::snprintf(buffer, sizeof(buffer), "\\x%02x", c);
      out += buffer;
    }
  }
  return out;
}

// "shards key sweep=s1 stage=0 shard=2 ("\x00...")": what names a key in every message.
std::string KeyName(Family family, const std::string& label, const std::string& key) {
  return std::string(storage::FamilyName(family)) + " key " + label + " (\"" + PrintableKey(key) +
         "\")";
}

std::string SweepKey(const std::string& sweep) {
  std::string key;
  AppendString(&key, sweep);
  return key;
}

std::string StageKey(const std::string& sweep, uint32_t stage) {
  std::string key = SweepKey(sweep);
  AppendUint32(&key, stage);
  return key;
}

std::string ShardKey(const std::string& sweep, uint32_t stage, uint32_t shard) {
  std::string key = StageKey(sweep, stage);
  AppendUint32(&key, shard);
  return key;
}

std::string ResultsPrefix(const std::string& sweep, uint32_t stage, uint32_t kind) {
  std::string key = StageKey(sweep, stage);
  AppendUint32(&key, kind);
  return key;
}

// The artifact name is the key's last component and is appended raw, not length-prefixed, so
// that a prefix scan finds names by their prefix and returns them in name order.
std::string ArtifactKey(const std::string& sweep, const std::string& name) {
  return SweepKey(sweep) + name;
}

std::string StageLabel(const std::string& sweep, uint32_t stage) {
  return "sweep=" + sweep + " stage=" + std::to_string(stage);
}

std::string ShardLabel(const std::string& sweep, uint32_t stage, uint32_t shard) {
  return StageLabel(sweep, stage) + " shard=" + std::to_string(shard);
}

// Deterministic: equal records give equal bytes (map fields in key order), so stored values can
// be compared and hashed.
StatusOr<std::string> Serialize(const google::protobuf::MessageLite& message) {
  std::string out;
  bool ok = false;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    ok = message.SerializeToCodedStream(&coded) && !coded.HadError();
  }
  if (!ok) return Status::Internal("cannot serialise " + message.GetTypeName());
  return out;
}

template <typename Message>
StatusOr<Message> Parse(Family family, const std::string& label, const std::string& key,
                        const std::string& value) {
  Message message;
  if (!message.ParseFromString(value)) {
    return Status::Corruption(KeyName(family, label, key) + ": value (" +
                              std::to_string(value.size()) + " bytes) does not parse as " +
                              message.GetTypeName());
  }
  return message;
}

// A point read that turns the store's NotFound into one naming what is missing.
template <typename Message>
StatusOr<Message> GetRecord(const Store& store, Family family, const std::string& label,
                            const std::string& key) {
  auto value = store.Get(family, key);
  if (!value.ok()) {
    if (value.status().code() == StatusCode::kNotFound) {
      return Status::NotFound(KeyName(family, label, key) + ": not found");
    }
    return value.status().WithContext(KeyName(family, label, key));
  }
  return Parse<Message>(family, label, key, *value);
}

// Whether `key` exists (NotFound is an answer, other errors are errors).
StatusOr<bool> Exists(const Store& store, Family family, const std::string& key) {
  auto value = store.Get(family, key);
  if (value.ok()) return true;
  if (value.status().code() == StatusCode::kNotFound) return false;
  return value.status();
}

// Every value under `prefix` parsed as Message, in key order; `keep` filters on the key.
template <typename Message, typename Keep>
StatusOr<std::vector<Message>> ScanRecords(const Store& store, Family family,
                                           const std::string& label, const std::string& prefix,
                                           Keep keep) {
  KO_ASSIGN_OR_RETURN(auto entries, store.Scan(family, prefix));
  std::vector<Message> records;
  records.reserve(entries.size());
  for (const auto& [key, value] : entries) {
    if (!keep(key)) continue;
    KO_ASSIGN_OR_RETURN(Message record, Parse<Message>(family, label, key, value));
    records.push_back(std::move(record));
  }
  return records;
}

template <typename Message>
StatusOr<std::vector<Message>> ScanRecords(const Store& store, Family family,
                                           const std::string& label, const std::string& prefix) {
  return ScanRecords<Message>(store, family, label, prefix, [](const std::string&) { return true; });
}

// The u32 at the end of a key (a result row's prompt+1, a label's trial, a shard key's shard).
uint32_t TrailingUint32(std::string_view key) {
  if (key.size() < 4) return UINT32_MAX;
  uint32_t value = 0;
  for (size_t i = key.size() - 4; i < key.size(); ++i) {
    value = (value << 8) | static_cast<uint8_t>(key[i]);
  }
  return value;
}

// The index entries that go with a shard record, in the same batch (sweep_store.h, "Indexes"):
// a lease record exactly while it is RUNNING, a failure entry once it has an error history.
Status PutShardIndexes(const v1::ShardRecord& record, const std::string& key, Store::Batch* batch) {
  if (record.state() == v1::RUNNING) {
    v1::LeaseRecord lease;
    lease.set_sweep_id(record.shard().sweep_id());
    lease.set_stage(record.shard().stage());
    lease.set_shard(record.shard().index());
    lease.set_worker(record.worker());
    lease.set_attempt(record.attempt());
    lease.set_deadline_unix_ms(record.lease_deadline_unix_ms());
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(lease));
    batch->Put(Family::kLeases, key, value);
  } else {
    batch->Delete(Family::kLeases, key);
  }
  if (record.errors_size() > 0 || record.state() == v1::FAILED) {
    v1::ShardFailure failure;
    failure.set_stage(record.shard().stage());
    failure.set_shard(record.shard().index());
    failure.set_state(record.state());
    *failure.mutable_errors() = record.errors();
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(failure));
    batch->Put(Family::kFailures, key, value);
  }
  return Status::Ok();
}

// The label index entries of a shard's trials (a trial split across shards by prompts is
// written once per shard, with the same label).
Status PutLabels(const v1::Shard& shard, Store::Batch* batch) {
  for (const v1::Trial& trial : shard.trials()) {
    std::string key = ResultsPrefix(shard.sweep_id(), shard.stage(), kLabelKind);
    AppendUint32(&key, trial.index());
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(trial.label()));
    batch->Put(Family::kResults, key, value);
  }
  return Status::Ok();
}

constexpr char kIndexesKey[] = "sweep_store.indexes";
constexpr char kIndexesVersion[] = "1";

bool SweepOrder(const v1::SweepRecord& a, const v1::SweepRecord& b) {
  return std::make_tuple(a.created_unix_ms(), a.id()) <
         std::make_tuple(b.created_unix_ms(), b.id());
}

}  // namespace

// ------------------------------------------------------------------------------------------
// Sweeps

Status SweepStore::CreateSweep(const v1::SweepRecord& sweep) {
  if (sweep.id().empty()) return Status::InvalidArgument("sweep record without an id");
  const std::string key = SweepKey(sweep.id());
  std::lock_guard<std::mutex> lock(mu_);
  KO_ASSIGN_OR_RETURN(bool exists, Exists(*store_, Family::kSweeps, key));
  if (exists) return Status::FailedPrecondition("sweep " + sweep.id() + " already exists");
  KO_ASSIGN_OR_RETURN(std::string value, Serialize(sweep));
  Store::Batch batch;
  batch.Put(Family::kSweeps, key, value);
  return store_->Write(batch, /*sync=*/true);
}

StatusOr<v1::SweepRecord> SweepStore::GetSweep(const std::string& id) const {
  auto record = GetRecord<v1::SweepRecord>(*store_, Family::kSweeps, "sweep=" + id, SweepKey(id));
  if (!record.ok() && record.status().code() == StatusCode::kNotFound) {
    return Status::NotFound("sweep " + id + " not found");
  }
  return record;
}

StatusOr<std::vector<v1::SweepRecord>> SweepStore::ListSweeps() const {
  KO_ASSIGN_OR_RETURN(auto sweeps,
                      ScanRecords<v1::SweepRecord>(*store_, Family::kSweeps, "sweep", ""));
  std::sort(sweeps.begin(), sweeps.end(), SweepOrder);
  return sweeps;
}

StatusOr<std::string> SweepStore::ResolveSweep(const std::string& id_or_name) const {
  KO_ASSIGN_OR_RETURN(bool is_id, Exists(*store_, Family::kSweeps, SweepKey(id_or_name)));
  if (is_id) return id_or_name;
  KO_ASSIGN_OR_RETURN(auto sweeps, ListSweeps());
  // Oldest first, so the last match is the latest sweep of that name.
  for (auto it = sweeps.rbegin(); it != sweeps.rend(); ++it) {
    if (it->name() == id_or_name) return it->id();
  }
  std::string message = "no sweep with id or name '" + id_or_name + "'";
  if (sweeps.empty()) return Status::NotFound(message + "; the store has no sweeps");
  constexpr size_t kListed = 10;
  message += "; latest sweeps (id name):";
  size_t listed = 0;
  for (auto it = sweeps.rbegin(); it != sweeps.rend() && listed < kListed; ++it, ++listed) {
    message += (listed == 0 ? " " : ", ") + it->id() + " " + it->name();
  }
  if (sweeps.size() > kListed) {
    message += " (and " + std::to_string(sweeps.size() - kListed) + " more)";
  }
  return Status::NotFound(message);
}

Status SweepStore::UpdateSweep(const v1::SweepRecord& sweep) {
  const std::string key = SweepKey(sweep.id());
  std::lock_guard<std::mutex> lock(mu_);
  KO_ASSIGN_OR_RETURN(bool exists, Exists(*store_, Family::kSweeps, key));
  if (!exists) return Status::NotFound("sweep " + sweep.id() + " not found");
  KO_ASSIGN_OR_RETURN(std::string value, Serialize(sweep));
  Store::Batch batch;
  batch.Put(Family::kSweeps, key, value);
  return store_->Write(batch, /*sync=*/true);
}

Status SweepStore::WriteRecords(const RecordUpdate& update, bool sync) {
  if (update.empty()) return Status::Ok();
  Store::Batch batch;
  std::vector<std::pair<std::string, std::string>> shard_keys;  // key, label
  for (const v1::SweepRecord& sweep : update.sweeps) {
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(sweep));
    batch.Put(Family::kSweeps, SweepKey(sweep.id()), value);
  }
  for (const v1::ShardRecord& record : update.shards) {
    const v1::Shard& shard = record.shard();
    const std::string key = ShardKey(shard.sweep_id(), shard.stage(), shard.index());
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(record));
    batch.Put(Family::kShards, key, value);
    KO_RETURN_IF_ERROR(PutShardIndexes(record, key, &batch));
    shard_keys.emplace_back(key, ShardLabel(shard.sweep_id(), shard.stage(), shard.index()));
  }
  for (const v1::LeaseRecord& lease : update.leases) {
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(lease));
    batch.Put(Family::kLeases, ShardKey(lease.sweep_id(), lease.stage(), lease.shard()), value);
  }
  for (const v1::WorkerRecord& worker : update.workers) {
    if (worker.info().id().empty()) return Status::InvalidArgument("worker record without an id");
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(worker));
    batch.Put(Family::kWorkers, worker.info().id(), value);
  }

  std::unique_lock<std::mutex> lock(mu_);
  // A shard whose commit is being written: wait for it, so that the DONE check below sees it.
  in_flight_done_.wait(lock, [&] {
    for (const auto& [key, label] : shard_keys) {
      if (in_flight_.count(key) > 0) return false;
    }
    return true;
  });
  for (const v1::SweepRecord& sweep : update.sweeps) {
    KO_ASSIGN_OR_RETURN(bool exists, Exists(*store_, Family::kSweeps, SweepKey(sweep.id())));
    if (!exists) return Status::NotFound("sweep " + sweep.id() + " not found");
  }
  for (const auto& [key, label] : shard_keys) {
    // The pending key exists exactly while a shard is not DONE (ExpandStage writes it,
    // CommitShards deletes it): a cheap answer for the usual case, without parsing the record.
    KO_ASSIGN_OR_RETURN(bool pending, Exists(*store_, Family::kPending, key));
    if (pending) continue;
    KO_ASSIGN_OR_RETURN(v1::ShardRecord stored,
                        GetRecord<v1::ShardRecord>(*store_, Family::kShards, label, key));
    if (stored.state() == v1::DONE) {
      return Status::FailedPrecondition(label + " is already done; its record is not replaced");
    }
  }
  return store_->Write(batch, sync);
}

StatusOr<std::vector<v1::LeaseRecord>> SweepStore::ListLeases(const std::string& sweep) const {
  return ScanRecords<v1::LeaseRecord>(*store_, Family::kLeases, "sweep=" + sweep, SweepKey(sweep));
}

StatusOr<std::vector<v1::ShardFailure>> SweepStore::ListFailures(const std::string& sweep) const {
  return ScanRecords<v1::ShardFailure>(*store_, Family::kFailures, "sweep=" + sweep,
                                       SweepKey(sweep));
}

StatusOr<std::vector<uint32_t>> SweepStore::PendingIndices(const std::string& sweep,
                                                           uint32_t stage) const {
  std::vector<uint32_t> indices;
  KO_RETURN_IF_ERROR(store_->ForEach(Family::kPending, StageKey(sweep, stage), "",
                                     [&](std::string_view key, std::string_view) {
                                       indices.push_back(TrailingUint32(key));
                                       return true;
                                     }));
  return indices;
}

StatusOr<bool> SweepStore::HasPending(const std::string& sweep, uint32_t stage) const {
  bool any = false;
  KO_RETURN_IF_ERROR(store_->ForEach(Family::kPending, StageKey(sweep, stage), "",
                                     [&](std::string_view, std::string_view) {
                                       any = true;
                                       return false;
                                     }));
  return any;
}

Status SweepStore::EnsureIndexes() {
  std::lock_guard<std::mutex> commit_lock(commit_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  KO_ASSIGN_OR_RETURN(bool indexed, Exists(*store_, Family::kMeta, kIndexesKey));
  if (indexed) return Status::Ok();
  // Batches of a few thousand shards: the rebuild's memory does not grow with the store.
  constexpr size_t kPerBatch = 4096;
  Store::Batch batch;
  size_t in_batch = 0;
  Status failed;
  KO_RETURN_IF_ERROR(store_->ForEach(
      Family::kShards, "", "", [&](std::string_view key_view, std::string_view value) {
        const std::string key(key_view);
        auto record = Parse<v1::ShardRecord>(Family::kShards, "shard", key, std::string(value));
        if (!record.ok()) {
          failed = record.status();
          return false;
        }
        if (record->state() != v1::RUNNING && record->errors_size() == 0 &&
            record->state() != v1::FAILED) {
          return true;
        }
        if (Status s = PutShardIndexes(*record, key, &batch); !s.ok()) {
          failed = s;
          return false;
        }
        if (++in_batch >= kPerBatch) {
          failed = store_->Write(batch, /*sync=*/false);
          batch = Store::Batch();
          in_batch = 0;
          return failed.ok();
        }
        return true;
      }));
  KO_RETURN_IF_ERROR(failed);
  batch.Put(Family::kMeta, kIndexesKey, kIndexesVersion);
  return store_->Write(batch, /*sync=*/true);
}

StatusOr<std::vector<v1::WorkerRecord>> SweepStore::ListWorkers() const {
  return ScanRecords<v1::WorkerRecord>(*store_, Family::kWorkers, "worker", "");
}

// ------------------------------------------------------------------------------------------
// Stages and shards

Status SweepStore::ExpandStage(const v1::SweepRecord& updated_sweep, const v1::StageRecord& stage,
                               const std::vector<v1::Shard>& shards) {
  const std::string& sweep = updated_sweep.id();
  const std::string stage_label = StageLabel(sweep, stage.index());
  std::set<uint32_t> indices;
  for (const v1::Shard& shard : shards) {
    if (shard.sweep_id() != sweep || shard.stage() != stage.index()) {
      return Status::InvalidArgument(
          stage_label + ": shard " + std::to_string(shard.index()) + " belongs to sweep=" +
          shard.sweep_id() + " stage=" + std::to_string(shard.stage()));
    }
    if (!indices.insert(shard.index()).second) {
      return Status::InvalidArgument(stage_label + ": shard " + std::to_string(shard.index()) +
                                     " given twice");
    }
  }

  Store::Batch batch;
  KO_ASSIGN_OR_RETURN(std::string stage_value, Serialize(stage));
  batch.Put(Family::kStages, StageKey(sweep, stage.index()), stage_value);
  for (const v1::Shard& shard : shards) {
    v1::ShardRecord record;
    *record.mutable_shard() = shard;
    record.set_state(v1::PENDING);
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(record));
    const std::string key = ShardKey(sweep, stage.index(), shard.index());
    batch.Put(Family::kShards, key, value);
    batch.Put(Family::kPending, key, "");
    KO_RETURN_IF_ERROR(PutLabels(shard, &batch));
  }
  KO_ASSIGN_OR_RETURN(std::string sweep_value, Serialize(updated_sweep));
  batch.Put(Family::kSweeps, SweepKey(sweep), sweep_value);

  std::lock_guard<std::mutex> commit_lock(commit_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  KO_ASSIGN_OR_RETURN(bool exists,
                      Exists(*store_, Family::kStages, StageKey(sweep, stage.index())));
  if (exists) return Status::FailedPrecondition(stage_label + " is already expanded");
  return store_->Write(batch, /*sync=*/true);
}

Status SweepStore::ExtendStage(const v1::SweepRecord& sweep_record, const v1::StageRecord& stage,
                               const std::vector<v1::Shard>& shards,
                               const std::vector<std::pair<std::string, std::string>>& artifacts) {
  const std::string& sweep = sweep_record.id();
  const std::string stage_label = StageLabel(sweep, stage.index());
  Store::Batch batch;
  for (const auto& [name, bytes] : artifacts) {
    if (name.empty()) return Status::InvalidArgument(stage_label + ": artifact with an empty name");
    batch.Put(Family::kArtifacts, ArtifactKey(sweep, name), bytes);
  }
  KO_ASSIGN_OR_RETURN(std::string stage_value, Serialize(stage));
  batch.Put(Family::kStages, StageKey(sweep, stage.index()), stage_value);
  std::vector<std::string> keys;
  for (const v1::Shard& shard : shards) {
    if (shard.sweep_id() != sweep || shard.stage() != stage.index()) {
      return Status::InvalidArgument(
          stage_label + ": shard " + std::to_string(shard.index()) + " belongs to sweep=" +
          shard.sweep_id() + " stage=" + std::to_string(shard.stage()));
    }
    v1::ShardRecord record;
    *record.mutable_shard() = shard;
    record.set_state(v1::PENDING);
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(record));
    keys.push_back(ShardKey(sweep, stage.index(), shard.index()));
    batch.Put(Family::kShards, keys.back(), value);
    batch.Put(Family::kPending, keys.back(), "");
    KO_RETURN_IF_ERROR(PutLabels(shard, &batch));
  }
  std::lock_guard<std::mutex> commit_lock(commit_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  KO_ASSIGN_OR_RETURN(bool exists, Exists(*store_, Family::kStages, StageKey(sweep, stage.index())));
  if (!exists) return Status::FailedPrecondition(stage_label + " is not expanded");
  for (const std::string& key : keys) {
    KO_ASSIGN_OR_RETURN(bool taken, Exists(*store_, Family::kShards, key));
    if (taken) {
      return Status::FailedPrecondition(KeyName(Family::kShards, stage_label, key) +
                                        ": the stage already has this shard");
    }
  }
  return store_->Write(batch, /*sync=*/true);
}

StatusOr<std::vector<v1::StageRecord>> SweepStore::ListStages(const std::string& sweep) const {
  return ScanRecords<v1::StageRecord>(*store_, Family::kStages, "sweep=" + sweep,
                                      SweepKey(sweep));
}

StatusOr<v1::StageRecord> SweepStore::GetStage(const std::string& sweep, uint32_t stage) const {
  return GetRecord<v1::StageRecord>(*store_, Family::kStages, StageLabel(sweep, stage),
                                    StageKey(sweep, stage));
}

StatusOr<std::vector<v1::ShardRecord>> SweepStore::ListShards(const std::string& sweep,
                                                              uint32_t stage) const {
  return ScanRecords<v1::ShardRecord>(*store_, Family::kShards, StageLabel(sweep, stage),
                                      StageKey(sweep, stage));
}

StatusOr<std::vector<v1::ShardRecord>> SweepStore::PendingShards(const std::string& sweep,
                                                                 uint32_t stage) const {
  KO_ASSIGN_OR_RETURN(auto pending, store_->Scan(Family::kPending, StageKey(sweep, stage)));
  std::vector<v1::ShardRecord> shards;
  shards.reserve(pending.size());
  for (const auto& entry : pending) {
    const std::string& key = entry.first;
    auto record = GetRecord<v1::ShardRecord>(*store_, Family::kShards, StageLabel(sweep, stage),
                                             key);
    if (!record.ok() && record.status().code() == StatusCode::kNotFound) {
      // The pending index points at a shard the store does not hold.
      return Status::Corruption(KeyName(Family::kPending, StageLabel(sweep, stage), key) +
                                ": pending shard has no shard record");
    }
    KO_RETURN_IF_ERROR(record.status());
    shards.push_back(std::move(record).value());
  }
  return shards;
}

StatusOr<v1::ShardRecord> SweepStore::GetShard(const std::string& sweep, uint32_t stage,
                                               uint32_t shard) const {
  return GetRecord<v1::ShardRecord>(*store_, Family::kShards, ShardLabel(sweep, stage, shard),
                                    ShardKey(sweep, stage, shard));
}

Status SweepStore::CommitShard(const v1::ShardResult& result, uint32_t attempt, bool* duplicate) {
  std::vector<bool> duplicates;
  ShardCommit commit;
  commit.result = &result;
  commit.attempt = attempt;
  const Status status = CommitShards({commit}, &duplicates);
  if (duplicate != nullptr) *duplicate = status.ok() && duplicates[0];
  return status;
}

namespace {

struct EncodedPut {
  Family family;
  std::string key, value;
};

std::string RowKey(const std::string& sweep, uint32_t stage, const v1::ResultRow& row) {
  std::string key = ResultsPrefix(sweep, stage, kRowKind);
  AppendUint32(&key, row.trial());
  AppendString(&key, row.prompt_set());
  AppendUint32(&key, static_cast<uint32_t>(row.prompt() + 1));
  return key;
}

// The rows, partial sums and completions of one result, encoded outside the lock (they do not
// depend on stored state).
StatusOr<std::vector<EncodedPut>> EncodeResult(const v1::ShardResult& result) {
  const std::string& sweep = result.sweep_id();
  const uint32_t stage = result.stage();
  std::vector<EncodedPut> puts;
  puts.reserve(result.rows_size() + result.sums_size() + result.completions_size());
  for (const v1::ResultRow& row : result.rows()) {
    if (row.prompt() < -1) {
      return Status::InvalidArgument(ShardLabel(sweep, stage, result.index()) +
                                     ": result row of trial " + std::to_string(row.trial()) +
                                     " has prompt " + std::to_string(row.prompt()) +
                                     " (expected >= -1)");
    }
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(row));
    puts.push_back({Family::kResults, RowKey(sweep, stage, row), std::move(value)});
  }
  for (int n = 0; n < result.sums_size(); ++n) {
    std::string key = ResultsPrefix(sweep, stage, kPartialSumKind);
    AppendUint32(&key, result.index());
    AppendUint32(&key, static_cast<uint32_t>(n));
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(result.sums(n)));
    puts.push_back({Family::kResults, std::move(key), std::move(value)});
  }
  for (int n = 0; n < result.rankings_size(); ++n) {
    std::string key = ResultsPrefix(sweep, stage, kRankingKind);
    AppendUint32(&key, result.index());
    AppendUint32(&key, static_cast<uint32_t>(n));
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(result.rankings(n)));
    puts.push_back({Family::kResults, std::move(key), std::move(value)});
  }
  for (const v1::CompletionRecord& completion : result.completions()) {
    std::string key = ResultsPrefix(sweep, stage, kCompletionKind);
    AppendString(&key, completion.condition());
    AppendString(&key, completion.set());
    AppendUint32(&key, completion.prompt());
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(completion));
    puts.push_back({Family::kResults, std::move(key), std::move(value)});
  }
  return puts;
}

}  // namespace

// Read-check-write under commit_mu_ (held to the end): within this process two commits of one
// shard cannot both pass the DONE check, and commits of different shards of a stage cannot lose
// a shards_done increment. mu_ is held only while the records are read and the shards marked in
// flight, so that WriteRecords (lease grants) of other shards need not wait for the fdatasync
// (a WriteRecords of one of these shards waits for the commit to end). RocksDB's directory lock keeps other processes out, so
// whoever embeds the store (the coordinator) owns all commits; if it ever shares the store
// across processes it must serialise commits per stage itself.
Status SweepStore::CommitShards(const std::vector<ShardCommit>& commits,
                                std::vector<bool>* duplicate,
                                const std::vector<v1::WorkerRecord>& workers, bool sync) {
  if (duplicate != nullptr) duplicate->assign(commits.size(), false);
  std::vector<std::vector<EncodedPut>> encoded;
  encoded.reserve(commits.size());
  for (const ShardCommit& commit : commits) {
    if (commit.result == nullptr) return Status::InvalidArgument("shard commit without a result");
    KO_ASSIGN_OR_RETURN(auto puts, EncodeResult(*commit.result));
    encoded.push_back(std::move(puts));
  }
  std::vector<std::pair<std::string, std::string>> worker_values;
  for (const v1::WorkerRecord& worker : workers) {
    if (worker.info().id().empty()) return Status::InvalidArgument("worker record without an id");
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(worker));
    worker_values.emplace_back(worker.info().id(), std::move(value));
  }

  std::lock_guard<std::mutex> commit_lock(commit_mu_);
  std::unique_lock<std::mutex> lock(mu_);
  // Records read once and updated in place, so that several commits of one stage (or a shard
  // given twice) see each other's effect before the one write.
  std::map<std::string, v1::ShardRecord> shards;
  std::map<std::string, v1::StageRecord> stages;
  Store::Batch batch;
  bool any = false;
  for (size_t i = 0; i < commits.size(); ++i) {
    const v1::ShardResult& result = *commits[i].result;
    const std::string& sweep = result.sweep_id();
    const uint32_t stage = result.stage();
    const std::string shard_key = ShardKey(sweep, stage, result.index());
    auto shard_it = shards.find(shard_key);
    if (shard_it == shards.end()) {
      KO_ASSIGN_OR_RETURN(v1::ShardRecord shard,
                          GetRecord<v1::ShardRecord>(*store_, Family::kShards,
                                                     ShardLabel(sweep, stage, result.index()),
                                                     shard_key));
      shard_it = shards.emplace(shard_key, std::move(shard)).first;
    }
    v1::ShardRecord& shard = shard_it->second;
    if (shard.state() == v1::DONE) {
      if (duplicate != nullptr) (*duplicate)[i] = true;
      continue;
    }
    const std::string stage_key = StageKey(sweep, stage);
    auto stage_it = stages.find(stage_key);
    if (stage_it == stages.end()) {
      KO_ASSIGN_OR_RETURN(v1::StageRecord record,
                          GetRecord<v1::StageRecord>(*store_, Family::kStages,
                                                     StageLabel(sweep, stage), stage_key));
      stage_it = stages.emplace(stage_key, std::move(record)).first;
    }
    v1::StageRecord& stage_record = stage_it->second;
    shard.set_state(v1::DONE);
    shard.set_attempt(commits[i].attempt);
    if (!commits[i].worker.empty()) shard.set_worker(commits[i].worker);
    shard.set_lease_deadline_unix_ms(0);
    stage_record.set_shards_done(stage_record.shards_done() + 1);
    if (stage_record.state() == v1::PENDING) stage_record.set_state(v1::RUNNING);

    for (const EncodedPut& put : encoded[i]) batch.Put(put.family, put.key, put.value);
    KO_ASSIGN_OR_RETURN(std::string shard_value, Serialize(shard));
    batch.Put(Family::kShards, shard_key, shard_value);
    batch.Delete(Family::kPending, shard_key);
    KO_RETURN_IF_ERROR(PutShardIndexes(shard, shard_key, &batch));
    any = true;
  }
  for (const auto& [key, record] : stages) {
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(record));
    batch.Put(Family::kStages, key, value);
  }
  for (const auto& [id, value] : worker_values) batch.Put(Family::kWorkers, id, value);
  if (!any && worker_values.empty()) {
    // Only duplicates: nothing to write, but the commit that made them DONE may be readable and
    // not yet durable (Store::Write syncs after writing, and that sync may have failed). An
    // empty synced write syncs the log up to here, so a duplicate is acknowledged only once the
    // first commit is durable.
    if (commits.empty() || !sync) return Status::Ok();  // unsynced: the caller syncs
    lock.unlock();
    return store_->Write(Store::Batch(), /*sync=*/true);
  }
  std::vector<std::string> marked;
  for (const auto& [key, shard] : shards) {
    if (shard.state() == v1::DONE && in_flight_.insert(key).second) marked.push_back(key);
  }
  lock.unlock();
  const Status written = store_->Write(batch, sync);
  lock.lock();
  for (const std::string& key : marked) in_flight_.erase(key);
  lock.unlock();
  if (!marked.empty()) in_flight_done_.notify_all();
  return written;
}

Status SweepStore::FailShard(const std::string& sweep, uint32_t stage, uint32_t shard_index,
                             uint32_t attempt, const std::string& error) {
  const std::string key = ShardKey(sweep, stage, shard_index);
  std::lock_guard<std::mutex> commit_lock(commit_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  KO_ASSIGN_OR_RETURN(v1::ShardRecord shard,
                      GetRecord<v1::ShardRecord>(*store_, Family::kShards,
                                                 ShardLabel(sweep, stage, shard_index), key));
  // A late failure report of a shard that another attempt already committed changes nothing:
  // first commit wins.
  if (shard.state() == v1::DONE) return Status::Ok();
  shard.set_state(v1::FAILED);
  shard.set_attempt(attempt);
  shard.set_error(error);
  KO_ASSIGN_OR_RETURN(std::string value, Serialize(shard));
  Store::Batch batch;
  batch.Put(Family::kShards, key, value);  // the pending key stays: the shard may be retried
  KO_RETURN_IF_ERROR(PutShardIndexes(shard, key, &batch));
  return store_->Write(batch, /*sync=*/true);
}

Status SweepStore::FinishStage(const v1::SweepRecord& updated_sweep, const v1::StageRecord& stage,
                               const std::vector<std::pair<std::string, std::string>>& artifacts,
                               const std::vector<v1::ResultRow>& rows) {
  const std::string& sweep = updated_sweep.id();
  Store::Batch batch;
  for (const v1::ResultRow& row : rows) {
    if (row.prompt() < -1) {
      return Status::InvalidArgument(StageLabel(sweep, stage.index()) + ": finished row of trial " +
                                     std::to_string(row.trial()) + " has prompt " +
                                     std::to_string(row.prompt()));
    }
    KO_ASSIGN_OR_RETURN(std::string value, Serialize(row));
    batch.Put(Family::kResults, RowKey(sweep, stage.index(), row), value);
  }
  for (const auto& [name, bytes] : artifacts) {
    if (name.empty()) {
      return Status::InvalidArgument(StageLabel(sweep, stage.index()) +
                                     ": artifact with an empty name");
    }
    batch.Put(Family::kArtifacts, ArtifactKey(sweep, name), bytes);
  }
  v1::StageRecord done = stage;
  done.set_state(v1::DONE);
  KO_ASSIGN_OR_RETURN(std::string stage_value, Serialize(done));
  KO_ASSIGN_OR_RETURN(std::string sweep_value, Serialize(updated_sweep));
  batch.Put(Family::kStages, StageKey(sweep, stage.index()), stage_value);
  batch.Put(Family::kSweeps, SweepKey(sweep), sweep_value);
  std::lock_guard<std::mutex> commit_lock(commit_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  return store_->Write(batch, /*sync=*/true);
}

// ------------------------------------------------------------------------------------------
// Results and artifacts

StatusOr<std::vector<v1::ResultRow>> SweepStore::Rows(const std::string& sweep, uint32_t stage,
                                                      bool aggregates_only) const {
  std::vector<v1::ResultRow> rows;
  KO_RETURN_IF_ERROR(ForEachRow(sweep, stage, aggregates_only, [&](v1::ResultRow& row) {
    rows.push_back(std::move(row));
    return true;
  }));
  return rows;
}

Status SweepStore::ForEachRow(const std::string& sweep, uint32_t stage, bool aggregates_only,
                              const RowVisitor& visit) const {
  Status failed;
  const std::string label = StageLabel(sweep, stage) + " rows";
  KO_RETURN_IF_ERROR(store_->ForEach(
      Family::kResults, ResultsPrefix(sweep, stage, kRowKind), "",
      [&](std::string_view key, std::string_view value) {
        if (aggregates_only && TrailingUint32(key) != 0) return true;
        v1::ResultRow row;
        if (!row.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          failed = Status::Corruption(KeyName(Family::kResults, label, std::string(key)) +
                                      ": value (" + std::to_string(value.size()) +
                                      " bytes) does not parse as " + row.GetTypeName());
          return false;
        }
        return visit(row);
      }));
  return failed;
}

StatusOr<std::map<uint32_t, v1::TrialLabel>> SweepStore::TrialLabels(const std::string& sweep,
                                                                     uint32_t stage) const {
  std::map<uint32_t, v1::TrialLabel> labels;
  Status failed;
  const std::string label = StageLabel(sweep, stage) + " labels";
  KO_RETURN_IF_ERROR(store_->ForEach(
      Family::kResults, ResultsPrefix(sweep, stage, kLabelKind), "",
      [&](std::string_view key, std::string_view value) {
        v1::TrialLabel& trial = labels[TrailingUint32(key)];
        if (!trial.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          failed = Status::Corruption(KeyName(Family::kResults, label, std::string(key)) +
                                      ": value does not parse as " + trial.GetTypeName());
          return false;
        }
        return true;
      }));
  KO_RETURN_IF_ERROR(failed);
  if (!labels.empty()) return labels;
  // A stage expanded before the label index: its shards, one at a time.
  KO_RETURN_IF_ERROR(ForEachShard(sweep, stage, [&](v1::ShardRecord& shard) {
    for (const v1::Trial& trial : shard.shard().trials()) labels[trial.index()] = trial.label();
    return true;
  }));
  return labels;
}

Status SweepStore::ForEachShard(const std::string& sweep, uint32_t stage,
                                const std::function<bool(v1::ShardRecord& shard)>& visit) const {
  Status failed;
  const std::string label = StageLabel(sweep, stage);
  KO_RETURN_IF_ERROR(store_->ForEach(
      Family::kShards, StageKey(sweep, stage), "",
      [&](std::string_view key, std::string_view value) {
        v1::ShardRecord shard;
        if (!shard.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          failed = Status::Corruption(KeyName(Family::kShards, label, std::string(key)) +
                                      ": value does not parse as " + shard.GetTypeName());
          return false;
        }
        return visit(shard);
      }));
  return failed;
}

StatusOr<std::vector<v1::PartialSum>> SweepStore::PartialSums(const std::string& sweep,
                                                              uint32_t stage) const {
  return ScanRecords<v1::PartialSum>(*store_, Family::kResults,
                                     StageLabel(sweep, stage) + " partial sums",
                                     ResultsPrefix(sweep, stage, kPartialSumKind));
}

StatusOr<std::vector<v1::NeuronRanking>> SweepStore::Rankings(const std::string& sweep,
                                                              uint32_t stage) const {
  return ScanRecords<v1::NeuronRanking>(*store_, Family::kResults,
                                        StageLabel(sweep, stage) + " rankings",
                                        ResultsPrefix(sweep, stage, kRankingKind));
}

StatusOr<std::vector<v1::CompletionRecord>> SweepStore::Completions(const std::string& sweep,
                                                                    uint32_t stage) const {
  return ScanRecords<v1::CompletionRecord>(*store_, Family::kResults,
                                           StageLabel(sweep, stage) + " completions",
                                           ResultsPrefix(sweep, stage, kCompletionKind));
}

StatusOr<std::string> SweepStore::GetArtifact(const std::string& sweep,
                                              const std::string& name) const {
  const std::string key = ArtifactKey(sweep, name);
  auto value = store_->Get(Family::kArtifacts, key);
  if (!value.ok() && value.status().code() == StatusCode::kNotFound) {
    return Status::NotFound("sweep " + sweep + ": no artifact '" + name + "'");
  }
  return value;
}

StatusOr<std::vector<std::pair<std::string, std::string>>> SweepStore::ListArtifacts(
    const std::string& sweep, const std::string& prefix) const {
  const std::string sweep_key = SweepKey(sweep);
  KO_ASSIGN_OR_RETURN(auto entries, store_->Scan(Family::kArtifacts, sweep_key + prefix));
  for (auto& entry : entries) entry.first.erase(0, sweep_key.size());
  return entries;
}

}  // namespace knockout::experiments
