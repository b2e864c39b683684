#!/usr/bin/python3
"""scripts/demo --boot, the README's first command, as a newcomer runs it: no questions (stdin
closed), exit 0, every step shown with the real artifacts, the installed disk booted under OVMF
through the agent's entry, and nothing left behind: no process of its session, no work directory."""

import os
import re
import signal
import subprocess
import time
import unittest

SOURCE = os.environ.get("BYOI_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
AGENT = os.environ.get("BYOI_AGENT", os.path.join(SOURCE, "build", "byoi-agent"))
STEPS = ("download", "verify", "write", "partition", "configdrive", "bootloader")


def session_processes(sid):
    """PIDs of live processes in session `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state ppid pgrp session ...; zombies are gone for good.
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


class DemoTest(unittest.TestCase):
    def test_demo_installs_shows_boots_and_leaves_nothing(self):
        env = dict(os.environ, BYOI_AGENT=AGENT)
        proc = subprocess.Popen([os.path.join(SOURCE, "scripts", "demo"), "--boot"], cwd=SOURCE,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            self.fail("scripts/demo did not finish in 600 s:\n" + out[-3000:])
        self.assertEqual(proc.returncode, 0, out[-3000:])

        # What it showed: the partition table checked, the config drive, the boot entry decoded,
        # the firmware booting it, and every step done.
        self.assertIn("No problems found.", out)
        self.assertRegex(out, r'"hostname": "web-1"')
        self.assertRegex(out, r"BootOrder: 000[0-9A-F]")
        self.assertRegex(out, r'BdsDxe: loading Boot[0-9A-F]{4} "debian demo" from HD\(1,GPT,')
        marker = re.search(r"=> OVMF booted the agent's entry and the installed image's loader "
                           r"printed (BYOI-UEFI-MARKER-\w+)", out)
        self.assertIsNotNone(marker, out[-3000:])
        self.assertRegex(out, r"\n\s+" + marker.group(1) + r"\n")  # GRUB's own line
        summary = out[out.index("Summary"):]
        for step in STEPS:
            self.assertRegex(summary, r"\n\s+%s\s+done\s" % step)
        self.assertRegex(summary, r"\n\s+reboot\s+skipped\s")

        # Nothing left: every process of its session ended, its work directory removed.
        deadline = time.monotonic() + 5
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(session_processes(proc.pid), [], "processes left running")
        work = set(re.findall(r"/tmp/byoi-demo\.\w+", out))
        self.assertTrue(work, "the demo never named its work directory")
        for path in work:
            self.assertFalse(os.path.exists(path), path + " was left behind")


if __name__ == "__main__":
    unittest.main()
