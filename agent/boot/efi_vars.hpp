// Firmware variables (UEFI 2.10 §8.2), the way the boot step reads and writes Boot####, BootOrder
// and BootNext.
//
// Linux shows each variable as one file of efivarfs, named `<Name>-<vendor GUID>`, whose content is
// the 4-byte attributes (little-endian) followed by the data. A write() replaces the variable with
// exactly what one call carries, so a variable is always written in a single write(). efivarfs
// marks most files immutable (FS_IMMUTABLE_FL) to protect firmware from careless `rm`; the flag is
// cleared just before a write or a delete. Only the EFI global variable namespace is used here.
//
// `EfiVars` is the seam: `EfivarfsVars` works on any directory — the real efivarfs mount, or a
// plain temporary directory that stands in for it in tests (same file format) — and tests can wrap
// it to inject failures.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/status.hpp"

namespace byoi {

// EFI_GLOBAL_VARIABLE, lower case as efivarfs spells it.
inline constexpr std::string_view kEfiGlobalVariableGuid = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

inline constexpr uint32_t kEfiVariableNonVolatile = 0x1;
inline constexpr uint32_t kEfiVariableBootserviceAccess = 0x2;
inline constexpr uint32_t kEfiVariableRuntimeAccess = 0x4;
// What Boot####, BootOrder and BootNext carry (UEFI 2.10 §3.3, table 3-1).
inline constexpr uint32_t kEfiBootVariableAttributes =
    kEfiVariableNonVolatile | kEfiVariableBootserviceAccess | kEfiVariableRuntimeAccess;

// Firmware variables are small; NVRAM stores are typically 64–256 KiB in all.
inline constexpr size_t kMaxEfiVariableBytes = 64 * 1024;

struct EfiVariable {
  uint32_t attributes = kEfiBootVariableAttributes;
  std::vector<uint8_t> data;

  bool operator==(const EfiVariable&) const = default;
};

// True for names we accept: 1-128 ASCII letters, digits or '_' ("Boot000A", "BootOrder"). Anything
// else is refused, so a name can never reach outside the directory.
bool IsValidEfiVariableName(std::string_view name);

// Variables of the EFI global namespace. Names are without the GUID ("Boot0001").
class EfiVars {
 public:
  virtual ~EfiVars() = default;

  // Names of the existing variables, sorted. Names failing IsValidEfiVariableName are left out.
  virtual Result<std::vector<std::string>> List() = 0;
  // The variable, or kNotFound when it does not exist; kInvalid when it is malformed (shorter
  // than the attributes) or larger than kMaxEfiVariableBytes.
  virtual Result<EfiVariable> Read(std::string_view name) = 0;
  // Creates or replaces the variable in one write(). On failure the variable may be unchanged or
  // (firmware permitting) absent; never partially written.
  virtual Status Write(std::string_view name, const EfiVariable& variable) = 0;
  // Deletes the variable; deleting an absent variable succeeds.
  virtual Status Delete(std::string_view name) = 0;
};

// The real implementation over a directory (efivarfs, or a plain directory in tests).
class EfivarfsVars final : public EfiVars {
 public:
  // `dir` need not exist yet; every call fails with the errno of the directory then.
  explicit EfivarfsVars(std::string dir);

  Result<std::vector<std::string>> List() override;
  Result<EfiVariable> Read(std::string_view name) override;
  Status Write(std::string_view name, const EfiVariable& variable) override;
  Status Delete(std::string_view name) override;

  // "<dir>/<name>-8be4df61-…"
  std::string PathOf(std::string_view name) const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

// True when `dir` is an efivarfs mount (statfs magic), false for a plain directory or an error.
bool IsEfivarfs(const std::string& dir);

}  // namespace byoi
