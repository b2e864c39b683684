"""The rack's private DHT (docs/pipeline.md, "Swarm downloads"): with `--swarm-dht NODES` an agent
finds the peers of a torrent that names no tracker through the DHT nodes given, and only those;
without it the DHT stays off. Real parts on 127.0.0.1: a python3-libtorrent DHT node standing for
the rack's bootstrap node, a python3-libtorrent seeder that announced itself there, and an origin
that counts what it served.

Run by CTest with BYOI_AGENT set; /usr/bin/python3 only.
"""
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import libtorrent as lt  # noqa: E402

from fetch_servers import free_port, mbr_image, run_deploy  # noqa: E402
from swarm_util import Origin, Seeder, make_torrent  # noqa: E402

MiB = 1 << 20
SIZE = 16 * MiB
PIECE = 256 << 10

# Every node of this test shares 127.0.0.1, which libtorrent's defaults for the public DHT refuse
# as routing entries (the agent relaxes the same rules for the nodes it is given).
LOCAL_DHT = {"enable_dht": True, "dht_restrict_routing_ips": False,
             "dht_restrict_search_ips": False, "dht_ignore_dark_internet": False}


class DhtNode:
    """A DHT node alone on 127.0.0.1:PORT (no torrent of its own): the rack's bootstrap node."""

    def __init__(self):
        self.port = free_port()
        self.session = lt.session({
            "listen_interfaces": f"127.0.0.1:{self.port}", "enable_lsd": False,
            "enable_upnp": False, "enable_natpmp": False, "dht_bootstrap_nodes": "",
            "alert_mask": 0, **LOCAL_DHT})

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def torrents(self):
        """The info hashes this node stores peers for (its session's dht_torrents counter)."""
        self.session.post_session_stats()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for a in self.session.pop_alerts():
                if isinstance(a, lt.session_stats_alert):
                    return a.values["dht.dht_torrents"]
            self.session.wait_for_alert(100)
        raise AssertionError("no session statistics from the DHT node")

    def close(self):
        self.session.pause()
        del self.session


class SwarmDht(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="byoi-swarm-dht-")
        self.data = mbr_image(SIZE, seed=21)
        self.sha = hashlib.sha256(self.data).hexdigest()
        self.disk = os.path.join(self.dir, "disk.img")
        with open(self.disk, "wb") as f:
            f.write(random.Random(5).randbytes(SIZE + 4 * MiB))
        # The origin gives 2 MB/s per connection: the image takes 8 s from it alone.
        self.origin = Origin({"/image.raw": self.data}, rate=2_000_000)
        src = os.path.join(self.dir, "image.raw")
        with open(src, "wb") as f:
            f.write(self.data)
        path = os.path.join(self.dir, "image.raw.torrent")
        make_torrent(src, self.origin.url("/image.raw"), path, piece_length=PIECE)  # no tracker
        with open(path, "rb") as f:
            self.origin.files["/image.raw.torrent"] = f.read()
        self.origin.served["/image.raw.torrent"] = 0
        self.node = DhtNode()
        # The seeder joins the DHT through the node and announces itself there.
        self.seeder = Seeder(path, self.data, self.dir,
                             settings={"dht_bootstrap_nodes": self.node.endpoint, **LOCAL_DHT})
        deadline = time.monotonic() + 30
        while self.node.torrents() < 1:
            self.assertLess(time.monotonic(), deadline, "the seeder never announced to the node")
            self.seeder.handle.force_dht_announce()
            time.sleep(0.2)  # polling the node's state, not synchronising on time

    def tearDown(self):
        self.seeder.close()
        self.node.close()
        self.origin.close()
        shutil.rmtree(self.dir)

    def deploy(self, *extra):
        manifest = {"URL": self.origin.url("/image.raw"), "type": "raw", "checkSum": self.sha,
                    "checkSumType": "sha256", "torrent": self.origin.url("/image.raw.torrent")}
        run = run_deploy(self.dir, manifest, "--disk", self.disk, "--seed-time", "0",
                         "--swarm-listen", "127.0.0.1:0", "--stall-timeout", "20", *extra,
                         dry_run=False, timeout=120)
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        self.assertEqual(run.status["status"], "done")
        with open(self.disk, "rb") as f:
            self.assertEqual(f.read(SIZE), self.data)
        return run

    def test_the_nodes_given_lead_to_the_seeder(self):
        run = self.deploy("--swarm-dht", self.node.endpoint)
        swarm = run.status["swarm"]
        self.assertGreater(swarm["fromPeers"], SIZE // 2, run.step("download")["comment"])
        self.assertLess(self.origin.served["/image.raw"], SIZE // 2)
        self.assertGreater(self.seeder.uploaded(), SIZE // 2)

    def test_without_nodes_there_is_no_dht(self):
        run = self.deploy()
        self.assertEqual(run.status["swarm"]["fromPeers"], 0, run.step("download")["comment"])
        self.assertGreaterEqual(self.origin.served["/image.raw"], SIZE)
        self.assertEqual(self.seeder.uploaded(), 0)


if __name__ == "__main__":
    unittest.main()
