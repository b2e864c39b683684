// `byoi-agent convert SOURCE TARGET [--type qcow2|raw|ova|vmdk]` and `byoi-agent inspect IMAGE
// [--json]` (docs/cli.md): the image engine and the writer, outside a job. convert holds SOURCE in
// memory under the same budget as a download, checks it as a job's verify step does (metadata, an
// OVA's manifest digests, every compressed cluster) and writes its virtual disk to a block device
// or a file (created or resized to the virtual size); inspect describes an image (an OVA's files
// and the disk it installs too), its partitions and the boot loader UEFI firmware would start from
// its ESP.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "agent/base/cancel.hpp"
#include "agent/base/fd.hpp"
#include "agent/base/messages.hpp"
#include "agent/base/text.hpp"
#include "agent/base/units.hpp"
#include "agent/boot/esp.hpp"
#include "agent/cli/commands.hpp"
#include "agent/disk/probe.hpp"
#include "agent/disk/target.hpp"
#include "agent/disk/writer.hpp"
#include "agent/image/image_buffer.hpp"  // DefaultMemoryBudget
#include "agent/image/open_image.hpp"
#include "agent/image/partition_table.hpp"
#include "agent/image/verify_compressed.hpp"
#include "agent/image/virtual_reader.hpp"

namespace byoi {
namespace {

CancelToken g_cancel;

extern "C" void OnSignal(int) { g_cancel.Cancel(); }

int Fail(const Status& s) {
  std::fprintf(stderr, "%s\n", s.ToString().c_str());
  return kExitJobError;
}

// The source image held in memory for the commands: the file mapped read-only (its page-cache
// pages, no copy), under the same budget rule as a download. A copy into an ImageBuffer (what
// LoadFile does) costs more than the whole write for a large image, and the commands gain
// nothing from it: the runner's image is already in RAM when it is written.
class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  MappedFile& operator=(MappedFile&&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }

  static Result<MappedFile> Open(const std::string& path, uint64_t budget) {
    BYOI_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return Status::FromErrno("examining " + path, errno);
    if (!S_ISREG(st.st_mode)) return Status::Error(Code::kInvalid, path + " is not a file");
    uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size > budget) {
      return Status::Error(Code::kTooBig, fmt::format("{} has {} bytes, more than the memory "
                                                      "budget of {}",
                                                      path, size, budget));
    }
    MappedFile m;
    if (size == 0) return m;
    // Not MAP_POPULATE: the writer's threads fault pages in as they write them, in parallel.
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) return Status::FromErrno("mapping " + path, errno);
    m.data_ = static_cast<uint8_t*>(p);
    m.size_ = size;
    return m;
  }

  std::span<const uint8_t> bytes() const { return {data_, static_cast<size_t>(size_)}; }
  uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

Result<MappedFile> Load(const std::string& path, std::optional<uint64_t> limit) {
  uint64_t budget = 0;
  if (limit) {
    budget = *limit;
  } else {
    BYOI_ASSIGN_OR_RETURN(budget, DefaultMemoryBudget());
  }
  return MappedFile::Open(path, budget);
}

// libblkid's view of [offset, offset + size) of the virtual disk; nothing found when the range
// lies outside it.
Result<Signature> ProbeVirtualDisk(VirtualReader& reader, uint64_t offset, uint64_t size) {
  const uint64_t vsize = reader.layout().virtual_size();
  if (size == 0 || offset > vsize) return Signature{};
  return ProbeFilesystem(
      [&reader](uint64_t at, std::span<uint8_t> out) { return reader.Read(at, out); }, offset,
      std::min(size, vsize - offset));
}

