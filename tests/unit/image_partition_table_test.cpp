// Partition tables of a virtual disk (agent/image/partition_table.hpp), built in memory: GPT for
// 512- and 4096-byte sectors, the backup header, MBR with logical partitions, and the damaged or
// hostile cases.
#include <gtest/gtest.h>
#include <libdeflate.h>

#include <cstring>
#include <vector>

#include "agent/base/bytes.hpp"
#include "agent/image/partition_table.hpp"
#include "agent/image/raw_source.hpp"

namespace byoi {
namespace {

void Le32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
void Le64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
  Le32(b, at, static_cast<uint32_t>(v));
  Le32(b, at + 4, static_cast<uint32_t>(v >> 32));
}

// On-disk bytes of a GUID string (mixed endian).
void Guid(std::vector<uint8_t>& b, size_t at, const char* text) {
  unsigned d1, d2, d3, d4[8];
  std::sscanf(text, "%8x-%4x-%4x-%2x%2x-%2x%2x%2x%2x%2x%2x", &d1, &d2, &d3, &d4[0], &d4[1], &d4[2],
              &d4[3], &d4[4], &d4[5], &d4[6], &d4[7]);
  Le32(b, at, d1);
  b[at + 4] = d2 & 0xff;
  b[at + 5] = d2 >> 8;
  b[at + 6] = d3 & 0xff;
  b[at + 7] = d3 >> 8;
  for (int i = 0; i < 8; ++i) b[at + 8 + i] = static_cast<uint8_t>(d4[i]);
}

constexpr char kEsp[] = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
constexpr char kLinux[] = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

uint32_t Crc(const uint8_t* p, size_t n) { return libdeflate_crc32(0, p, n); }

// Writes a GPT header at `lba` with its entry array at `entries_lba`.
void WriteGpt(std::vector<uint8_t>& d, uint32_t ss, uint64_t lba, uint64_t alt,
              uint64_t entries_lba) {
  const uint32_t n = 128, size = 128;
  std::vector<uint8_t> array(n * size, 0);
  Guid(array, 0, kEsp);
  Guid(array, 16, "11111111-2222-3333-4444-555555555555");
  Le64(array, 32, 2048 * 512 / ss);
  Le64(array, 40, 4096 * 512 / ss - 1);
  const char16_t name[] = u"EFI system";
  for (size_t i = 0; name[i]; ++i) array[56 + 2 * i] = static_cast<uint8_t>(name[i]);
  Guid(array, 128 * 2, kLinux);  // entry 3: numbering follows the slot
  Guid(array, 128 * 2 + 16, "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE");
  Le64(array, 128 * 2 + 32, 4096 * 512 / ss);
  Le64(array, 128 * 2 + 40, 8192 * 512 / ss - 1);
  std::memcpy(&d[entries_lba * ss], array.data(), array.size());
  std::vector<uint8_t> h(ss, 0);
  std::memcpy(h.data(), "EFI PART", 8);
  Le32(h, 8, 0x00010000);
  Le32(h, 12, 92);
  Le64(h, 24, lba);
  Le64(h, 32, alt);
  Le64(h, 40, 34);
  Le64(h, 48, d.size() / ss - 34);
  Guid(h, 56, "01234567-89AB-CDEF-0123-456789ABCDEF");
  Le64(h, 72, entries_lba);
  Le32(h, 80, n);
  Le32(h, 84, size);
  Le32(h, 88, Crc(array.data(), array.size()));
  Le32(h, 16, Crc(h.data(), 92));
  std::memcpy(&d[lba * ss], h.data(), ss);
}

std::vector<uint8_t> GptDisk(uint32_t ss) {
  std::vector<uint8_t> d(8 << 20, 0);
  // Protective MBR.
  d[446 + 4] = 0xee;
  Le32(d, 446 + 8, 1);
  Le32(d, 446 + 12, static_cast<uint32_t>(d.size() / 512 - 1));
  d[510] = 0x55;
  d[511] = 0xaa;
  uint64_t last = d.size() / ss - 1;
  WriteGpt(d, ss, 1, last, 2);
  WriteGpt(d, ss, last, 1, last - 16384 / ss);
  return d;
}

TEST(PartitionTable, Gpt512And4096) {
  for (uint32_t ss : {512u, 4096u}) {
    auto disk = GptDisk(ss);
    auto t = ReadPartitionTable(RawLayout(disk));
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->type, PartitionTableType::kGpt);
    EXPECT_EQ(t->sector_size, ss);
    EXPECT_FALSE(t->gpt_from_backup);
    EXPECT_EQ(t->disk_guid, "01234567-89AB-CDEF-0123-456789ABCDEF");
    ASSERT_EQ(t->partitions.size(), 2u);
    const auto& esp = t->partitions[0];
    EXPECT_EQ(esp.number, 1u);
    EXPECT_EQ(esp.offset_bytes(), 1u << 20);
    EXPECT_EQ(esp.size_bytes(), 1u << 20);
    EXPECT_EQ(esp.type, kEsp);
    EXPECT_EQ(esp.uuid, "11111111-2222-3333-4444-555555555555");
    EXPECT_EQ(esp.name, "EFI system");
    EXPECT_TRUE(esp.esp);
    EXPECT_EQ(t->partitions[1].number, 3u);
    EXPECT_EQ(t->partitions[1].offset_bytes(), 2u << 20);
    EXPECT_EQ(t->partitions[1].size_bytes(), 2u << 20);
    ASSERT_NE(t->Esp(), nullptr);
    EXPECT_EQ(t->Esp()->number, 1u);
    EXPECT_EQ(PartitionTypeName(esp, t->type), "EFI System");
  }
}

