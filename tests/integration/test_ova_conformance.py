"""Conformance of `byoi-agent convert` on OVA appliances and bare VMDK files with
`qemu-img convert -f vmdk -O raw` on the disk inside: for every kind of VMDK qemu-img writes
(streamOptimized, monolithicSparse, with zero grains), the footer VMware's own stream-optimized
files carry, sizes that are not a multiple of the grain, and OVAs packed as ovftool, python's
tarfile and GNU tar pack them, the bytes written must be identical, onto a regular file and onto
loop devices with 512- and 4096-byte sectors pre-filled with random bytes. Made at test time."""

import os
import sys
import tarfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (MIB, ConversionChecks, convert, qemu_io, random_file,  # noqa: E402
                              read, reference, run, tempdir)
from ova_util import (Vmdk, extract, make_ova, make_ova_with_gnu_tar, vmdk_from_raw,  # noqa: E402
                      vmware_stream)

GRAIN = 64 * 1024
SUBFORMATS = ("streamOptimized", "monolithicSparse")


def disk_raw(path, size, seed="ova"):
    """A raw disk of `size` bytes: random bytes, text, a run of zeros, a small change, and the
    last bytes written (sizes that cut a grain see their tail)."""
    random_file(path, size, seed)
    with open(path, "r+b") as f:
        text = b"byoi-agent installs appliances. " * 2048
        for off in range(size // 4, size // 2, len(text)):
            f.seek(off)
            f.write(text[: min(len(text), size // 2 - off)])
        f.seek(size // 2)
        f.write(bytes(size // 8))
        if size > 4096:
            f.seek(size - 3000)
            f.write(b"\x5a" * 3000)
    return path


class OvaConformance(ConversionChecks, unittest.TestCase):

    def setUp(self):
        self._tmp = tempdir()
        self.dir = self._tmp.name
        self.addCleanup(self._tmp.cleanup)

    def path(self, name):
        return os.path.join(self.dir, name)

    def vmdk(self, size, subformat, name="disk1.vmdk", seed="ova", **opts):
        raw = disk_raw(self.path("src.raw"), size, seed)
        out = self.path(name)
        if os.path.exists(out):
            os.unlink(out)
        return vmdk_from_raw(raw, out, subformat, **opts)

    def check_ova(self, ova, disk, targets=("file", 512, 4096)):
        """`ova` converts as qemu-img converts `disk` (the VMDK inside it)."""
        ref = reference(disk, self.path("ref.raw"), "vmdk")
        self.assertConvertsLike(ova, ref, targets)

    def test_sizes_and_subformats(self):
        # Whole grains, a sector short of one, sectors past one, and sizes under a grain.
        sizes = (4 * MIB, 5 * MIB + 512, 3 * MIB + 3584, 2 * MIB - 512, 512, 4096, 40000)
        for subformat in SUBFORMATS:
            for size in sizes:
                with self.subTest(subformat=subformat, size=size):
                    disk = self.vmdk(size, subformat, seed=f"{subformat}{size}")
                    self.assertEqual(Vmdk(disk).compression, subformat == "streamOptimized")
                    self.check_ova(make_ova(self.path("a.ova"), [disk]), disk)

    def test_bare_vmdk_sources(self):
        for subformat in SUBFORMATS:
            with self.subTest(subformat=subformat):
                disk = self.vmdk(3 * MIB + 1536, subformat)
                self.assertConvertsLike(disk, reference(disk, self.path("ref.raw"), "vmdk"))

    def test_zero_grains(self):
        # zeroed_grain=on: version 2 with the zero-grain flag; `write -z` over whole grains makes
        # table entries of 1, which read as zeros.
        disk = self.vmdk(4 * MIB, "monolithicSparse", zeroed_grain="on")
        qemu_io(disk, "write -z 0 128k", "write -z 1M 64k", fmt="vmdk")
        v = Vmdk(disk)
        self.assertTrue(v.flags & 4)
        self.assertIn(1, [v.u32(v.gte_offset(i)) for i in range(4)])
        self.check_ova(make_ova(self.path("z.ova"), [disk]), disk)

    def test_vmware_footer(self):
        # VMware writes the grain directory's offset as GD_AT_END and the real header in the
        # footer; qemu-img reads such files but does not write them.
        for size in (4 * MIB, 3 * MIB + 1536, 70 * MIB):
            with self.subTest(size=size):
                raw = disk_raw(self.path("v.raw"), size, f"vmware{size}")
                disk = vmware_stream(raw, self.path("vmware.vmdk"),
                                     gtes=512 if size < 64 * MIB else 128)
                self.assertEqual(Vmdk(disk).header_at, os.path.getsize(disk) - 1024)
                self.check_ova(make_ova(self.path("v.ova"), [disk]), disk)

    def test_empty_disk(self):
        # qemu-img takes a VMDK of capacity 0 for a descriptor file and refuses to open it; the
        # agent reads it as the empty disk it is.
        for subformat in SUBFORMATS:
            with self.subTest(subformat=subformat):
                disk = self.path(f"empty-{subformat}.vmdk")
                run("qemu-img", "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", disk,
                    "0")
                self.assertEqual(Vmdk(disk).capacity, 0)
                r = run("qemu-img", "convert", "-f", "vmdk", "-O", "raw", disk,
                        self.path("qemu.raw"), check=False)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn("Unsupported image type", r.stderr)
                ova = make_ova(self.path("e.ova"), [disk])
                out = self.path("out.raw")
                random_file(out, MIB, "empty")
                r = convert(ova, out)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(os.path.getsize(out), 0)

    def test_tar_formats(self):
        disk = self.vmdk(2 * MIB + 512, "streamOptimized")
        for fmt, name in ((tarfile.USTAR_FORMAT, "ustar"), (tarfile.PAX_FORMAT, "pax"),
                          (tarfile.GNU_FORMAT, "gnu")):
            with self.subTest(tarfile=name):
                self.check_ova(make_ova(self.path(f"{name}.ova"), [disk], tar_format=fmt), disk,
                               targets=("file",))
        # GNU tar, with a name longer than ustar's 100 bytes (a pax path record).
        long_name = "appliance-" + "x" * 120 + ".vmdk"
        long_disk = os.path.join(self.dir, long_name)
        os.rename(disk, long_disk)
        for fmt in ("ustar", "posix", "gnu"):
            with self.subTest(gnu_tar=fmt):
                disks = [long_disk] if fmt != "ustar" else [self.vmdk(MIB, "streamOptimized")]
                ova = make_ova_with_gnu_tar(self.path(f"gnu-{fmt}.ova"), self.dir, disks,
                                            tar_format=fmt)
                self.check_ova(ova, disks[0], targets=("file",))

    def test_manifests(self):
        disk = self.vmdk(MIB + 1024, "monolithicSparse")
        for algo in ("sha1", "sha256", "sha512"):
            for where in ("first", "last", None):
                with self.subTest(algo=algo, manifest=where):
                    ova = make_ova(self.path("m.ova"), [disk], algo=algo, manifest=where)
                    self.check_ova(ova, disk, targets=("file",))

    def test_second_disk_is_not_installed(self):
        first = self.vmdk(2 * MIB, "streamOptimized", name="disk1.vmdk", seed="first")
        second = self.vmdk(3 * MIB, "streamOptimized", name="disk2.vmdk", seed="second")
        ova = make_ova(self.path("two.ova"), [first, second])
        self.check_ova(ova, first, targets=("file", 4096))
        # Extracted from the archive, the installed disk is byte for byte the one packed.
        self.assertEqual(read(extract(ova, "disk1.vmdk", self.path("x.vmdk"))), read(first))

    def test_one_tib_mostly_empty(self):
        raw = self.path("big.raw")
        with open(raw, "wb") as f:
            f.truncate(1 << 40)
            for offset, byte in ((0, b"\x01"), (1 << 39, b"\x02"), ((1 << 40) - GRAIN, b"\x03")):
                f.seek(offset)
                f.write(byte * GRAIN)
        for subformat in SUBFORMATS:
            with self.subTest(subformat=subformat):
                disk = vmdk_from_raw(raw, self.path("big.vmdk"), subformat)
                ova = make_ova(self.path("big.ova"), [disk])
                out = self.path("big.out")
                if os.path.exists(out):
                    os.unlink(out)
                start = time.monotonic()
                r = convert(ova, out)
                elapsed = time.monotonic() - start
                self.assertEqual(r.returncode, 0, r.stderr)
                print(f"\n1 TiB {subformat} OVA ({os.path.getsize(ova)} bytes) converted in "
                      f"{elapsed:.2f} s", file=sys.stderr)
                self.assertLess(elapsed, 30, "a 1 TiB empty disk must take seconds")
                self.assertEqual(os.path.getsize(out), 1 << 40)
                self.assertLess(os.stat(out).st_blocks * 512, 64 * MIB, "the output stays sparse")
                r = run("qemu-img", "compare", "-f", "vmdk", "-F", "raw", disk, out, check=False)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertEqual(read(out, 1 << 39, GRAIN), b"\x02" * GRAIN)
                os.unlink(disk)


if __name__ == "__main__":
    unittest.main()
