// What `--version` prints in every knockout binary: the project version (CMake's
// project(VERSION)), the git commit it was built from (refreshed at every build; "-dirty" when
// tracked files had changes), and the versions of the libraries each binary names (gRPC,
// protobuf, RocksDB, LibTorch), one per line. Thread-safe.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace knockout {

// "knockout-worker 0.1.0 (git 0123456789ab)" then "  LibTorch 2.1.2" per library.
std::string VersionText(const std::string& program,
                        const std::vector<std::pair<std::string, std::string>>& libraries);

}  // namespace knockout
