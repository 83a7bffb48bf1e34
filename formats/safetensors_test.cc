#include "formats/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace knockout::formats {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> LittleEndian64(uint64_t v) {
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
  return out;
}

// A file made of an 8-byte length, `header` verbatim and `data_size` bytes of data.
std::vector<uint8_t> Craft(const std::string& header, size_t data_size) {
  std::vector<uint8_t> out = LittleEndian64(header.size());
  out.insert(out.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_size; ++i) out.push_back(static_cast<uint8_t>(i));
  return out;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir();
    if (tmpl.empty() || tmpl.back() != '/') tmpl += '/';
    tmpl += "safetensors_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string WriteBytes(const std::string& name, const std::vector<uint8_t>& bytes) {
    std::string path = Path(name);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << path;
    return path;
  }

  // Writes `header` + `data_size` bytes to a file called `name`, opens it and checks that it
  // fails with `code`, a message starting with the path and containing every `needles` text.
  void ExpectOpenError(const std::string& name, const std::string& header, size_t data_size,
                       StatusCode code, std::initializer_list<std::string> needles) {
    std::string path = WriteBytes(name, Craft(header, data_size));
    ExpectError(path, code, needles);
  }

  void ExpectError(const std::string& path, StatusCode code,
                   std::initializer_list<std::string> needles) {
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << path;
    const std::string& msg = file.status().message();
    EXPECT_EQ(file.status().code(), code) << file.status().ToString();
    EXPECT_EQ(msg.rfind(path, 0), 0u) << "message does not start with the path: " << msg;
    for (const std::string& needle : needles) {
      EXPECT_NE(msg.find(needle), std::string::npos)
          << "missing \"" << needle << "\" in: " << msg;
    }
  }

  std::string dir_;
};

// ---------------------------------------------------------------------------------------------
// Round trips

TEST_F(SafetensorsTest, RoundTripSeveralDtypesAndShapes) {
  std::vector<float> f32 = {1.5f, -2.f, 3.25f, 4.f, 5.f, 6.f};
  std::vector<uint16_t> bf16 = {0x3f80, 0x4000, 0xc040, 0x0000};
  std::vector<uint16_t> f16 = {0x3c00};
  int64_t scalar = -1234567890123;
  std::vector<int32_t> i32 = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<uint8_t> flags = {1, 0, 1};
  std::vector<double> f64 = {3.14159};
  std::vector<int8_t> i8 = {-1, 2};
  std::vector<int16_t> i16 = {-300, 300, 7};
  std::vector<uint8_t> u8 = {9, 8, 7, 6, 5};

  std::vector<TensorToWrite> tensors = {
      {"model.layers.0.mlp.up_proj.weight", DType::kF32, {2, 3}, f32.data(), 24},
      {"bf16", DType::kBF16, {4}, bf16.data(), 8},
      {"scalar", DType::kI64, {}, &scalar, 8},
      {"empty", DType::kF32, {0, 5}, nullptr, 0},
      {"f16", DType::kF16, {1}, f16.data(), 2},
      {"i32", DType::kI32, {2, 2, 2}, i32.data(), 32},
      {"mask", DType::kBool, {3}, flags.data(), 3},
      {"f64", DType::kF64, {1, 1, 1}, f64.data(), 8},
      {"i8", DType::kI8, {2}, i8.data(), 2},
      {"i16", DType::kI16, {3}, i16.data(), 6},
      {"u8", DType::kU8, {5}, u8.data(), 5},
  };
  const std::string path = Path("model.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const SafetensorsHeader& header = (*file)->header();
  EXPECT_EQ(header.data_offset % 8, 0u);
  EXPECT_EQ(header.data_offset + header.data_size, fs::file_size(path));
  EXPECT_TRUE(header.metadata.empty());
  ASSERT_EQ(header.tensors.size(), tensors.size());
  for (size_t i = 1; i < header.tensors.size(); ++i) {
    EXPECT_LE(header.tensors[i - 1].begin, header.tensors[i].begin);
  }
  for (const TensorToWrite& t : tensors) {
    SCOPED_TRACE(t.name);
    int index = header.Find(t.name);
    ASSERT_GE(index, 0);
    const TensorInfo& info = header.tensors[index];
    EXPECT_EQ(info.name, t.name);
    EXPECT_EQ(info.dtype, t.dtype);
    EXPECT_EQ(info.shape, t.shape);
    EXPECT_EQ(info.num_bytes(), t.num_bytes);
    EXPECT_EQ(info.num_elements() * DTypeSize(info.dtype), t.num_bytes);
    if (t.num_bytes > 0) {
      EXPECT_EQ(std::memcmp((*file)->TensorData(info), t.data, t.num_bytes), 0);
    }
    (*file)->ReleaseTensor(info);  // must be harmless, and data stays readable afterwards
  }
  EXPECT_EQ(header.Find("missing"), -1);
  EXPECT_EQ(header.tensors[header.Find("scalar")].num_elements(), 1u);
  EXPECT_EQ(header.tensors[header.Find("empty")].num_elements(), 0u);
  const TensorInfo& first = header.tensors[header.Find("model.layers.0.mlp.up_proj.weight")];
  float check[6];
  std::memcpy(check, (*file)->TensorData(first), sizeof(check));
  EXPECT_EQ(check[2], 3.25f);
}

TEST_F(SafetensorsTest, MetadataRoundTrip) {
  std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "quotes \" and \\ and unicode \xc3\xa9"}, {"empty", ""}};
  uint8_t byte = 7;
  const std::string path = Path("meta.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", DType::kU8, {1}, &byte, 1}}, metadata).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->header().metadata, metadata);
  EXPECT_EQ((*file)->header().tensors.size(), 1u);
}

