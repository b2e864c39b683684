#include "agent/boot/efi_vars.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "agent/base/fd.hpp"

namespace byoi {
namespace {

// From linux/magic.h; spelled out because not every libc header set has it.
constexpr int64_t kEfivarfsMagic = 0xde5e81e4;

Status CheckName(std::string_view name) {
  if (IsValidEfiVariableName(name)) return Status::Ok();
  return Status::Error(Code::kInternal, "invalid EFI variable name \"" + std::string(name) + "\"");
}

// efivarfs sets FS_IMMUTABLE_FL on variables the kernel does not know to be safe to change;
// writing or unlinking such a file fails with EPERM until the flag is cleared. File systems
// without inode flags (tmpfs on older kernels) answer ENOTTY, which means there is nothing to
// clear.
Status ClearImmutable(const std::string& path) {
  int raw = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (raw < 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno("opening " + path, errno);
  }
  UniqueFd fd(raw);
  int flags = 0;
  if (::ioctl(fd.get(), FS_IOC_GETFLAGS, &flags) != 0) {
    if (errno == ENOTTY || errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS) {
      return Status::Ok();
    }
    return Status::FromErrno("reading inode flags of " + path, errno);
  }
  if ((flags & FS_IMMUTABLE_FL) == 0) return Status::Ok();
  flags &= ~FS_IMMUTABLE_FL;
  if (::ioctl(fd.get(), FS_IOC_SETFLAGS, &flags) != 0) {
    return Status::FromErrno("clearing the immutable flag of " + path, errno);
  }
  return Status::Ok();
}

}  // namespace

bool IsValidEfiVariableName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool IsEfivarfs(const std::string& dir) {
  struct statfs st {};
  if (::statfs(dir.c_str(), &st) != 0) return false;
  return static_cast<int64_t>(st.f_type) == kEfivarfsMagic;
}

EfivarfsVars::EfivarfsVars(std::string dir) : dir_(std::move(dir)) {}

std::string EfivarfsVars::PathOf(std::string_view name) const {
  std::string path = dir_;
  path += '/';
  path += name;
  path += '-';
  path += kEfiGlobalVariableGuid;
  return path;
}

Result<std::vector<std::string>> EfivarfsVars::List() {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(dir_.c_str()), ::closedir);
  if (!dir) return Status::FromErrno("listing " + dir_, errno);
  std::string suffix = "-" + std::string(kEfiGlobalVariableGuid);
  std::vector<std::string> names;
  errno = 0;
  while (struct dirent* entry = ::readdir(dir.get())) {
    std::string_view file = entry->d_name;
    if (file.size() <= suffix.size() || file.substr(file.size() - suffix.size()) != suffix)
      continue;
    std::string_view name = file.substr(0, file.size() - suffix.size());
    if (IsValidEfiVariableName(name)) names.emplace_back(name);
  }
  if (errno != 0) return Status::FromErrno("listing " + dir_, errno);
  std::sort(names.begin(), names.end());
  return names;
}

Result<EfiVariable> EfivarfsVars::Read(std::string_view name) {
  BYOI_RETURN_IF_ERROR(CheckName(name));
  std::string path = PathOf(name);
  auto contents = ReadSmallFile(path, kMaxEfiVariableBytes + 4);
  if (!contents.ok()) {
    if (::access(path.c_str(), F_OK) != 0 && errno == ENOENT) {
      return Status::Error(Code::kNotFound,
                           "EFI variable " + std::string(name) + " does not exist");
    }
    Status s = std::move(contents).status();
    if (s.code() == Code::kTooBig) {
      return Status::Error(Code::kInvalid, std::string(s.detail()));
    }
    return s;
  }
  const std::string& bytes = *contents;
  if (bytes.size() < 4) {
    return Status::Error(Code::kInvalid, path + ": " + std::to_string(bytes.size()) +
                                             " bytes, shorter than the attributes");
  }
  EfiVariable var;
  var.attributes = static_cast<uint32_t>(static_cast<uint8_t>(bytes[0])) |
                   static_cast<uint32_t>(static_cast<uint8_t>(bytes[1])) << 8 |
                   static_cast<uint32_t>(static_cast<uint8_t>(bytes[2])) << 16 |
                   static_cast<uint32_t>(static_cast<uint8_t>(bytes[3])) << 24;
  var.data.assign(bytes.begin() + 4, bytes.end());
  return var;
}

Status EfivarfsVars::Write(std::string_view name, const EfiVariable& variable) {
  BYOI_RETURN_IF_ERROR(CheckName(name));
  if (variable.data.size() > kMaxEfiVariableBytes) {
    return Status::Error(Code::kTooBig, "EFI variable " + std::string(name) + " of " +
                                            std::to_string(variable.data.size()) +
                                            " bytes is too large");
  }
  std::string path = PathOf(name);
  BYOI_RETURN_IF_ERROR(ClearImmutable(path));

  std::vector<uint8_t> buf;
  buf.reserve(4 + variable.data.size());
  for (int shift = 0; shift < 32; shift += 8) buf.push_back((variable.attributes >> shift) & 0xFF);
  buf.insert(buf.end(), variable.data.begin(), variable.data.end());

  // efivarfs turns each write() into one SetVariable() call that replaces the whole variable, and
  // it has no use for O_TRUNC; a plain directory needs O_TRUNC to behave the same way.
  int flags = O_WRONLY | O_CREAT | (IsEfivarfs(dir_) ? 0 : O_TRUNC);
  BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, flags, 0644));
  ssize_t n;
  do {
    n = ::write(fd.get(), buf.data(), buf.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Status::FromErrno("writing " + path, errno);
  if (static_cast<size_t>(n) != buf.size()) {
    return Status::Error(Code::kIo, "writing " + path + ": short write of " + std::to_string(n) +
                                        " of " + std::to_string(buf.size()) + " bytes");
  }
  if (::close(fd.Release()) != 0) return Status::FromErrno("closing " + path, errno);
  return Status::Ok();
}

Status EfivarfsVars::Delete(std::string_view name) {
  BYOI_RETURN_IF_ERROR(CheckName(name));
  std::string path = PathOf(name);
  BYOI_RETURN_IF_ERROR(ClearImmutable(path));
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno("deleting " + path, errno);
  }
  return Status::Ok();
}

}  // namespace byoi
