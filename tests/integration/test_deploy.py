#!/usr/bin/python3
"""`byoi-agent deploy` end to end on real loop devices (docs/manifest.md to docs/cli.md, docs/disks.md, docs/boot.md).

What this file proves, each with assertions on content:

* Writing: a qcow2 GPT image, a raw GPT image and an MBR image, each made for 512- and for
  4096-byte logical sectors, deployed onto loop devices of that sector size that are larger than the
  image (and pre-filled with random bytes), end `done` with exit code 0. The image's partitions hold
  the image's bytes, the partition table keeps every image partition unchanged, the backup GPT is
  at the disk's last LBA and `sgdisk -v` is clean (MBR: `sfdisk --verify`), the kernel's view of the
  partitions matches the new table, and a 64 MiB `config-2` partition is the last one (GPT name
  config-2 and type Linux filesystem; MBR type 0x0c), holding a vfat labelled config-2 from which
  cloud-init's own ConfigDriveReader reads back our hostname, key, metadata and user data. A v3
  (reinstall) manifest with base64 user data and a regular file as the disk work too.
* Boot entries: with --efivars DIR a Boot#### decoding to the ESP's GUID and the loader path is
  first in BootOrder (ahead of an existing PXE entry); without efivars the step is skipped as legacy
  BIOS; an MBR without boot code gets the legacy warning; a missing efiBootloaderPath fails with the
  catalogue message.
* Refusals before writing: exact catalogue message, exit code 1, and the disk byte for byte
  untouched (image too large, checksum mismatch, wrong declared type, raw without partition table,
  GPT made for another sector size, corrupt qcow2, mounted partition, mounted disk, active swap,
  404, bad manifests).
* Failures after writing began (config drive on a full MBR, missing boot loader) zero the disk's
  first and last MiB while the middle keeps the image.

Needs root, loop devices, qemu-img, gdisk, fdisk, dosfstools, mtools, grub-efi-amd64-bin and
Debian's cloud-init (so it runs with /usr/bin/python3, and re-executes itself there if needed).
Images are served by a local HTTP server bound to 127.0.0.1.
"""

import base64
import dataclasses
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import uuid
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

try:
    import cloudinit.sources.helpers.openstack  # noqa: F401  (Debian's python3 only)
except ImportError:
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)

from conformance_util import MIB, Qcow2, loop_device, random_file, run  # noqa: E402
from daemon_harness import ImageServer, step  # noqa: E402
from ova_util import make_ova, vmdk_from_raw  # noqa: E402
import lib_flow  # noqa: E402
import lib_images  # noqa: E402

AGENT = os.environ.get("BYOI_AGENT") or os.path.join(REPO, "build", "byoi-agent")

EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
CONFIG_DRIVE_BYTES = 64 * MIB
LEGACY_NO_BOOT_CODE = ("this server boots in legacy BIOS mode but the image has no MBR boot code: "
                       "it will probably not boot")

# What every config drive of these tests carries, and what cloud-init must read back.
HOSTNAME = "web-1"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBy0iTestKeyOnlyForTheIntegrationTests00 ops@byoi"
USER_DATA = "#cloud-config\nwrite_files:\n- path: /etc/motd\n  content: \"déployé par byoi\\n\"\n"
METADATA = {"role": "web", "rack": "b12"}


# --- partition tables, read with struct ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GptPartition:
    number: int
    first: int      # LBA
    last: int       # LBA, inclusive
    type: str       # upper-case GUID
    guid: str       # lower-case GUID
    name: str


@dataclasses.dataclass
class Gpt:
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    partitions: list


