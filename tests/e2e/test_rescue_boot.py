"""The rescue system boots under QEMU (UEFI with OVMF, and legacy BIOS), and inside it the packed
byoi-agent and its runtime tools run with their libraries, drivers load, DHCP works, the host's nginx is
reachable at 10.0.2.2, efivarfs is mounted on UEFI, and the daemon is supervised.

Label e2e. Needs root only for nothing; needs qemu-system-x86, ovmf, linux-image-amd64, busybox-static.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_nginx import Nginx  # noqa: E402
from lib_qemu import Disk, Vm, qemu_missing  # noqa: E402
from lib_rescue import (INIT_TEST_PREFIX, agent_path, build_rescue, rescue_cmdline,  # noqa: E402
                        rescue_missing)

BOOT_TIMEOUT = 180  # seconds; a UEFI boot to the self-test result takes about 20 s under TCG on 2 cores


def init_test_lines(log):
    """{key: value} of the self-test's `BYOI-RESCUE-INIT-TEST: key: value` lines."""
    out = {}
    for m in re.finditer(re.escape(INIT_TEST_PREFIX) + r"([\w-]+):? ?([^\n]*)", log):
        out[m.group(1)] = m.group(2).strip()
    return out


@unittest.skipIf(qemu_missing() or rescue_missing(), qemu_missing() or rescue_missing())
class RescueBootTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="byoi-rescue-")
        cls.kernel, cls.initrd = build_rescue(os.path.join(cls.tmp, "rescue"))
        print("rescue build: %.1f s, initrd %d bytes, kernel %d bytes" % (
            build_rescue.seconds, os.path.getsize(cls.initrd), os.path.getsize(cls.kernel)),
            file=sys.stderr)
        cls.agent_version = subprocess.run([agent_path(), "--version"], check=True, text=True,
                                           stdout=subprocess.PIPE).stdout.strip()

    @classmethod
    def tearDownClass(cls):
        if not os.environ.get("BYOI_E2E_KEEP"):  # keep the VMs' logs for a post-mortem
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def workdir(self):
        d = tempfile.mkdtemp(prefix=self._testMethodName + ".", dir=self.tmp)
        return d

    def empty_disk(self, workdir, size_mib=64):
        path = os.path.join(workdir, "disk.raw")
        with open(path, "wb") as f:
            f.truncate(size_mib << 20)
        return path

    def test_uefi_self_test_with_disk_and_network(self):
        """OVMF + -kernel: the agent runs, tools work, vda is seen, DHCP, nginx fetch via 10.0.2.2."""
        work = self.workdir()
        www = os.path.join(work, "www")
        os.makedirs(www)
        token = uuid.uuid4().hex
        with open(os.path.join(www, "probe.txt"), "w") as f:
            f.write(token + "\n")
        with Nginx(www, work) as web, Vm(
                work, name="rescue-uefi", firmware="uefi", memory_mib=2048, network=True,
                disks=[Disk(self.empty_disk(work), format="raw")], kernel=self.kernel, initrd=self.initrd,
                append=rescue_cmdline("byoi.init_test=" + web.guest_url("probe.txt"))) as vm:
            vm.wait_for(re.escape(INIT_TEST_PREFIX) + r"(ok|failed:.*)$", BOOT_TIMEOUT)
            boot_seconds = vm.elapsed()
            vm.wait_exit(30)
            log = vm.log()
            access = web.access_log()
        print("UEFI rescue boot to self-test result: %.1f s" % boot_seconds, file=sys.stderr)
        lines = init_test_lines(log)
        self.assertEqual(lines.get("agent-version"), self.agent_version, log)
        self.assertEqual(lines.get("tools"), "mkfs.fat mcopy ok", log)
        self.assertEqual(lines.get("boot-mode"), "UEFI", log)
        self.assertRegex(lines.get("efivars", ""), r"^\d+ boot entries$", log)
        self.assertIn("vda:512:%d" % (64 << 20), lines.get("disks", ""), log)
        self.assertIn("virtio_net", lines.get("modules", "").split(), log)
        self.assertRegex(lines.get("network", ""), r"\beth0 10\.0\.2\.15/24\b", log)
        self.assertEqual(lines.get("fetched"), token, log)
        self.assertIn("GET /probe.txt", access)
        self.assertEqual(lines.get("ok"), "", log)  # the final verdict line is `...: ok`
        self.assertNotIn("Kernel panic", log)

    def test_bios_self_test_4k_disk(self):
        """SeaBIOS + -kernel: legacy boot mode (no efivars), a 4096-byte-sector disk is seen as such."""
        work = self.workdir()
        with Vm(work, name="rescue-bios", firmware="bios", memory_mib=1024,
                disks=[Disk(self.empty_disk(work), format="raw", logical_block_size=4096)],
                kernel=self.kernel, initrd=self.initrd,
                append=rescue_cmdline("byoi.init_test=1")) as vm:
            vm.wait_for(re.escape(INIT_TEST_PREFIX) + r"(ok|failed:.*)$", BOOT_TIMEOUT)
            boot_seconds = vm.elapsed()
            vm.wait_exit(30)
            log = vm.log()
        print("BIOS rescue boot to self-test result: %.1f s" % boot_seconds, file=sys.stderr)
        lines = init_test_lines(log)
        self.assertEqual(lines.get("agent-version"), self.agent_version, log)
        self.assertEqual(lines.get("boot-mode"), "legacy BIOS", log)
        self.assertNotIn("efivars", lines, log)
        self.assertIn("vda:4096:%d" % (64 << 20), lines.get("disks", ""), log)
        self.assertIn("ok", lines, log)
        self.assertEqual(lines.get("network"), "", log)  # no NIC

    def test_daemon_is_supervised(self):
        """Normal boot: init hands over to busybox init, which starts the daemon with its output on the
        serial console and offers a shell; a daemon that exits is logged and restarted with a pause."""
        work = self.workdir()
        with Vm(work, name="rescue-daemon", firmware="uefi", memory_mib=1024, kernel=self.kernel,
                initrd=self.initrd, append=rescue_cmdline("byoi.net=none")) as vm:
            vm.wait_for(r"byoi-rescue: starting byoi-agent daemon", BOOT_TIMEOUT)
            vm.wait_for(r"Please press Enter to activate this console", 30)
            # The daemon either keeps running or exits; when it exits it must come back.
            try:
                vm.wait_for(r"byoi-agent daemon exited with status \d+ after \d+ s; restarting in 2 s", 20)
            except AssertionError:
                self.assertIsNone(vm.process.poll(), "the VM stopped:\n" + vm.log()[-3000:])
                log = vm.log()
            else:
                vm.wait_for(r"byoi-agent daemon exited with status \d+ after \d+ s; restarting in 4 s", 30)
                log = vm.log()
                # What the daemon printed reached the serial console (today's stub says so).
                if "restarting" in log and "not available yet" not in log:
                    self.assertRegex(log, r"byoi-agent", log)
            self.assertNotIn("Kernel panic", log)
            self.assertIsNone(vm.process.poll())


if __name__ == "__main__":
    unittest.main()
