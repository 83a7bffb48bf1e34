#include "storage/store.h"

#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <filesystem>
#include <fstream>

#include "storage/keys.h"

namespace knockout::storage {
namespace {

namespace fs = std::filesystem;

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/store_test_" + name;
  fs::remove_all(dir);
  return dir;
}

TEST(KeysTest, BigEndianKeysSortLikeNumbers) {
  std::string a, b;
  AppendUint64(&a, 255);
  AppendUint64(&b, 256);
  EXPECT_LT(a, b);
  AppendString(&a, "stage");
  AppendUint32(&a, 7);
  KeyReader reader(a);
  EXPECT_EQ(*reader.Uint64("sweep"), 255u);
  EXPECT_EQ(*reader.String("stage"), "stage");
  EXPECT_EQ(*reader.Uint32("shard"), 7u);
  EXPECT_TRUE(reader.done());
  auto missing = reader.Uint32("trial");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("trial"), std::string::npos);
}

TEST(StoreTest, CreatesReopensAndKeepsData) {
  const std::string dir = FreshDir("reopen");
  {
    auto store = Store::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    EXPECT_EQ((*store)->schema_version(), Store::kSchemaVersion);
    Store::Batch batch;
    for (uint64_t i : {3, 1, 2}) {
      std::string key;
      AppendUint64(&key, 9);
      AppendUint64(&key, i);
      batch.Put(Family::kResults, key, "row" + std::to_string(i));
    }
    batch.Put(Family::kShards, "other", "x");
    ASSERT_TRUE((*store)->Write(batch, /*sync=*/true).ok());
  }
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  std::string prefix;
  AppendUint64(&prefix, 9);
  auto rows = (*store)->Scan(Family::kResults, prefix);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_EQ((*rows)[0].second, "row1");
  EXPECT_EQ((*rows)[2].second, "row3");
  EXPECT_EQ(*(*store)->Get(Family::kShards, "other"), "x");
  auto missing = (*store)->Get(Family::kShards, "nothing");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST(StoreTest, BatchesAreAtomicPutsAndDeletes) {
  auto store = Store::Open(FreshDir("batch"));
  ASSERT_TRUE(store.ok());
  Store::Batch put;
  put.Put(Family::kPending, "a", "1");
  put.Put(Family::kShards, "a", "pending");
  ASSERT_TRUE((*store)->Write(put, false).ok());
  Store::Batch lease;
  lease.Delete(Family::kPending, "a");
  lease.Put(Family::kShards, "a", "leased");
  ASSERT_TRUE((*store)->Write(lease, true).ok());
  EXPECT_FALSE((*store)->Get(Family::kPending, "a").ok());
  EXPECT_EQ(*(*store)->Get(Family::kShards, "a"), "leased");
}

TEST(StoreTest, ForEachStreamsAPrefixFromAKeyAndStopsWhenAsked) {
  auto store = Store::Open(FreshDir("foreach"));
  ASSERT_TRUE(store.ok());
  Store::Batch batch;
  for (const char* key : {"a1", "b1", "b2", "b3", "b4", "c1"}) {
    batch.Put(Family::kResults, key, std::string("v") + key);
  }
  ASSERT_TRUE((*store)->Write(batch, false).ok());
  auto collect = [&](const std::string& prefix, const std::string& after, size_t stop_at) {
    std::vector<std::string> seen;
    const Status status = (*store)->ForEach(
        Family::kResults, prefix, after, [&](std::string_view key, std::string_view value) {
          EXPECT_EQ(value, "v" + std::string(key));
          seen.emplace_back(key);
          return seen.size() < stop_at;
        });
    EXPECT_TRUE(status.ok()) << status.ToString();
    return seen;
  };
  using Keys = std::vector<std::string>;
  EXPECT_EQ(collect("b", "", 100), (Keys{"b1", "b2", "b3", "b4"}));
  EXPECT_EQ(collect("b", "b2", 100), (Keys{"b3", "b4"}));       // strictly after
  EXPECT_EQ(collect("b", "b25", 100), (Keys{"b3", "b4"}));      // between two keys
  EXPECT_EQ(collect("b", "a9", 100), (Keys{"b1", "b2", "b3", "b4"}));  // before the prefix
  EXPECT_EQ(collect("b", "b4", 100), Keys{});
  EXPECT_EQ(collect("b", "", 2), (Keys{"b1", "b2"}));            // stopped by the visitor
  EXPECT_EQ(collect("", "", 100).size(), 6u);
  EXPECT_EQ(collect("d", "", 100), Keys{});
}

TEST(StoreTest, ReadOnlyOpensBesideAWriterAndRefusesWrites) {
  const std::string dir = FreshDir("read_only");
  EXPECT_EQ(Store::OpenReadOnly(dir).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(dir));  // a reader never creates a store
  auto writer = Store::Open(dir);
  ASSERT_TRUE(writer.ok());
  Store::Batch put;
  put.Put(Family::kSweeps, "s", "v1");
  ASSERT_TRUE((*writer)->Write(put, true).ok());
  EXPECT_FALSE(Store::Open(dir).ok());  // the writer holds RocksDB's lock
  auto reader = Store::OpenReadOnly(dir);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ(*(*reader)->Get(Family::kSweeps, "s"), "v1");
  EXPECT_FALSE((*reader)->Write(put, true).ok());
}

// A store written before the lease and failure families existed: queries (read-only) still open
// it and find nothing there; the first read-write open adds them.
TEST(StoreTest, ReadOnlyOpensAStoreWithoutTheLaterFamilies) {
  const std::string dir = FreshDir("older");
  {
    auto store = Store::Open(dir);
    ASSERT_TRUE(store.ok());
    Store::Batch put;
    put.Put(Family::kSweeps, "s", "v1");
    ASSERT_TRUE((*store)->Write(put, true).ok());
  }
  {
    // Drop the later families with RocksDB itself, as the older build never had them.
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::Options(), dir, &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const std::string& name : names) descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), dir, descriptors, &handles, &db).ok());
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == "leases" || names[i] == "failures") {
        ASSERT_TRUE(db->DropColumnFamily(handles[i]).ok());
      }
    }
    for (auto* handle : handles) db->DestroyColumnFamilyHandle(handle);
    delete db;
  }
  {
    auto reader = Store::OpenReadOnly(dir);
    ASSERT_TRUE(reader.ok()) << reader.status().ToString();
    EXPECT_EQ(*(*reader)->Get(Family::kSweeps, "s"), "v1");
    EXPECT_EQ((*reader)->Get(Family::kLeases, "x").status().code(), StatusCode::kNotFound);
    auto scanned = (*reader)->Scan(Family::kFailures, "");
    ASSERT_TRUE(scanned.ok());
    EXPECT_TRUE(scanned->empty());
    int visited = 0;
    EXPECT_TRUE((*reader)
                    ->ForEach(Family::kLeases, "", "",
                              [&](std::string_view, std::string_view) { return ++visited > 0; })
                    .ok());
    EXPECT_EQ(visited, 0);
    Store::Batch lease;
    lease.Put(Family::kLeases, "x", "y");
    EXPECT_FALSE((*reader)->Write(lease, false).ok());
  }
  auto writer = Store::Open(dir);  // adds the families
  ASSERT_TRUE(writer.ok()) << writer.status().ToString();
  Store::Batch lease;
  lease.Put(Family::kLeases, "x", "y");
  ASSERT_TRUE((*writer)->Write(lease, true).ok());
  EXPECT_EQ(*(*writer)->Get(Family::kLeases, "x"), "y");
}

