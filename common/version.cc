#include "common/version.h"

#include "knockout/build_info.h"  // generated: KNOCKOUT_GIT_COMMIT

namespace knockout {

std::string VersionText(const std::string& program,
                        const std::vector<std::pair<std::string, std::string>>& libraries) {
  std::string text = program + " " KNOCKOUT_VERSION " (git " KNOCKOUT_GIT_COMMIT ")\n";
  for (const auto& [name, version] : libraries) text += "  " + name + " " + version + "\n";
  return text;
}

}  // namespace knockout
