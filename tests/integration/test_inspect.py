#!/usr/bin/python3
"""`byoi-agent inspect IMAGE [--json]` against the tools that made the image: qemu-img info for the
qcow2 header, sfdisk --json for the partition table, blkid for file systems, and the raw file's
own clusters for the allocation counts. Images are made at test time (sgdisk, mkfs.*, mtools,
qemu-img, qemu-io); nothing binary is checked in."""

import json
import os
import re
import subprocess
import sys
import tarfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import AGENT, MIB, qemu_img, qemu_io, read, run, tempdir  # noqa: E402
from ova_util import make_ova, vmdk_from_raw  # noqa: E402

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def inspect(image, *extra):
    r = run(AGENT, "inspect", image, *extra, check=False)
    if r.returncode != 0:
        raise AssertionError(f"inspect {image} exited {r.returncode}: {r.stderr}")
    return json.loads(r.stdout) if "--json" in extra else r.stdout


def mtools(tool, image, offset, *args):
    run(tool, "-i", f"{image}@@{offset}", *args)


def gpt_disk(path, layout="shim"):
    """64 MiB: an ESP (vfat "ESP") at 1 MiB and an ext4 root ("rootfs") after it. `layout` picks
    the ESP's loaders: "shim" (a BOOTX64.CSV next to shim and GRUB), "fallback" (only
    \\EFI\\BOOT\\BOOTX64.EFI) or "empty"."""
    run("truncate", "-s", "64M", path)
    run("sgdisk", "-n1:2048:+32M", f"-t1:{ESP_TYPE}", "-c1:EFI System", "-n2:0:0", "-t2:8300",
        "-c2:root", path)
    table = json.loads(run("sfdisk", "--json", path).stdout)["partitiontable"]
    esp, root = table["partitions"]
    run("mkfs.fat", "-F", "16", "-n", "ESP", "--offset", str(esp["start"]), path,
        str(esp["size"] // 2))
    run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-E", f"offset={root['start'] * 512}", path,
        f"{root['size'] // 2}k")
    offset = esp["start"] * 512
    os.makedirs(os.path.dirname(path) + "/files", exist_ok=True)
    loader = os.path.dirname(path) + "/files/loader.efi"
    with open(loader, "wb") as f:
        f.write(b"MZ" + os.urandom(4094))
    if layout == "shim":
        csv = os.path.dirname(path) + "/files/BOOTX64.CSV"
        with open(csv, "wb") as f:
            f.write("shimx64.efi,debian,,This is the boot entry for debian\n".encode("utf-16"))
        mtools("mmd", path, offset, "::/EFI", "::/EFI/debian")
        for name in ("shimx64.efi", "grubx64.efi"):
            mtools("mcopy", path, offset, loader, f"::/EFI/debian/{name}")
        mtools("mcopy", path, offset, csv, "::/EFI/debian/BOOTX64.CSV")
    elif layout == "fallback":
        mtools("mmd", path, offset, "::/EFI", "::/EFI/BOOT")
        mtools("mcopy", path, offset, loader, "::/EFI/BOOT/BOOTX64.EFI")
    return table


def nonzero_clusters(raw, cluster):
    """How many `cluster`-byte clusters of the raw file hold a non-zero byte."""
    count = 0
    zero = bytes(cluster)
    with open(raw, "rb") as f:
        for block in iter(lambda: f.read(cluster), b""):
            count += block != zero[: len(block)]
    return count


class InspectTest(unittest.TestCase):
    def setUp(self):
        self.dir = self.enterContext(tempdir())

    def path(self, name):
        return os.path.join(self.dir, name)

    def assertPartitionsMatch(self, got, table):
        """`got` (inspect's partitionTable) against sfdisk's view of the same raw disk."""
        self.assertEqual(got["type"], {"gpt": "gpt", "dos": "mbr"}[table["label"]])
        self.assertEqual(len(got["partitions"]), len(table["partitions"]))
        for mine, theirs in zip(got["partitions"], table["partitions"]):
            self.assertEqual(mine["number"], int(re.search(r"(\d+)$", theirs["node"]).group(1)))
            self.assertEqual(mine["start"], theirs["start"] * 512)
            self.assertEqual(mine["size"], theirs["size"] * 512)
            if table["label"] == "gpt":
                self.assertEqual(mine["type"], theirs["type"].upper())
                self.assertEqual(mine["guid"], theirs["uuid"].upper())
                self.assertEqual(mine["name"], theirs["name"])
            else:
                self.assertEqual(int(mine["type"], 16), int(theirs["type"], 16))
                self.assertEqual(mine["bootable"], theirs.get("bootable", False))
        if table["label"] == "gpt":
            self.assertEqual(got["diskGuid"], table["id"].upper())
            self.assertEqual(got["sectorSize"], 512)
            self.assertFalse(got["fromBackup"])

    def test_compressed_qcow2_gpt_with_esp_and_shim(self):
        raw = self.path("disk.raw")
        table = gpt_disk(raw, "shim")
        image = self.path("disk.qcow2")
        qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=65536", raw, image)
        info = json.loads(qemu_img("info", "--output=json", image).stdout)
        got = inspect(image, "--json")

        self.assertEqual(got["format"], "qcow2")
        self.assertEqual(got["virtualSize"], info["virtual-size"])
        self.assertEqual(got["fileSize"], os.path.getsize(image))
        self.assertEqual(got["version"], 3 if info["format-specific"]["data"]["compat"] == "1.1"
                         else 2)
        self.assertEqual(got["clusterSize"], info["cluster-size"])
        self.assertEqual(got["compressionType"], info["format-specific"]["data"]["compression-type"])
        self.assertEqual(got["refcountBits"], info["format-specific"]["data"]["refcount-bits"])
        self.assertFalse(got["extendedL2"])
        self.assertEqual(got["snapshots"], 0)
        # qemu-img compressed every cluster that holds data and left out the zero ones.
        data = nonzero_clusters(raw, 65536) * 65536
        self.assertGreater(data, 0)
        self.assertEqual(got["compressedBytes"], data)
        self.assertEqual(got["allocatedBytes"], 0)
        self.assertEqual(got["unallocatedBytes"], got["virtualSize"] - data)

        pt = got["partitionTable"]
        self.assertPartitionsMatch(pt, table)
        esp, root = pt["partitions"]
        self.assertEqual((esp["esp"], esp["filesystem"], esp["label"]), (True, "vfat", "ESP"))
        self.assertEqual((root["esp"], root["filesystem"], root["label"]),
                         (False, "ext4", "rootfs"))
        self.assertEqual(got["esp"], 1)
        self.assertEqual(got["bootLoader"], {"path": "\\EFI\\debian\\shimx64.efi",
                                             "foundBy": "BOOTX64.CSV", "label": "debian"})

        text = inspect(image)
        self.assertIn("format:          qcow2\n", text)
        self.assertIn("compression:     zlib\n", text)
        self.assertIn(f"virtual size:    64 MiB ({info['virtual-size']} bytes)\n", text)
        self.assertIn(f"partition table: gpt (512-byte sectors, disk GUID {pt['diskGuid']})\n",
                      text)
        self.assertIn('"EFI System" vfat "ESP" ' + esp["guid"], text)
        self.assertIn('"root" ext4 "rootfs" ' + root["guid"], text)
        self.assertIn("EFI system partition: 1\nboot loader:     \\EFI\\debian\\shimx64.efi "
                      "(BOOTX64.CSV)\n", text)

    def test_ova_files_disk_and_partition_table(self):
        raw = self.path("disk.raw")
        table = gpt_disk(raw, "shim")
        disk = vmdk_from_raw(raw, self.path("disk1.vmdk"), "streamOptimized")
        data_raw = self.path("data.raw")
        run("truncate", "-s", "3M", data_raw)
        data = vmdk_from_raw(data_raw, self.path("data.vmdk"), "monolithicSparse")
        ova = make_ova(self.path("appliance.ova"), [disk, data], algo="sha1")
        got = inspect(ova, "--json")

        self.assertEqual(got["format"], "ova")
        self.assertEqual(got["virtualSize"], 64 * MIB)
        self.assertEqual(got["fileSize"], os.path.getsize(ova))
        with tarfile.open(ova) as t:
            sizes = {m.name: m.size for m in t.getmembers()}
        self.assertEqual(got["ova"]["files"], [
            {"name": "appliance.ovf", "size": sizes["appliance.ovf"], "role": "descriptor",
             "installed": False, "digest": "sha1"},
            {"name": "appliance.mf", "size": sizes["appliance.mf"], "role": "manifest",
             "installed": False, "digest": None},
            {"name": "disk1.vmdk", "size": os.path.getsize(disk), "role": "disk",
             "installed": True, "digest": "sha1"},
            {"name": "data.vmdk", "size": os.path.getsize(data), "role": "disk",
             "installed": False, "digest": "sha1"}])
        self.assertEqual(got["ova"]["disk"], {
            "file": "disk1.vmdk", "id": "vmdisk1", "capacity": 64 * MIB,
            "format": "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"})
        self.assertEqual((got["ova"]["virtualSystem"], got["ova"]["disks"]), ("appliance", 2))
        vmdk = got["vmdk"]
        self.assertEqual((vmdk["subformat"], vmdk["createType"], vmdk["version"],
                          vmdk["grainSize"]), ("streamOptimized", "streamOptimized", 3, 65536))
        # qemu-img compressed every grain that holds data and left out the zero ones.
        compressed = nonzero_clusters(raw, 65536) * 65536
        self.assertEqual(vmdk["compressedBytes"], compressed)
        self.assertEqual(vmdk["unallocatedBytes"], 64 * MIB - compressed)
        self.assertEqual(vmdk["allocatedBytes"] + vmdk["zeroBytes"], 0)
        self.assertPartitionsMatch(got["partitionTable"], table)
        self.assertEqual(got["bootLoader"], {"path": "\\EFI\\debian\\shimx64.efi",
                                             "foundBy": "BOOTX64.CSV", "label": "debian"})

        text = inspect(ova)
        self.assertIn("format:          ova\nfiles:\n", text)
        self.assertRegex(text, r"\n  disk1\.vmdk +\S+ \S+  disk, installed, sha1 in the "
                               r"manifest\n")
        self.assertIn("installed disk:  disk1.vmdk (disk vmdisk1 of virtual system appliance; 2 "
                      "disk(s) in the OVA, capacity 64 MiB)\n", text)
        self.assertIn("vmdk:            streamOptimized, version 3, grain 64 KiB\n", text)
        self.assertIn("partition table: gpt", text)

        # A bare VMDK: its own format, no "ova".
        got = inspect(data, "--json")
        self.assertEqual((got["format"], got["virtualSize"]), ("vmdk", 3 * MIB))
        self.assertNotIn("ova", got)
        self.assertEqual(got["vmdk"]["subformat"], "monolithicSparse")
        self.assertEqual(got["vmdk"]["unallocatedBytes"], 3 * MIB)

    def test_raw_gpt_fallback_loader_and_an_empty_esp(self):
        raw = self.path("fallback.raw")
        gpt_disk(raw, "fallback")
        got = inspect(raw, "--json")
        self.assertEqual(got["format"], "raw")
        self.assertEqual(got["virtualSize"], 64 * MIB)
        self.assertNotIn("clusterSize", got)
        self.assertEqual(got["bootLoader"], {"path": "\\EFI\\BOOT\\BOOTX64.EFI",
                                             "foundBy": "fallback", "label": ""})
        empty = self.path("empty-esp.raw")
        gpt_disk(empty, "empty")
        got = inspect(empty, "--json")
        self.assertEqual(got["esp"], 1)
        self.assertIsNone(got["bootLoader"])
        self.assertNotIn("bootLoaderError", got)
        self.assertIn("boot loader:     none found\n", inspect(empty))

    def test_compressed_files_show_what_the_plain_file_shows(self):
        # The ESP's loader and every partition's file system lie past the first MiB: inspect
        # decodes what it reads of them, for every container and for a qcow2 inside one.
        raw = self.path("disk.raw")
        gpt_disk(raw, "shim")
        plain = inspect(raw, "--json")
        self.assertEqual(plain["bootLoader"]["foundBy"], "BOOTX64.CSV")
        self.assertEqual([p["filesystem"] for p in plain["partitionTable"]["partitions"]],
                         ["vfat", "ext4"])
        qcow2 = self.path("disk.qcow2")
        qemu_img("convert", "-O", "qcow2", raw, qcow2)
        files = []
        for tool, ext in (("xz", "xz"), ("zstd", "zst"), ("gzip", "gz"), ("bzip2", "bz2")):
            files.append((tool, raw, self.path(f"disk.raw.{ext}")))
        files.append(("zstd", qcow2, self.path("disk.qcow2.zst")))
        for tool, source, image in files:
            with self.subTest(image=os.path.basename(image)):
                with open(image, "wb") as f:
                    f.write(subprocess.run([tool, "-c", source], capture_output=True,
                                           check=True).stdout)
                got = inspect(image, "--json")
                self.assertEqual(got["container"], tool)
                for key in ("partitionTable", "esp", "bootLoader"):
                    self.assertEqual(got[key], plain[key], key)
                # gzip and bzip2 do not record the decoded size; a qcow2's header says its own.
                self.assertEqual(got["virtualSize"],
                                 None if tool in ("gzip", "bzip2") else plain["virtualSize"])
                self.assertNotIn("bootLoaderError", got)

    def test_a_compressed_file_is_decoded_only_as_far_as_inspect_reads(self):
        # Random bytes from 40 MiB on (inside the root partition, past its superblock), and the
        # compressed file cut in their middle: inspect stops after the root's first MiB and shows
        # everything; convert, which needs the whole stream, finds the cut.
        raw = self.path("cut.raw")
        gpt_disk(raw, "fallback")
        with open(raw, "r+b") as f:
            f.seek(40 * MIB)
            f.write(os.urandom(24 * MIB))
        image = self.path("cut.raw.gz")
        data = subprocess.run(["gzip", "-c", raw], capture_output=True, check=True).stdout
        with open(image, "wb") as f:
            f.write(data[: len(data) - 12 * MIB])
        got = inspect(image, "--json")
        self.assertEqual([p["filesystem"] for p in got["partitionTable"]["partitions"]],
                         ["vfat", "ext4"])
        self.assertEqual(got["bootLoader"], {"path": "\\EFI\\BOOT\\BOOTX64.EFI",
                                             "foundBy": "fallback", "label": ""})
        r = run(AGENT, "convert", image, self.path("out.raw"), check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("Can't write raw on disk.", r.stderr)

    def test_a_file_larger_than_the_memory_budget(self):
        # inspect maps the file and reads only what it shows: a sparse raw disk larger than RAM.
        with open("/proc/meminfo") as f:
            mem_total = int(re.search(r"MemTotal:\s+(\d+) kB", f.read()).group(1)) * 1024
        size = (mem_total // MIB + 1024) * MIB
        raw = self.path("large.raw")
        run("truncate", "-s", str(size), raw)
        run("sgdisk", "-n1:2048:+64M", f"-t1:{ESP_TYPE}", "-c1:EFI", "-n2:0:0", "-t2:8300",
            "-c2:data", raw)
        table = json.loads(run("sfdisk", "--json", raw).stdout)["partitiontable"]
        got = inspect(raw, "--json")
        self.assertEqual(got["virtualSize"], size)
        self.assertPartitionsMatch(got["partitionTable"], table)

    def test_qcow2_counts_data_and_zero_clusters(self):
        image = self.path("counts.qcow2")
        qemu_img("create", "-f", "qcow2", "-o", "cluster_size=65536", image, "16M")
        qemu_io(image, "write -P 0x5a 0 3M", "write -z 1M 1M", "write -z 8M 2M")
        info = json.loads(qemu_img("info", "--output=json", image).stdout)
        got = inspect(image, "--json")
        # qemu-img map is the oracle for which ranges read as data and which as zeros.
        extents = json.loads(qemu_img("map", "--output=json", image).stdout)
        data = sum(e["length"] for e in extents if e["data"])
        zero = sum(e["length"] for e in extents if e["zero"] and not e["data"] and
                   e.get("present", True))
        self.assertEqual((data, zero), (2 * MIB, 3 * MIB))  # the oracle sees what was written
        self.assertEqual(got["allocatedBytes"], data)
        self.assertEqual(got["zeroBytes"], zero)
        self.assertEqual(got["compressedBytes"], 0)
        self.assertEqual(got["allocatedBytes"] + got["zeroBytes"] + got["unallocatedBytes"],
                         info["virtual-size"])
        self.assertEqual(got["partitionTable"]["type"], "none")
        self.assertIsNone(got["esp"])

    def test_mbr_image(self):
        raw = self.path("mbr.raw")
        run("truncate", "-s", "32M", raw)
        run("sfdisk", raw, input="label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=20480, "
                                 "type=ef\nstart=22528, type=83, bootable\n")
        table = json.loads(run("sfdisk", "--json", raw).stdout)["partitiontable"]
        run("mkfs.fat", "-F", "12", "-n", "MBRESP", "--offset", "2048", raw, "10240")
        got = inspect(raw, "--json")
        pt = got["partitionTable"]
        self.assertPartitionsMatch(pt, table)
        self.assertEqual(pt["diskId"], "0x1234abcd")
        self.assertEqual(pt["partitions"][0]["filesystem"], "vfat")
        self.assertEqual(pt["partitions"][0]["label"], "MBRESP")
        self.assertTrue(pt["partitions"][0]["esp"])
        self.assertEqual(got["esp"], 1)
        self.assertTrue(pt["partitions"][1]["bootable"])

    def test_bare_filesystem_is_named(self):
        raw = self.path("bare.raw")
        run("truncate", "-s", "16M", raw)
        run("mkfs.ext4", "-q", "-F", "-L", "bare", raw)
        got = inspect(raw, "--json")
        self.assertEqual(got["partitionTable"], {"type": "none", "partitions": []})
        self.assertEqual(got["contents"], "ext4")
        self.assertIn("contents:        ext4\n", inspect(raw))

    def test_unreadable_image_is_an_error(self):
        bad = self.path("bad.qcow2")
        image = self.path("ok.qcow2")
        qemu_img("create", "-f", "qcow2", image, "4M")
        data = bytearray(read(image))
        data[20:24] = (30).to_bytes(4, "big")  # cluster_bits 30
        with open(bad, "wb") as f:
            f.write(data)
        r = run(AGENT, "inspect", bad, check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cluster_bits 30", r.stderr)


if __name__ == "__main__":
    unittest.main()
