#!/usr/bin/python3
"""Stream mode end to end through `byoi-agent deploy` (docs/pipeline.md, "Write modes"), and the
compressed raw images both modes take: images written while they download, onto loop devices of 512- and 4096-byte sectors pre-filled with random
bytes, from the fault server of fetch_servers.py.

* What lands is byte-identical to qemu-img's raw conversion (raw, qcow2, raw compressed with zstd,
  xz, gzip and bzip2; a download reset midway is resumed and every byte written once).
* auto mode streams what does not fit the RAM budget, and says so.
* Every failure once writing began (checksum mismatch, a body cut short every time, a cancel, a
  corrupt cluster, clusters waiting past the budget) ends with the exact catalogue sentence and the
  disk's first and last MiB zeroed: nothing bootable. Every failure the first bytes show (an image
  larger than the disk, a wrong declared type) leaves the disk byte-identical.
* While it streams, the download and the write steps are both doing, each with its bytes.
* A 2 GiB image with --memory-limit 512M deploys in a memory cgroup of its own, under 512 MiB.

Needs root (loop devices, cgroups), qemu-utils, fdisk, zstd, xz-utils, gzip, bzip2."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_util import (AGENT, MIB, create, loop_device,  # noqa: E402
                              move_first_l2_table_to_the_end, qemu_img, qemu_io, random_file,
                              read, run)
from fetch_servers import (FaultServer, MemoryCgroup, Nginx, Route, mbr_image,  # noqa: E402
                           write_mbr_image_file)
from test_image_hardening import corrupt_last_compressed_cluster, mbr_disk  # noqa: E402
from ova_util import make_ova, vmdk_from_raw  # noqa: E402

DISK_BYTES = 64 * MIB
SECTOR_SIZES = (512, 4096)
TOO_BIG = "Could not download, qcow2 image is too big to download in memory."


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def slurp(path):
    with open(path, "rb") as f:
        return f.read()


class StreamDeployTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (loop devices)")
        cls._tmp = tempfile.TemporaryDirectory(prefix="byoi-stream-deploy-")
        cls.dir = cls._tmp.name
        cls.server = FaultServer()
        cls.images = {}  # name -> (bytes of the file, bytes of its virtual disk)

        # One MBR partition at LBA 256 of 2048 sectors: within the disk whether its sectors are
        # 512 or 4096 bytes, so the same images deploy onto both kinds of loop device.
        raw = bytearray(mbr_image(24 * MIB, seed=3))
        raw[446 + 8:446 + 16] = (256).to_bytes(4, "little") + (2048).to_bytes(4, "little")
        raw = bytes(raw)
        cls.images["raw"] = (raw, raw)
        raw_path = cls.path("image.raw")
        with open(raw_path, "wb") as f:
            f.write(raw)
        for tool, ext in (("zstd", "zst"), ("xz", "xz"), ("gzip", "gz"), ("bzip2", "bz2")):
            out = cls.path("image.raw." + ext)
            with open(out, "wb") as f:
                subprocess.run([tool, "-c", raw_path], stdout=f, check=True)
            cls.images["raw." + ext] = (slurp(out), raw)

        # A qcow2 with data in several places (qemu-img from a raw disk with an MBR).
        disk = cls.path("qcow2-source.raw")
        mbr_disk(disk, 40 * MIB)
        run("sfdisk", "-q", disk, input="label: dos\nstart=256, size=2048, type=83\n")
        qcow2 = cls.path("image.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", disk, qcow2)
        cls.images["qcow2"] = (slurp(qcow2), slurp(disk))

        # A compressed qcow2 whose last compressed cluster is corrupt: found only when it passes.
        bad = cls.path("corrupt.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", disk, bad)
        cls.corrupt_at = corrupt_last_compressed_cluster(bad)
        cls.images["corrupt.qcow2"] = (slurp(bad), None)

        # A qcow2 whose first L2 table comes after the 8 MiB of data it maps.
        late = cls.path("late.qcow2")
        create(late, 32 * MIB)
        qemu_io(late, "write -P 0x41 0 8M", "write -P 0x42 20M 1M")
        move_first_l2_table_to_the_end(late)
        cls.images["late.qcow2"] = (slurp(late), None)

        # OVAs of the same disk: a streamOptimized VMDK (what streams), with a manifest whose
        # digest of the disk is wrong (found only at the end), and a monolithicSparse VMDK (which
        # stream mode refuses when its header passes, before the first write).
        vmdk = vmdk_from_raw(disk, cls.path("disk1.vmdk"))
        cls.images["ova"] = (slurp(make_ova(cls.path("image.ova"), [vmdk])), slurp(disk))
        wrong = "SHA256(disk1.vmdk)= " + "0" * 64 + "\n"
        bad_digest = make_ova(cls.path("bad-digest.ova"), [vmdk], mangle=lambda files: [
            (n, wrong.encode() if n.endswith(".mf") else d) for n, d in files])
        cls.images["bad-digest.ova"] = (slurp(bad_digest), None)
        cls.disk1_sha256 = sha256_bytes(slurp(vmdk))
        sparse = vmdk_from_raw(disk, cls.path("sparse.vmdk"), "monolithicSparse")
        cls.images["sparse.ova"] = (slurp(make_ova(cls.path("sparse.ova"), [sparse])), None)

        # A qcow2 larger than the disks.
        big = cls.path("big.qcow2")
        create(big, 2 * DISK_BYTES)
        cls.images["big.qcow2"] = (slurp(big), None)

        for name, (data, _) in cls.images.items():
            cls.server.add("/" + name, Route(data))

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls._tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.dir, name)

    # --- running a job ----------------------------------------------------------------------

    def manifest(self, name, type_=None, checksum=None, route=None):
        data, _ = self.images[name]
        kind = name.rsplit(".", 1)[-1]
        return {"URL": self.server.url(route or "/" + name),
                "type": type_ or (kind if kind in ("qcow2", "ova") else "raw"),
                "checkSumType": "sha256", "checkSum": checksum or sha256_bytes(data)}

    def start(self, manifest, disk, *extra):
        """Starts `byoi-agent deploy` of `manifest` onto `disk`; returns (process, status path,
        stderr path)."""
        work = tempfile.mkdtemp(dir=self.dir)
        mpath, spath = os.path.join(work, "manifest.json"), os.path.join(work, "status.json")
        with open(mpath, "w") as f:
            json.dump(manifest, f)
        err = open(os.path.join(work, "stderr"), "w+")
        self.addCleanup(err.close)
        argv = [AGENT, "deploy", "--manifest", mpath, "--disk", disk, "--status-file", spath,
                "--efivars", os.path.join(work, "no-efivars"), "--retry-delay", "0.05",
                *extra]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err), spath, err

    def finish(self, proc, spath, err, timeout=300):
        proc.wait(timeout=timeout)
        err.seek(0)
        with open(spath) as f:
            return proc.returncode, json.load(f), err.read()

    def deploy(self, manifest, disk, *extra):
        return self.finish(*self.start(manifest, disk, *extra))

    def fresh_disk(self, sector_size, name="disk"):
        """A loop device over DISK_BYTES of random bytes; returns (device, its bytes before)."""
        backing = self.path(f"{name}-{sector_size}.img")
        random_file(backing, DISK_BYTES, f"{name}{sector_size}")
        dev = self.enterContext(loop_device(backing, sector_size))
        return dev, read(dev)

    def step(self, status, name):
        return next(p for p in status["progress"] if p["step"] == name)

    def assertUnbootable(self, dev):
        zeros = bytes(MIB)
        self.assertEqual(read(dev, 0, MIB), zeros, "first MiB not zeroed")
        self.assertEqual(read(dev, DISK_BYTES - MIB, MIB), zeros, "last MiB not zeroed")

    def assertFailed(self, result, message):
        code, status, stderr = result
        self.assertEqual(code, 1, stderr)
        self.assertEqual(status["status"], "error", status)
        self.assertEqual(status["message"], message, stderr)
        return status

    # --- what lands ---------------------------------------------------------------------------

    def test_every_kind_of_image_streams_byte_identical(self):
        for ss in SECTOR_SIZES:
            dev, _ = self.fresh_disk(ss)
            for name in ("raw", "raw.zst", "raw.xz", "raw.gz", "raw.bz2", "qcow2", "ova"):
                with self.subTest(sector_size=ss, image=name):
                    code, status, stderr = self.deploy(self.manifest(name), dev,
                                                       "--write-mode", "stream")
                    self.assertEqual(code, 0, stderr)
                    self.assertIn("stream mode: --write-mode stream",
                                  self.step(status, "verify")["comment"])
                    virtual = self.images[name][1]
                    self.assertTrue(read(dev, 0, len(virtual)) == virtual, "the disk differs")

    def test_compressed_raw_in_ram_mode_is_decoded_once_before_the_first_write(self):
        for ss in SECTOR_SIZES:
            dev, _ = self.fresh_disk(ss)
            for name in ("raw.zst", "raw.xz", "raw.gz", "raw.bz2"):
                with self.subTest(sector_size=ss, image=name):
                    code, status, stderr = self.deploy(self.manifest(name), dev,
                                                       "--write-mode", "ram")
                    self.assertEqual(code, 0, stderr)
                    self.assertIn("decoded once; ram mode: --write-mode ram",
                                  self.step(status, "verify")["comment"])
                    virtual = self.images[name][1]
                    self.assertTrue(read(dev, 0, len(virtual)) == virtual, "the disk differs")
        # A stream damaged in its middle (its checksum matching the damaged bytes): refused by
        # the decode pass, the disk byte-identical.
        data = bytearray(self.images["raw.zst"][0])
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        self.server.add("/damaged.raw.zst", Route(bytes(data)))
        m = self.manifest("raw.zst", route="/damaged.raw.zst", checksum=sha256_bytes(data))
        dev, before = self.fresh_disk(512, name="damaged")
        status = self.assertFailed(self.deploy(m, dev, "--write-mode", "ram"),
                                   "Can't write raw on disk.")
        self.assertIn("zstd data at compressed byte", status["detail"])
        self.assertTrue(read(dev) == before, "the disk was touched")

    def test_a_reset_midway_is_resumed_and_every_byte_written_once(self):
        data, virtual = self.images["raw"]
        self.server.add("/reset.raw", Route(data, drops=[len(data) // 3, 2 * len(data) // 3],
                                            reset=True))
        dev, _ = self.fresh_disk(512)
        code, status, stderr = self.deploy(self.manifest("raw", route="/reset.raw"), dev,
                                           "--write-mode", "stream", "--connections", "1")
        self.assertEqual(code, 0, stderr)
        self.assertTrue(read(dev, 0, len(virtual)) == virtual, "the disk differs")
        ranges = self.server.ranges("/reset.raw")
        self.assertEqual(len(ranges), 3, ranges)  # the first request and two resumes

    def test_auto_streams_what_does_not_fit_the_ram_budget(self):
        dev, _ = self.fresh_disk(512)
        # 24 MiB against a 16 MiB budget: streamed, and the status says why.
        code, status, stderr = self.deploy(self.manifest("raw"), dev, "--memory-limit", "16M")
        self.assertEqual(code, 0, stderr)
        comment = self.step(status, "verify")["comment"]
        self.assertIn("; stream mode: the image does not fit the RAM budget", comment)
        virtual = self.images["raw"][1]
        self.assertTrue(read(dev, 0, len(virtual)) == virtual, "the disk differs")
        # What fits goes through RAM.
        code, status, stderr = self.deploy(self.manifest("raw"), dev, "--memory-limit", "64M")
        self.assertEqual(code, 0, stderr)
        self.assertIn("; ram mode: the image fits the RAM budget",
                      self.step(status, "verify")["comment"])

    def test_the_manifest_chooses_the_mode(self):
        dev, _ = self.fresh_disk(512)
        m = self.manifest("raw")
        m["writeMode"] = "stream"
        code, status, stderr = self.deploy(m, dev, "--write-mode", "ram")
        self.assertEqual(code, 0, stderr)
        self.assertIn("stream mode: writeMode stream", self.step(status, "verify")["comment"])

    def test_download_and_write_are_doing_at_once_while_it_streams(self):
        data, _ = self.images["raw"]
        self.server.add("/slow.raw", Route(data, rate=4 * MIB))
        dev, _ = self.fresh_disk(512)
        proc, spath, err = self.start(self.manifest("raw", route="/slow.raw"), dev,
                                      "--write-mode", "stream", "--connections", "1")
        seen = None
        deadline = time.monotonic() + 60
        while seen is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with open(spath) as f:
                    status = json.load(f)
            except (OSError, ValueError):
                status = None
            if status:
                download, write = self.step(status, "download"), self.step(status, "write")
                if (download["status"] == write["status"] == "doing" and download["bytesDone"] > 0
                        and write["bytesDone"] > 0):
                    seen = status
            time.sleep(0.05)
        code, status, stderr = self.finish(proc, spath, err)
        self.assertEqual(code, 0, stderr)
        self.assertIsNotNone(seen, "never saw download and write doing together")
        self.assertEqual(seen["status"], "doing")

    # --- failures after the first write: nothing bootable ----------------------------------------

    def test_failures_once_writing_began_leave_nothing_bootable(self):
        data, _ = self.images["raw"]
        self.server.add("/cut.raw", Route(data, cut_every=len(data) // 2))
        raw_url = self.server.url("/cut.raw")
        cases = [
            ("checksum mismatch", self.manifest("raw", checksum="0" * 64), (),
             "Bad sha256 for downloaded file, got: %s while expecting %s."
             % (sha256_bytes(data), "0" * 64)),
            ("cut short every time", self.manifest("raw", route="/cut.raw"),
             ("--download-attempts", "2", "--connections", "1"),
             "Could not download image located: %s." % raw_url),
            ("a corrupt cluster", self.manifest("corrupt.qcow2"), (), "Can't write qcow2 on disk."),
            ("an OVA's digest", self.manifest("bad-digest.ova"), (),
             "Bad sha256 for disk1.vmdk in the OVA, got: %s while expecting %s."
             % (self.disk1_sha256, "0" * 64)),
            ("clusters waiting past the budget", self.manifest("late.qcow2"),
             ("--memory-limit", "16M"), TOO_BIG),
        ]
        for ss in SECTOR_SIZES:
            for what, manifest, extra, message in cases:
                with self.subTest(sector_size=ss, case=what):
                    dev, _ = self.fresh_disk(ss, name="fail")
                    status = self.assertFailed(
                        self.deploy(manifest, dev, "--write-mode", "stream", *extra), message)
                    self.assertUnbootable(dev)
                    if what == "a corrupt cluster":
                        self.assertIn("compressed cluster at virtual offset %#x" % self.corrupt_at,
                                      status["detail"])

    def test_a_cancel_midway_leaves_nothing_bootable(self):
        data, _ = self.images["raw"]
        self.server.add("/crawl.raw", Route(data, rate=2 * MIB))
        for ss in SECTOR_SIZES:
            with self.subTest(sector_size=ss):
                dev, _ = self.fresh_disk(ss, name="cancel")
                proc, spath, err = self.start(self.manifest("raw", route="/crawl.raw"), dev,
                                              "--write-mode", "stream", "--connections", "1")
                # SIGTERM once the disk is being written (the status file says so).
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        with open(spath) as f:
                            if self.step(json.load(f), "write")["bytesDone"] > 0:
                                break
                    except (OSError, ValueError):
                        pass
                    time.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                self.assertFailed(self.finish(proc, spath, err), "Deployment cancelled.")
                self.assertUnbootable(dev)

    # --- failures the first bytes show: the disk untouched ---------------------------------------

    def test_failures_before_the_first_write_leave_the_disk_untouched(self):
        # `xz -6` needs 9 MiB to decode: more than the image reader's share of a 16 MiB budget in
        # stream mode, and than what the image leaves of a budget 8 MiB larger than it in ram
        # mode (its decode pass runs before the first write).
        xz = len(self.images["raw.xz"][0])
        too_big_raw = "Could not download, raw image is too big to download in memory."
        cases = [
            ("larger than the disk", self.manifest("big.qcow2"), (),
             lambda dev: "image provided has a size of %d bytes which is larger than %s of %d "
             "bytes" % (2 * DISK_BYTES, dev, DISK_BYTES)),
            ("declared qcow2, is raw", self.manifest("raw", type_="qcow2"), (),
             lambda dev: "image provided format is raw which does not match expected qcow2 "
             "format"),
            ("an OVA whose disk is monolithicSparse", self.manifest("sparse.ova"), (),
             lambda dev: "Can't write ova on disk."),
            ("an xz stream that needs more than the budget", self.manifest("raw.xz"),
             ("--memory-limit", "16M"), lambda dev: too_big_raw),
            ("the same in ram mode", self.manifest("raw.xz"),
             ("--memory-limit", str(xz + 8 * MIB), "--write-mode", "ram"),
             lambda dev: too_big_raw),
        ]
        for ss in SECTOR_SIZES:
            for what, manifest, extra, message in cases:
                with self.subTest(sector_size=ss, case=what):
                    dev, before = self.fresh_disk(ss, name="untouched")
                    mode = () if "--write-mode" in extra else ("--write-mode", "stream")
                    status = self.assertFailed(self.deploy(manifest, dev, *mode, *extra),
                                               message(dev))
                    self.assertTrue(read(dev) == before, "the disk was touched")
                    if manifest["URL"].endswith(".xz"):
                        self.assertIn("xz stream at compressed byte", status["detail"])

    # --- memory ----------------------------------------------------------------------------------

    def test_a_2_gib_image_deploys_with_a_512_mib_budget(self):
        cgroup = MemoryCgroup()
        self.addCleanup(cgroup.close)
        if cgroup.peak() is None:
            self.skipTest("no memory cgroup on this machine")
        www = self.path("www")
        os.makedirs(www, exist_ok=True)
        os.chmod(self.dir, 0o755)  # nginx's worker runs as nobody
        image = os.path.join(www, "2g.raw")
        checksum = write_mbr_image_file(image, 2 << 30, seed=9)
        nginx = Nginx(self.dir, www)
        self.addCleanup(nginx.close)
        disk = self.path("big-disk.img")
        with open(disk, "wb") as f:
            f.truncate((2 << 30) + 64 * MIB)
        manifest = {"URL": nginx.url("/2g.raw"), "type": "raw", "checkSumType": "sha256",
                    "checkSum": checksum}
        work = tempfile.mkdtemp(dir=self.dir)
        mpath, spath = os.path.join(work, "manifest.json"), os.path.join(work, "status.json")
        with open(mpath, "w") as f:
            json.dump(manifest, f)
        r = subprocess.run([AGENT, "deploy", "--manifest", mpath, "--disk", disk, "--status-file",
                            spath, "--efivars", os.path.join(work, "none"), "--memory-limit",
                            "512M"], capture_output=True, text=True, timeout=600,
                           preexec_fn=cgroup.enter)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(spath) as f:
            status = json.load(f)
        self.assertIn("stream mode: the image does not fit the RAM budget",
                      self.step(status, "verify")["comment"])
        peak = cgroup.peak()
        print("2 GiB image, --memory-limit 512M: peak %.1f MiB" % (peak / MIB), file=sys.stderr)
        self.assertLess(peak, 512 * MIB)
        h = hashlib.sha256()
        with open(disk, "rb") as f:
            left = 2 << 30
            while left:
                chunk = f.read(min(left, 16 * MIB))
                h.update(chunk)
                left -= len(chunk)
        self.assertEqual(h.hexdigest(), checksum, "the disk differs from the image")


if __name__ == "__main__":
    unittest.main()