// "qcow2", "vmdk", "ova" or "raw" from the first bytes of a file too big to load, for the message.
std::string SniffType(const std::string& path) {
  auto fd = OpenFile(path, O_RDONLY);
  auto size = fd.ok() ? FileSize(fd->get(), path) : Result<uint64_t>(fd.status());
  if (!size.ok()) return "raw";
  std::vector<uint8_t> head(std::min<uint64_t>(*size, 64 << 10));
  if (!PreadAll(fd->get(), head, 0).ok()) return "raw";
  return std::string(FormatName(SourceFormat(head)));
}

void PrintProgress(uint64_t done, uint64_t total) {
  static uint64_t last_percent = 101;
  uint64_t percent = total == 0 ? 100 : done * 100 / total;
  if (percent == last_percent) return;
  last_percent = percent;
  std::fprintf(stderr, "\rwriting: %3u%% (%s of %s)", static_cast<unsigned>(percent),
               HumanBytes(done).c_str(), HumanBytes(total).c_str());
  if (done == total) std::fprintf(stderr, "\n");
}

// The loader the agent would pick on the image's ESP (docs/boot.md order), found by the same code
// as a job, reading the image's virtual disk in place.
Result<BootLoader> FindImageBootLoader(VirtualReader& reader, const PartitionTable& table) {
  ReadAtFn read = [&reader](uint64_t offset, std::span<uint8_t> out) {
    return reader.Read(offset, out);
  };
  BYOI_ASSIGN_OR_RETURN(EspLocation esp, LocateEsp(read, table, "the image"));
  return FindBootLoader(read, esp, "", "the image");
}

// inspect's view of an OVA: its files, each with its role, and the disk it installs.
boost::json::object OvaJson(const OvaInfo& ova) {
  boost::json::array files;
  for (size_t i = 0; i < ova.members.size(); ++i) {
    const OvaMember& m = ova.members[i];
    std::string role = i == ova.descriptor                       ? "descriptor"
                       : i == ova.manifest.value_or(SIZE_MAX)    ? "manifest"
                       : i == ova.certificate.value_or(SIZE_MAX) ? "certificate"
                       : std::find(ova.disks.begin(), ova.disks.end(), i) != ova.disks.end()
                           ? "disk"
                           : "other";
    boost::json::object f{{"name", PrintableText(m.name)}, {"size", m.size}, {"role", role}};
    f["installed"] = i == ova.disk;
    f["digest"] = nullptr;
    for (const OvaDigest& d : ova.digests) {
      if (d.member == i) f["digest"] = d.algo;
    }
    files.push_back(std::move(f));
  }
  boost::json::object disk{{"file", PrintableText(ova.members[ova.disk].name)},
                           {"id", PrintableText(ova.disk_id)},
                           {"format", PrintableText(ova.disk_format)}};
  disk["capacity"] = nullptr;
  if (ova.disk_capacity) disk["capacity"] = *ova.disk_capacity;
  return {{"files", std::move(files)},
          {"virtualSystem", PrintableText(ova.system)},
          {"disks", ova.disks.size()},
          {"disk", std::move(disk)}};
}

boost::json::object VmdkJson(const VmdkInfo& v) {
  return {{"subformat", v.subformat},
          {"createType", v.create_type},
          {"version", v.version},
          {"flags", v.flags},
          {"grainSize", v.grain_size},
          {"footer", v.footer},
          {"grainTables", v.grain_tables},
          {"allocatedBytes", v.data_bytes},
          {"compressedBytes", v.compressed_bytes},
          {"zeroBytes", v.zero_bytes},
          {"unallocatedBytes", v.unallocated_bytes}};
}

}  // namespace

