#include "agent/disk/partition_table.hpp"

#include <fmt/format.h>
#include <libfdisk/libfdisk.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace byoi {
namespace {

struct TableDeleter {
  void operator()(fdisk_table* t) const { fdisk_unref_table(t); }
};
struct IterDeleter {
  void operator()(fdisk_iter* i) const { fdisk_free_iter(i); }
};
struct ItemDeleter {
  void operator()(fdisk_labelitem* i) const { fdisk_unref_labelitem(i); }
};

std::string Upper(const char* s) {
  std::string out = s ? s : "";
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

int FdiskTable::AskCallback(fdisk_context*, fdisk_ask* ask, void* data) {
  auto* self = static_cast<FdiskTable*>(data);
  switch (fdisk_ask_get_type(ask)) {
    case FDISK_ASKTYPE_WARN:
    case FDISK_ASKTYPE_WARNX:
    case FDISK_ASKTYPE_INFO: {
      const char* m = fdisk_ask_print_get_mesg(ask);
      if (m && self->messages_.size() < 32) self->messages_.emplace_back(m);
      return 0;
    }
    default:
      // Dialogs are disabled; anything that still asks is refused rather than guessed.
      return -EINVAL;
  }
}

Result<std::unique_ptr<FdiskTable>> FdiskTable::Open(int fd, const std::string& path,
                                                     bool writable) {
  std::unique_ptr<FdiskTable> t(new FdiskTable());
  t->path_ = path;
  t->fd_ = fd;
  t->cxt_ = fdisk_new_context();
  if (!t->cxt_) return Status::Error(Code::kInternal, "fdisk_new_context failed");
  fdisk_set_ask(t->cxt_, &FdiskTable::AskCallback, t.get());
  fdisk_disable_dialogs(t->cxt_, 1);
  int rc = fdisk_assign_device_by_fd(t->cxt_, fd, path.c_str(), writable ? 0 : 1);
  if (rc != 0) {
    return Status::Error(
        Code::kIo, fmt::format("reading the partition table of {}: {}{}", path, std::strerror(-rc),
                               t->messages_.empty() ? "" : " (" + t->Messages() + ")"));
  }
  return t;
}

FdiskTable::~FdiskTable() {
  if (cxt_) {
    // nosync: WriteChanges already synced; and the fd is ours, libfdisk does not close it.
    fdisk_deassign_device(cxt_, 1);
    fdisk_unref_context(cxt_);
  }
}

PartitionTableType FdiskTable::kind() const {
  if (!fdisk_has_label(cxt_)) return PartitionTableType::kNone;
  if (fdisk_is_labeltype(cxt_, FDISK_DISKLABEL_GPT)) return PartitionTableType::kGpt;
  if (fdisk_is_labeltype(cxt_, FDISK_DISKLABEL_DOS)) return PartitionTableType::kMbr;
  return PartitionTableType::kOther;
}

uint32_t FdiskTable::sector_size() const {
  return static_cast<uint32_t>(fdisk_get_sector_size(cxt_));
}
uint64_t FdiskTable::total_sectors() const { return fdisk_get_nsectors(cxt_); }
uint64_t FdiskTable::grain_sectors() const {
  uint64_t g = fdisk_get_grain_size(cxt_) / std::max<uint32_t>(sector_size(), 1);
  return g ? g : 1;
}

Result<std::vector<Partition>> FdiskTable::Partitions() const {
  fdisk_table* raw = nullptr;
  if (int rc = fdisk_get_partitions(cxt_, &raw); rc != 0) {
    return Status::Error(Code::kIo,
                         fmt::format("listing partitions of {}: {}", path_, std::strerror(-rc)));
  }
  std::unique_ptr<fdisk_table, TableDeleter> table(raw);
  std::unique_ptr<fdisk_iter, IterDeleter> it(fdisk_new_iter(FDISK_ITER_FORWARD));
  std::vector<Partition> out;
  bool gpt = kind() == PartitionTableType::kGpt;
  fdisk_partition* pa = nullptr;
  while (fdisk_table_next_partition(table.get(), it.get(), &pa) == 0) {
    if (!fdisk_partition_has_partno(pa) || !fdisk_partition_has_start(pa) ||
        !fdisk_partition_has_size(pa)) {
      continue;
    }
    Partition p;
    p.number = static_cast<int>(fdisk_partition_get_partno(pa)) + 1;
    p.start_sector = fdisk_partition_get_start(pa);
    p.size_sectors = fdisk_partition_get_size(pa);
    p.sector_size = sector_size();
    if (fdisk_parttype* type = fdisk_partition_get_type(pa)) {
      p.type = gpt ? Upper(fdisk_parttype_get_string(type))
                   : fmt::format("0x{:02x}", fdisk_parttype_get_code(type));
    }
    if (gpt) {
      p.name = fdisk_partition_get_name(pa) ? fdisk_partition_get_name(pa) : "";
      p.uuid = Upper(fdisk_partition_get_uuid(pa));
    }
    out.push_back(std::move(p));
  }
  std::sort(out.begin(), out.end(),
            [](const Partition& a, const Partition& b) { return a.number < b.number; });
  return out;
}

uint64_t FdiskTable::GptAlternativeLba() const {
  if (kind() != PartitionTableType::kGpt) return 0;
  std::unique_ptr<fdisk_labelitem, ItemDeleter> item(fdisk_new_labelitem());
  uint64_t v = 0;
  if (fdisk_get_disklabel_item(cxt_, GPT_LABELITEM_ALTLBA, item.get()) == 0) {
    fdisk_labelitem_get_data_u64(item.get(), &v);
  }
  return v;
}

uint64_t FdiskTable::GptLastUsableLba() const {
  if (kind() != PartitionTableType::kGpt) return 0;
  std::unique_ptr<fdisk_labelitem, ItemDeleter> item(fdisk_new_labelitem());
  uint64_t v = 0;
  if (fdisk_get_disklabel_item(cxt_, GPT_LABELITEM_LASTLBA, item.get()) == 0) {
    fdisk_labelitem_get_data_u64(item.get(), &v);
  }
  return v;
}

bool FdiskTable::Changed() const {
  fdisk_label* lb = fdisk_get_label(cxt_, nullptr);
  return lb && fdisk_label_is_changed(lb);
}

Status FdiskTable::WriteChanges() {
  if (int rc = fdisk_write_disklabel(cxt_); rc != 0) {
    return Status::Error(
        Code::kIo, fmt::format("writing the partition table of {}: {}{}", path_, std::strerror(-rc),
                               messages_.empty() ? "" : " (" + Messages() + ")"));
  }
  if (::fsync(fd_) != 0) return Status::FromErrno("syncing " + path_, errno);
  return Status::Ok();
}

std::string FdiskTable::Messages() const {
  std::string out;
  for (const std::string& m : messages_) {
    if (!out.empty()) out += "; ";
    out += m;
  }
  return out;
}

}  // namespace byoi
