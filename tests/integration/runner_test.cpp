// The runner's last step (docs/pipeline.md "finish", issue 6): the final status is published before
// anything is flushed or rebooted, the reboot syncs and flushes the target disk, and kexec loads
// the installed kernel from the image's ESP (or falls back to a reboot, saying why). Whole jobs
// run through RunJob against our own HTTP server on 127.0.0.1, with a disk image file as the disk
// and a RecordingPowerControl, so nothing here reboots the machine.
#include "agent/job/runner.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "agent/api/http_server.hpp"
#include "agent/base/cancel.hpp"
#include "agent/boot/reboot.hpp"
#include "agent/job/manifest.hpp"
#include "agent/job/status.hpp"
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
    options.job.reboot = reboot;
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

}  // namespace
}  // namespace byoi