TEST_F(SafetensorsTest, NoTensorsIsValid) {
  const std::string path = Path("none.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_TRUE((*file)->header().tensors.empty());
  EXPECT_EQ((*file)->header().data_size, 0u);
}

TEST_F(SafetensorsTest, ParserDoesNotDependOnKeyOrder) {
  // Entries listed in the opposite order of their offsets, metadata last, extra fields ignored.
  std::string header =
      R"({"b": {"shape": [2], "data_offsets": [8, 16], "dtype": "F32"},)"
      R"( "a": {"data_offsets": [0, 8], "dtype": "I64", "shape": [], "extra": 1},)"
      R"( "__metadata__": {"k": "v"}})";
  std::string path = WriteBytes("order.safetensors", Craft(header, 16));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const auto& tensors = (*file)->header().tensors;
  ASSERT_EQ(tensors.size(), 2u);
  EXPECT_EQ(tensors[0].name, "a");
  EXPECT_EQ(tensors[1].name, "b");
  EXPECT_EQ((*file)->header().metadata.at("k"), "v");
}

TEST_F(SafetensorsTest, EmptyTensorsAreLegalAnywhereInRange) {
  std::string header =
      R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
      R"( "e1": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},)"
      R"( "e2": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [8, 8]}})";
  std::string path = WriteBytes("empty.safetensors", Craft(header, 8));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->header().tensors.size(), 3u);
}