int RunConvert(const ConvertArgs& args) {
  auto buffer = Load(args.source, args.memory_limit);
  if (!buffer.ok()) {
    Status s = buffer.status();
    if (s.code() == Code::kTooBig) s.DefaultMessage(msg::TooBigForMemory(SniffType(args.source)));
    return Fail(s);
  }
  std::string type(FormatName(SourceFormat(buffer->bytes())));
  if (!args.type.empty() && args.type != type) {
    // What a job would call it (a tar archive, an ext4 file system) rather than how convert
    // would read it.
    const FormatInfo detected = DetectFormat(buffer->bytes());
    return Fail(Status::Error(Code::kInvalid, args.source + " is " + detected.contents,
                              msg::FormatMismatch(detected.name, args.type)));
  }
  auto image = OpenImage(buffer->bytes());
  if (!image.ok()) {
    return Fail(Status(image.status())
                    .Context("reading " + args.source)
                    .DefaultMessage(msg::CantWrite(type)));
  }
  // Every compressed cluster inflates, or the target is not even opened (docs/pipeline.md,
  // failure policy: a job that fails before writing leaves the disk untouched).
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  if (image->ova) {
    Status digests = VerifyOvaManifest(buffer->bytes(), *image->ova, g_cancel);
    if (!digests.ok()) {
      return Fail(std::move(digests)
                      .Context("checking the manifest of " + args.source)
                      .DefaultMessage(msg::CantWrite(type)));
    }
  }
  auto t0 = std::chrono::steady_clock::now();
  Status sound = VerifyCompressedClusters(image->layout, 0, g_cancel);
  if (!sound.ok()) {
    return Fail(
        std::move(sound).Context("reading " + args.source).DefaultMessage(msg::CantWrite(type)));
  }
  if (image->compressed_bytes() > 0) {
    std::fprintf(stderr, "inflated %s of compressed clusters in %.2f s\n",
                 HumanBytes(image->compressed_bytes()).c_str(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  Target::Options topts;
  topts.file_size = image->layout.virtual_size();
  auto target = Target::Open(args.target, topts);
  if (!target.ok()) return Fail(Status(target.status()).DefaultMessage(msg::CantWrite(type)));

  WriteOptions wopts;
  wopts.image_type = type;
  ProgressFn progress;
  if (::isatty(STDERR_FILENO)) progress = PrintProgress;
  auto stats = WriteImage(image->layout, *target, wopts, progress, g_cancel);
  if (!stats.ok()) return Fail(stats.status());
  double rate = stats->seconds > 0 ? image->layout.virtual_size() / stats->seconds : 0;
  std::fprintf(stderr, "wrote %s to %s in %.2f s (%s): %s of data, %s zeroed\n",
               HumanBytes(image->layout.virtual_size()).c_str(), args.target.c_str(),
               stats->seconds, HumanRate(rate).c_str(), HumanBytes(stats->bytes_written).c_str(),
               HumanBytes(stats->bytes_zeroed).c_str());
  return kExitOk;
}

int RunInspect(const InspectArgs& args) {
  auto buffer = Load(args.image, std::nullopt);
  if (!buffer.ok()) return Fail(buffer.status());
  auto image = OpenImage(buffer->bytes());
  if (!image.ok()) return Fail(Status(image.status()).Context("reading " + args.image));
  auto table = ReadPartitionTable(image->layout);
  VirtualReader reader(image->layout);

  boost::json::object out;
  out["format"] = FormatName(image->format);
  out["virtualSize"] = image->layout.virtual_size();
  out["fileSize"] = buffer->size();
  if (image->qcow2) {
    const Qcow2Info& q = *image->qcow2;
    out["version"] = q.version;
    out["clusterSize"] = q.cluster_size;
    out["compressionType"] = CompressionName(q.compression);
    out["extendedL2"] = q.extended_l2;
    out["refcountBits"] = q.refcount_bits;
    out["snapshots"] = q.snapshots;
    out["dirty"] = q.dirty;
    out["lazyRefcounts"] = q.lazy_refcounts;
    out["allocatedBytes"] = q.data_bytes;
    out["compressedBytes"] = q.compressed_bytes;
    out["zeroBytes"] = q.zero_bytes;
    out["unallocatedBytes"] = q.unallocated_bytes;
  }
  if (image->ova) out["ova"] = OvaJson(*image->ova);
  if (image->vmdk) out["vmdk"] = VmdkJson(*image->vmdk);
  boost::json::object pt;
  if (!table.ok()) {
    pt["type"] = "invalid";
    pt["error"] = table.status().detail();
  } else {
    pt["type"] = PartitionTableTypeName(table->type);
    if (table->type == PartitionTableType::kGpt) {
      pt["sectorSize"] = table->sector_size;
      pt["diskGuid"] = table->disk_guid;
      pt["fromBackup"] = table->gpt_from_backup;
    } else if (table->type == PartitionTableType::kMbr) {
      pt["diskId"] = fmt::format("{:#010x}", table->mbr_signature);
    }
    boost::json::array parts;
    for (const auto& p : table->partitions) {
      boost::json::object j;
      j["number"] = p.number;
      j["start"] = p.offset_bytes();
      j["size"] = p.size_bytes();
      j["type"] = p.type;
      j["typeName"] = PartitionTypeName(p, table->type);
      if (table->type == PartitionTableType::kGpt) {
        j["guid"] = p.uuid;
        j["name"] = PrintableText(p.name);  // names come from the image
      } else {
        j["bootable"] = p.bootable;
      }
      j["esp"] = p.esp;
      auto fs = ProbeVirtualDisk(reader, p.offset_bytes(), p.size_bytes());
      j["filesystem"] = fs.ok() ? PrintableText(fs->type) : "";
      j["label"] = fs.ok() ? PrintableText(fs->label) : "";
      parts.push_back(std::move(j));
    }
    pt["partitions"] = std::move(parts);
    out["esp"] = nullptr;
    out["bootLoader"] = nullptr;
    if (const Partition* esp = table->Esp()) {
      out["esp"] = esp->number;
      Result<BootLoader> loader = FindImageBootLoader(reader, *table);
      if (loader.ok()) {
        out["bootLoader"] = {{"path", loader->path},
                             {"foundBy", loader->found_by},
                             {"label", PrintableText(loader->csv_label)}};
      } else if (loader.status().code() != Code::kNotFound) {
        out["bootLoaderError"] = PrintableText(loader.status().detail());
      }
    }
    if (table->type == PartitionTableType::kNone) {
      auto fs = ProbeVirtualDisk(reader, 0, image->layout.virtual_size());
      out["contents"] = fs.ok() ? PrintableText(fs->type) : "";
    }
  }
  out["partitionTable"] = std::move(pt);
  const boost::json::object& table_json = out["partitionTable"].as_object();

  if (args.json) {
    std::printf("%s\n", boost::json::serialize(out).c_str());
    return kExitOk;
  }
  auto str = [](const boost::json::value& v) {
    return v.is_string() ? std::string(v.as_string()) : boost::json::serialize(v);
  };
  std::printf("format:          %s\n", str(out["format"]).c_str());
  if (image->qcow2) {
    const Qcow2Info& q = *image->qcow2;
    std::printf("version:         %u\n", q.version);
    std::printf("cluster size:    %s\n", HumanBytes(q.cluster_size).c_str());
    std::printf("compression:     %s%s\n", std::string(CompressionName(q.compression)).c_str(),
                q.extended_l2 ? ", extended L2" : "");
  }
  if (image->ova) {
    const boost::json::object& ova = out["ova"].as_object();
    std::printf("files:\n");
    for (const auto& v : ova.at("files").as_array()) {
      const auto& f = v.as_object();
      std::string role = str(f.at("role"));
      if (f.at("installed").as_bool()) role += ", installed";
      if (f.at("digest").is_string()) role += ", " + str(f.at("digest")) + " in the manifest";
      std::printf("  %-30s %10s  %s\n", str(f.at("name")).c_str(),
                  HumanBytes(f.at("size").to_number<uint64_t>()).c_str(), role.c_str());
    }
    const auto& disk = ova.at("disk").as_object();
    const std::string capacity =
        disk.at("capacity").is_null()
            ? std::string()
            : ", capacity " + HumanBytes(disk.at("capacity").to_number<uint64_t>());
    std::printf("installed disk:  %s (disk %s of virtual system %s; %s disk(s) in the OVA%s)\n",
                str(disk.at("file")).c_str(), str(disk.at("id")).c_str(),
                str(ova.at("virtualSystem")).c_str(), str(ova.at("disks")).c_str(),
                capacity.c_str());
  }
  if (image->vmdk) {
    const VmdkInfo& v = *image->vmdk;
    std::printf("vmdk:            %s, version %u, grain %s%s\n", v.subformat.c_str(), v.version,
                HumanBytes(v.grain_size).c_str(), v.footer ? ", directory in the footer" : "");
  }
  std::printf("virtual size:    %s (%llu bytes)\n",
              HumanBytes(image->layout.virtual_size()).c_str(),
              static_cast<unsigned long long>(image->layout.virtual_size()));
  if (image->qcow2) {
    const Qcow2Info& q = *image->qcow2;
    std::printf("allocated:       %s data, %s compressed, %s zero, %s unallocated\n",
                HumanBytes(q.data_bytes).c_str(), HumanBytes(q.compressed_bytes).c_str(),
                HumanBytes(q.zero_bytes).c_str(), HumanBytes(q.unallocated_bytes).c_str());
  }
  if (image->vmdk) {
    const VmdkInfo& v = *image->vmdk;
    std::printf("allocated:       %s data, %s compressed, %s zero, %s unallocated\n",
                HumanBytes(v.data_bytes).c_str(), HumanBytes(v.compressed_bytes).c_str(),
                HumanBytes(v.zero_bytes).c_str(), HumanBytes(v.unallocated_bytes).c_str());
  }
  if (!table.ok()) {
    std::printf("partition table: invalid (%s)\n", table.status().detail().c_str());
    return kExitOk;
  }
  std::printf("partition table: %s", str(table_json.at("type")).c_str());
  if (table->type == PartitionTableType::kGpt) {
    std::printf(" (%u-byte sectors, disk GUID %s%s)", table->sector_size, table->disk_guid.c_str(),
                table->gpt_from_backup ? ", read from the backup header" : "");
  }
  std::printf("\n");
  if (table->type == PartitionTableType::kNone) {
    std::string contents = str(out["contents"]);
    std::printf("contents:        %s\n", contents.empty() ? "unknown" : contents.c_str());
  }
  for (const auto& v : table_json.at("partitions").as_array()) {
    const auto& j = v.as_object();
    std::printf(
        "  %2s  start %-10s size %-10s %-22s %s%s%s%s\n", str(j.at("number")).c_str(),
        HumanBytes(j.at("start").to_number<uint64_t>()).c_str(),
        HumanBytes(j.at("size").to_number<uint64_t>()).c_str(), str(j.at("typeName")).c_str(),
        j.contains("name") ? ("\"" + str(j.at("name")) + "\" ").c_str() : "",
        str(j.at("filesystem")).c_str(),
        j.at("label").as_string().empty() ? "" : (" \"" + str(j.at("label")) + "\"").c_str(),
        j.contains("guid") ? (" " + str(j.at("guid"))).c_str() : "");
  }
  if (const Partition* esp = table->Esp()) {
    std::printf("EFI system partition: %d\n", esp->number);
    if (const boost::json::value& loader = out["bootLoader"]; loader.is_object()) {
      std::printf("boot loader:     %s (%s)\n", str(loader.at("path")).c_str(),
                  str(loader.at("foundBy")).c_str());
    } else if (out.contains("bootLoaderError")) {
      std::printf("boot loader:     unreadable (%s)\n", str(out["bootLoaderError"]).c_str());
    } else {
      std::printf("boot loader:     none found\n");
    }
  } else {
    std::printf("EFI system partition: none\n");
  }
  return kExitOk;
}

}  // namespace byoi
