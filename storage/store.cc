#include "storage/store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/version.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include "storage/keys.h"

namespace knockout::storage {
namespace {

constexpr Family kFamilies[] = {Family::kMeta,      Family::kSweeps,  Family::kStages,
                                Family::kShards,    Family::kPending, Family::kResults,
                                Family::kArtifacts, Family::kWorkers, Family::kLeases,
                                Family::kFailures};
constexpr char kSchemaKey[] = "schema_version";

std::string EncodeVersion(uint32_t version) {
  std::string value;
  AppendUint32(&value, version);
  return value;
}

}  // namespace

const char* FamilyName(Family family) {
  switch (family) {
    case Family::kMeta: return "meta";
    case Family::kSweeps: return "sweeps";
    case Family::kStages: return "stages";
    case Family::kShards: return "shards";
    case Family::kPending: return "pending";
    case Family::kResults: return "results";
    case Family::kArtifacts: return "artifacts";
    case Family::kWorkers: return "workers";
    case Family::kLeases: return "leases";
    case Family::kFailures: return "failures";
  }
  return "unknown";
}

StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) { return OpenImpl(path, false); }

StatusOr<std::unique_ptr<Store>> Store::OpenReadOnly(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(path, ec) || fs::is_empty(path, ec)) {
    return Status::NotFound("no store at " + path);
  }
  return OpenImpl(path, true);
}

StatusOr<std::unique_ptr<Store>> Store::OpenImpl(const std::string& path, bool read_only) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool exists = fs::exists(path, ec);
  bool fresh = !exists;
  if (exists) {
    if (!fs::is_directory(path, ec)) {
      return Status::InvalidArgument(path + ": exists and is not a directory");
    }
    if (fs::is_empty(path, ec)) {
      fresh = true;
    } else if (!fs::exists(fs::path(path) / "CURRENT", ec)) {
      return Status::InvalidArgument(path +
                                     ": not a knockout store (a non-empty directory without a "
                                     "RocksDB database); choose another --store directory");
    }
  }

  rocksdb::Options options;
  options.create_if_missing = fresh;
  options.create_missing_column_families = fresh;
  std::vector<std::string> existing;
  if (!fresh) {
    rocksdb::Status s = rocksdb::DB::ListColumnFamilies(options, path, &existing);
    if (!s.ok()) return Status::IOError(path + ": cannot read the database: " + s.ToString());
    if (std::find(existing.begin(), existing.end(), "meta") == existing.end()) {
      return Status::FailedPrecondition(path +
                                        ": a RocksDB database that is not a knockout store (no "
                                        "meta column family)");
    }
  }
  // Open every family that exists (RocksDB requires it) plus ours.
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (Family family : kFamilies) descriptors.emplace_back(FamilyName(family), rocksdb::ColumnFamilyOptions());
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());
  for (const std::string& name : existing) {
    bool known = std::any_of(descriptors.begin(), descriptors.end(),
                             [&](const auto& d) { return d.name == name; });
    if (!known) descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  if (!fresh) options.create_missing_column_families = true;  // a newer build may add families

  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::Status s;
  if (read_only) {
    // A reader beside a running writer (queries during `knockout run`): no lock, a snapshot of
    // the state at open. Only the families that exist can be opened.
    // The families added after the first build (kLeases, kFailures: the coordinator's indexes,
    // which queries do not read) may be missing: reads of them find nothing.
    std::vector<rocksdb::ColumnFamilyDescriptor> present;
    std::vector<bool> have;
    for (size_t i = 0; i < descriptors.size(); ++i) {
      const bool exists = std::find(existing.begin(), existing.end(), descriptors[i].name) != existing.end();
      const bool later = i < std::size(kFamilies) && kFamilies[i] >= Family::kLeases;
      if (!exists && !later) {
        return Status::FailedPrecondition(path + ": store written by an older build (no \"" +
                                          descriptors[i].name + "\" family); open it read-write once");
      }
      have.push_back(exists);
      if (exists) present.push_back(descriptors[i]);
    }
    s = rocksdb::DB::OpenForReadOnly(options, path, present, &handles, &db);
    if (s.ok()) {
      std::vector<rocksdb::ColumnFamilyHandle*> aligned;  // by Family, nullptr where missing
      size_t next = 0;
      for (bool exists : have) aligned.push_back(exists ? handles[next++] : nullptr);
      handles = std::move(aligned);
    }
  } else {
    s = rocksdb::DB::Open(options, path, descriptors, &handles, &db);
  }
  if (!s.ok()) return Status::IOError(path + ": cannot open the store: " + s.ToString());

  uint32_t version = kSchemaVersion;
  std::string value;
  s = db->Get(rocksdb::ReadOptions(), handles[0], kSchemaKey, &value);
  Status problem;
  if (s.IsNotFound()) {
    if (fresh && !read_only) {
      rocksdb::WriteOptions write;
      write.sync = true;
      s = db->Put(write, handles[0], kSchemaKey, EncodeVersion(kSchemaVersion));
      if (!s.ok()) problem = Status::IOError(path + ": cannot write the schema version: " + s.ToString());
    } else {
      problem = Status::FailedPrecondition(path + ": not a knockout store (no schema version)");
    }
  } else if (!s.ok()) {
    problem = Status::IOError(path + ": cannot read the schema version: " + s.ToString());
  } else {
    KeyReader reader(value);
    auto stored = reader.Uint32("schema_version");
    if (!stored.ok() || !reader.done()) {
      problem = Status::Corruption(path + ": malformed schema version");
    } else if (*stored > kSchemaVersion) {
      problem = Status::FailedPrecondition(
          path + ": store schema version " + std::to_string(*stored) +
          " is newer than this build's " + std::to_string(kSchemaVersion) +
          "; upgrade knockout to open it");
    } else {
      version = *stored;
    }
  }
  if (!problem.ok()) {
    for (auto* handle : handles) {
      if (handle != nullptr) db->DestroyColumnFamilyHandle(handle);
    }
    delete db;
    return problem;
  }
  return std::unique_ptr<Store>(new Store(path, db, std::move(handles), version));
}

