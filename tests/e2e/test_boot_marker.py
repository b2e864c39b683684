"""The test images of make_test_image boot as intended, so the end-to-end test can trust their markers:

- UEFI (OVMF): the GRUB loader at \\EFI\\byoitest\\grubx64.efi is NOT found by the firmware's removable-media
  fallback (no entry -> no marker, OVMF ends in its shell); the same loader copied to \\EFI\\BOOT\\BOOTX64.EFI
  prints the marker; and a Boot#### entry pointing at \\EFI\\byoitest\\grubx64.efi -- created by the
  firmware's own shell (`bcfg` in startup.nsh) -- boots it, also from a second VM that only shares the
  disk and the NVRAM file (the shape of the end-to-end test's final boot).
- Legacy BIOS (SeaBIOS): the MBR boot code prints its marker on COM1.

Label e2e. Needs qemu-system-x86, ovmf, seabios, grub-efi-amd64-bin, gdisk, dosfstools, mtools, qemu-utils.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_images  # noqa: E402
from lib_flow import boot_installed, check_gpt, partitions, read_config_drive  # noqa: E402
from lib_qemu import Disk, Vm, ovmf_failed_entries, ovmf_loaded_entries, qemu_missing  # noqa: E402

TIMEOUT = 150  # seconds for one firmware boot; about 10 s (BIOS: 1 s) on an idle 2-core machine

BCFG_LABEL = "byoitest bcfg entry"
BCFG_SCRIPT = ("fs0:\n"
               "bcfg boot add 0 fs0:\\EFI\\byoitest\\grubx64.efi \"%s\"\n"
               "reset\n" % BCFG_LABEL)


@unittest.skipIf(qemu_missing() or lib_images.tools_missing(),
                 qemu_missing() or "missing: %s" % lib_images.tools_missing())
class BootMarkerTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="byoi-marker-")
        self.work = self.tmp

    def tearDown(self):
        if not os.environ.get("BYOI_E2E_KEEP"):  # keep the VMs' logs for a post-mortem
            shutil.rmtree(self.tmp, ignore_errors=True)

    def uefi_image(self, **kwargs):
        marker = lib_images.new_marker("uefi")
        raw = os.path.join(self.work, "uefi.raw")
        return lib_images.make_uefi_image(raw, marker, qcow2=os.path.join(self.work, "uefi.qcow2"), **kwargs)

    def test_uefi_loader_not_found_without_boot_entry(self):
        image = self.uefi_image()
        with Vm(self.work, name="no-entry", disks=[Disk(image.qcow2)]) as vm:
            vm.wait_for(r"Shell> ", TIMEOUT)  # OVMF found nothing to boot on the disk
            log = vm.log()
        self.assertNotIn(image.marker, log)
        failed = ovmf_failed_entries(log)
        self.assertIn("UEFI Misc Device", [label for _, label, _ in failed], log)  # the virtio disk
        self.assertNotIn("Welcome to GRUB", log)

    def test_uefi_fallback_copy_prints_marker(self):
        image = self.uefi_image(fallback=True)
        with Vm(self.work, name="fallback", disks=[Disk(image.qcow2)]) as vm:
            vm.wait_for(re.escape(image.marker), TIMEOUT)
            self.assertEqual(vm.wait_exit(60), 0)  # grub.cfg's halt powers the VM off
            seconds = vm.elapsed()
            log = vm.log()
        print("OVMF fallback boot to marker and power-off: %.1f s" % seconds, file=sys.stderr)
        self.assertIn("UEFI Misc Device", [label for _, label in ovmf_loaded_entries(log)], log)
        self.assertEqual(log.count(image.marker), 1, log)

    def test_uefi_4k_image_on_4k_disk_prints_marker(self):
        """The 4Kn variant (GPT and FAT in 4096-byte sectors) boots from a 4096-byte-sector disk."""
        image = self.uefi_image(fallback=True, sector_size=4096)
        with Vm(self.work, name="fallback-4k", disks=[Disk(image.qcow2, logical_block_size=4096)]) as vm:
            vm.wait_for(re.escape(image.marker), TIMEOUT)
            self.assertEqual(vm.wait_exit(60), 0)
        if os.geteuid() == 0:  # sgdisk reads the GPT in 4096-byte sectors only through a 4Kn device
            loop = subprocess.run(["losetup", "-f", "--show", "-r", "-b", "4096", image.path], check=True,
                                  stdout=subprocess.PIPE, text=True).stdout.strip()
            try:
                out = check_gpt(loop)
                self.assertIn("EF00", subprocess.run(["sgdisk", "-p", loop], check=True, text=True,
                                                     stdout=subprocess.PIPE).stdout, out)
            finally:
                subprocess.run(["losetup", "-d", loop], check=True)

    def test_uefi_boot_entry_prints_marker(self):
        image = self.uefi_image(startup_nsh=BCFG_SCRIPT)
        nvram = None
        # First VM: nothing boots, the shell runs startup.nsh, which adds the entry and resets; the same
        # VM then boots through the entry.
        with Vm(self.work, name="bcfg", disks=[Disk(image.qcow2)], reboot=True) as vm:
            vm.wait_for(re.escape(image.marker), TIMEOUT * 2)
            vm.wait_exit(60)
            nvram = vm.nvram
            log = vm.log()
        self.assertRegex(log, r"bcfg: Add Boot[0-9A-F]{4} as 0", log)
        loaded = ovmf_loaded_entries(log)
        self.assertEqual(loaded[-1][1], BCFG_LABEL, log)
        self.assertRegex(log, r'BdsDxe: loading Boot[0-9A-F]{4} "%s" from [^\n]*HD\(1,GPT,%s,0x800,0x14000\)/'
                         r'\\EFI\\byoitest\\grubx64\.efi' % (re.escape(BCFG_LABEL), image.esp_guid.upper()),
                         log)
        # Second VM: the same disk, without startup.nsh, and the NVRAM kept from the first: the entry
        # alone boots the loader.
        subprocess.run(["mdel", "-i", "%s@@%d" % (image.path, image.esp_start), "::/startup.nsh"],
                       check=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
        started = time.monotonic()
        log, loaded = boot_installed(self.work, image.path, nvram, image.marker, label=BCFG_LABEL,
                                     timeout=TIMEOUT, name="entry")
        print("OVMF boot through a Boot#### entry to the marker: %.1f s" % (time.monotonic() - started),
              file=sys.stderr)
        self.assertEqual([label for _, label in loaded], [BCFG_LABEL], log)
        self.assertNotIn("Shell>", log)

    def test_bios_mbr_prints_marker(self):
        marker = lib_images.new_marker("bios")
        image = lib_images.make_bios_image(os.path.join(self.work, "bios.raw"), marker,
                                           qcow2=os.path.join(self.work, "bios.qcow2"))
        with Vm(self.work, name="bios", firmware="bios", disks=[Disk(image.qcow2)]) as vm:
            vm.wait_for(re.escape(marker) + r"\n", TIMEOUT)
            seconds = vm.elapsed()
            log = vm.log()
        print("SeaBIOS boot to marker: %.1f s" % seconds, file=sys.stderr)
        self.assertIn("Booting from Hard Disk", log)
        self.assertEqual(log.count(marker), 1, log)



@unittest.skipIf(lib_images.tools_missing(), "missing: %s" % lib_images.tools_missing())
class FlowHelpersTest(unittest.TestCase):
    """The disk checks of lib_flow on a disk made by hand (no VM): what the install flow relies on."""

    def test_gpt_check_and_config_drive_reader(self):
        with tempfile.TemporaryDirectory() as work:
            image = lib_images.make_uefi_image(os.path.join(work, "disk.raw"), "unused", size_mib=128)
            # Grown like a real disk bigger than the image, the backup GPT is not at the end: not clean.
            subprocess.run(["truncate", "-s", "192M", image.path], check=True)
            with self.assertRaisesRegex(AssertionError, "Problem"):
                check_gpt(image.path)
            # Fixed and given a config-2 partition at the end, as the agent does.
            subprocess.run(["sgdisk", "-e", "-n", "3:-64M:0", "-t", "3:0700", "-c", "3:config-2", image.path],
                           check=True, stdout=subprocess.DEVNULL)
            check_gpt(image.path)
            _, start, size, _, name = partitions(image.path)[2]
            self.assertEqual(name, "config-2")
            subprocess.run(["mkfs.fat", "-n", "config-2", "--offset", str(start // 512), image.path,
                            str(size // 1024)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            tree = os.path.join(work, "cd")
            os.makedirs(os.path.join(tree, "openstack", "latest"))
            with open(os.path.join(tree, "openstack", "latest", "meta_data.json"), "w") as f:
                json.dump({"uuid": "byoi-test", "hostname": "web-1", "meta": {"role": "web"}}, f)
            with open(os.path.join(tree, "openstack", "latest", "user_data"), "w") as f:
                f.write("#cloud-config\n")
            subprocess.run(["mcopy", "-s", "-i", "%s@@%d" % (image.path, start),
                            os.path.join(tree, "openstack"), "::/"], check=True,
                           env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
            number, drive = read_config_drive(image.path)
            self.assertEqual(number, 3)
            self.assertEqual(drive["metadata"]["hostname"], "web-1")
            self.assertEqual(drive["metadata"]["meta"], {"role": "web"})
            self.assertEqual(drive["userdata"], b"#cloud-config\n")
            with open(image.path, "r+b") as f:  # a damaged primary header is reported too
                f.seek(512 + 16)  # header CRC32
                f.write(b"\0\0\0\0")
            with self.assertRaisesRegex(AssertionError, "CRC"):
                check_gpt(image.path)

if __name__ == "__main__":
    unittest.main()
