#include "formats/checkpoint_files.h"

#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

namespace knockout::formats {
namespace {

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

StatusOr<std::vector<std::string>> ShardNames(const std::string& index_path) {
  std::ifstream in(index_path, std::ios::binary);
  if (!in) return Status::IOError(index_path + ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json index = nlohmann::json::parse(buffer.str(), nullptr, false);
  if (index.is_discarded() || !index.is_object()) {
    return Status::InvalidArgument(index_path + ": not a JSON object");
  }
  auto map = index.find("weight_map");
  if (map == index.end() || !map->is_object()) {
    return Status::InvalidArgument(index_path + ": field weight_map: missing or not an object");
  }
  std::set<std::string> names;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string()) {
      return Status::InvalidArgument(index_path + ": field weight_map." + it.key() +
                                     ": expected a file name");
    }
    const std::string file = it.value().get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
      return Status::InvalidArgument(index_path + ": field weight_map." + it.key() +
                                     ": invalid shard name \"" + file + "\"");
    }
    names.insert(file);
  }
  if (names.empty()) return Status::InvalidArgument(index_path + ": field weight_map: empty");
  return std::vector<std::string>(names.begin(), names.end());
}

}  // namespace

StatusOr<std::vector<std::string>> CheckpointWeightFiles(const std::string& dir) {
  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  if (FileExists(single)) return std::vector<std::string>{single};
  if (!FileExists(index)) {
    return Status::NotFound(dir + ": no model.safetensors or model.safetensors.index.json");
  }
  KO_ASSIGN_OR_RETURN(std::vector<std::string> shards, ShardNames(index));
  std::vector<std::string> paths;
  for (const std::string& shard : shards) {
    const std::string path = dir + "/" + shard;
    if (!FileExists(path)) {
      return Status::NotFound(index + ": shard " + shard + " does not exist in " + dir);
    }
    paths.push_back(path);
  }
  return paths;
}

}  // namespace knockout::formats