TEST_F(SafetensorsTest, DTypeNamesRoundTrip) {
  for (DType d : {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kI32,
                  DType::kI16, DType::kI8, DType::kU8, DType::kBool}) {
    auto parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok()) << DTypeName(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF64), 8u);
  EXPECT_EQ(DTypeSize(DType::kBool), 1u);
  auto bad = ParseDType("F8_E4M3");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("F8_E4M3"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// WriteSafetensors

TEST_F(SafetensorsTest, WriteLeavesNoTempFileOnSuccessAndOverwrites) {
  const std::string path = Path("out.safetensors");
  uint8_t a = 1, b[2] = {2, 3};
  ASSERT_TRUE(WriteSafetensors(path, {{"a", DType::kU8, {1}, &a, 1}}).ok());
  ASSERT_TRUE(WriteSafetensors(path, {{"b", DType::kU8, {2}, b, 2}}).ok());
  EXPECT_EQ(ListDir(dir_), std::vector<std::string>{"out.safetensors"});
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ((*file)->header().Find("a"), -1);
  EXPECT_EQ((*file)->header().Find("b"), 0);
}

TEST_F(SafetensorsTest, WriteIntoMissingDirectoryFailsWithoutLeftovers) {
  const std::string path = Path("no/such/dir/out.safetensors");
  uint8_t a = 1;
  Status s = WriteSafetensors(path, {{"a", DType::kU8, {1}, &a, 1}});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kIOError);
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  EXPECT_TRUE(ListDir(dir_).empty());
}

TEST_F(SafetensorsTest, WriteRejectsByteCountMismatchBeforeCreatingFiles) {
  const std::string path = Path("bad.safetensors");
  float data[4] = {};
  Status s = WriteSafetensors(path, {{"w", DType::kF32, {2, 2}, data, 12}});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("\"w\""), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("12"), std::string::npos) << s.message();
  EXPECT_TRUE(ListDir(dir_).empty());

  s = WriteSafetensors(path, {{"neg", DType::kF32, {-1}, data, 4}});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(ListDir(dir_).empty());
}

TEST_F(SafetensorsTest, WriteRejectsDuplicateNamesBeforeCreatingFiles) {
  const std::string path = Path("dup.safetensors");
  uint8_t a = 1;
  Status s = WriteSafetensors(path, {{"a", DType::kU8, {1}, &a, 1}, {"a", DType::kU8, {1}, &a, 1}});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("duplicate tensor name \"a\""), std::string::npos) << s.message();
  EXPECT_TRUE(ListDir(dir_).empty());
}

// ---------------------------------------------------------------------------------------------
// MappedFile

TEST_F(SafetensorsTest, MappedFileMissingPathIsIOError) {
  const std::string path = Path("does-not-exist.safetensors");
  auto file = MappedFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kIOError);
  EXPECT_NE(file.status().message().find(path), std::string::npos);
  EXPECT_NE(file.status().message().find(std::strerror(ENOENT)), std::string::npos)
      << file.status().message();
  auto st = SafetensorsFile::Open(path);
  EXPECT_EQ(st.status().code(), StatusCode::kIOError);
}

TEST_F(SafetensorsTest, MappedFileDirectoryIsIOError) {
  auto file = MappedFile::Open(dir_);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kIOError);
  EXPECT_NE(file.status().message().find(dir_), std::string::npos);
}

TEST_F(SafetensorsTest, MappedFileEmptyAndRelease) {
  auto empty = MappedFile::Open(WriteBytes("empty", {}));
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_EQ((*empty)->data(), nullptr);
  EXPECT_EQ((*empty)->size(), 0u);
  (*empty)->Release(0, 100);

  std::vector<uint8_t> bytes(3 * 4096 + 123);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7);
  auto file = MappedFile::Open(WriteBytes("pages", bytes));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  ASSERT_EQ((*file)->size(), bytes.size());
  (*file)->Release(10, 9000);
  (*file)->Release(0, SIZE_MAX);
  (*file)->Release(5000, 10);
  (*file)->Release(SIZE_MAX - 1, SIZE_MAX);
  // Released private file pages are re-read from the file on the next access.
  EXPECT_EQ(std::memcmp((*file)->data(), bytes.data(), bytes.size()), 0);
}

// ---------------------------------------------------------------------------------------------
// Parse errors, one per check. File names are chosen so that the label check is meaningful.

