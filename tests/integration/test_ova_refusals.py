"""What `byoi-agent convert` refuses in an OVA or a VMDK, each with bytes crafted by patching (struct)
what qemu-img, tarfile and the OVF writer of ova_util made: exit code 1, the exact catalogue
message, the reason in the detail, and the targets (a loop device and a file, pre-filled with random
bytes) byte for byte untouched. Where a refused VMDK is one qemu-img refuses too, that is asserted.
The OVA is rebuilt around a patched disk (its `.mf` then matches), so that each case fails for the
one reason it is about."""

import hashlib
import os
import struct
import sys
import tarfile
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (MIB, RefusalChecks, random_file, read, run)  # noqa: E402
from ova_util import (SECTOR, Vmdk, header_offset, make_ova, member_offset, ovf_descriptor,  # noqa: E402
                      vmdk_from_raw, vmware_stream)

CANT_WRITE_OVA = "Can't write ova on disk."
CANT_WRITE_VMDK = "Can't write vmdk on disk."
_TEXT = b"an appliance. " * 20000
# Grains that do not inflate to one grain: (case, zlib stream, the reason given).
BAD_GRAINS = (
    ("short", zlib.compress(_TEXT[:65536 - 512]),
     "zlib stream inflates to 65024 bytes, less than a grain"),
    ("long", zlib.compress(_TEXT[:65536 + 512]), "zlib stream inflates to more than a grain"),
    ("garbage", b"\x78\x9c" + b"\xff" * 200, "corrupt zlib stream"),
    ("bad checksum", zlib.compress(_TEXT[:65536])[:-1] + b"\x00", "corrupt zlib stream"),
)