TEST(PartitionTable, DamagedPrimaryGptFallsBackToBackup) {
  auto disk = GptDisk(512);
  disk[512 + 16] ^= 0x01;
  auto t = ReadPartitionTable(RawLayout(disk));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->type, PartitionTableType::kGpt);
  EXPECT_TRUE(t->gpt_from_backup);
  EXPECT_EQ(t->partitions.size(), 2u);
}

TEST(PartitionTable, DamagedEntriesFallBackToBackup) {
  auto disk = GptDisk(512);
  disk[2 * 512 + 40] ^= 0x01;  // the primary array no longer matches its CRC
  auto t = ReadPartitionTable(RawLayout(disk));
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->gpt_from_backup);
}

TEST(PartitionTable, ProtectiveMbrWithoutAnyValidGptIsInvalid) {
  auto disk = GptDisk(512);
  disk[512 + 16] ^= 0x01;
  disk[disk.size() - 512 + 16] ^= 0x01;
  auto t = ReadPartitionTable(RawLayout(disk));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), Code::kInvalid);
  EXPECT_NE(t.status().detail().find("protective MBR"), std::string::npos);
}

std::vector<uint8_t> MbrDisk() {
  std::vector<uint8_t> d(16 << 20, 0);
  auto entry = [&](size_t sector_at, int slot, uint8_t boot, uint8_t type, uint32_t start,
                   uint32_t count) {
    size_t at = sector_at + 446 + 16 * slot;
    d[at] = boot;
    d[at + 4] = type;
    Le32(d, at + 8, start);
    Le32(d, at + 12, count);
    d[sector_at + 510] = 0x55;
    d[sector_at + 511] = 0xaa;
  };
  Le32(d, 440, 0xdeadbeef);
  entry(0, 0, 0x80, 0xef, 2048, 2048);
  entry(0, 1, 0x00, 0x05, 8192, 16384);  // extended: 4 MiB .. 12 MiB
  // EBR 1 at 4 MiB: logical at +2048, next EBR at extended + 8192 sectors.
  entry(8192 * 512, 0, 0, 0x83, 2048, 2048);
  entry(8192 * 512, 1, 0, 0x05, 8192, 4096);
  // EBR 2: logical, and a link to itself (a loop) that must not spin.
  entry(16384 * 512, 0, 0, 0x82, 2048, 1024);
  entry(16384 * 512, 1, 0, 0x05, 8192, 4096);
  return d;
}

TEST(PartitionTable, MbrWithLogicalPartitions) {
  auto disk = MbrDisk();
  auto t = ReadPartitionTable(RawLayout(disk));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->type, PartitionTableType::kMbr);
  EXPECT_EQ(t->mbr_signature, 0xdeadbeefu);
  ASSERT_EQ(t->partitions.size(), 4u);
  EXPECT_EQ(t->partitions[0].number, 1u);
  EXPECT_TRUE(t->partitions[0].esp);
  EXPECT_TRUE(t->partitions[0].bootable);
  EXPECT_EQ(t->partitions[1].mbr_type(), 0x05);
  EXPECT_EQ(t->partitions[2].number, 5u);
  EXPECT_EQ(t->partitions[2].offset_bytes(), (8192u + 2048u) * 512u);
  EXPECT_EQ(t->partitions[2].mbr_type(), 0x83);
  EXPECT_EQ(t->partitions[3].number, 6u);
  EXPECT_EQ(t->partitions[3].offset_bytes(), (16384u + 2048u) * 512u);
  EXPECT_EQ(PartitionTypeName(t->partitions[2], t->type), "0x83 Linux");
}

TEST(PartitionTable, NoTable) {
  std::vector<uint8_t> zeros(1 << 20, 0);
  auto t = ReadPartitionTable(RawLayout(zeros));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->type, PartitionTableType::kNone);
  EXPECT_EQ(t->Esp(), nullptr);

  // A FAT boot sector also ends in 0x55AA, but its "entries" are boot code.
  std::vector<uint8_t> fat(1 << 20, 0);
  std::memcpy(&fat[3], "mkfs.fat", 8);
  for (int i = 446; i < 510; ++i) fat[i] = static_cast<uint8_t>(i * 13);
  fat[510] = 0x55;
  fat[511] = 0xaa;
  t = ReadPartitionTable(RawLayout(fat));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->type, PartitionTableType::kNone);

  std::vector<uint8_t> tiny(100, 0);
  t = ReadPartitionTable(RawLayout(tiny));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->type, PartitionTableType::kNone);
}

TEST(PartitionTable, HostileGptEntryCountIsRefusedNotAllocated) {
  auto disk = GptDisk(512);
  std::vector<uint8_t> h(disk.begin() + 512, disk.begin() + 1024);
  Le32(h, 80, 0xffffffff);
  Le32(h, 16, 0);
  Le32(h, 16, Crc(h.data(), 92));
  std::memcpy(&disk[512], h.data(), 512);
  auto t = ReadPartitionTable(RawLayout(disk));
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->gpt_from_backup);  // the backup is still good
}

TEST(PartitionTable, FormatGuid) {
  std::vector<uint8_t> b(16);
  Guid(b, 0, kEsp);
  EXPECT_EQ(FormatGuid(std::span<const uint8_t, 16>(b.data(), 16)), kEsp);
}

}  // namespace
}  // namespace byoi
