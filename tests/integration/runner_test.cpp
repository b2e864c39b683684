// The runner's last step (docs/pipeline.md "finish"): the final status is published before
// anything is flushed or rebooted, the reboot syncs and flushes the target disk, and kexec loads
// the installed kernel from the image's ESP (or falls back to a reboot, saying why). Whole jobs
// run through RunJob against our own HTTP server on 127.0.0.1, with a disk image file as the disk
// and a RecordingPowerControl, so nothing here reboots the machine.
#include "agent/job/runner.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agent/api/http_server.hpp"
#include "agent/base/cancel.hpp"
#include "agent/base/text.hpp"
#include "agent/boot/load_option.hpp"
#include "agent/boot/reboot.hpp"
#include "agent/job/manifest.hpp"
#include "agent/job/status.hpp"
#include "tests/common/recording_power_control.hpp"
#include "tests/integration/test_util.hpp"
#include "tests/unit/boot_test_disk.hpp"

namespace byoi {
namespace {

using testing::BuildDisk;
using testing::DiskSpec;
using testing::ReadAll;
using testing::TempDir;

// Serves one file at /image.raw from 127.0.0.1 on a thread of its own.
class ImageServer {
 public:
  explicit ImageServer(std::string body) : body_(std::move(body)) {
    HttpServerOptions options;
    options.listen = {"127.0.0.1", 0};
    auto started = HttpServer::Start(
        ioc_,
        [this](const HttpRequest& request) {
          HttpResponse res;
          res.version(request.version());
          if (request.target() == "/image.raw") {
            res.result(boost::beast::http::status::ok);
            res.body() = body_;
          } else {
            res.result(boost::beast::http::status::not_found);
          }
          res.prepare_payload();
          return res;
        },
        options);
    EXPECT_TRUE(started.ok()) << started.status().ToString();
    server_ = std::move(*started);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~ImageServer() {
    server_->Stop();
    thread_.join();
  }
  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(server_->port()) + "/image.raw";
  }

 private:
  std::string body_;
  boost::asio::io_context ioc_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

class RunnerFinish : public ::testing::Test {
 protected:
  // Runs a whole job of `image` onto a 256 MiB file disk; every board change to `done` and every
  // power action lands in power_.calls, in the order they happened.
  Status Deploy(const std::string& image, const std::string& reboot) {
    ImageServer server(ReadAll(image));
    disk_ = dir_ / "disk.img";
    { std::ofstream(disk_, std::ios::binary | std::ios::trunc); }
    std::filesystem::resize_file(disk_, 256 << 20);
    Result<Manifest> manifest =
        ParseManifest(R"({"URL": ")" + server.url() + R"(", "type": "raw", "description": "x"})");
    EXPECT_TRUE(manifest.ok()) << manifest.status().ToString();
    RunOptions options;
    options.job.disk = disk_;
    options.job.efivars = dir_ / "no-efivars";  // legacy BIOS: no boot entry to write
    options.job.reboot = *ParseRebootMode(reboot);
    options.job.memory_limit = 128 << 20;
    options.power = &power_;
    StatusBoard board;
    board.Subscribe([this](const JobStatus& status, bool) {
      if (status.state == JobState::kDone && !reported_) {
        reported_ = true;
        power_.calls.push_back("status done");
      }
    });
    board.Start("");
    CancelToken cancel;
    Status s = RunJob(*manifest, options, board, cancel);
    final_ = board.Snapshot();
    return s;
  }

  const StepStatus& RebootStep() const { return final_.progress.back(); }

