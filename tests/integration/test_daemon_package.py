#!/usr/bin/python3
"""The Debian package (CPack DEB, packaging/cpack.cmake): unpack it into a scratch root with `dpkg -x`,
check its files, its metadata and dependencies (`dpkg-deb -I`), and that the unpacked binary runs
with the unpacked example config."""

import glob
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon_harness as h  # noqa: E402


def project_version():
    with open(os.path.join(h.SOURCE_DIR, "CMakeLists.txt")) as f:
        return re.search(r"project\(byoi-agent VERSION ([0-9.]+)", f.read()).group(1)


class PackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        debs = glob.glob(os.path.join(h.BUILD_DIR, "byoi-agent_*.deb"))
        if not debs:  # scripts/test builds it; when run alone, build it here
            subprocess.run(["cpack", "-G", "DEB"], cwd=h.BUILD_DIR, check=True, capture_output=True)
            debs = glob.glob(os.path.join(h.BUILD_DIR, "byoi-agent_*.deb"))
        cls.deb = max(debs, key=os.path.getmtime)
        cls.root = tempfile.mkdtemp(prefix="byoi-deb-")
        subprocess.run(["dpkg", "-x", cls.deb, cls.root], check=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def path(self, rel):
        return os.path.join(self.root, rel.lstrip("/"))

    def field(self, name):
        return subprocess.run(["dpkg-deb", "-f", self.deb, name], check=True, capture_output=True,
                              text=True).stdout.strip()

    def test_metadata_and_dependencies(self):
        info = subprocess.run(["dpkg-deb", "-I", self.deb], check=True, capture_output=True,
                              text=True).stdout
        self.assertIn(" Package: byoi-agent\n", info)
        self.assertEqual(self.field("Version"), project_version())
        self.assertEqual(self.field("Architecture"),
                         subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                                        text=True).stdout.strip())
        depends = [d.strip().split(" ")[0] for d in self.field("Depends").split(",")]
        for needed in ("dosfstools", "mtools", "libc6", "libstdc++6", "libcurl4", "libssl3",
                       "libboost-json1.81.0"):
            self.assertIn(needed, depends)
        self.assertIn("kexec-tools", self.field("Suggests"))
        # The config file is a conffile; maintainer scripts are there.
        for member in ("conffiles", "postinst", "prerm", "postrm", "md5sums"):
            self.assertRegex(info, r"\b%s\b" % member)
        control = tempfile.mkdtemp(prefix="byoi-deb-control-")
        self.addCleanup(shutil.rmtree, control, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-e", self.deb, control], check=True)
        with open(os.path.join(control, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/byoi-agent/byoi-agent.conf"])

    def test_files(self):
        binary = self.path("/usr/sbin/byoi-agent")
        self.assertTrue(os.access(binary, os.X_OK))
        r = subprocess.run([binary, "--version"], capture_output=True, text=True)
        self.assertEqual(r.stdout.strip(), "byoi-agent " + project_version())
        # Stripped: no debug sections in the package.
        sections = subprocess.run(["readelf", "-S", binary], capture_output=True, text=True).stdout
        self.assertNotIn(".debug_info", sections)

        unit = self.path("/lib/systemd/system/byoi-agent.service")
        with open(unit) as f:
            text = f.read()
        self.assertIn("ExecStart=/usr/sbin/byoi-agent daemon --config /etc/byoi-agent/byoi-agent.conf", text)
        self.assertIn("After=network-online.target", text)
        self.assertIn("Restart=on-failure", text)
        self.assertIn("RuntimeDirectoryPreserve=yes", text)

        conf = self.path("/etc/byoi-agent/byoi-agent.conf")
        self.assertEqual(stat.S_IMODE(os.stat(conf).st_mode), 0o600)
        self.assertTrue(os.path.exists(self.path("/usr/share/doc/byoi-agent/byoi-agent.conf")))
        self.assertTrue(os.path.exists(self.path("/usr/share/doc/byoi-agent/README.md")))
        with open(self.path("/usr/share/doc/byoi-agent/contract/status.md"), encoding="utf-8") as f:
            self.assertIn("Could not download image located:", f.read())
        if os.path.isdir(os.path.join(h.SOURCE_DIR, "proto")):
            for src in glob.glob(os.path.join(h.SOURCE_DIR, "proto", "*")):
                self.assertTrue(os.path.exists(self.path("/usr/share/byoi-agent/proto/" +
                                                         os.path.basename(src))), src)

    def test_unit_passes_systemd_analyze_verify(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze is not installed")
        unit = self.path("/lib/systemd/system/byoi-agent.service")
        # verify wants the ExecStart binary at its real path; point it at the unpacked one.
        scratch = tempfile.mkdtemp(prefix="byoi-unit-")
        self.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
        with open(unit) as f:
            text = f.read().replace("/usr/sbin/byoi-agent", self.path("/usr/sbin/byoi-agent"))
        copy = os.path.join(scratch, "byoi-agent.service")
        with open(copy, "w") as f:
            f.write(text)
        r = subprocess.run(["systemd-analyze", "verify", copy], capture_output=True, text=True)
        problems = [l for l in (r.stdout + r.stderr).splitlines()
                    if "byoi-agent.service" in l and "Failed to" not in l and "bus" not in l.lower()]
        self.assertEqual(problems, [], r.stdout + r.stderr)

    def test_unpacked_binary_runs_with_the_example_config(self):
        workdir = tempfile.mkdtemp(prefix="byoi-deb-run-")
        self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
        log = os.path.join(workdir, "log")
        env = dict(os.environ, BYOI_KERNEL_CMDLINE="/dev/null")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [self.path("/usr/sbin/byoi-agent"), "daemon", "--config",
                 self.path("/etc/byoi-agent/byoi-agent.conf"), "--token", "package-test-token-0123",
                 "--listen", "127.0.0.1:0", "--state-file", os.path.join(workdir, "state.json")],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 10
            text = ""
            while time.monotonic() < deadline and "listening on" not in text and proc.poll() is None:
                time.sleep(0.05)
                with open(log) as f:
                    text = f.read()
            self.assertIn("http: listening on 127.0.0.1:", text)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    unittest.main()
