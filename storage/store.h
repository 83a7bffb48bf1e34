// Store: knockout's durable state in one RocksDB directory, with the column families of
// design.md and a schema version checked on open. Later layers (the experiments engine, the
// coordinator) build sweeps, shards, leases and results on top of it.
// Thread-safety: a Store may be used from many threads at once (RocksDB is internally
// synchronised); Open and destruction must not race with other calls.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/status.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class WriteBatch;
}  // namespace rocksdb

namespace knockout::storage {

// Column families, in the order of design.md (kLeases and kFailures came later: a store written
// before them gets them when it is first opened read-write).
enum class Family {
  kMeta, kSweeps, kStages, kShards, kPending, kResults, kArtifacts, kWorkers, kLeases, kFailures
};
const char* FamilyName(Family family);

class Store {
 public:
  // The schema this build writes and reads.
  static constexpr uint32_t kSchemaVersion = 1;

  // Opens (or, if `path` does not exist or is empty, creates) a store. Errors:
  //   FailedPrecondition: the directory holds a store with a newer schema version (written by a
  //     newer knockout), or a RocksDB database that is not a knockout store (no schema key);
  //   InvalidArgument: `path` exists and is not a directory, or is a non-empty directory that
  //     is not a RocksDB database;
  //   IOError: RocksDB failed to open (message includes RocksDB's, e.g. a lock held by another
  //     process).
  static StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  // Opens an existing store for reading only, without RocksDB's lock, so that queries can run
  // beside a writer (a snapshot as of the open). NotFound if `path` holds no store; the other
  // errors of Open. Write then fails with FailedPrecondition.
  static StatusOr<std::unique_ptr<Store>> OpenReadOnly(const std::string& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Point read. NotFound (naming the family) if the key is absent.
  StatusOr<std::string> Get(Family family, const std::string& key) const;

  // A set of puts and deletes applied atomically: every state change is one batch.
  class Batch {
   public:
    Batch();
    ~Batch();
    void Put(Family family, const std::string& key, const std::string& value);
    void Delete(Family family, const std::string& key);

   private:
    friend class Store;
    struct Op {
      Family family;
      bool is_delete;
      std::string key, value;
    };
    std::vector<Op> ops_;
  };
  // Applies `batch` atomically. With `sync`, the WAL is synced before returning (results are
  // acknowledged only after a synced commit).
  Status Write(const Batch& batch, bool sync);

  // Makes every write so far durable (the write-ahead log synced): what a group of unsynced
  // writes needs before it is acknowledged. IOError naming the path.
  Status Sync();

  // Every (key, value) in `family` whose key starts with `prefix`, in key order. Holds the
  // whole range in memory: for small ranges (a sweep's stages, its leases); large ones stream.
  StatusOr<std::vector<std::pair<std::string, std::string>>> Scan(Family family,
                                                                  const std::string& prefix) const;

  // The streaming form of Scan: calls `visit(key, value)` for every key in `family` that starts
  // with `prefix` and sorts after `start_after` (all of them when it is empty), in key order,
  // one at a time through a RocksDB iterator (memory stays flat in the range's size), until
  // `visit` returns false. The views are valid during the call only. Errors: IOError from the
  // iterator; a non-OK status returned by `visit` (through `*stop`) is the caller's business.
  using Visitor = bool (*)(void* context, std::string_view key, std::string_view value);
  Status ForEach(Family family, const std::string& prefix, const std::string& start_after,
                 Visitor visit, void* context) const;
  template <typename Fn>  // bool(std::string_view key, std::string_view value)
  Status ForEach(Family family, const std::string& prefix, const std::string& start_after,
                 Fn&& fn) const {
    return ForEach(
        family, prefix, start_after,
        [](void* context, std::string_view key, std::string_view value) {
          return (*static_cast<std::remove_reference_t<Fn>*>(context))(key, value);
        },
        &fn);
  }

  // "7.8.3": the RocksDB this build links (--version).
  static std::string RocksDbVersion();

  const std::string& path() const { return path_; }
  uint32_t schema_version() const { return schema_version_; }

 private:
  static StatusOr<std::unique_ptr<Store>> OpenImpl(const std::string& path, bool read_only);
  Store(std::string path, rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles,
        uint32_t schema_version);
  rocksdb::ColumnFamilyHandle* Handle(Family family) const;

  std::string path_;
  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // by Family, then the default family
  uint32_t schema_version_;
};

}  // namespace knockout::storage
