"""`byoi-agent disks [--json] [--config FILE]` on the fake sysfs trees (no root).

BYOI_SYSFS_ROOT points the command at tests/unit/fixtures/sysfs-*/ instead of /sys.
"""
import json
import os
import subprocess
import tempfile
import unittest

AGENT = os.environ.get("BYOI_AGENT", "build/byoi-agent")
SOURCE = os.environ.get("BYOI_SOURCE_DIR", ".")
FIXTURES = os.path.join(SOURCE, "tests", "unit", "fixtures")


def disks(fixture, *args):
    env = dict(os.environ, BYOI_SYSFS_ROOT=os.path.join(FIXTURES, "sysfs-" + fixture))
    return subprocess.run([AGENT, "disks", *args], env=env, capture_output=True, text=True,
                          timeout=30)


class DisksCommand(unittest.TestCase):
    def test_json_lists_groups_in_order_with_targets(self):
        r = disks("hybrid", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        inv = json.loads(r.stdout)
        groups = [(g["id"], g["kind"], g["model"], [d["name"] for d in g["disks"]], g["target"])
                  for g in inv["groups"]]
        self.assertEqual(groups, [
            (1, "nvme", "SAMSUNG MZQL21T9HCJR-00A07", ["nvme0n1", "nvme2n1", "nvme10n1"],
             "/dev/nvme0n1"),
            (2, "ssd", "Samsung SSD 860 EVO 250GB", ["sdd"], "/dev/sdd"),
            (3, "ssd", "INTEL SSDSC2KB480G8", ["sda", "sdb"], "/dev/sda"),
            (4, "ssd", "Micron_5300_MTFDDAK480TDS", ["sdc"], "/dev/sdc"),
            (5, "hdd", "HGST HUS726T4TALA6L4", ["sde", "sdf"], "/dev/sde"),
        ])
        excluded = {e["name"]: e["reason"] for e in inv["excluded"]}
        self.assertEqual(excluded["sr0"], "optical drive")
        self.assertEqual(excluded["zram0"], "compressed RAM disk (zram)")
        sde = inv["groups"][4]["disks"][0]
        self.assertEqual(sde["size"], 4000787030016)
        self.assertEqual(sde["physicalSectorSize"], 4096)
        self.assertEqual(sde["serial"], "V6G0005")
        self.assertTrue(sde["rotational"])

    def test_text_shows_exclusion_reasons(self):
        r = disks("bmc")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("disk group 1: 1 x hdd 3.6 TiB ST4000NM0035-1V4107", r.stdout)
        self.assertIn("/dev/sda", r.stdout)
        self.assertIn("(target)", r.stdout)
        self.assertRegex(r.stdout, r"/dev/sdb\s+BMC virtual media")
        self.assertRegex(r.stdout, r"/dev/sdh\s+removable")
        self.assertRegex(r.stdout, r"/dev/sdi\s+read-only")

    def test_config_maps_groups_explicitly(self):
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
            conf.write("# agent config\nlisten = 0.0.0.0:9999\ndisk_groups = \"1=sdf,sde 2=nvme10n1\"\n")
            conf.flush()
            r = disks("hybrid", "--json", "--config", conf.name)
        self.assertEqual(r.returncode, 0, r.stderr)
        inv = json.loads(r.stdout)
        self.assertEqual([[d["name"] for d in g["disks"]] for g in inv["groups"]],
                         [["sdf", "sde"], ["nvme10n1"]])
        excluded = {e["name"]: e["reason"] for e in inv["excluded"]}
        self.assertEqual(excluded["sda"], "not in any configured disk group")

    def test_bad_mapping_is_a_usage_error(self):
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
            conf.write("disk_groups = 0=sda\n")
            conf.flush()
            r = disks("hybrid", "--config", conf.name)
        self.assertEqual(r.returncode, 2)
        self.assertIn("disk group mapping: '0' is not a group id", r.stderr)

    def test_missing_sysfs_is_a_job_error(self):
        env = dict(os.environ, BYOI_SYSFS_ROOT="/nonexistent-sysfs")
        r = subprocess.run([AGENT, "disks"], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent-sysfs/block", r.stderr)


if __name__ == "__main__":
    unittest.main()