TEST_F(SafetensorsTest, FileShorterThan8Bytes) {
  std::string path = WriteBytes("short.safetensors", {1, 2, 3});
  ExpectError(path, StatusCode::kCorruption, {"too short", "3 bytes"});
  path = WriteBytes("zero.safetensors", {});
  ExpectError(path, StatusCode::kCorruption, {"too short"});
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFile) {
  std::vector<uint8_t> bytes = LittleEndian64(100);
  bytes.push_back('{');
  bytes.push_back('}');
  std::string path = WriteBytes("beyond.safetensors", bytes);
  ExpectError(path, StatusCode::kCorruption, {"header length 100", "beyond the file (10 bytes)"});
}

TEST_F(SafetensorsTest, HugeDeclaredHeaderLength) {
  std::vector<uint8_t> bytes = LittleEndian64(uint64_t{1} << 63);
  bytes.insert(bytes.end(), {'{', '}'});
  std::string path = WriteBytes("huge.safetensors", bytes);
  ExpectError(path, StatusCode::kCorruption, {"header length 9223372036854775808", "beyond"});
  bytes = LittleEndian64(UINT64_MAX);
  path = WriteBytes("max.safetensors", bytes);
  ExpectError(path, StatusCode::kCorruption, {"header length 18446744073709551615"});
}

TEST_F(SafetensorsTest, HeaderAboveSizeLimit) {
  // Parsed from memory so that the test needs no 100 MB file: the file is claimed to be larger.
  std::vector<uint8_t> bytes = LittleEndian64(200'000'000);
  auto header = ParseSafetensorsHeader(bytes.data(), bytes.size(), 300'000'000, "big.safetensors");
  ASSERT_FALSE(header.ok());
  EXPECT_EQ(header.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(header.status().message().rfind("big.safetensors: header length 200000000", 0), 0u)
      << header.status().message();
  EXPECT_NE(header.status().message().find("limit"), std::string::npos);
}

TEST_F(SafetensorsTest, HeaderBytesNotProvided) {
  std::vector<uint8_t> bytes = Craft("{}", 0);
  auto header = ParseSafetensorsHeader(bytes.data(), 9, 100, "partial.safetensors");
  ASSERT_FALSE(header.ok());
  EXPECT_EQ(header.status().message().rfind("partial.safetensors: ", 0), 0u);
}

TEST_F(SafetensorsTest, InvalidJson) {
  ExpectOpenError("json.safetensors", R"({"a": {"dtype": "F32",)", 0, StatusCode::kCorruption,
                  {"not valid JSON"});
  ExpectOpenError("json2.safetensors", "{} trailing", 0, StatusCode::kCorruption,
                  {"not valid JSON"});
  ExpectOpenError("utf8.safetensors", "{\"\xff\": 1}", 0, StatusCode::kCorruption,
                  {"not valid JSON"});
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  ExpectOpenError("array.safetensors", "[1, 2]", 0, StatusCode::kInvalidArgument,
                  {"not a JSON object", "array"});
}

TEST_F(SafetensorsTest, EntryNotAnObject) {
  ExpectOpenError("entry.safetensors", R"({"w": [1, 2]})", 0, StatusCode::kInvalidArgument,
                  {"tensor \"w\"", "expected an object"});
}

TEST_F(SafetensorsTest, MissingDtype) {
  ExpectOpenError("nodtype.safetensors", R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4,
                  StatusCode::kInvalidArgument, {"tensor \"w\"", "missing field \"dtype\""});
}

TEST_F(SafetensorsTest, MissingShape) {
  ExpectOpenError("noshape.safetensors", R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 4,
                  StatusCode::kInvalidArgument, {"tensor \"w\"", "missing field \"shape\""});
}

TEST_F(SafetensorsTest, MissingDataOffsets) {
  ExpectOpenError("nooffsets.safetensors", R"({"w": {"dtype": "F32", "shape": [1]}})", 4,
                  StatusCode::kInvalidArgument,
                  {"tensor \"w\"", "missing field \"data_offsets\""});
}

TEST_F(SafetensorsTest, DtypeNotAString) {
  ExpectOpenError("dtypetype.safetensors",
                  R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", 4,
                  StatusCode::kInvalidArgument, {"tensor \"w\"", "field \"dtype\"", "number"});
}

TEST_F(SafetensorsTest, ShapeNotAnArray) {
  ExpectOpenError("shapetype.safetensors",
                  R"({"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", 4,
                  StatusCode::kInvalidArgument, {"tensor \"w\"", "field \"shape\"", "string"});
}

TEST_F(SafetensorsTest, ShapeWithNonInteger) {
  ExpectOpenError("shapefloat.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4,
                  StatusCode::kInvalidArgument, {"tensor \"w\"", "field \"shape\"", "index 0"});
}

TEST_F(SafetensorsTest, DataOffsetsMistyped) {
  ExpectOpenError("offsets1.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4,
                  StatusCode::kInvalidArgument, {"tensor \"w\"", "field \"data_offsets\""});
  ExpectOpenError("offsets2.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 4,
                  StatusCode::kInvalidArgument, {"tensor \"w\"", "field \"data_offsets\""});
  ExpectOpenError("offsets3.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": {"a": 0}}})", 4,
                  StatusCode::kInvalidArgument, {"tensor \"w\"", "field \"data_offsets\""});
}

