"""Conformance of `byoi-agent convert` on OVA appliances and bare VMDK files with
`qemu-img convert -f vmdk -O raw` on the disk inside: for every kind of VMDK qemu-img writes
(streamOptimized, monolithicSparse, with zero grains), the footer VMware's own stream-optimized
files carry, sizes that are not a multiple of the grain, and OVAs packed as ovftool, python's
tarfile and GNU tar pack them, the bytes written must be identical, onto a regular file and onto
loop devices with 512- and 4096-byte sectors pre-filled with random bytes. Made at test time."""

import hashlib
import os
import sys
import tarfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (MIB, ConversionChecks, RefusalChecks, convert,  # noqa: E402
                              qemu_io, random_file, read, reference, run, tempdir)
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
    # The write mode of every conversion, and the subformats it reads (OvaConformanceStream below
    # runs the suite again in stream mode, which reads streamOptimized only).
    mode = "ram"
    subformats = SUBFORMATS

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
        for subformat in self.subformats:
            for size in sizes:
                with self.subTest(subformat=subformat, size=size):
                    disk = self.vmdk(size, subformat, seed=f"{subformat}{size}")
                    self.assertEqual(Vmdk(disk).compression, subformat == "streamOptimized")
                    self.check_ova(make_ova(self.path("a.ova"), [disk]), disk)

    def test_bare_vmdk_sources(self):
        for subformat in self.subformats:
            with self.subTest(subformat=subformat):
                disk = self.vmdk(3 * MIB + 1536, subformat)
                self.assertConvertsLike(disk, reference(disk, self.path("ref.raw"), "vmdk"))

    def test_zero_grains(self):
        # The zero-grain flag and table entries of 1, which read as zeros: qemu-io's `write -z`
        # over whole grains of a monolithicSparse file with zeroed_grain=on makes them; for a
        # streamOptimized file (qemu-img never writes them there) the flag and an entry are set.
        for subformat in self.subformats:
            with self.subTest(subformat=subformat):
                disk = self.vmdk(4 * MIB, subformat, zeroed_grain="on")
                if subformat == "monolithicSparse":
                    qemu_io(disk, "write -z 0 128k", "write -z 1M 64k", fmt="vmdk")
                v = Vmdk(disk)
                if subformat == "streamOptimized":
                    zero = next(i for i in range(64) if v.u32(v.gte_offset(i)) == 0)
                    v.set_u32(v.gte_offset(zero), 1)
                    v.set_u32(8, v.flags | 4)
                    v.save()
                    v = Vmdk(disk)
                self.assertTrue(v.flags & 4)
                self.assertIn(1, [v.u32(v.gte_offset(i)) for i in range(64)])
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
        for subformat in self.subformats:
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
                r = self.convert(ova, out)
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
        disk = self.vmdk(MIB + 1024, self.subformats[-1])
        for algo in ("sha1", "sha256", "sha512"):
            for where in ("first", "last", None):
                if (self.mode, algo, where) == ("stream", "sha512", "last"):
                    continue  # StreamOnly.test_manifest_after_the_disk
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
        for subformat in self.subformats:
            with self.subTest(subformat=subformat):
                disk = vmdk_from_raw(raw, self.path("big.vmdk"), subformat)
                ova = make_ova(self.path("big.ova"), [disk])
                out = self.path("big.out")
                if os.path.exists(out):
                    os.unlink(out)
                start = time.monotonic()
                r = self.convert(ova, out)
                elapsed = time.monotonic() - start
                self.assertEqual(r.returncode, 0, r.stderr)
                print(f"\n1 TiB {subformat} OVA ({os.path.getsize(ova)} bytes) converted in "
                      f"{elapsed:.2f} s ({self.mode} mode)", file=sys.stderr)
                self.assertLess(elapsed, 30, "a 1 TiB empty disk must take seconds")
                self.assertEqual(os.path.getsize(out), 1 << 40)
                self.assertLess(os.stat(out).st_blocks * 512, 64 * MIB, "the output stays sparse")
                r = run("qemu-img", "compare", "-f", "vmdk", "-F", "raw", disk, out, check=False)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertEqual(read(out, 1 << 39, GRAIN), b"\x02" * GRAIN)
                os.unlink(disk)


