// Writing a whole file atomically: a temporary file in the same directory, fsync, rename, so that
// readers see either the old file or the complete new one and a crash never leaves half a file.
// Stateless; thread-safe for distinct paths.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/status.h"

namespace knockout {

// Writes `contents` to `path`. IOError naming `path`, the step that failed and the OS's reason;
// the temporary file is removed on failure.
inline Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  auto fail = [&](const std::string& what) {
    const std::string reason = std::strerror(errno);
    ::unlink(temp.c_str());
    return Status::IOError(path + ": " + what + ": " + reason);
  };
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IOError(path + ": cannot create " + temp + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const Status s = fail("write failed");
      ::close(fd);
      return s;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const Status s = fail("fsync failed");
    ::close(fd);
    return s;
  }
  if (::close(fd) != 0) return fail("close failed");
  if (::rename(temp.c_str(), path.c_str()) != 0) return fail("rename failed");
  return Status::Ok();
}

}  // namespace knockout