TEST(StoreTest, RefusesNewerSchema) {
  const std::string dir = FreshDir("newer");
  ASSERT_TRUE(Store::Open(dir).ok());
  {
    // Rewrite the schema version as a future build would.
    rocksdb::DB* db = nullptr;
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::Options(), dir, &names).ok());
    for (const auto& name : names) descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), dir, descriptors, &handles, &db).ok());
    std::string value;
    AppendUint32(&value, Store::kSchemaVersion + 1);
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == "meta") {
        ASSERT_TRUE(db->Put({}, handles[i], "schema_version", value).ok());
      }
    }
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
    delete db;
  }
  auto store = Store::Open(dir);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(store.status().message().find("newer than this build"), std::string::npos);
}

TEST(StoreTest, RefusesForeignDirectories) {
  const std::string dir = FreshDir("foreign");
  fs::create_directories(dir);
  std::ofstream(dir + "/notes.txt") << "not a database";
  auto store = Store::Open(dir);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("not a knockout store"), std::string::npos);

  const std::string plain = FreshDir("plain_rocksdb");
  {
    rocksdb::DB* db = nullptr;
    rocksdb::Options options;
    options.create_if_missing = true;
    ASSERT_TRUE(rocksdb::DB::Open(options, plain, &db).ok());
    delete db;
  }
  store = Store::Open(plain);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kFailedPrecondition);

  const std::string file = FreshDir("file");
  std::ofstream(file) << "x";
  EXPECT_FALSE(Store::Open(file).ok());
}

}  // namespace
}  // namespace knockout::storage