TEST_F(SafetensorsTest, UnknownDtype) {
  ExpectOpenError("fp8.safetensors",
                  R"({"w.fp8": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})", 1,
                  StatusCode::kInvalidArgument, {"tensor \"w.fp8\"", "\"F8_E4M3\""});
}

TEST_F(SafetensorsTest, NegativeDimension) {
  ExpectOpenError("negdim.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 4]}})", 4,
                  StatusCode::kInvalidArgument, {"tensor \"w\"", "negative dimension -3"});
}

TEST_F(SafetensorsTest, ElementCountOverflow) {
  ExpectOpenError(
      "numel.safetensors",
      R"({"w": {"dtype": "U8", "shape": [4294967296, 4294967296, 2], "data_offsets": [0, 4]}})",
      4, StatusCode::kInvalidArgument, {"tensor \"w\"", "field \"shape\"", "element count"});
  ExpectOpenError(
      "dimtoolarge.safetensors",
      R"({"w": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 4]}})", 4,
      StatusCode::kInvalidArgument, {"tensor \"w\"", "field \"shape\"", "too large"});
}

TEST_F(SafetensorsTest, ByteCountOverflow) {
  ExpectOpenError(
      "nbytes.safetensors",
      R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 4]}})", 4,
      StatusCode::kInvalidArgument, {"tensor \"w\"", "field \"shape\"", "byte count"});
}

TEST_F(SafetensorsTest, DataOffsetsBeginAfterEnd) {
  ExpectOpenError("order.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8,
                  StatusCode::kCorruption, {"tensor \"w\"", "data_offsets [8, 4]", "begin after"});
}

TEST_F(SafetensorsTest, DataOffsetsBeyondDataSection) {
  ExpectOpenError(
      "model.safetensors",
      R"({"model.layers.0.mlp.up_proj.weight": {"dtype": "F32", "shape": [100],)"
      R"( "data_offsets": [0, 400]}})",
      256, StatusCode::kCorruption,
      {"tensor \"model.layers.0.mlp.up_proj.weight\": data_offsets [0, 400] end beyond the data "
       "section (256 bytes)"});
}

TEST_F(SafetensorsTest, DataOffsetsLengthMismatch) {
  ExpectOpenError("len.safetensors",
                  R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}})", 16,
                  StatusCode::kCorruption,
                  {"tensor \"w\"", "data_offsets [0, 8]", "BF16 x [2, 3]", "12 bytes"});
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  ExpectOpenError("overlap.safetensors",
                  R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                  R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},)"
                  R"( "c": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                  20, StatusCode::kCorruption, {"tensor \"c\"", "overlap", "\"a\""});
  // Identical ranges overlap too.
  ExpectOpenError("same.safetensors",
                  R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},)"
                  R"( "b": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})",
                  4, StatusCode::kCorruption, {"overlap", "\"a\"", "\"b\""});
}