def read(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise AssertionError("%s: short read at %d" % (path, offset))
    return data


def read_dir(path):
    """{name: bytes} of the files in `path`."""
    files = {}
    for name in os.listdir(path):
        with open(os.path.join(path, name), "rb") as f:
            files[name] = f.read()
    return files


def boot_order(variable):
    """The entry numbers of a BootOrder variable's bytes (4 attribute bytes, then UINT16s)."""
    return list(struct.unpack("<%dH" % ((len(variable) - 4) // 2), variable[4:]))


def device_size(path):
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def read_gpt(path, sector_size, lba):
    """The GPT header at `lba` and its partition entries; both CRCs must hold."""
    header = read(path, lba * sector_size, 92)
    (signature, _revision, header_size, header_crc, _, my_lba, alternate_lba, first_usable,
     last_usable, disk_guid, entries_lba, count, entry_size, entries_crc) = struct.unpack(
         "<8sIIIIQQQQ16sQIII", header)
    if signature != b"EFI PART":
        raise AssertionError("%s: no GPT header at LBA %d" % (path, lba))
    raw_header = bytearray(read(path, lba * sector_size, header_size))
    raw_header[16:20] = bytes(4)
    if zlib.crc32(raw_header) != header_crc:
        raise AssertionError("%s: bad CRC of the GPT header at LBA %d" % (path, lba))
    entries = read(path, entries_lba * sector_size, count * entry_size)
    if zlib.crc32(entries) != entries_crc:
        raise AssertionError("%s: bad CRC of the GPT entries of the header at LBA %d" % (path, lba))
    partitions = []
    for i in range(count):
        type_le, guid_le, first, last, _attrs, name = struct.unpack_from(
            "<16s16sQQQ72s", entries, i * entry_size)
        if type_le == bytes(16):
            continue
        partitions.append(GptPartition(
            i + 1, first, last, str(uuid.UUID(bytes_le=type_le)).upper(),
            str(uuid.UUID(bytes_le=guid_le)), name.decode("utf-16-le").split("\0")[0]))
    return Gpt(my_lba, alternate_lba, first_usable, last_usable,
               str(uuid.UUID(bytes_le=disk_guid)), partitions)


@dataclasses.dataclass(frozen=True)
class MbrPartition:
    slot: int       # 1-4
    type: int
    first: int      # sector
    count: int      # sectors


def read_mbr(path):
    sector = read(path, 0, 512)
    if sector[510:512] != b"\x55\xaa":
        raise AssertionError("%s: no MBR signature" % path)
    parts = []
    for slot in range(4):
        _status, _chs, ptype, _chs2, first, count = struct.unpack_from(
            "<B3sB3sII", sector, 446 + 16 * slot)
        if ptype != 0:
            parts.append(MbrPartition(slot + 1, ptype, first, count))
    return parts


def kernel_partitions(dev):
    """{number: (start byte, size bytes)} of the partitions the kernel knows on `dev` (sysfs)."""
    name = os.path.basename(dev)
    found = {}
    for entry in os.listdir("/sys/block/" + name):
        m = re.fullmatch(re.escape(name) + r"p(\d+)", entry)
        if m:
            base = "/sys/block/%s/%s/" % (name, entry)
            with open(base + "start") as s, open(base + "size") as z:
                found[int(m.group(1))] = (int(s.read()) * 512, int(z.read()) * 512)
    return found


def sha256_range(path, offset, length):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(MIB, left))
            if not chunk:
                raise AssertionError("%s: short read" % path)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256_all(path):
    return sha256_range(path, 0, device_size(path))


# --- EFI load options -----------------------------------------------------------------------------

def efi_variable(attributes, data):
    return struct.pack("<I", attributes) + data


def load_option(description, device_path):
    return (struct.pack("<IH", 1, len(device_path)) + (description + "\0").encode("utf-16-le")
            + device_path)


def pxe_device_path():
    """MAC(525400123456)/IPv4(0.0.0.0)/End: what firmware makes for a PXE entry."""
    mac = struct.pack("<BBH", 3, 11, 37) + bytes.fromhex("525400123456").ljust(32, b"\0") + b"\x01"
    ipv4 = struct.pack("<BBH", 3, 12, 27) + bytes(23)
    return mac + ipv4 + struct.pack("<BBH", 0x7F, 0xFF, 4)


def decode_load_option(data):
    """(attributes, description, [(type, subtype, node bytes)]) of an EFI_LOAD_OPTION."""
    attributes, path_length = struct.unpack_from("<IH", data, 0)
    end = 6
    while data[end:end + 2] != b"\0\0":
        end += 2
    description = data[6:end].decode("utf-16-le")
    path = data[end + 2:end + 2 + path_length]
    nodes = []
    pos = 0
    while pos < len(path):
        ntype, subtype, length = struct.unpack_from("<BBH", path, pos)
        if length < 4:
            raise AssertionError("malformed device path node at %d" % pos)
        nodes.append((ntype, subtype, path[pos + 4:pos + length]))
        pos += length
    return attributes, description, nodes


# --- images ---------------------------------------------------------------------------------------

def fill_random(path, offset, length, seed):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(random.Random(seed).randbytes(length))


def make_gpt_image(workdir, sector_size):
    """lib_images' UEFI test disk (48 MiB: ESP with \\EFI\\byoitest\\grubx64.efi, a Linux partition),
    its root partition partly filled with random bytes (the rest stays zero), and its qcow2."""
    raw = os.path.join(workdir, "uefi-%d.raw" % sector_size)
    image = lib_images.make_uefi_image(raw, lib_images.new_marker("deploy"), size_mib=48,
                                       sector_size=sector_size)
    root_start = image.esp_start + image.esp_size
    fill_random(raw, root_start, 2 * MIB, "root-%d" % sector_size)
    fill_random(raw, root_start + 4 * MIB, 64 * 1024, "root-tail-%d" % sector_size)
    image.qcow2 = os.path.join(workdir, "uefi-%d.qcow2" % sector_size)
    lib_images.to_qcow2(raw, image.qcow2)
    return image


def make_mbr_image(path, sector_size, partitions, boot_code=True, size=16 * MIB):
    """An MBR disk made for `sector_size`: lib_images' boot code (or none), the given primary
    partitions [(start byte, size bytes, type)], each half filled with random bytes."""
    data = bytearray(size)
    if boot_code:
        code = lib_images.mbr_boot_code(lib_images.new_marker("bios"))
        data[:len(code)] = code
    struct.pack_into("<I", data, 440, 0x42594F49)
    for slot, (start, length, ptype) in enumerate(partitions):
        struct.pack_into("<B3sB3sII", data, 446 + 16 * slot, 0, b"\xfe\xff\xff", ptype,
                         b"\xfe\xff\xff", start // sector_size, length // sector_size)
        data[start:start + length // 2] = random.Random("%s-%d" % (path, slot)).randbytes(length // 2)
    data[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(data)
    return path


def corrupt_qcow2(source, out):
    """`source` with its first L2 table offset (L1 entry 0) pointing far beyond the end of the file.
    (A data cluster past the end would read as zeros, as in qemu-img; an L2 table cannot.)"""
    q = Qcow2(source)
    if q.l2_offset(0) == 0:
        raise AssertionError("L1 entry 0 of %s is not allocated" % source)
    beyond = (len(q.data) // q.cluster_size + 4096) * q.cluster_size
    q.set_u64(q.l1_entry_offset(0), (1 << 63) | beyond)
    q.save(out)
    return out


class Images:
    """Every image of the file, built once, served from one 127.0.0.1 server."""

    def __init__(self, workdir):
        self.dir = workdir
        self.gpt = {ss: make_gpt_image(workdir, ss) for ss in (512, 4096)}
        one = [(MIB, 14 * MIB, 0x83)]
        self.mbr = {ss: make_mbr_image(os.path.join(workdir, "mbr-%d.raw" % ss), ss, one)
                    for ss in (512, 4096)}
        self.mbr_no_boot_code = make_mbr_image(os.path.join(workdir, "mbr-no-code.raw"), 512, one,
                                               boot_code=False)
        four = [(MIB + i * 3 * MIB, 3 * MIB, 0x83) for i in range(4)]
        self.mbr_full = make_mbr_image(os.path.join(workdir, "mbr-four.raw"), 512, four)
        self.corrupt = corrupt_qcow2(self.gpt[512].qcow2, os.path.join(workdir, "corrupt.qcow2"))
        # OVAs: the GPT disks as streamOptimized (512) and monolithicSparse (4096) VMDKs; the
        # first with a second disk after it; the first with a byte of its disk changed after the
        # manifest was written.
        for ss, subformat in ((512, "streamOptimized"), (4096, "monolithicSparse")):
            image = self.gpt[ss]
            image.vmdk = vmdk_from_raw(image.path, os.path.join(workdir, "uefi-%d.vmdk" % ss),
                                       subformat)
            image.ova = make_ova(os.path.join(workdir, "uefi-%d.ova" % ss), [image.vmdk])
        second = vmdk_from_raw(self.mbr[512], os.path.join(workdir, "data.vmdk"))
        self.ova_two_disks = make_ova(os.path.join(workdir, "two-disks.ova"),
                                      [self.gpt[512].vmdk, second])

        def flip(files):
            return [(n, d[:-100] + bytes([d[-100] ^ 1]) + d[-99:] if n.endswith(".vmdk") else d)
                    for n, d in files]
        self.ova_bad_digest = make_ova(os.path.join(workdir, "bad-digest.ova"),
                                       [self.gpt[512].vmdk], mangle=flip)
        self.ext4 = os.path.join(workdir, "ext4.raw")
        with open(self.ext4, "wb") as f:
            f.truncate(8 * MIB)
        run("mkfs.ext4", "-q", "-F", self.ext4)
        files = {}
        for path in (self.gpt[512].path, self.gpt[512].qcow2, self.gpt[4096].path,
                     self.gpt[4096].qcow2, self.mbr[512], self.mbr[4096], self.mbr_no_boot_code,
                     self.mbr_full, self.corrupt, self.ext4, self.gpt[512].ova,
                     self.gpt[4096].ova, self.ova_two_disks, self.ova_bad_digest):
            with open(path, "rb") as f:
                files["/" + os.path.basename(path)] = f.read()
        self.data = files
        self.server = ImageServer(files)

    def url(self, path):
        return self.server.url("/" + os.path.basename(path))

    def sha256(self, path):
        return hashlib.sha256(self.data["/" + os.path.basename(path)]).hexdigest()


IMAGES = None


def setUpModule():
    global IMAGES
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root (loop devices)")
    missing = lib_images.tools_missing() + [t for t in ("sfdisk", "blkid", "partx", "mkfs.ext4")
                                            if shutil.which(t) is None]
    if missing:
        raise unittest.SkipTest("missing tools: " + ", ".join(missing))
    if not os.access(AGENT, os.X_OK):
        raise AssertionError("no agent binary at %s (set BYOI_AGENT)" % AGENT)
    workdir = tempfile.mkdtemp(prefix="byoi-deploy-images-", dir="/var/tmp")
    unittest.addModuleCleanup(shutil.rmtree, workdir, ignore_errors=True)
    IMAGES = Images(workdir)
    unittest.addModuleCleanup(IMAGES.server.stop)


# --- manifests and the deploy command -------------------------------------------------------------

def v1_manifest(url, image_type, config_drive=True, **extra):
    manifest = {"URL": url, "type": image_type, "description": "deploy integration test"}
    if config_drive:
        manifest["configdrive"] = {
            "enable": True, "hostname": HOSTNAME, "sshKey": SSH_KEY, "userData": USER_DATA,
            "userMetadatas": [{"key": k, "value": v} for k, v in METADATA.items()]}
    manifest.update(extra)
    return manifest


@dataclasses.dataclass
class Outcome:
    returncode: int
    status: dict     # the final status (--status-file, checked equal to --json's stdout)
    stderr: str

    def __str__(self):
        return "exit %d\nstatus: %s\nstderr:\n%s" % (
            self.returncode, json.dumps(self.status, indent=1), self.stderr[-4000:])


class DeployTestCase(unittest.TestCase):
    """Helpers: a work directory, disks (loop devices or files) pre-filled with random bytes, and
    `byoi-agent deploy` runs. Everything is released by cleanups, even when a test fails."""

    maxDiff = None

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="byoi-deploy-", dir="/var/tmp")
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        self.runs = 0

    def path(self, name):
        return os.path.join(self.workdir, name)

    def disk_file(self, size, name="disk.img"):
        path = self.path(name)
        random_file(path, size, self.id() + name)
        return path

    def loop_disk(self, size, sector_size=512):
        """A loop device of `size` bytes and `sector_size`-byte logical sectors over random bytes."""
        dev = self.enterContext(loop_device(self.disk_file(size), sector_size))
        # This kernel keeps BLKPG partitions after a detach: drop what an earlier user left on the
        # device now, and ours before the device is detached (cleanups run last in, first out).
        run("partx", "-d", dev, check=False)
        self.addCleanup(run, "partx", "-d", dev, check=False)
        return dev

    def efivars_dir(self, with_pxe_entry=True):
        """A plain directory standing in for efivarfs; by default holding a PXE Boot0000 that is
        first in BootOrder, as on a server that boots from the network."""
        d = self.path("efivars")
        os.mkdir(d)
        if with_pxe_entry:
            with open(os.path.join(d, "Boot0000-" + EFI_GLOBAL), "wb") as f:
                f.write(efi_variable(7, load_option("UEFI PXEv4 (MAC:525400123456)",
                                                    pxe_device_path())))
            with open(os.path.join(d, "BootOrder-" + EFI_GLOBAL), "wb") as f:
                f.write(efi_variable(7, struct.pack("<H", 0)))
        return d

    def deploy(self, manifest, disk, efivars=None, extra=()):
        """Runs `byoi-agent deploy` (no reboot); returns its Outcome. Without `efivars` the path
        given does not exist, so the machine is legacy BIOS."""
        self.runs += 1
        manifest_path = self.path("manifest-%d.json" % self.runs)
        with open(manifest_path, "w") as f:
            f.write(manifest if isinstance(manifest, str) else json.dumps(manifest))
        status_path = self.path("status-%d.json" % self.runs)
        argv = [AGENT, "deploy", "--manifest", manifest_path] + (["--disk", disk] if disk else [])
        argv += ["--efivars", efivars or self.path("no-efivars"), "--status-file", status_path,
                "--json", "--reboot", "none", "--memory-limit", "1G", "--retry-delay", "0"]
        r = subprocess.run(argv + list(extra), capture_output=True, text=True, timeout=300)
        with open(status_path) as f:
            status = json.load(f)
        self.assertEqual(json.loads(r.stdout), status,
                         "--json and --status-file disagree on the final status")
        return Outcome(r.returncode, status, r.stderr)

    def assertDone(self, out):
        self.assertEqual((out.returncode, out.status["status"], out.status["message"]),
                         (0, "done", "done"), out)

    def assertFailed(self, out, message):
        self.assertEqual((out.returncode, out.status["status"], out.status["message"]),
                         (1, "error", message), out)
        self.assertIn("error: " + message + "\n", out.stderr)

    def assertRefusedUntouched(self, manifest, disk, message, extra=()):
        """The job fails with `message` before writing, and `disk` is byte for byte as before."""
        before = sha256_all(disk)
        out = self.deploy(manifest, disk, extra=extra)
        self.assertFailed(out, message)
        for name in ("write", "partition", "configdrive", "bootloader", "reboot"):
            self.assertEqual(step(out.status, name)["status"], "todo", (name, str(out)))
        self.assertEqual(sha256_all(disk), before, "the disk was touched:\n%s" % out)
        return out

    # --- checks of a deployed disk -----------------------------------------------------------------

    def check_gpt_disk(self, disk, sector_size, source_raw):
        """The disk holds the image's GPT partitions, unchanged, plus config-2 at the end, with
        the backup GPT at the last LBA. Returns (primary Gpt, config-2 GptPartition)."""
        lib_flow.check_gpt(disk)
        ss = sector_size
        last_lba = device_size(disk) // ss - 1
        source = read_gpt(source_raw, ss, 1)
        primary = read_gpt(disk, ss, 1)
        backup = read_gpt(disk, ss, last_lba)
        self.assertEqual((primary.alternate_lba, backup.my_lba, backup.alternate_lba),
                         (last_lba, last_lba, 1), "the backup GPT is not at the last LBA")
        self.assertEqual(backup.partitions, primary.partitions)
        self.assertEqual(primary.disk_guid, source.disk_guid)
        self.assertEqual(primary.partitions[:len(source.partitions)], source.partitions,
                         "the image's partitions changed")
        self.assertEqual(len(primary.partitions), len(source.partitions) + 1, primary.partitions)
        config = primary.partitions[-1]
        self.assertEqual((config.number, config.type, config.name),
                         (len(source.partitions) + 1, LINUX_FS_TYPE, "config-2"))
        self.assertEqual((config.last - config.first + 1) * ss, CONFIG_DRIVE_BYTES)
        self.assertGreater(config.first, max(p.last for p in source.partitions))
        self.assertLessEqual(config.last, primary.last_usable)
        self.assertEqual(config.first * ss % MIB, 0, "config-2 does not start on a MiB boundary")
        for p in source.partitions:
            length = (p.last - p.first + 1) * ss
            self.assertEqual(sha256_range(disk, p.first * ss, length),
                             sha256_range(source_raw, p.first * ss, length),
                             "partition %d does not hold the image's bytes" % p.number)
        if disk.startswith("/dev/"):
            self.assertEqual(kernel_partitions(disk),
                             {p.number: (p.first * ss, (p.last - p.first + 1) * ss)
                              for p in primary.partitions},
                             "the kernel's view differs from the new partition table")
        return primary, config

    def check_mbr_disk(self, disk, sector_size, source_raw):
        """The disk holds the MBR image's boot code, partitions and bytes, plus config-2 (0x0c) in
        the next free slot, last on the disk. Returns the config-2 MbrPartition."""
        ss = sector_size
        verify = run("sfdisk", "--verify", disk, check=False)
        self.assertIn("No errors detected", verify.stdout, verify.stdout + verify.stderr)
        source = read_mbr(source_raw)
        parts = read_mbr(disk)
        self.assertEqual(parts[:len(source)], source, "the image's partitions changed")
        self.assertEqual(len(parts), len(source) + 1, parts)
        config = parts[-1]
        self.assertEqual((config.slot, config.type, config.count * ss),
                         (len(source) + 1, 0x0C, CONFIG_DRIVE_BYTES))
        self.assertGreaterEqual(config.first, max(p.first + p.count for p in source))
        self.assertLessEqual((config.first + config.count) * ss, device_size(disk))
        self.assertEqual(config.first * ss % MIB, 0, "config-2 does not start on a MiB boundary")
        self.assertEqual(read(disk, 0, 446), read(source_raw, 0, 446), "boot code changed")
        image_size = os.path.getsize(source_raw)
        self.assertEqual(sha256_range(disk, 512, image_size - 512),
                         sha256_range(source_raw, 512, image_size - 512),
                         "the image's bytes are not on the disk")
        if disk.startswith("/dev/"):
            self.assertEqual(kernel_partitions(disk),
                             {p.slot: (p.first * ss, p.count * ss) for p in parts},
                             "the kernel's view differs from the new partition table")
        return config

    def check_config_drive(self, disk, number, offset, out, user_data=USER_DATA.encode(),
                           metadata=METADATA):
        """vfat labelled config-2 at `offset`, and cloud-init's reader gets our content."""
        probe = run("blkid", "-p", "-O", offset, "-o", "export", disk, check=False)
        fields = dict(line.split("=", 1) for line in probe.stdout.splitlines() if "=" in line)
        self.assertEqual((fields.get("TYPE"), fields.get("LABEL")), ("vfat", "config-2"),
                         probe.stdout + probe.stderr)
        found, data = lib_flow.read_config_drive(disk)
        self.assertEqual(found, number, "cloud-init's reader found config-2 elsewhere")
        md = data["metadata"]
        self.assertEqual(md["hostname"], HOSTNAME)
        self.assertEqual(list(md["public_keys"].values()), [SSH_KEY])
        self.assertEqual(md["meta"], metadata)
        self.assertEqual(data["userdata"], user_data)
        self.assertRegex(md["uuid"], r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")
        self.assertIn(md["uuid"], step(out.status, "configdrive")["comment"])
        self.assertEqual(step(out.status, "configdrive")["status"], "done")

    def check_boot_entry(self, efivars, esp, loader_path):
        """One new Boot#### for HD(esp)/File(loader_path), first in BootOrder, the PXE entry after."""
        names = sorted(os.listdir(efivars))
        boot = [n[:8] for n in names if re.fullmatch(r"Boot[0-9A-F]{4}-" + EFI_GLOBAL, n)]
        self.assertIn("Boot0000", boot, "the existing PXE entry is gone")
        new = [b for b in boot if b != "Boot0000"]
        self.assertEqual(len(new), 1, names)
        with open(os.path.join(efivars, new[0] + "-" + EFI_GLOBAL), "rb") as f:
            raw = f.read()
        self.assertEqual(struct.unpack_from("<I", raw)[0], 7, "Boot#### attributes")
        attributes, _description, nodes = decode_load_option(raw[4:])
        self.assertTrue(attributes & 1, "the entry is not active")
        hd = [n for n in nodes if n[:2] == (4, 1)]
        files = [n for n in nodes if n[:2] == (4, 4)]
        self.assertEqual((len(hd), len(files)), (1, 1), nodes)
        number, start, size, signature, mbr_type, sig_type = struct.unpack("<IQQ16sBB", hd[0][2])
        self.assertEqual((number, start, size, str(uuid.UUID(bytes_le=signature)), mbr_type,
                          sig_type),
                         (esp.number, esp.first, esp.last - esp.first + 1, esp.guid, 2, 2))
        self.assertEqual(files[0][2].decode("utf-16-le").rstrip("\0"), loader_path)
        self.assertEqual(nodes[-1][:2], (0x7F, 0xFF), "the device path has no end node")
        with open(os.path.join(efivars, "BootOrder-" + EFI_GLOBAL), "rb") as f:
            entries = boot_order(f.read())
        self.assertEqual(entries, [int(new[0][4:], 16), 0], "BootOrder")

    def check_disk_ends_zeroed(self, disk, middle_source=None, middle=None):
        """First and last MiB read as zeros; `middle` (offset, length) still holds the image."""
        size = device_size(disk)
        self.assertEqual(read(disk, 0, MIB), bytes(MIB), "the first MiB is not zeroed")
        self.assertEqual(read(disk, size - MIB, MIB), bytes(MIB), "the last MiB is not zeroed")
        if middle:
            self.assertEqual(sha256_range(disk, *middle), sha256_range(middle_source, *middle),
                             "the middle of the disk does not hold the image")


class DeployWritesImages(DeployTestCase):
    """Images of every kind onto larger disks of both sector sizes, with a config drive."""

    def deploy_gpt(self, sector_size, image_type):
        image = IMAGES.gpt[sector_size]
        served = {"qcow2": image.qcow2, "raw": image.path, "ova": getattr(image, "ova", "")}[
            image_type]
        disk = self.loop_disk(128 * MIB, sector_size)
        efivars = self.efivars_dir()
        manifest = v1_manifest(IMAGES.url(served), image_type, checkSum=IMAGES.sha256(served),
                               checkSumType="sha256")
        out = self.deploy(manifest, disk, efivars)
        self.assertDone(out)
        self.assertEqual(out.status["checksum"], IMAGES.sha256(served))
        self.assertEqual(out.status["servername"], HOSTNAME)
        self.assertEqual(out.status["warnings"], [])
        for name in ("download", "verify", "write", "partition", "configdrive", "bootloader"):
            self.assertEqual(step(out.status, name)["status"], "done", (name, str(out)))
        self.assertEqual(step(out.status, "reboot")["status"], "skipped")
        table, config = self.check_gpt_disk(disk, sector_size, image.path)
        self.check_config_drive(disk, config.number, config.first * sector_size, out)
        esp = table.partitions[0]
        self.assertEqual(esp.type, lib_images.ESP_TYPE)
        self.check_boot_entry(efivars, esp, image.loader_path)
        return out

    def deploy_mbr(self, sector_size):
        source = IMAGES.mbr[sector_size]
        disk = self.loop_disk(128 * MIB, sector_size)
        # With a checksum: no "no checksum given" warning either.
        out = self.deploy(v1_manifest(IMAGES.url(source), "raw", checkSum=IMAGES.sha256(source),
                                      checkSumType="sha256"), disk)
        self.assertDone(out)
        self.assertEqual(out.status["warnings"], [], "the image has MBR boot code")
        bootloader = step(out.status, "bootloader")
        self.assertEqual(bootloader["status"], "skipped")
        self.assertIn("legacy BIOS", bootloader["comment"])
        config = self.check_mbr_disk(disk, sector_size, source)
        self.check_config_drive(disk, config.slot, config.first * sector_size, out)

    def test_qcow2_gpt_image_on_512_byte_sector_disk(self):
        self.deploy_gpt(512, "qcow2")

    def test_qcow2_gpt_image_on_4096_byte_sector_disk(self):
        self.deploy_gpt(4096, "qcow2")

    def test_raw_gpt_image_on_512_byte_sector_disk(self):
        self.deploy_gpt(512, "raw")

    def test_raw_gpt_image_on_4096_byte_sector_disk(self):
        self.deploy_gpt(4096, "raw")

    def test_ova_gpt_image_on_512_byte_sector_disk(self):
        out = self.deploy_gpt(512, "ova")
        self.assertIn("ova (uefi-512.vmdk, disk 1 of 1, streamOptimized VMDK; manifest: 2 "
                      "digests match), virtual size 48 MiB (50331648 bytes); sha256 matches",
                      step(out.status, "verify")["comment"])

    def test_ova_gpt_image_on_4096_byte_sector_disk(self):
        out = self.deploy_gpt(4096, "ova")
        self.assertIn("monolithicSparse VMDK", step(out.status, "verify")["comment"])

    def test_ova_with_two_disks_installs_the_first_and_says_so(self):
        image = IMAGES.gpt[512]
        disk = self.loop_disk(128 * MIB)
        out = self.deploy(v1_manifest(IMAGES.url(IMAGES.ova_two_disks), "ova"), disk)
        self.assertDone(out)
        self.assertIn("the OVA holds 2 disks: only uefi-512.vmdk, the first that VirtualSystem "
                      "appliance attaches, is installed", out.status["warnings"])
        self.assertIn("(uefi-512.vmdk, disk 1 of 2, streamOptimized VMDK; manifest: 3 digests "
                      "match)", step(out.status, "verify")["comment"])
        self.check_gpt_disk(disk, 512, image.path)

    def test_mbr_image_on_512_byte_sector_disk_boots_legacy(self):
        self.deploy_mbr(512)

    def test_mbr_image_on_4096_byte_sector_disk_boots_legacy(self):
        self.deploy_mbr(4096)

    def test_reinstall_v3_manifest_with_base64_user_data(self):
        image = IMAGES.gpt[512]
        disk = self.loop_disk(128 * MIB)
        efivars = self.efivars_dir()
        user_data = b"#cloud-config\nruncmd:\n- [touch, /root/v3-\xc3\xa9t\xc3\xa9]\n"
        sha512 = hashlib.sha512(IMAGES.data["/" + os.path.basename(image.path)]).hexdigest()
        manifest = {
            "operatingSystem": "byoi_64",
            "customizations": {
                "imageURL": IMAGES.url(image.path), "imageType": "raw",
                "imageCheckSum": sha512, "imageCheckSumType": "SHA512",
                "httpHeaders": {"X-Byoi-Test": "v3"},
                # The slash form (docs/manifest.md): the entry must carry UEFI's backslashes.
                "efiBootloaderPath": image.loader_path.replace("\\", "/"),
                "hostname": HOSTNAME, "sshKey": SSH_KEY,
                "configDriveUserData": base64.b64encode(user_data).decode(),
                "configDriveMetadata": {"role": "db", "zone": "gra"}},
            "storage": [{"diskGroupId": 1}]}
        out = self.deploy(manifest, disk, efivars)
        self.assertDone(out)
        self.assertEqual(out.status["checksum"], sha512)
        table, config = self.check_gpt_disk(disk, 512, image.path)
        self.check_config_drive(disk, config.number, config.first * 512, out, user_data=user_data,
                                metadata={"role": "db", "zone": "gra"})
        self.check_boot_entry(efivars, table.partitions[0], image.loader_path)

    def test_previous_systems_partitions_are_replaced_in_the_kernels_view(self):
        # A disk that held another system: four partitions the kernel knows (a rescue kernel
        # parsed them at boot; here BLKPG adds them), none of them where the new ones go.
        image = IMAGES.gpt[512]
        disk = self.loop_disk(128 * MIB)
        run("sgdisk", "-n", "1:2048:+8M", "-n", "2:0:+30M", "-n", "3:0:+20M", "-n", "4:0:0", disk)
        run("partx", "-a", disk)
        self.assertEqual(len(kernel_partitions(disk)), 4)
        out = self.deploy(v1_manifest(IMAGES.url(image.qcow2), "qcow2"), disk, self.efivars_dir())
        self.assertDone(out)
        self.check_gpt_disk(disk, 512, image.path)  # includes the kernel's view

    def test_gzip_user_data_in_base64_is_decoded(self):
        image = IMAGES.gpt[512]
        disk = self.loop_disk(128 * MIB)
        packed = gzip.compress(USER_DATA.encode())
        manifest = v1_manifest(IMAGES.url(image.qcow2), "qcow2")
        manifest["configdrive"]["userData"] = base64.b64encode(packed).decode()
        out = self.deploy(manifest, disk, self.efivars_dir())
        self.assertDone(out)
        _, config = self.check_gpt_disk(disk, 512, image.path)
        # cloud-init's reader hands back the file's bytes; cloud-init gunzips them itself.
        self.check_config_drive(disk, config.number, config.first * 512, out, user_data=packed)

    def test_old_raid_superblock_at_the_disks_end_is_erased(self):
        # An md 0.90 superblock lives in the last 64 KiB-aligned block of a member disk, inside
        # what becomes the config-2 partition: left there, the installed system could assemble a
        # stale array. libblkid must see it before, and it must be gone after.
        disk = self.loop_disk(128 * MIB)
        at = ((device_size(disk) >> 16) - 1) << 16
        superblock = struct.pack("<IIII", 0xA92B4EFC, 0, 90, 0) + bytes(4080)
        with open(disk, "r+b") as f:
            f.seek(at)
            f.write(superblock)
        raid = ["blkid", "-p", "-u", "raid", "-o", "export", disk]
        self.assertIn("TYPE=linux_raid_member", run(*raid, check=False).stdout)
        out = self.deploy(v1_manifest(IMAGES.url(IMAGES.gpt[512].path), "raw"), disk)
        self.assertDone(out)
        self.assertEqual(read(disk, at, 4), bytes(4), "the md superblock's magic survived")
        self.assertNotIn("linux_raid_member", run(*raid, check=False).stdout)

    def test_regular_file_as_disk(self):
        image = IMAGES.gpt[512]
        disk = self.disk_file(160 * MIB, "disk-file.img")
        out = self.deploy(v1_manifest(IMAGES.url(image.qcow2), "qcow2"), disk)
        self.assertDone(out)
        self.assertEqual(os.path.getsize(disk), 160 * MIB, "the file changed size")
        self.assertIn("legacy BIOS", step(out.status, "bootloader")["comment"])
        _, config = self.check_gpt_disk(disk, 512, image.path)
        self.check_config_drive(disk, config.number, config.first * 512, out)

    def test_no_config_drive_when_not_enabled(self):
        image = IMAGES.gpt[4096]
        disk = self.loop_disk(128 * MIB, 4096)
        out = self.deploy(v1_manifest(IMAGES.url(image.path), "raw", config_drive=False), disk,
                          self.efivars_dir())
        self.assertDone(out)
        self.assertEqual(step(out.status, "configdrive")["status"], "skipped")
        lib_flow.check_gpt(disk)
        self.assertEqual(read_gpt(disk, 4096, 1).partitions, read_gpt(image.path, 4096, 1).partitions)
        last_lba = device_size(disk) // 4096 - 1
        self.assertEqual(read_gpt(disk, 4096, last_lba).my_lba, last_lba)


class BootStep(DeployTestCase):
    """The bootloader step's outcomes that the image deployments above do not show."""

    def test_mbr_without_boot_code_warns_on_legacy_bios(self):
        disk = self.loop_disk(128 * MIB)
        out = self.deploy(v1_manifest(IMAGES.url(IMAGES.mbr_no_boot_code), "raw",
                                      checkSum=IMAGES.sha256(IMAGES.mbr_no_boot_code),
                                      checkSumType="sha256"), disk)
        self.assertDone(out)
        self.assertEqual(out.status["warnings"], [LEGACY_NO_BOOT_CODE])
        self.assertEqual(step(out.status, "bootloader")["status"], "skipped")
        self.check_mbr_disk(disk, 512, IMAGES.mbr_no_boot_code)

    def test_uefi_image_on_legacy_bios_skips_the_bootloader_step(self):
        image = IMAGES.gpt[512]
        disk = self.loop_disk(128 * MIB)
        missing = self.path("no-such-efivars")
        out = self.deploy(v1_manifest(IMAGES.url(image.path), "raw"), disk, efivars=missing)
        self.assertDone(out)
        bootloader = step(out.status, "bootloader")
        self.assertEqual(bootloader["status"], "skipped")
        self.assertIn("legacy BIOS", bootloader["comment"])
        self.assertFalse(os.path.exists(missing), "the agent created the efivars directory")

    def test_manifest_efi_boot_order_wins_over_the_agents_setting(self):
        # --efi-boot-order first (the default) for the agent, efiBootOrder in the manifest.
        image = IMAGES.gpt[512]
        for policy in ("bootnext", "none", "after-network"):
            with self.subTest(policy):
                disk = self.loop_disk(128 * MIB)
                efivars = self.efivars_dir()
                os.rename(efivars, efivars + "-" + policy)
                efivars += "-" + policy
                before = read_dir(efivars)
                out = self.deploy(v1_manifest(IMAGES.url(image.path), "raw", efiBootOrder=policy),
                                  disk, efivars, extra=["--efi-boot-order", "first"])
                self.assertDone(out)
                after = read_dir(efivars)
                new = sorted(set(after) - set(before))
                if policy == "none":
                    self.assertEqual(after, before)
                    self.assertIn("efiBootOrder none", step(out.status, "bootloader")["comment"])
                    continue
                self.assertEqual(step(out.status, "bootloader")["status"], "done")
                entry = [n for n in new if n.startswith("Boot0")]
                self.assertEqual(len(entry), 1, new)
                number = int(entry[0][4:8], 16)
                order = boot_order(after["BootOrder-" + EFI_GLOBAL])
                if policy == "bootnext":
                    # BootOrder as it was; BootNext names the new entry.
                    self.assertEqual(order, boot_order(before["BootOrder-" + EFI_GLOBAL]))
                    self.assertEqual(after["BootNext-" + EFI_GLOBAL][4:], struct.pack("<H", number))
                else:
                    self.assertEqual(order, [0, number])  # after the PXE entry
                    self.assertNotIn("BootNext-" + EFI_GLOBAL, after)

    def test_missing_efi_bootloader_fails_and_zeroes_the_disk_ends(self):
        image = IMAGES.gpt[512]
        disk = self.loop_disk(128 * MIB)
        efivars = self.efivars_dir()
        before = read_dir(efivars)
        path = "\\EFI\\missing\\grubx64.efi"
        out = self.deploy({"operatingSystem": "byoi_64", "customizations": {
            "imageURL": IMAGES.url(image.path), "imageType": "raw", "efiBootloaderPath": path,
            "hostname": HOSTNAME}}, disk, efivars)
        self.assertFailed(out, "EFI bootloader %s not found on the EFI system partition." % path)
        self.assertEqual(step(out.status, "bootloader")["status"], "error")
        self.assertEqual(read_dir(efivars), before, "boot variables changed although the job failed")
        esp = read_gpt(image.path, 512, 1).partitions[0]
        self.check_disk_ends_zeroed(disk, image.path, (esp.first * 512, 8 * MIB))


class Refusals(DeployTestCase):
    """Jobs refused before the first write: exact message, exit code 1, the disk untouched."""

    def test_image_larger_than_disk(self):
        image = IMAGES.gpt[512]
        disk = self.loop_disk(32 * MIB)
        for served, image_type in ((image.qcow2, "qcow2"), (image.path, "raw")):
            with self.subTest(image_type):
                self.assertRefusedUntouched(
                    v1_manifest(IMAGES.url(served), image_type), disk,
                    "image provided has a size of %d bytes which is larger than %s of %d bytes"
                    % (48 * MIB, disk, 32 * MIB))

    def test_checksum_mismatch(self):
        served = IMAGES.gpt[512].qcow2
        disk = self.loop_disk(64 * MIB)
        for algo in ("md5", "sha256"):
            with self.subTest(algo):
                expected = hashlib.new(algo, b"another image").hexdigest()
                actual = hashlib.new(algo, IMAGES.data["/" + os.path.basename(served)]).hexdigest()
                out = self.assertRefusedUntouched(
                    v1_manifest(IMAGES.url(served), "qcow2", checkSum=expected, checkSumType=algo),
                    disk, "Bad %s for downloaded file, got: %s while expecting %s."
                    % (algo, actual, expected))
                self.assertEqual(step(out.status, "verify")["status"], "error")

    def test_declared_type_differs_from_detected_format(self):
        image = IMAGES.gpt[512]
        disk = self.loop_disk(64 * MIB)
        with self.subTest("qcow2 declared raw"):
            self.assertRefusedUntouched(
                v1_manifest(IMAGES.url(image.qcow2), "raw"), disk,
                "image provided format is qcow2 which does not match expected raw format")
        with self.subTest("raw declared qcow2"):
            self.assertRefusedUntouched(
                v1_manifest(IMAGES.url(image.path), "qcow2"), disk,
                "image provided format is raw which does not match expected qcow2 format")

    def test_ova_manifest_mismatch(self):
        served = IMAGES.ova_bad_digest
        disk = self.loop_disk(64 * MIB)
        with open(IMAGES.gpt[512].vmdk, "rb") as f:
            original = f.read()
        changed = original[:-100] + bytes([original[-100] ^ 1]) + original[-99:]
        out = self.assertRefusedUntouched(
            v1_manifest(IMAGES.url(served), "ova"), disk,
            "Bad sha256 for uefi-512.vmdk in the OVA, got: %s while expecting %s."
            % (hashlib.sha256(changed).hexdigest(), hashlib.sha256(original).hexdigest()))
        self.assertEqual(step(out.status, "verify")["status"], "error")
        self.assertIn("checking the OVA's manifest", out.status["detail"])

    def test_ova_and_other_types_declared_for_each_other(self):
        image = IMAGES.gpt[512]
        disk = self.loop_disk(64 * MIB)
        cases = ((image.ova, "raw", "ova", "raw"), (image.ova, "qcow2", "ova", "qcow2"),
                 (image.path, "ova", "raw", "ova"), (image.qcow2, "ova", "qcow2", "ova"))
        for served, declared, detected, expected in cases:
            with self.subTest(served=os.path.basename(served), declared=declared):
                self.assertRefusedUntouched(
                    v1_manifest(IMAGES.url(served), declared), disk,
                    "image provided format is %s which does not match expected %s format"
                    % (detected, expected))

    def test_raw_image_without_partition_table(self):
        disk = self.loop_disk(64 * MIB)
        self.assertRefusedUntouched(
            v1_manifest(IMAGES.url(IMAGES.ext4), "raw"), disk,
            "image provided format is not of type raw because no partition table was found. "
            "It seems to contain: an ext4 filesystem")

    def test_gpt_made_for_another_sector_size(self):
        cases = ((4096, "raw", 512), (4096, "qcow2", 512), (512, "raw", 4096))
        for image_ss, image_type, disk_ss in cases:
            with self.subTest(image=image_ss, type=image_type, disk=disk_ss):
                image = IMAGES.gpt[image_ss]
                served = image.qcow2 if image_type == "qcow2" else image.path
                disk = self.loop_disk(64 * MIB, disk_ss)
                self.assertRefusedUntouched(v1_manifest(IMAGES.url(served), image_type), disk,
                                            "Can't write %s on disk." % image_type)

    def test_corrupt_qcow2(self):
        disk = self.loop_disk(64 * MIB)
        self.assertRefusedUntouched(v1_manifest(IMAGES.url(IMAGES.corrupt), "qcow2"), disk,
                                    "Can't write qcow2 on disk.")

    def mount(self, device, fstype):
        mountpoint = self.path("mnt")
        os.mkdir(mountpoint)
        # Read-only: a mounted file system writes nothing by itself then, so "untouched" is exact.
        run("mount", "-t", fstype, "-o", "ro", device, mountpoint)
        self.addCleanup(run, "umount", mountpoint, check=False)
        return mountpoint

    def test_disk_with_a_mounted_partition(self):
        disk = self.loop_disk(64 * MIB)
        run("sgdisk", "-n", "1:2048:+16M", "-t", "1:8300", disk)
        run("partx", "-a", disk)
        part = disk + "p1"
        run("mkfs.ext4", "-q", "-F", part)
        mountpoint = self.mount(part, "ext4")
        out = self.assertRefusedUntouched(
            v1_manifest(IMAGES.url(IMAGES.gpt[512].path), "raw"), disk,
            "Disk %s is in use: %s is mounted on %s." % (disk, part, mountpoint))
        self.assertEqual(step(out.status, "download")["status"], "todo",
                         "a busy disk must be refused before the download")

    def test_whole_disk_mounted(self):
        disk = self.loop_disk(64 * MIB)
        run("mkfs.ext4", "-q", "-F", disk)
        mountpoint = self.mount(disk, "ext4")
        self.assertRefusedUntouched(
            v1_manifest(IMAGES.url(IMAGES.gpt[512].path), "raw"), disk,
            "Disk %s is in use: %s is mounted on %s." % (disk, disk, mountpoint))

    def test_disk_used_as_active_swap(self):
        disk = self.loop_disk(64 * MIB)
        run("mkswap", disk)
        run("swapon", disk)
        self.addCleanup(run, "swapoff", disk, check=False)
        self.assertRefusedUntouched(
            v1_manifest(IMAGES.url(IMAGES.gpt[512].path), "raw"), disk,
            "Disk %s is in use: %s is an active swap." % (disk, disk))

    def test_download_failure_404(self):
        disk = self.loop_disk(64 * MIB)
        url = IMAGES.server.url("/no-such-image.qcow2")
        with self.subTest("plain"):
            out = self.assertRefusedUntouched(v1_manifest(url, "qcow2"), disk,
                                              "Could not download image located: %s." % url)
            self.assertEqual(step(out.status, "download")["status"], "error")
        with self.subTest("user info is not shown"):
            secret = url.replace("http://", "http://operator:s3cret@")
            out = self.assertRefusedUntouched(v1_manifest(secret, "qcow2"), disk,
                                              "Could not download image located: %s." % url)
            self.assertNotIn("s3cret", out.stderr + json.dumps(out.status))

    def test_disk_group_that_does_not_exist(self):
        # No --disk: the manifest's diskGroupId chooses among this machine's disks (docs/disks.md),
        # and no machine has 99 groups. Refused in the plan step, before any download.
        disk = self.loop_disk(64 * MIB)  # stands for the machine's disks: must stay untouched
        before = sha256_all(disk)
        requests = len(IMAGES.server.requests())
        for shape, manifest in (
                ("v1", v1_manifest(IMAGES.url(IMAGES.gpt[512].path), "raw", diskGroupId=99)),
                ("v3", {"operatingSystem": "byoi_64", "storage": [{"diskGroupId": 99}],
                        "customizations": {"imageURL": IMAGES.url(IMAGES.gpt[512].path),
                                           "imageType": "raw"}})):
            with self.subTest(shape):
                out = self.deploy(manifest, None)
                self.assertFailed(out, "No disk found in disk group 99.")
                for name in ("download", "write", "partition", "configdrive", "bootloader"):
                    self.assertEqual(step(out.status, name)["status"], "todo", name)
        self.assertEqual(len(IMAGES.server.requests()), requests)
        self.assertEqual(sha256_all(disk), before)

    def test_manifest_errors(self):
        disk = self.loop_disk(64 * MIB)
        url = IMAGES.url(IMAGES.gpt[512].path)
        cases = [
            ({"URL": url, "type": "vmdk"}, "Bad format image, expected: qcow2, raw, ova."),
            ({"URL": url, "type": "raw", "checkSum": "ab", "checkSumType": "crc32"},
             "Bad checkSumType, expected: md5, sha1, sha256, sha512."),
            ({"URL": url, "type": "raw", "checkSum": "ab"},
             "Please provide checkSum AND checkSumType or none of them"),
            ({"URL": url.replace("http://", "ftp://"), "type": "raw"},
             "Invalid manifest: URL: scheme must be http or https"),
            (v1_manifest(url, "raw", configdrive={"enable": True, "hostname": "web_1!"}),
             "Invalid manifest: configdrive.hostname: not a valid RFC 1123 host name"),
            ("{not json", "Invalid manifest: body: not valid JSON"),
        ]
        for manifest, message in cases:
            with self.subTest(message):
                out = self.assertRefusedUntouched(manifest, disk, message)
                self.assertEqual(step(out.status, "download")["status"], "todo")


class FailureAfterWriting(DeployTestCase):
    """Once writing began, a failure leaves the disk unbootable: first and last MiB zeroed."""

    def test_config_drive_on_full_mbr_fails_and_zeroes_disk_ends(self):
        source = IMAGES.mbr_full
        disk = self.loop_disk(128 * MIB)
        out = self.deploy(v1_manifest(IMAGES.url(source), "raw"), disk)
        self.assertFailed(out, "Could not create configdrive on disk.")
        self.assertEqual([step(out.status, n)["status"] for n in
                          ("download", "verify", "write", "partition", "configdrive")],
                         ["done", "done", "done", "done", "error"])
        self.check_disk_ends_zeroed(disk, source, (MIB, 15 * MIB))


if __name__ == "__main__":
    unittest.main()