  TempDir dir_;
  std::string disk_;
  RecordingPowerControl power_;
  bool reported_ = false;
  JobStatus final_;
};

TEST_F(RunnerFinish, DoneIsReportedBeforeTheDiskIsFlushedAndTheMachineRestarts) {
  std::string image = dir_ / "image.raw";
  BuildDisk(image, DiskSpec{});
  Status s = Deploy(image, "reboot");
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(final_.state, JobState::kDone);
  EXPECT_EQ(StepStateName(RebootStep().state), "done");
  EXPECT_EQ(RebootStep().comment, "rebooting");
  EXPECT_EQ(power_.calls,
            (std::vector<std::string>{"status done", "sync", "flush " + disk_, "act restart"}));
}

TEST_F(RunnerFinish, PowerOffIsAskedForAsSuch) {
  std::string image = dir_ / "image.raw";
  BuildDisk(image, DiskSpec{});
  ASSERT_TRUE(Deploy(image, "poweroff").ok());
  EXPECT_EQ(power_.calls,
            (std::vector<std::string>{"status done", "sync", "flush " + disk_, "act power-off"}));
}

TEST_F(RunnerFinish, NoneLeavesTheMachineAlone) {
  std::string image = dir_ / "image.raw";
  BuildDisk(image, DiskSpec{});
  ASSERT_TRUE(Deploy(image, "none").ok());
  EXPECT_EQ(StepStateName(RebootStep().state), "skipped");
  EXPECT_EQ(power_.calls, (std::vector<std::string>{"status done"}));
}

TEST_F(RunnerFinish, KexecLoadsTheKernelOfTheImagesBootLoaderEntryBeforeReportingDone) {
  std::string image = dir_ / "image.raw";
  DiskSpec spec;
  spec.files = {{"loader/entries/debian-6.1.conf",
                 "title Debian\nlinux /vmlinuz-6.1\ninitrd /initrd-6.1\noptions root=UUID=1 ro\n"},
                {"vmlinuz-6.1", std::string(3000, 'K')},
                {"initrd-6.1", std::string(500, 'I')}};
  BuildDisk(image, spec);
  ASSERT_TRUE(Deploy(image, "kexec").ok());
  EXPECT_EQ(RebootStep().comment, "kexec into the kernel of \\loader\\entries\\debian-6.1.conf");
  EXPECT_EQ(power_.calls,
            (std::vector<std::string>{
                "kexec-load \\loader\\entries\\debian-6.1.conf (kernel 3000 bytes, initrd 500 "
                "bytes, cmdline \"root=UUID=1 ro\")",
                "status done", "sync", "flush " + disk_, "act kexec"}));
}

TEST_F(RunnerFinish, KexecWithoutAnEntryRestartsAndSaysWhy) {
  std::string image = dir_ / "image.raw";
  BuildDisk(image, DiskSpec{});
  ASSERT_TRUE(Deploy(image, "kexec").ok());
  EXPECT_NE(RebootStep().comment.find("; rebooting instead"), std::string::npos)
      << RebootStep().comment;
  EXPECT_EQ(power_.calls,
            (std::vector<std::string>{"status done", "sync", "flush " + disk_, "act restart"}));
}

// Whole jobs through RunJob with the options a test chooses: a UEFI machine (a directory standing
// in for efivarfs), a disk file pre-filled with random bytes, and the manifest's own fields.
class RunnerJob : public ::testing::Test {
 protected:
  RunnerJob() { std::filesystem::create_directory(efivars_); }

  // `extra` is added to the manifest object (",\"checkSum\": …").
  Status Run(const std::string& image, const std::string& extra = "") {
    ImageServer server(ReadAll(image));
    Result<Manifest> manifest = ParseManifest(
        R"({"URL": ")" + server.url() + R"(", "type": "raw", "description": "x")" + extra + "}");
    EXPECT_TRUE(manifest.ok()) << manifest.status().ToString();
    if (!std::filesystem::exists(disk_)) RandomDisk(96 << 20);
    RunOptions options;
    options.job.disk = disk_;
    options.job.efivars = efivars_;
    options.job.memory_limit = 128 << 20;
    options.power = &power_;
    StatusBoard board;
    board.Start("");
    CancelToken cancel;
    Status s = RunJob(*manifest, options, board, cancel);
    final_ = board.Snapshot();
    return s;
  }

  void RandomDisk(size_t bytes) {
    std::mt19937_64 random(42);
    std::string data(bytes, '\0');
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
      uint64_t v = random();
      std::memcpy(&data[i], &v, 8);
    }
    testing::WriteAll(disk_, data);
  }

  const StepStatus& StepOf(Step step) const {
    return final_.progress.at(static_cast<size_t>(step));
  }
  std::string VarFile(const std::string& name) const {
    return efivars_ + "/" + name + "-8be4df61-93ca-11d2-aa0d-00e098032b8c";
  }

