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
from lib_flow import http_json  # noqa: E402
from lib_qemu import Disk, Vm, free_port, qemu_missing  # noqa: E402
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

    def test_image_contents(self):
        """The archive holds what the boot needs, owned by root, and the kernel is the Debian one."""
        listing = subprocess.run("zstd -dc %s | cpio -tv --quiet" % self.initrd, shell=True, check=True,
                                 stdout=subprocess.PIPE, text=True).stdout
        names = {line.split()[-1] if " -> " not in line else line.split(" -> ")[0].split()[-1]
                 for line in listing.splitlines()}
        for name in ("init", "dev/console", "usr/bin/busybox", "usr/bin/byoi-agent",
                     "usr/lib/byoi-agent/byoi-swarm", "usr/sbin/mkfs.fat",
                     "usr/bin/mtools", "usr/bin/mcopy", "usr/bin/sh", "usr/sbin/udhcpc",
                     "usr/lib/byoi-rescue/run-agent", "usr/lib/byoi-rescue/udhcpc.script",
                     "etc/ssl/certs/ca-certificates.crt", "etc/ld.so.cache",
                     "usr/lib/x86_64-linux-gnu/gconv/IBM850.so", "usr/lib64/ld-linux-x86-64.so.2"):
            self.assertIn(name, names)
        modules = {os.path.basename(n) for n in names if n.endswith(".ko")}
        for module in ("virtio_pci.ko", "virtio_blk.ko", "virtio_net.ko", "virtio_scsi.ko", "nvme.ko",
                       "ahci.ko", "sd_mod.ko", "efivarfs.ko", "vfat.ko", "fat.ko", "loop.ko",
                       "nls_cp437.ko", "nls_utf8.ko", "nls_iso8859-1.ko",
                       "nvme-core.ko", "libata.ko", "scsi_mod.ko", "virtio.ko", "virtio_ring.ko"):  # deps
            self.assertIn(module, modules)
        not_root = [line for line in listing.splitlines() if line.split()[2:4] != ["root", "root"]]
        self.assertEqual(not_root, [])
        self.assertTrue(any(line.startswith("crw") and line.split()[-1] == "dev/console"
                            for line in listing.splitlines()))

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
        self.assertEqual(lines.get("swarm"), "torrent ok", log)
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

    def test_daemon_runs_supervised_and_serves_api(self):
        """Normal boot: init hands over to busybox init, which starts `byoi-agent daemon` with the words
        of the kernel command line and offers a shell. With a real daemon, its API answers through a
        forwarded port (bearer token from byoi.token=); with the stub daemon of an unmerged branch, its
        exit is logged on the console and it is restarted with a growing pause."""
        work = self.workdir()
        port = free_port()
        api = "http://127.0.0.1:%d" % port
        token = uuid.uuid4().hex
        with Vm(work, name="rescue-daemon", firmware="uefi", memory_mib=2048, network=True,
                host_forwards=[(port, 9999)], disks=[Disk(self.empty_disk(work, 256), format="raw")],
                kernel=self.kernel, initrd=self.initrd, append=rescue_cmdline("byoi.token=" + token)) as vm:
            vm.wait_for(r"byoi-rescue: starting byoi-agent daemon", BOOT_TIMEOUT)
            vm.wait_for(r"Please press Enter to activate this console", 60)
            deadline = time.monotonic() + 120
            healthy = False
            while not healthy and "not available yet" not in vm.log():
                try:
                    healthy = http_json("GET", api + "/healthz", timeout=5)[0] == 200
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    vm.fail("neither the API nor the stub's message within 120 s")
                if vm.process.poll() is not None:
                    vm.fail("the VM stopped")
                time.sleep(1)
            if healthy:
                print("UEFI rescue boot to a healthy API: %.1f s" % vm.elapsed(), file=sys.stderr)
                status, disks = http_json("GET", api + "/v1/disks", token)
                self.assertEqual(status, 200, disks)
                self.assertIn("/dev/vda", [d.get("path") for d in disks["disks"]], disks)
                self.assertEqual(http_json("GET", api + "/v1/disks", "wrong-" + token)[0], 401)
                self.assertEqual(http_json("GET", api + "/v1/bringYourOwnImage", token)[0], 404)
            else:
                vm.wait_for(r"byoi-agent daemon exited with status 2 after \d+ s; restarting in 2 s", 30)
                vm.wait_for(r"byoi-agent daemon exited with status 2 after \d+ s; restarting in 4 s", 30)
            log = vm.log()
            self.assertNotIn("Kernel panic", log)
            self.assertIsNone(vm.process.poll())

if __name__ == "__main__":
    unittest.main()
