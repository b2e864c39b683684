"""The whole mission on real firmware (docs/pipeline.md): a rescue VM installs an image and the disk then boots
through what the agent set up.

Each flow: build a bootable test image (make_test_image's), serve it from nginx on 127.0.0.1, boot the
rescue kernel + initramfs (packaging/rescue) under QEMU with an empty virtio disk and user-mode
networking (the guest reaches nginx at 10.0.2.2), hand the agent a job with a config drive and a
checksum, let it install and reboot (-no-reboot: QEMU exits), then boot the same disk -- and for UEFI
the same NVRAM file -- again without the rescue kernel and check on the host what is on the disk:

- UEFI, 512-byte sectors, BYOI v1 body POSTed to the agent's HTTP API: OVMF must load our Boot####
  (its `BdsDxe: loading Boot#### "<label>"` line) and GRUB must print the marker; GPT clean
  (sgdisk -v), config-2 read back by cloud-init's own reader. Twice: the image as qcow2, and as an
  OVA (OVF descriptor, SHA256 manifest, streamOptimized VMDK).
- legacy BIOS (SeaBIOS), MBR image with boot code, raw type, sha512, job taken by polling a
  backend: the final status (delivered before the reboot) has the bootloader step `skipped`; the
  MBR boot code prints its marker.
- UEFI on a 4096-byte-sector disk, reinstall v3 body over the API, 4Kn image: the same proof, the
  host checks through a 4Kn loop device.
- the demo's route on the host (no rescue VM): `byoi-agent deploy` into a file-backed disk and a
  scratch efivars directory, turned into an OVMF NVRAM file (efi_vars to-ovmf), boots the marker.

Label e2e. Needs root (loop devices for the 4Kn checks), qemu-system-x86, ovmf, seabios,
linux-image-amd64, busybox-static, grub-efi-amd64-bin, gdisk, fdisk, dosfstools, mtools, qemu-utils,
nginx, cloud-init (Debian's /usr/bin/python3). BYOI_E2E_KEEP=1 keeps the VMs' logs and disks.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import lib_efivars  # noqa: E402
import lib_images  # noqa: E402
from daemon_backend import Backend  # noqa: E402
from lib_flow import (boot_installed, check_gpt, console_report, follow_job, http_json,  # noqa: E402
                      partitions, read_config_drive, step_states, submit, wait_healthy, STEPS)
from lib_nginx import NGINX, Nginx  # noqa: E402
from lib_qemu import GUEST_HOST_ADDRESS, Disk, Vm, free_port, qemu_missing  # noqa: E402
from lib_rescue import agent_path, build_rescue, rescue_cmdline, rescue_missing  # noqa: E402
from ova_util import make_ova, vmdk_from_raw  # noqa: E402

MIB = 1 << 20
RESCUE_BOOT_TIMEOUT = 240  # rescue boot to a healthy API: about 20 s under TCG on 2 cores
JOB_TIMEOUT = 300          # the job and the reboot: about 10 s
BOOT_TIMEOUT = 150         # the installed disk to its marker: about 5 s
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBYOIe2eTESTkeyAAAAAAAAAAAAAAAAAAAAAAAAAAAA e2e@byoi"
USER_DATA = "#cloud-config\npackages: [nginx]\nruncmd:\n  - echo byoi-e2e > /etc/motd\n"
METADATA = {"role": "web", "rack": "r12"}
TIMES = []  # (what, seconds), printed at the end


def note_time(what, seconds):
    TIMES.append((what, seconds))
    print("%s: %.1f s" % (what, seconds), file=sys.stderr)


def file_hash(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_range(path, start, length):
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def sparse_disk(path, size_mib):
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
    return path


def missing():
    """Why these flows cannot run here, or "" (for the skip message)."""
    if qemu_missing() or rescue_missing():
        return qemu_missing() or rescue_missing()
    if lib_images.tools_missing():
        return "missing: %s" % " ".join(lib_images.tools_missing())
    if not os.access(NGINX, os.X_OK):
        return "nginx not installed"
    return ""


class Loop:
    """A read-only loop device over `path` with `sector_size` logical sectors (root only)."""

    def __init__(self, path, sector_size):
        self.path, self.sector_size, self.device = path, sector_size, None

    def __enter__(self):
        self.device = subprocess.run(["losetup", "-f", "--show", "-r", "-b", str(self.sector_size), self.path],
                                     check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
        return self.device

    def __exit__(self, *exc):
        subprocess.run(["losetup", "-d", self.device], check=True)
        return False


@unittest.skipIf(missing(), missing())
class InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="byoi-install-")
        cls.kernel, cls.initrd = build_rescue(os.path.join(cls.tmp, "rescue"))
        note_time("rescue build", build_rescue.seconds)

    @classmethod
    def tearDownClass(cls):
        print("times: " + ", ".join("%s %.1f s" % t for t in TIMES), file=sys.stderr)
        if not os.environ.get("BYOI_E2E_KEEP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)
        else:
            print("kept: " + cls.tmp, file=sys.stderr)

    def assertServedOnce(self, access, path, size):
        """nginx's access log shows every byte of `path` served exactly once: one 200 of `size`
        bytes, or 206 answers (the agent's ranges, several connections) adding up to `size`."""
        answers = re.findall(r'"GET %s HTTP/1\.1" (200|206) (\d+) ' % re.escape(path), access)
        self.assertTrue(answers, access)
        self.assertEqual(sum(int(n) for _, n in answers), size, access)
        self.assertTrue(all(code == "206" for code, _ in answers) or len(answers) == 1, access)

    def workdir(self):
        work = tempfile.mkdtemp(prefix=self._testMethodName + ".", dir=self.tmp)
        os.makedirs(os.path.join(work, "www"))
        return work

    # --- shared steps -----------------------------------------------------------------------------------------------

    def rescue_vm(self, work, firmware, disk, words, *, logical_block_size=512, host_forwards=()):
        return Vm(work, name="rescue", firmware=firmware, memory_mib=2048, network=True,
                  host_forwards=list(host_forwards),
                  disks=[Disk(disk, format="raw", logical_block_size=logical_block_size)],
                  kernel=self.kernel, initrd=self.initrd,
                  append=rescue_cmdline("byoi.memory_limit=512M", *words))

    def run_over_api(self, work, firmware, disk, manifest_for, *, logical_block_size=512):
        """Rescue VM + nginx; POST the manifest to the agent's API, follow it until the agent reboots.

        manifest_for(web) gives the manifest once nginx's port is known. Returns (statuses seen over the
        API, the rescue's serial log, NVRAM file, nginx access log)."""
        token = uuid.uuid4().hex
        port = free_port()
        api = "http://127.0.0.1:%d" % port
        with Nginx(os.path.join(work, "www"), work) as web, self.rescue_vm(
                work, firmware, disk, ["byoi.token=" + token], logical_block_size=logical_block_size,
                host_forwards=[(port, 9999)]) as vm:
            wait_healthy(vm, api, RESCUE_BOOT_TIMEOUT)
            note_time("%s: rescue boot to a healthy API" % self._testMethodName, vm.elapsed())
            self.assertEqual(http_json("GET", api + "/v1/bringYourOwnImage", "wrong-" + token)[0], 401)
            self.assertEqual(http_json("GET", api + "/v1/bringYourOwnImage", token)[0], 404)  # no job yet
            manifest = manifest_for(web)
            started = time.monotonic()
            accepted = submit(api, token, manifest)
            self.assertEqual((accepted["status"], accepted["message"]), ("doing", "starting"), accepted)
            seen = follow_job(vm, api, token, JOB_TIMEOUT)
            if seen and seen[-1]["status"] == "error":  # the agent stays in rescue: no reboot to wait for
                vm.fail("the job failed: %s" % json.dumps(seen[-1], indent=1))
            self.assertEqual(vm.wait_exit(120), 0)  # the guest's reboot ends QEMU (-no-reboot)
            note_time("%s: job, submit to reboot" % self._testMethodName, time.monotonic() - started)
            log = vm.log()
            access = web.access_log()
        self.check_statuses([accepted] + seen)
        return seen, log, vm.nvram, access

    def check_statuses(self, statuses):
        """Every status seen is of a job going forward: no error, no step going back."""
        rank = {"todo": 0, "doing": 1, "done": 2, "skipped": 2, "error": 2}
        previous = {}
        for status in statuses:
            self.assertIn(status["status"], ("doing", "done"), json.dumps(status, indent=1))
            for step, state in step_states(status).items():
                self.assertGreaterEqual(rank[state], previous.get(step, 0), statuses)
                self.assertNotEqual(state, "error", status)
                previous[step] = rank[state]

    def check_console_done(self, log, expected):
        """The agent's console display (on the serial port) shows the job done and every step in the
        `expected` state, in plain lines; returns {step: comment}. Also: the agent logged its reboot and the kernel
        restarted."""
        steps, final = console_report(log)
        self.assertIsNotNone(final, log[-3000:])
        self.assertRegex(final, r"^DONE in \d+ s: done$", log[-3000:])
        self.assertEqual({s: steps.get(s, ("missing", ""))[0] for s in STEPS}, expected, log[-3000:])
        self.assertRegex(log, r"info reboot: rebooting", log[-3000:])
        self.assertRegex(log, r"reboot: Restarting system", log[-3000:])
        self.assertNotIn("Kernel panic", log)
        # A serial console (what IPMI serial-over-LAN records) gets plain lines, never redraws.
        self.assertNotIn("\x1b[Kbyoi-agent:", log)
        return {s: c for s, (_, c) in steps.items()}

    def check_config_drive(self, device, hostname, instance_id, partition_number):
        number, drive = read_config_drive(device)
        self.assertEqual(number, partition_number)
        metadata = drive["metadata"]
        self.assertEqual(metadata["hostname"], hostname)
        self.assertEqual(metadata["uuid"], instance_id)
        self.assertEqual(metadata["public_keys"], {"default": SSH_KEY})
        self.assertEqual(metadata["meta"], METADATA)
        self.assertEqual(drive["userdata"], USER_DATA.encode())
        return drive

    def check_uefi_boot(self, work, disk, nvram, image, label, boot_number, logical_block_size=512):
        """The agent's entry is first in BootOrder in the NVRAM the rescue VM left, and a VM with only the
        disk and that NVRAM boots through it to the marker."""
        entries = lib_efivars.read_ovmf_vars(nvram)
        order = lib_efivars.boot_order(entries)
        decoded = lib_efivars.boot_entries(entries)
        expected_path = "HD(1,GPT,%s,0x%X,0x%X)/%s" % (
            image.esp_guid.upper(), image.esp_start // logical_block_size, image.esp_size // logical_block_size,
            image.loader_path)
        self.assertEqual(order[:1], [boot_number], lib_efivars.show_boot_entries(entries))
        self.assertEqual((decoded[boot_number]["label"], decoded[boot_number]["device_path"]),
                         (label, expected_path), lib_efivars.show_boot_entries(entries))
        started = time.monotonic()
        log, loaded = boot_installed(work, disk, nvram, image.marker, label=label, timeout=BOOT_TIMEOUT,
                                     logical_block_size=logical_block_size)
        note_time("%s: installed disk to the marker" % self._testMethodName, time.monotonic() - started)
        self.assertEqual(loaded, [(boot_number, label)], log[-3000:])  # the first thing OVMF tried
        self.assertIn('BdsDxe: loading %s "%s" from %s\n' % (boot_number, label, expected_path), log)
        self.assertEqual(log.count(image.marker), 1, log[-3000:])
        self.assertNotIn("Shell>", log)

    def check_gpt_disk(self, device, disk_bytes, image, sector):
        """GPT clean, the image's two partitions where they were (GUIDs kept), config-2 at the end."""
        check_gpt(device)
        parts = partitions(device)
        self.assertEqual([(n, s, z, t) for n, s, z, t, _ in parts[:2]], [
            (1, image.esp_start, image.esp_size, lib_images.ESP_TYPE),
            (2, image.esp_start + image.esp_size, image.size - image.esp_start - image.esp_size - MIB,
             lib_images.LINUX_TYPE)], parts)
        self.assertEqual(len(parts), 3, parts)
        number, start, size, _, name = parts[2]
        self.assertEqual((number, name, size), (3, "config-2", 64 * MIB), parts)
        self.assertGreater(start + size, disk_bytes - 2 * MIB, parts)  # at the end of the disk
        self.assertLessEqual(start + size, disk_bytes - 33 * sector, parts)
        info = subprocess.run(["sgdisk", "-i", "1", device], check=True, stdout=subprocess.PIPE,
                              text=True).stdout
        self.assertIn("Partition unique GUID: " + image.esp_guid.upper(), info)
        return parts

    # --- the flows ------------------------------------------------------------------------------------------------

    def test_uefi_512_over_api(self):
        self.uefi_512_flow("qcow2")

    def test_uefi_512_ova_over_api(self):
        # An appliance as ovftool packs it (descriptor, SHA256 manifest, streamOptimized VMDK):
        # installed through the agent's entry like the qcow2 above.
        comments = self.uefi_512_flow("ova")
        self.assertIn("ova (image.vmdk, disk 1 of 1, streamOptimized VMDK; manifest: 2 digests "
                      "match)", comments["verify"])

    def uefi_512_flow(self, image_type):
        """UEFI, 512-byte sectors, v1 body over the API, the image served as `image_type` (qcow2 or
        ova); returns the console's step comments."""
        work = self.workdir()
        marker = lib_images.new_marker("uefi")
        served = os.path.join(work, "www", "image." + image_type)
        image = lib_images.make_uefi_image(os.path.join(work, "image.raw"), marker,
                                           qcow2=served if image_type == "qcow2" else None)
        if image_type == "ova":
            vmdk = vmdk_from_raw(image.path, os.path.join(work, "image.vmdk"))
            make_ova(served, [vmdk], name="byoi-e2e")
        disk_bytes = 512 * MIB
        disk = sparse_disk(os.path.join(work, "disk.raw"), 512)
        label = "byoi e2e " + uuid.uuid4().hex[:8]
        hostname = "e2e-uefi-1"
        sha256 = file_hash(served, "sha256")

        def manifest_for(web):
            return {"URL": web.guest_url(os.path.basename(served)), "type": image_type,
                    "checkSum": sha256,
                    "checkSumType": "sha256", "description": label, "diskGroupId": 1,
                    "configdrive": {"enable": True, "hostname": hostname, "sshKey": SSH_KEY,
                                    "userData": USER_DATA,
                                    "userMetadatas": [{"key": k, "value": v} for k, v in METADATA.items()]}}

        seen, log, nvram, access = self.run_over_api(work, "uefi", disk, manifest_for)
        self.assertServedOnce(access, "/image." + image_type, os.path.getsize(served))
        comments = self.check_console_done(log, {s: "done" for s in STEPS})
        self.assertIn("sha256 matches", comments["verify"])
        for status in seen:  # the checksum shows from verify on
            self.assertIn(status["checksum"], ("", sha256), status)
        m = re.match(r'^Boot([0-9A-F]{4}) "([^"]*)" \((new|reused)\) HD\(1,GPT,%s,0x800,0x14000\)/'
                     r'File\(\\EFI\\byoitest\\grubx64\.efi\), BootOrder \1\b' % image.esp_guid,
                     comments["bootloader"], re.IGNORECASE)
        self.assertTrue(m, comments["bootloader"])
        self.assertEqual(m.group(2), label)
        instance_id = re.search(r"instance id ([0-9a-f-]{36})", comments["configdrive"]).group(1)

        self.check_uefi_boot(work, disk, nvram, image, label, "Boot" + m.group(1))

        self.check_gpt_disk(disk, disk_bytes, image, 512)
        # The image's partitions hold the image's bytes (the ESP with the loader, the root partition).
        span = (image.esp_start, image.size - image.esp_start - MIB)
        self.assertEqual(hashlib.sha256(read_range(disk, *span)).hexdigest(),
                         hashlib.sha256(read_range(image.path, *span)).hexdigest())
        self.check_config_drive(disk, hostname, instance_id, 3)
        return comments

    def test_bios_mbr_over_backend_polling(self):
        work = self.workdir()
        marker = lib_images.new_marker("bios")
        image = lib_images.make_bios_image(os.path.join(work, "www", "image.raw"), marker)
        disk_bytes = 256 * MIB
        disk = sparse_disk(os.path.join(work, "disk.raw"), 256)
        hostname = "e2e-bios-1"
        sha512 = file_hash(image.path, "sha512")
        token, agent_id, job_id = uuid.uuid4().hex, "e2e-bios", "job-" + uuid.uuid4().hex[:8]
        with Nginx(os.path.join(work, "www"), work) as web:
            manifest = {"URL": web.guest_url("image.raw"), "type": "raw", "checkSum": sha512,
                        "checkSumType": "SHA512", "description": "byoi e2e bios",
                        "configdrive": {"enable": True, "hostname": hostname, "sshKey": SSH_KEY,
                                        "userData": base64.b64encode(USER_DATA.encode()).decode(),
                                        "userMetadatas": [{"key": k, "value": v} for k, v in METADATA.items()]}}
            backend = Backend(agent_id, token, [{"jobId": job_id, "manifest": manifest}])
            try:
                backend_url = "http://%s:%d" % (GUEST_HOST_ADDRESS, backend.httpd.server_address[1])
                with self.rescue_vm(work, "bios", disk, [
                        "byoi.token=" + token, "byoi.backend_url=" + backend_url, "byoi.agent_id=" + agent_id,
                        "byoi.poll_interval=1"]) as vm:
                    deadline = time.monotonic() + RESCUE_BOOT_TIMEOUT + JOB_TIMEOUT
                    taken = None
                    while True:
                        statuses = backend.statuses(job_id)
                        if statuses and taken is None:
                            taken = time.monotonic()
                            note_time("%s: rescue boot to the job taken" % self._testMethodName, vm.elapsed())
                        if statuses and statuses[-1]["status"] in ("done", "error"):
                            break
                        if vm.process.poll() is not None:
                            vm.fail("QEMU exited before the backend got a final status (%d received)" %
                                    len(statuses))
                        if time.monotonic() > deadline:
                            vm.fail("no final status at the backend (last: %r)" % statuses[-1:])
                        time.sleep(0.2)
                    self.assertEqual(vm.wait_exit(120), 0)
                    note_time("%s: job, taken to reboot" % self._testMethodName, time.monotonic() - taken)
                    log = vm.log()
                access = web.access_log()
            finally:
                backend.stop()
        self.assertEqual(backend.unauthorized, 0)
        final = statuses[-1]
        self.assertEqual(final["status"], "done", json.dumps(final, indent=1) + log[-3000:])
        self.check_statuses(statuses[:-1])
        self.assertEqual(step_states(final), {"download": "done", "verify": "done", "write": "done",
                                              "partition": "done", "configdrive": "done",
                                              "bootloader": "skipped", "reboot": "done"}, final)
        comments = {s["step"]: s["comment"] for s in final["progress"]}
        self.assertIn("legacy BIOS", comments["bootloader"])
        self.assertEqual((final["checksum"], final["servername"]), (sha512, hostname))
        self.assertIn("sha512 matches", comments["verify"])
        self.assertServedOnce(access, "/image.raw", image.size)
        self.check_console_done(log, step_states(final))
        instance_id = re.search(r"instance id ([0-9a-f-]{36})", comments["configdrive"]).group(1)

        started = time.monotonic()
        boot_log, _ = boot_installed(work, disk, None, marker, firmware="bios", timeout=BOOT_TIMEOUT)
        note_time("%s: installed disk to the marker" % self._testMethodName, time.monotonic() - started)
        self.assertIn("Booting from Hard Disk", boot_log)
        self.assertEqual(boot_log.count(marker), 1, boot_log)

        self.assertEqual(read_range(disk, 0, 440), read_range(image.path, 0, 440))  # the boot code
        verify = subprocess.run(["sfdisk", "--verify", disk], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        self.assertEqual(verify.returncode, 0, verify.stdout)
        self.assertIn("No errors detected", verify.stdout)
        parts = partitions(disk)
        self.assertEqual(parts[0], (1, MIB, image.size - MIB, "83", ""), parts)
        self.assertEqual(len(parts), 2, parts)
        number, start, size, _, _ = parts[1]
        self.assertEqual(size, 64 * MIB, parts)
        self.assertGreater(start + size, disk_bytes - 2 * MIB, parts)
        self.assertEqual(read_range(disk, MIB, image.size - MIB), read_range(image.path, MIB, image.size - MIB))
        self.check_config_drive(disk, hostname, instance_id, number)

    @unittest.skipIf(os.geteuid() != 0, "the 4Kn disk is checked through a loop device (root)")
    def test_uefi_4k_disk_v3_over_api(self):
        work = self.workdir()
        marker = lib_images.new_marker("uefi4k")
        image = lib_images.make_uefi_image(os.path.join(work, "image.raw"), marker, sector_size=4096,
                                           qcow2=os.path.join(work, "www", "image.qcow2"))
        disk_bytes = 512 * MIB
        disk = sparse_disk(os.path.join(work, "disk.raw"), 512)
        hostname = "e2e-4kn-1"
        sha1 = file_hash(image.qcow2, "sha1")

        def manifest_for(web):
            return {"operatingSystem": "byoi_64",
                    "customizations": {"imageURL": web.guest_url("image.qcow2"), "imageType": "qcow2",
                                       "imageCheckSum": sha1, "imageCheckSumType": "sha1",
                                       "efiBootloaderPath": "\\efi\\byoitest\\grubx64.efi",
                                       "hostname": hostname, "sshKey": SSH_KEY,
                                       "configDriveUserData": base64.b64encode(USER_DATA.encode()).decode(),
                                       "configDriveMetadata": METADATA,
                                       # Written while it downloads (docs/pipeline.md).
                                       "writeMode": "stream"},
                    "storage": [{"diskGroupId": 1}]}

        seen, log, nvram, access = self.run_over_api(work, "uefi", disk, manifest_for, logical_block_size=4096)
        self.assertServedOnce(access, "/image.qcow2", os.path.getsize(image.qcow2))
        comments = self.check_console_done(log, {s: "done" for s in STEPS})
        self.assertIn("sha1 matches", comments["verify"])
        self.assertIn("stream mode: writeMode stream", comments["verify"])
        self.assertRegex(log, r"plan: /dev/vda \(\w+, %d bytes, 4096-byte sectors\)" % disk_bytes)
        m = re.match(r'^Boot([0-9A-F]{4}) "([^"]+)" \((new|reused)\) HD\(1,GPT,%s,0x100,0x2800\)/'
                     r'File\(\\EFI\\byoitest\\grubx64\.efi\), BootOrder \1\b' % image.esp_guid,
                     comments["bootloader"], re.IGNORECASE)
        self.assertTrue(m, comments["bootloader"])
        instance_id = re.search(r"instance id ([0-9a-f-]{36})", comments["configdrive"]).group(1)

        self.check_uefi_boot(work, disk, nvram, image, m.group(2), "Boot" + m.group(1), logical_block_size=4096)

        with Loop(disk, 4096) as device:
            self.check_gpt_disk(device, disk_bytes, image, 4096)
            self.check_config_drive(device, hostname, instance_id, 3)
        span = (image.esp_start, image.size - image.esp_start - MIB)
        self.assertEqual(hashlib.sha256(read_range(disk, *span)).hexdigest(),
                         hashlib.sha256(read_range(image.path, *span)).hexdigest())

    def test_host_deploy_scratch_efivars_boots_under_ovmf(self):
        """The demo's route, without a rescue VM: `byoi-agent deploy` into a file-backed disk and a
        scratch efivars directory; that directory, made into an OVMF variable store (efi_vars to-ovmf),
        boots the disk through the agent's entry."""
        work = self.workdir()
        marker = lib_images.new_marker("host")
        image = lib_images.make_uefi_image(os.path.join(work, "image.raw"), marker,
                                           qcow2=os.path.join(work, "www", "image.qcow2"))
        disk = sparse_disk(os.path.join(work, "disk.raw"), 256)
        efivars = os.path.join(work, "efivars")
        os.makedirs(efivars)
        label = "byoi host " + uuid.uuid4().hex[:8]
        with Nginx(os.path.join(work, "www"), work) as web:
            manifest = {"URL": web.url("image.qcow2"), "type": "qcow2", "description": label,
                        "checkSum": file_hash(image.qcow2, "md5"), "checkSumType": "md5",
                        "configdrive": {"enable": True, "hostname": "host-1", "sshKey": SSH_KEY,
                                        "userData": USER_DATA,
                                        "userMetadatas": [{"key": k, "value": v} for k, v in METADATA.items()]}}
            result = subprocess.run([agent_path(), "deploy", "--manifest", "-", "--disk", disk, "--efivars", efivars,
                                     "--reboot", "none", "--json"], input=json.dumps(manifest),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        final = json.loads(result.stdout)
        self.assertEqual(final["status"], "done", final)
        self.assertEqual(step_states(final)["bootloader"], "done", final)
        check_gpt(disk)
        nvram = os.path.join(work, "OVMF_VARS.fd")
        added = subprocess.run([os.path.join(HERE, "efi_vars"), "to-ovmf", efivars, nvram], check=True,
                               stdout=subprocess.PIPE, text=True).stdout
        self.assertIn("BootOrder", added)
        entries = lib_efivars.read_ovmf_vars(nvram)
        for name, value in lib_efivars.read_efivars_dir(efivars).items():  # what the agent wrote, as written
            self.assertEqual(entries.get(name), value, name)
        boot_number = lib_efivars.boot_order(entries)[0]
        started = time.monotonic()
        log, loaded = boot_installed(work, disk, nvram, marker, label=label, timeout=BOOT_TIMEOUT)
        note_time("%s: installed disk to the marker" % self._testMethodName, time.monotonic() - started)
        self.assertEqual(loaded, [(boot_number, label)], log[-3000:])


if __name__ == "__main__":
    unittest.main()