def point_first_grain_past_the_end(v):
    index, _ = next(v.grains())
    v.set_u32(v.gte_offset(index), len(v.data) // SECTOR + 100)


class Refusals(RefusalChecks, unittest.TestCase):
    mode = "ram"

    def disk(self, subformat="streamOptimized", size=4 * MIB, name="disk1.vmdk"):
        raw = self.path("src.raw")
        random_file(raw, size, "refusal-disk")
        with open(raw, "r+b") as f:  # compressible text, so grains are shorter than a grain
            f.seek(MIB)
            f.write(b"an appliance. " * (MIB // 14))
        out = self.path(name)
        if os.path.exists(out):
            os.unlink(out)
        return vmdk_from_raw(raw, out, subformat)

    def ova(self, disks, **kw):
        return make_ova(self.path("a.ova"), disks, **kw)

    def refused_ova(self, disk_or_ova, *reasons, message=CANT_WRITE_OVA):
        ova = disk_or_ova if disk_or_ova.endswith(".ova") else self.ova([disk_or_ova])
        return self.assertRefused(ova, message, *reasons)

    def patched(self, mutate, subformat="streamOptimized"):
        disk = self.disk(subformat)
        v = Vmdk(disk)
        mutate(v)
        v.save()
        return disk

    def qemu_refuses(self, disk):
        r = run("qemu-img", "convert", "-f", "vmdk", "-O", "raw", disk, self.path("q.raw"),
                check=False)
        self.assertNotEqual(r.returncode, 0, "qemu-img accepted it")

    # --- the archive ---------------------------------------------------------------------------

    def test_broken_tar_headers(self):
        ova = self.ova([self.disk()])
        data = bytearray(read(ova))
        cases = (
            ("checksum of the manifest's header", header_offset(ova, "appliance.mf") + 148, b"7",
             "the tar archive, after member 1 (appliance.ovf): Damaged tar archive"),
            ("garbage for the disk's header", header_offset(ova, "disk1.vmdk"), b"\xff" * 512,
             "the tar archive, after member 2 (appliance.mf): Damaged tar archive"),
            ("checksum of the first header", 148, b"7", "the tar archive: Unrecognized archive"),
        )
        for name, offset, patch, reason in cases:
            with self.subTest(name):
                broken = bytearray(data)
                broken[offset:offset + len(patch)] = patch
                path = self.path("broken.ova")
                with open(path, "wb") as f:
                    f.write(broken)
                self.assertRefused(path, CANT_WRITE_OVA, reason)

    def test_archive_cut_inside_the_disk(self):
        ova = self.ova([self.disk()])
        with open(ova, "r+b") as f:
            f.truncate(member_offset(ova, "disk1.vmdk") + 100000)
        self.assertRefused(ova, CANT_WRITE_OVA, "member disk1.vmdk: Truncated tar archive")

    def test_descriptor_not_first(self):
        disk = self.disk()
        ova = self.ova([disk], mangle=lambda files: files[2:] + files[:2])
        # Not an OVA then: a tar archive, which `--type ova` refuses with the format mismatch.
        self.assertRefused(ova, "image provided format is tar which does not match expected ova "
                           "format", args=("--type", "ova"))

    def test_two_members_of_one_name(self):
        disk = self.disk()
        self.refused_ova(self.ova([disk], mangle=lambda files: files + [files[-1]]),
                         "two members are named disk1.vmdk")

    def test_link_member(self):
        disk = self.disk()
        ova = self.ova([disk])
        with tarfile.open(ova, "a") as t:
            link = tarfile.TarInfo("disk2.vmdk")
            link.type = tarfile.SYMTYPE
            link.linkname = "disk1.vmdk"
            t.addfile(link)
        self.refused_ova(ova, "member disk2.vmdk is not a regular file")

    # --- the descriptor --------------------------------------------------------------------------

    def descriptor(self, disk):
        return ovf_descriptor([(os.path.basename(disk), os.path.getsize(disk), 4 * MIB,
                                "http://www.vmware.com/interfaces/specifications/vmdk.html"
                                "#streamOptimized")])

    def test_descriptor_names_a_missing_file(self):
        disk = self.disk()
        ovf = self.descriptor(disk).replace(
            "</References>", '<File ovf:href="disk2.vmdk" ovf:id="file9" ovf:size="512"/>'
            "</References>")
        self.refused_ova(self.ova([disk], ovf=ovf), "the descriptor names file disk2.vmdk (id "
                         "file9), which is not in the archive")

    def test_descriptor_refusals(self):
        disk = self.disk()
        good = self.descriptor(disk)
        size = os.path.getsize(disk)
        cases = (
            ("not XML", good.replace("</Envelope>", "</Envelop>"),
             "the descriptor appliance.ovf: the descriptor is not well-formed XML: line"),
            ("a DTD", good.replace("<Envelope", '<!DOCTYPE Envelope [<!ENTITY a "aaaa">]>\n'
                                   "<Envelope", 1),
             "the descriptor has a DTD (<!DOCTYPE>), which is not allowed"),
            ("entity expansion", good.replace("<Envelope", '<!DOCTYPE r [<!ENTITY a "x">'
                                              '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                                              "<Envelope", 1).replace(
                                                  "<Info>A virtual machine", "<Info>&b;", 1),
             "has a DTD"),
            ("not an envelope", '<?xml version="1.0"?><Envelope xmlns="urn:other"/>',
             'the root element is "Envelope" in namespace "urn:other", not an OVF Envelope'),
            ("no system", good[:good.index("<VirtualSystem")] + "</Envelope>",
             "the descriptor holds no VirtualSystem"),
            ("unknown disk", good.replace("ovf:/disk/vmdisk1", "ovf:/disk/vmdisk7"),
             'a HostResource names disk "vmdisk7", which the DiskSection does not list'),
            ("no disk attached", good.replace("ovf:/disk/vmdisk1", "ovf:/file/file1"),
             'VirtualSystem "appliance" attaches no disk with a file'),
            ("size", good.replace(f'ovf:size="{size}"', f'ovf:size="{size + 1}"'),
             f"file disk1.vmdk has {size} bytes, the descriptor says {size + 1}"),
            ("gzip", good.replace('ovf:id="file1"', 'ovf:id="file1" ovf:compression="gzip"'),
             'is stored with ovf:compression "gzip"'),
            ("chunked", good.replace('ovf:id="file1"', 'ovf:id="file1" ovf:chunkSize="1024"'),
             "is split in chunks (ovf:chunkSize)"),
        )
        for name, ovf, reason in cases:
            with self.subTest(name):
                self.refused_ova(self.ova([disk], ovf=ovf), reason)

    def test_descriptor_larger_than_one_mib(self):
        disk = self.disk()
        padded = self.descriptor(disk).replace("<References>",
                                               "<!--" + "x" * (1 << 20) + "--><References>")
        self.refused_ova(self.ova([disk], ovf=padded), "more than 1048576")

    # --- the manifest ----------------------------------------------------------------------------

    def test_manifest_mismatch(self):
        # The disk's bytes changed after the manifest was written: one byte of grain data (the
        # VMDK is still sound, so the digest is what refuses it).
        for algo in ("sha1", "sha256"):
            with self.subTest(algo=algo):
                disk = self.disk()
                original = read(disk)

                def flip(files):
                    for i, (name, data) in enumerate(files):
                        if name == "disk1.vmdk":
                            data = bytearray(data)
                            data[len(data) - 100] ^= 0x01
                            files[i] = (name, bytes(data))
                    return files

                ova = self.ova([disk], algo=algo, mangle=flip)
                expected = hashlib.new(algo, original).hexdigest()
                changed = bytearray(original)
                changed[len(changed) - 100] ^= 0x01
                actual = hashlib.new(algo, changed).hexdigest()
                err = self.assertRefused(
                    ova, f"Bad {algo} for disk1.vmdk in the OVA, got: {actual} while expecting "
                    f"{expected}.", f"the {algo} of disk1.vmdk ({len(original)} bytes) differs")

                if self.mode == "ram":  # stream mode checks the digests as the archive ends
                    self.assertIn("checking the manifest of", err)

    def test_manifest_refusals(self):
        disk = self.disk()
        digest = "0" * 64
        cases = (
            ("missing file", f"SHA256(disk9.vmdk)= {digest}\n",
             "the manifest appliance.mf names file disk9.vmdk, which is not in the archive"),
            ("named twice", f"SHA256(disk1.vmdk)= {digest}\nSHA256(disk1.vmdk)= {digest}\n",
             "names file disk1.vmdk twice"),
            ("md5", f"MD5(disk1.vmdk)= {'0' * 32}\n",
             "line 1: digest MD5 (SHA1, SHA256 or SHA512 expected)"),
            ("short digest", "SHA256(disk1.vmdk)= 1234\n", "line 1: a sha256 digest is 64 hex"),
            ("not a digest line", "hello\n", "line 1: not ALGO(FILE)= DIGEST"),
        )
        for name, text, reason in cases:
            with self.subTest(name):
                def replace(files, text=text):
                    return [(n, text.encode() if n.endswith(".mf") else d) for n, d in files]
                self.refused_ova(self.ova([disk], mangle=replace), reason)

    # --- the VMDK --------------------------------------------------------------------------------

    def test_grain_directory_out_of_range(self):
        for subformat in ("streamOptimized", "monolithicSparse"):
            with self.subTest(subformat=subformat):
                size = None

                def outside(v):
                    nonlocal size
                    size = len(v.data)
                    v.set_u64(56, len(v.data) // SECTOR + 8)
                disk = self.patched(outside, subformat)
                where = (size // SECTOR + 8) * SECTOR
                self.refused_ova(disk, f"the disk disk1.vmdk: grain directory at {where:#x} (1 "
                                 "entries) lies outside the file")
                self.assertRefused(disk, CANT_WRITE_VMDK, "lies outside the file")

    def test_grain_table_out_of_range(self):
        self.refused_ova(self.patched(lambda v: v.set_u32(v.gd_entry_offset(0), 0x7FFFFFF)),
                         "the grain table at 0xffffffe00 (directory entry 0) lies outside the file")

    def test_grain_table_referenced_twice(self):
        def twice(v):
            self.assertGreater(v.gd_entries, 1)
            v.set_u32(v.gd_entry_offset(1), v.u32(v.gd_entry_offset(0)))
        disk = self.disk("monolithicSparse", 40 * MIB)  # a table covers 32 MiB: two tables
        v = Vmdk(disk)
        twice(v)
        v.save()
        self.refused_ova(disk, "(directory entry 1) is referenced twice")

    def test_grain_past_the_end_of_the_file(self):
        self.refused_ova(self.patched(point_first_grain_past_the_end, "monolithicSparse"),
                         "maps past the end of the file")
        self.refused_ova(self.patched(point_first_grain_past_the_end),
                         "lies past the end of the file")

    def test_marker_naming_another_sector(self):
        def shifted(v):
            index, sector = list(v.grains())[3]
            v.set_u64(sector * SECTOR, 0)
        self.refused_ova(self.patched(shifted), "names sector 0, not 384")

    def test_table_entry_pointing_at_a_metadata_marker(self):
        def metadata(v):
            index, sector = list(v.grains())[2]
            struct.pack_into("<QII", v.data, sector * SECTOR, 1, 0, 1)
        self.refused_ova(self.patched(metadata), "holds a metadata marker, not a grain")

    def replace_grain(self, v, index, stream):
        """Points grain `index`'s table entry at a new marker and `stream`, appended."""
        at = (len(v.data) + SECTOR - 1) // SECTOR * SECTOR
        v.data += bytes(at - len(v.data))
        v.data += struct.pack("<QI", index * v.granularity, len(stream)) + stream
        v.data += bytes(-len(v.data) % SECTOR)
        v.set_u32(v.gte_offset(index), at // SECTOR)

    def test_grain_that_inflates_wrong(self):
        # Every compressed grain is inflated before the target is opened: a bad one, even past
        # the first MiB, is refused with the disk untouched.
        for name, stream, reason in BAD_GRAINS:
            with self.subTest(name):
                disk = self.patched(lambda v: self.replace_grain(v, 40, stream))
                self.qemu_refuses(disk)
                self.refused_ova(disk, "compressed cluster at virtual offset 0x280000: " + reason)

    def test_descriptor_only_vmdk(self):
        cases = (
            ("twoGbMaxExtentSparse", "5G",
             'a descriptor-only VMDK (createType "twoGbMaxExtentSparse") whose data is in other '
             'files: "desc-s001.vmdk", "desc-s002.vmdk", "desc-s003.vmdk" (split extents)'),
            ("monolithicFlat", "1M",
             'a descriptor-only VMDK (createType "monolithicFlat") whose data is in other files: '
             '"desc-flat.vmdk"'),
        )
        for subformat, size, reason in cases:
            with self.subTest(subformat=subformat):
                disk = self.path("desc.vmdk")
                run("qemu-img", "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", disk,
                    size)
                self.refused_ova(self.ova([disk]), "the disk desc.vmdk: " + reason)
                self.assertRefused(disk, CANT_WRITE_VMDK, reason)

    def test_parent_disk(self):
        base = self.disk(name="base.vmdk")
        child = self.path("disk1.vmdk")
        if os.path.exists(child):
            os.unlink(child)
        run("qemu-img", "create", "-q", "-f", "vmdk", "-b", base, "-F", "vmdk", child)
        self.refused_ova(child, f'the VMDK has a parent disk (parentFileNameHint "{base}")')

    def test_header_refusals(self):
        cases = (
            ("version 4", lambda v: v.set_u32(4, 4), "VMDK version 4"),
            ("unknown flag", lambda v: v.set_u32(8, v.flags | (1 << 5)), "unknown VMDK flags 0x20"),
            ("newline check", lambda v: v.data.__setitem__(73, 0x0D),
             "newline check bytes are damaged"),
            ("compression 2", lambda v: struct.pack_into("<H", v.data, 77, 2),
             "VMDK compression algorithm 2"),
            ("grain of 3 sectors", lambda v: v.set_u64(20, 3), "a grain of 3 sectors"),
            ("grain tables of 1024", lambda v: v.set_u32(44, 1024),
             "grain tables of 1024 entries"),
            ("capacity 2^55", lambda v: v.set_u64(12, 1 << 55), "a capacity of"),
            ("truncated before the grains", lambda v: v.set_u64(64, 1 << 30), "the file is "
             "truncated: its grains start at sector 1073741824"),
        )
        for name, mutate, reason in cases:
            with self.subTest(name):
                self.refused_ova(self.patched(mutate), reason)

    def test_se_sparse_and_cowd(self):
        for name, magic, reason in (("seSparse", struct.pack("<Q", 0xCAFEBABE),
                                     "an seSparse VMDK (ESXi's snapshot format)"),
                                    ("COWD", b"COWD", "a VMDK3 (COWD) sparse extent")):
            with self.subTest(name):
                disk = self.path("odd.vmdk")
                with open(disk, "wb") as f:
                    f.write(magic + bytes(8192 - len(magic)))
                self.refused_ova(self.ova([disk]), reason)

    def test_footer_refusals(self):
        # A header whose directory is at the end, in a file without a footer (qemu-img writes
        # none).
        disk = self.disk()
        data = bytearray(read(disk))
        struct.pack_into("<Q", data, 56, 0xFFFFFFFFFFFFFFFF)
        at = len(data) // SECTOR * SECTOR - 3 * SECTOR
        ova = self.ova([disk], mangle=lambda files: [
            (n, bytes(data) if n == "disk1.vmdk" else d) for n, d in files])
        self.refused_ova(ova, f"the disk disk1.vmdk: footer at {at:#x}: no footer marker")
        with open(disk, "wb") as f:
            f.write(data)
        self.qemu_refuses(disk)

class StreamRefusals(Refusals):
    """The refusals again in stream mode (the OVA read front to back and written while it passes).
    The descriptor, the archive's headers before the disk and the VMDK's header are refused before
    the target is opened; what shows later (the disk's grains and tables, the archive's end, the
    digests) once writing began: there the target's first MiB, held back until the end, must be
    unchanged. Where stream mode reads differently (monolithicSparse is refused, grains are read in
    their order, tables at the end), the cases below say what it says."""
    mode = "stream"

    AFTER_WRITING = {
        "test_archive_cut_inside_the_disk", "test_descriptor_names_a_missing_file",
        "test_descriptor_refusals", "test_link_member", "test_manifest_mismatch",
        "test_manifest_refusals", "test_two_members_of_one_name", "test_footer_refusals",
        "test_grain_that_inflates_wrong", "test_marker_naming_another_sector",
        "test_table_entry_pointing_at_a_metadata_marker", "test_grain_past_the_end_of_the_file",
    }
    SPARSE = ("a monolithicSparse VMDK: its grains may come in any order, so stream mode cannot "
              "read it (ram mode can)")

    def assert_untouched(self, path, digest, first_mib):
        if self._testMethodName not in self.AFTER_WRITING:
            return super().assert_untouched(path, digest, first_mib)
        self.assertTrue(read(path, 0, MIB) == first_mib, "the first MiB was written")
        return None

    def test_grain_directory_out_of_range(self):
        def outside(v):
            v.set_u64(56, len(v.data) // SECTOR + 8)
        disk = self.patched(outside)
        self.refused_ova(disk, "grain directory at", "(1 entries) lies outside the file")
        self.refused_ova(self.disk("monolithicSparse"), "the disk disk1.vmdk: " + self.SPARSE)

    def test_grain_table_referenced_twice(self):
        self.refused_ova(self.disk("monolithicSparse", 40 * MIB), self.SPARSE)

    def test_grain_past_the_end_of_the_file(self):
        self.refused_ova(self.patched(point_first_grain_past_the_end),
                         "the grain at sector 0: its table entry points to",
                         "but its marker came at 0x10000")

    def test_footer_refusals(self):
        # The header puts the directory at the end, and the file (qemu-img's) has no footer:
        # stream mode finds that out when the file ends.
        disk = self.disk()
        v = Vmdk(disk)
        v.set_u64(56, 0xFFFFFFFFFFFFFFFF)
        data = bytes(v.data)
        ova = self.ova([disk], mangle=lambda files: [
            (n, data if n == "disk1.vmdk" else d) for n, d in files])
        self.refused_ova(ova, "the disk disk1.vmdk: the file ended before its footer (the header "
                         "puts the grain directory at the end)")

    def test_parent_disk(self):
        base = self.disk(name="base.vmdk")
        child = self.path("disk1.vmdk")
        if os.path.exists(child):
            os.unlink(child)
        run("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", "-b",
            base, "-F", "vmdk", child)
        self.refused_ova(child, f'the VMDK has a parent disk (parentFileNameHint "{base}")')

    def test_marker_naming_another_sector(self):
        def shifted(v):
            index, sector = list(v.grains())[3]
            v.set_u64(sector * SECTOR, 0)
        self.refused_ova(self.patched(shifted), "names sector 0, not after the grain before it "
                         "(sector 256)")

    def test_table_entry_pointing_at_a_metadata_marker(self):
        def metadata(v):
            index, sector = list(v.grains())[2]
            struct.pack_into("<QII", v.data, sector * SECTOR, 1, 0, 1)
        # Metadata markers are passed over (the tables are read where the header says): the
        # grain the entry names never came.
        self.refused_ova(self.patched(metadata), "its table entry points to",
                         "where no grain marker came")

    def test_grain_that_inflates_wrong(self):
        # A VMware stream whose grain 40 is bad, in its place in the stream (a grain appended at
        # the end, as the ram-mode case makes it, is out of order here).
        raw = self.path("bad.raw")
        random_file(raw, 4 * MIB, "bad-grain")
        for name, stream, reason in BAD_GRAINS:
            with self.subTest(name):
                disk = vmware_stream(raw, self.path("disk1.vmdk"),
                                     deflate=lambda i, chunk: stream if i == 40 else
                                     zlib.compress(chunk))
                self.qemu_refuses(disk)
                self.refused_ova(disk, "compressed cluster at virtual offset 0x280000: " + reason)


if __name__ == "__main__":
    unittest.main()