  TempDir dir_;
  std::string disk_ = dir_ / "disk.img";
  std::string efivars_ = dir_ / "efivars";
  RecordingPowerControl power_;
  JobStatus final_;
};

// An image with an ESP holding the fallback loader.
void BuildUefiImage(const std::string& path) {
  DiskSpec spec;
  spec.files = {{"EFI/BOOT/BOOTX64.EFI", "fallback"}};
  BuildDisk(path, spec);
}

std::string Sha256Of(const std::string& path) {
  std::string out;
  EXPECT_EQ(testing::Run({"sha256sum", path}, &out), 0);
  return out.substr(0, 64);
}

TEST_F(RunnerJob, NoChecksumGivenIsAWarningAndTheVerifyCommentStays) {
  std::string image = dir_ / "image.raw";
  BuildUefiImage(image);
  Status s = Run(image);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::string sha256 = Sha256Of(image);
  EXPECT_EQ(final_.checksum, sha256);
  EXPECT_EQ(final_.warnings,
            std::vector<std::string>{"no checksum given: the image was not verified against a "
                                     "known checksum (sha256 " +
                                     sha256 + " computed)"});
  EXPECT_NE(StepOf(Step::kVerify).comment.find("; no checksum given, sha256 computed"),
            std::string::npos)
      << StepOf(Step::kVerify).comment;

  // With a checksum there is nothing to warn about.
  std::filesystem::remove(disk_);
  s = Run(image, R"(, "checkSum": ")" + sha256 + R"(", "checkSumType": "sha256")");
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(final_.warnings, std::vector<std::string>{});
  EXPECT_NE(StepOf(Step::kVerify).comment.find("; sha256 matches"), std::string::npos);
}

// The red team's NVRAM: a BootOrder of 80 KB (efivarfs form: 4 bytes of attributes, then data).
// The job must fail while planning, before the download, with the disk byte for byte as it was.
TEST_F(RunnerJob, AnUnusableNvramFailsTheJobBeforeTheDiskIsTouched) {
  std::string image = dir_ / "image.raw";
  BuildUefiImage(image);
  RandomDisk(96 << 20);
  const std::string before = ReadAll(disk_);
  for (std::string bad :
       {"\x07\0\0\0" + std::string(80 * 1024, '\x01'), std::string("\x07\0\0\0\x00\x00\x01", 7)}) {
    SCOPED_TRACE(bad.size());
    testing::WriteAll(VarFile("BootOrder"), bad);
    Status s = Run(image);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(final_.state, JobState::kError);
    EXPECT_EQ(final_.message, "Could not set EFI boot entry.");
    EXPECT_EQ(final_.detail.find("reading the EFI boot variables in " + efivars_ + ": "), 0u)
        << final_.detail;
    EXPECT_NE(final_.detail.find(bad.size() > 1024 ? "larger than" : "holds 3 bytes"),
              std::string::npos)
        << final_.detail;
    for (const StepStatus& step : final_.progress) {
      EXPECT_EQ(step.state, StepState::kTodo) << StepName(step.step);
    }
    EXPECT_TRUE(ReadAll(disk_) == before) << "the disk was touched";
    EXPECT_EQ(ReadAll(VarFile("BootOrder")), bad) << "NVRAM was touched";
  }
  // The same job with a usable NVRAM goes through (the check refuses only what it must).
  std::filesystem::remove(VarFile("BootOrder"));
  Status s = Run(image);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(StepOf(Step::kBootloader).state, StepState::kDone);
}

// The failure policy lives in the runner (docs/pipeline.md): a write that fails midway (the disk
// is a file on a tmpfs that fills up: a real ENOSPC) ends the job with the catalogue sentence, the
// error's code in the status, and the disk's first and last MiB zeroed, by the runner alone (the
// writer wipes nothing).
TEST_F(RunnerJob, AWriteThatFailsMidwayLeavesTheDiskEndsZeroed) {
  testing::SmallTmpfs fs(6 << 20);
  disk_ = fs.path("disk.img");
  // 32 MiB whose first and last MiB hold old bytes and whose middle is a hole: the image's
  // random data cannot fit in what the tmpfs has left.
  const std::vector<uint8_t> head = testing::RandomBytes(1 << 20, 5);
  const std::vector<uint8_t> tail = testing::RandomBytes(1 << 20, 6);
  {
    auto fd = OpenFile(disk_, O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_TRUE(fd.ok());
    ASSERT_EQ(::ftruncate(fd->get(), 32 << 20), 0);
    ASSERT_TRUE(PwriteAll(fd->get(), head, 0).ok());
    ASSERT_TRUE(PwriteAll(fd->get(), tail, 31 << 20).ok());
  }
  std::string image = dir_ / "image.raw";
  std::vector<uint8_t> bytes = testing::RandomBytes(24 << 20, 7);
  // An MBR with one Linux partition (LBA 2048, 2048 sectors): a raw image the verify step accepts.
  std::fill(bytes.begin() + 446, bytes.begin() + 510, 0);
  const uint8_t entry[16] = {0x00, 0, 0, 0, 0x83, 0, 0, 0, 0x00, 0x08, 0, 0, 0x00, 0x08, 0, 0};
  std::copy(std::begin(entry), std::end(entry), bytes.begin() + 446);
  bytes[510] = 0x55;
  bytes[511] = 0xaa;
  testing::WriteAll(image, std::string(bytes.begin(), bytes.end()));
  Status s = Run(image);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(final_.state, JobState::kError);
  EXPECT_EQ(final_.message, "Can't write raw on disk.");
  EXPECT_EQ(final_.code, Code::kIo) << final_.detail;
  EXPECT_EQ(StepOf(Step::kWrite).state, StepState::kError);
  const std::vector<uint8_t> zeros(1 << 20, 0);
  EXPECT_TRUE(testing::ReadRange(disk_, 0, 1 << 20) == zeros);
  EXPECT_TRUE(testing::ReadRange(disk_, 31 << 20, 1 << 20) == zeros);
}

// A directory named with an escape sequence on the image's ESP: passed over with a warning, never
// written into the Boot#### entry, never raw in the status.
TEST_F(RunnerJob, AControlCharacterInAnEspNameNeverReachesNvramOrTheStatus) {
  std::string image = dir_ / "image.raw";
  DiskSpec spec;
  spec.files = {{"EFI/eXXXXbian/shimx64.efi", "shim"}, {"EFI/BOOT/BOOTX64.EFI", "fallback"}};
  BuildDisk(image, spec);
  testing::ReplaceLongName(image, "eXXXX", u"e\x1b]0;");
  Status s = Run(image);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::string note =
      "skipped \\EFI\\e\\x1b]0;bian on the EFI system partition: its name is not printable ASCII";
  EXPECT_NE(std::find(final_.warnings.begin(), final_.warnings.end(), note), final_.warnings.end())
      << ::testing::PrintToString(final_.warnings);
  const StepStatus& boot = StepOf(Step::kBootloader);
  EXPECT_EQ(boot.state, StepState::kDone);
  EXPECT_NE(boot.comment.find("/File(\\EFI\\BOOT\\BOOTX64.EFI)"), std::string::npos)
      << boot.comment;
  for (const std::string* text :
       std::initializer_list<const std::string*>{&final_.message, &final_.detail, &boot.comment}) {
    EXPECT_TRUE(IsPrintableText(*text)) << *text;
    EXPECT_EQ(text->find('\x1b'), std::string::npos) << *text;
  }
  // The one Boot#### written: its label and loader path are printable ASCII, every UTF-16 unit.
  std::vector<std::string> entries;
  for (const auto& e : std::filesystem::directory_iterator(efivars_)) {
    std::string name = e.path().filename();
    if (name.rfind("Boot0", 0) == 0) entries.push_back(name);
  }
  ASSERT_EQ(entries.size(), 1u);
  std::string raw = ReadAll(efivars_ + "/" + entries[0]);
  auto option = DecodeLoadOption(std::vector<uint8_t>(raw.begin() + 4, raw.end()));
  ASSERT_TRUE(option.ok()) << option.status().ToString();
  EXPECT_EQ(option->file_path, "\\EFI\\BOOT\\BOOTX64.EFI");
  for (const std::string* text : {&option->file_path, &option->description}) {
    for (char c : *text) EXPECT_TRUE(c >= 0x20 && c <= 0x7E) << *text;
  }

  // With no other loader, the job fails with the catalogue message, NVRAM untouched.
  std::filesystem::remove_all(efivars_);
  std::filesystem::create_directory(efivars_);
  std::filesystem::remove(disk_);
  spec.files = {{"EFI/eXXXXbian/shimx64.efi", "shim"}};
  BuildDisk(image, spec);
  testing::ReplaceLongName(image, "eXXXX", u"e\x1b]0;");
  s = Run(image);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(final_.message,
            "EFI bootloader \\EFI\\BOOT\\BOOTX64.EFI not found on the EFI system partition.");
  EXPECT_NE(final_.detail.find(note), std::string::npos) << final_.detail;
  EXPECT_TRUE(IsPrintableText(final_.detail)) << final_.detail;
  EXPECT_TRUE(std::filesystem::is_empty(efivars_));
}

}  // namespace
}  // namespace byoi