class OvaConformanceStream(OvaConformance):
    """The suite again in stream mode (the OVA read front to back and written while it passes)."""
    mode = "stream"
    subformats = ("streamOptimized",)


class StreamOnly(RefusalChecks, unittest.TestCase):
    """What only stream mode meets: a manifest that comes after the disk, a monolithicSparse disk
    (its grains may come in any order), grains out of order, an archive cut short. Refusals found
    after writing began leave the target's first MiB unwritten (held back until the end)."""
    mode = "stream"

    def assert_untouched(self, path, digest, first_mib):
        self.assertTrue(read(path, 0, MIB) == first_mib, "the first MiB was written")

    def disk(self, subformat="streamOptimized", size=4 * MIB, name="disk1.vmdk"):
        raw = disk_raw(self.path("src.raw"), size, "stream-only")
        out = self.path(name)
        if os.path.exists(out):
            os.unlink(out)
        return vmdk_from_raw(raw, out, subformat)

    def test_manifest_after_the_disk(self):
        disk = self.disk()
        ref = reference(disk, self.path("ref.raw"), "vmdk")
        for algo in ("sha1", "sha256"):
            with self.subTest(algo=algo):
                ova = make_ova(self.path("late.ova"), [disk], algo=algo, manifest="last")
                out = self.path("out.raw")
                r = self.convert(ova, out)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(run("cmp", ref, out, check=False).returncode, 0)
        ova = make_ova(self.path("late.ova"), [disk], algo="sha512", manifest="last")
        self.assertRefused(ova, "Can't write ova on disk.",
                           "the manifest comes after disk1.vmdk and gives its sha512: stream "
                           "mode hashes the files before the manifest with SHA1 and SHA256 only "
                           "(ram mode checks it)")
        # ram mode checks it.
        out = self.path("out.raw")
        r = convert(ova, out, mode="ram")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_manifest_mismatch_found_at_the_end(self):
        disk = self.disk()
        data = read(disk)
        changed = data[:-100] + bytes([data[-100] ^ 1]) + data[-99:]
        ova = make_ova(self.path("bad.ova"), [disk],
                       mangle=lambda files: [(n, changed if n == "disk1.vmdk" else d)
                                             for n, d in files])
        self.assertRefused(ova, "Bad sha256 for disk1.vmdk in the OVA, got: %s while expecting %s."
                           % (hashlib.sha256(changed).hexdigest(), hashlib.sha256(data).hexdigest()))

    def test_monolithic_sparse_is_refused(self):
        ova = make_ova(self.path("sparse.ova"), [self.disk("monolithicSparse")])
        self.assertRefused(ova, "Can't write ova on disk.",
                           "the disk disk1.vmdk: a monolithicSparse VMDK: its grains may come in "
                           "any order, so stream mode cannot read it (ram mode can)")

    def test_grains_out_of_order(self):
        raw = disk_raw(self.path("o.raw"), 2 * MIB, "order")
        disk = vmware_stream(raw, self.path("disk1.vmdk"))
        v = Vmdk(disk)
        # Swap the first two grains (markers and data) and their table entries.
        (g0, s0), (g1, s1) = list(v.grains())[:2]
        a = bytes(v.data[s0 * 512:s1 * 512])
        b_end = next(s for _, s in list(v.grains())[2:3])
        b = bytes(v.data[s1 * 512:b_end * 512])
        v.data[s0 * 512:b_end * 512] = b + a
        v.set_u32(v.gte_offset(g0), s0 + len(b) // 512)
        v.set_u32(v.gte_offset(g1), s0)
        v.save()
        ref = reference(disk, self.path("ref.raw"), "vmdk")  # qemu-img reads it by its tables
        ova = make_ova(self.path("order.ova"), [disk])
        self.assertRefused(ova, "Can't write ova on disk.", "names sector 0, not after the grain "
                           "before it (sector 128)")
        out = self.path("out.raw")
        r = convert(ova, out, mode="ram")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(run("cmp", ref, out, check=False).returncode, 0)

    def test_archive_cut_short(self):
        ova = make_ova(self.path("cut.ova"), [self.disk()])
        with open(ova, "r+b") as f:
            f.truncate(os.path.getsize(ova) // 2)
        self.assertRefused(ova, "Can't write ova on disk.",
                           "member disk1.vmdk: Truncated tar archive")


if __name__ == "__main__":
    unittest.main()
