// A PowerControl for tests: records each call as a line ("sync", "flush /dev/sda", "kexec-load
// \loader\entries\x.conf (kernel 1234 bytes, initrd 0 bytes, cmdline "root=…")", "act restart")
// and returns the configured results, so nothing in a test reboots the machine.
#pragma once

#include <string>
#include <vector>

#include "agent/boot/reboot.hpp"

namespace byoi {

class RecordingPowerControl final : public PowerControl {
 public:
  void Sync() override { calls.push_back("sync"); }
  Status FlushBuffers(const std::string& disk_path) override {
    calls.push_back("flush " + disk_path);
    return flush_result;
  }
  Status LoadKexec(const KexecImage& image) override {
    calls.push_back("kexec-load " + image.source + " (kernel " +
                    std::to_string(image.kernel.size()) + " bytes, initrd " +
                    std::to_string(image.initrd.size()) + " bytes, cmdline \"" + image.cmdline +
                    "\")");
    return load_kexec_result;
  }
  Status Act(PowerAction action) override {
    static constexpr const char* kNames[] = {"none", "restart", "power-off", "kexec"};
    calls.push_back(std::string("act ") + kNames[static_cast<int>(action)]);
    return act_result;
  }

  std::vector<std::string> calls;
  Status flush_result;
  Status load_kexec_result;
  Status act_result;
};

}  // namespace byoi