TEST_F(SafetensorsTest, DuplicateTensorNames) {
  ExpectOpenError("dup.safetensors",
                  R"({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},)"
                  R"( "w": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                  8, StatusCode::kInvalidArgument, {"duplicate tensor name \"w\""});
}

TEST_F(SafetensorsTest, DuplicateFieldInEntry) {
  ExpectOpenError("dupfield.safetensors",
                  R"({"w": {"dtype": "U8", "dtype": "F32", "shape": [4], "data_offsets": [0, 4]}})",
                  4, StatusCode::kInvalidArgument, {"tensor \"w\"", "duplicate key \"dtype\""});
}

TEST_F(SafetensorsTest, DeeplyNestedJsonIsRejectedWithoutCrashing) {
  // A million levels would overflow the stack in any recursive copy, dump or destructor.
  const size_t depth = 1'000'000;
  std::string deep = std::string(depth, '[') + std::string(depth, ']');
  ExpectOpenError("deep1.safetensors",
                  R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": )" + deep + "}}", 4,
                  StatusCode::kInvalidArgument, {"nests deeper"});
  std::string objects;
  for (size_t i = 0; i < depth; ++i) objects += "{\"a\":";
  objects += "1" + std::string(depth, '}');
  ExpectOpenError("deep2.safetensors", objects, 0, StatusCode::kInvalidArgument,
                  {"nests deeper"});
}

TEST_F(SafetensorsTest, DuplicateMetadataKey) {
  ExpectOpenError("dupmeta.safetensors", R"({"__metadata__": {"k": "a", "k": "b"}})", 0,
                  StatusCode::kInvalidArgument, {"\"__metadata__\"", "duplicate key \"k\""});
}

TEST_F(SafetensorsTest, MetadataNotAnObject) {
  ExpectOpenError("meta1.safetensors", R"({"__metadata__": "pt"})", 0,
                  StatusCode::kInvalidArgument, {"\"__metadata__\"", "expected an object"});
}

TEST_F(SafetensorsTest, MetadataValueNotAString) {
  ExpectOpenError("meta2.safetensors", R"({"__metadata__": {"format": "pt", "step": 3}})", 0,
                  StatusCode::kInvalidArgument, {"\"__metadata__\"", "\"step\"", "string"});
}

TEST_F(SafetensorsTest, TruncatedDataSection) {
  const std::string path = Path("trunc.safetensors");
  std::vector<float> a(16, 1.f), b(16, 2.f);
  ASSERT_TRUE(WriteSafetensors(path, {{"a", DType::kF32, {16}, a.data(), 64},
                                      {"b", DType::kF32, {4, 4}, b.data(), 64}})
                  .ok());
  fs::resize_file(path, fs::file_size(path) - 10);
  ExpectError(path, StatusCode::kCorruption,
              {"tensor \"b\"", "data_offsets [64, 128]", "beyond the data section (118 bytes)"});
}

TEST_F(SafetensorsTest, ParseFromMemoryWithLabel) {
  std::vector<uint8_t> bytes =
      Craft(R"({"t": {"dtype": "I16", "shape": [2], "data_offsets": [0, 4]}})", 4);
  auto header = ParseSafetensorsHeader(bytes.data(), bytes.size(), bytes.size(), "mem");
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->data_size, 4u);
  EXPECT_EQ(header->tensors[0].dtype, DType::kI16);

  auto null_bytes = ParseSafetensorsHeader(nullptr, 0, 0, "null");
  ASSERT_FALSE(null_bytes.ok());
  EXPECT_EQ(null_bytes.status().message().rfind("null: ", 0), 0u);
}

}  // namespace
}  // namespace knockout::formats