Store::Store(std::string path, rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles,
             uint32_t schema_version)
    : path_(std::move(path)), db_(db), handles_(std::move(handles)), schema_version_(schema_version) {}

Store::~Store() {
  for (auto* handle : handles_) {
    if (handle != nullptr) db_->DestroyColumnFamilyHandle(handle);
  }
  delete db_;
}

rocksdb::ColumnFamilyHandle* Store::Handle(Family family) const {
  return handles_[static_cast<size_t>(family)];
}

StatusOr<std::string> Store::Get(Family family, const std::string& key) const {
  if (Handle(family) == nullptr) {  // a later family a read-only store does not have yet
    return Status::NotFound(std::string(FamilyName(family)) + ": key not found");
  }
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Handle(family), key, &value);
  if (s.IsNotFound()) {
    return Status::NotFound(std::string(FamilyName(family)) + ": key not found");
  }
  if (!s.ok()) return Status::IOError(path_ + ": read failed: " + s.ToString());
  return value;
}

Store::Batch::Batch() = default;
Store::Batch::~Batch() = default;

void Store::Batch::Put(Family family, const std::string& key, const std::string& value) {
  ops_.push_back({family, false, key, value});
}

void Store::Batch::Delete(Family family, const std::string& key) {
  ops_.push_back({family, true, key, ""});
}

Status Store::Write(const Batch& batch, bool sync) {
  rocksdb::WriteBatch write_batch;
  for (const Batch::Op& op : batch.ops_) {
    if (Handle(op.family) == nullptr) {
      return Status::FailedPrecondition(path_ + ": opened read-only without the \"" +
                                        std::string(FamilyName(op.family)) + "\" family");
    }
    rocksdb::Status s = op.is_delete ? write_batch.Delete(Handle(op.family), op.key)
                                     : write_batch.Put(Handle(op.family), op.key, op.value);
    if (!s.ok()) return Status::Internal("cannot build a write batch: " + s.ToString());
  }
  // A synced write is written unsynced, then the WAL is synced with SyncWAL before returning:
  // just as durable when this returns, but RocksDB's write queue is not held during the
  // fdatasync, so unsynced writes (the coordinator's lease grants) do not wait for it
  // (coordinator_bench, 64 workers: ~15% more round trips). The batch is readable a moment
  // before it is durable, and stays readable if the sync fails; the WAL is sequential, so any
  // later successful synced write (even of an empty batch) makes it durable too.
  rocksdb::WriteOptions options;
  options.sync = false;
  rocksdb::Status s = db_->Write(options, &write_batch);
  if (!s.ok()) return Status::IOError(path_ + ": write failed: " + s.ToString());
  if (sync) {
    s = db_->SyncWAL();
    if (!s.ok()) {
      return Status::IOError(path_ + ": syncing the write-ahead log failed: " + s.ToString());
    }
  }
  return Status::Ok();
}

std::string Store::RocksDbVersion() {
  return std::to_string(ROCKSDB_MAJOR) + "." + std::to_string(ROCKSDB_MINOR) + "." +
         std::to_string(ROCKSDB_PATCH);
}

Status Store::Sync() {
  rocksdb::Status s = db_->SyncWAL();
  if (!s.ok()) return Status::IOError(path_ + ": syncing the write-ahead log failed: " + s.ToString());
  return Status::Ok();
}

StatusOr<std::vector<std::pair<std::string, std::string>>> Store::Scan(
    Family family, const std::string& prefix) const {
  std::vector<std::pair<std::string, std::string>> rows;
  KO_RETURN_IF_ERROR(ForEach(family, prefix, "", [&](std::string_view key, std::string_view value) {
    rows.emplace_back(key, value);
    return true;
  }));
  return rows;
}

Status Store::ForEach(Family family, const std::string& prefix, const std::string& start_after,
                      Visitor visit, void* context) const {
  if (Handle(family) == nullptr) return Status::Ok();
  rocksdb::ReadOptions options;
  options.fill_cache = false;  // a long range read should not evict the hot records
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(options, Handle(family)));
  if (start_after.empty() || start_after < prefix) {
    it->Seek(prefix);
  } else {
    it->Seek(start_after);
    if (it->Valid() && it->key() == rocksdb::Slice(start_after)) it->Next();
  }
  for (; it->Valid() && it->key().starts_with(prefix); it->Next()) {
    if (!visit(context, std::string_view(it->key().data(), it->key().size()),
               std::string_view(it->value().data(), it->value().size()))) {
      break;
    }
  }
  if (!it->status().ok()) return Status::IOError(path_ + ": scan failed: " + it->status().ToString());
  return Status::Ok();
}

}  // namespace knockout::storage
