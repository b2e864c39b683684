"""The swarm's proof (docs/pipeline.md, "Swarm downloads"): a rack of 16 agents, each in a network
namespace of its own on a bridge, deploys one image from an origin whose uplink `tc` caps at
64 Mbit/s (a fraction of the rack's network, as a provider's origin is), with and without the
manifest's `torrent` (fleet.py builds the rack).

The targets, asserted: through the swarm the origin sends at most 1.5 x the image, and the rack's
p95 deploy time is at most 2 x that of one agent alone (measured here, first). Without a torrent
nothing changes: every agent takes the whole image from the origin, and its status has no swarm.
Every disk must hold the image. A swarm of one takes the image from the origin exactly once.

The machine has 2 cores: 16 agents each hash the image (SHA-1 and SHA-256 in libtorrent, the
checksum in the agent), move it over TCP and write it. The image (24 MiB, 256 KiB pieces: 96 units
of the origin's work to divide) and the cap are chosen so that the origin's link, not the CPU, is
what the test measures: one agent alone takes about 3.5 s, the rack's CPU work fits in about the
same time. The HTTP-only rack takes 16 x the image over the capped link (about 50 s): the test's
wall time is about 75 s. The benchmark for larger racks is tests/bench/fleet_bench.py.

Root (namespaces, veths, tc); run by CTest (label fleet) with BYOI_AGENT set.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fleet import Rack, describe  # noqa: E402

AGENTS = 16
IMAGE_MIB = 24
ORIGIN_MBIT = 64
PIECE = 256 << 10


class Rack16(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rack = Rack(AGENTS, image_mib=IMAGE_MIB, origin_mbit=ORIGIN_MBIT, piece_length=PIECE)

    @classmethod
    def tearDownClass(cls):
        cls.rack.close()

    def test_the_swarm_spares_the_origin_and_keeps_pace_with_one_agent(self):
        size = self.rack.image_size
        alone = self.rack.run(torrent=False, agents=[0])
        print("\n" + describe(alone))
        self.assertTrue(alone["verified"])
        self.assertEqual(alone["origin_bytes"], size)

        alone_swarm = self.rack.run(torrent=True, agents=[0], seed_time=0)
        print(describe(alone_swarm))
        self.assertTrue(alone_swarm["verified"])
        self.assertEqual(alone_swarm["origin_bytes"], size)
        self.assertEqual(alone_swarm["swarm"][0]["fromWebSeed"], size)

        swarm = self.rack.run(torrent=True)
        print(describe(swarm))
        self.assertTrue(swarm["verified"])
        received = [s["fromPeers"] + s["fromWebSeed"] for s in swarm["swarm"]]
        self.assertEqual(received, [size] * AGENTS)
        # What the agents count from the web seed the origin sent.
        self.assertLessEqual(sum(s["fromWebSeed"] for s in swarm["swarm"]), swarm["origin_bytes"])

        http = self.rack.run(torrent=False)
        print(describe(http))
        self.assertTrue(http["verified"])
        self.assertEqual(http["origin_bytes"], AGENTS * size)
        self.assertEqual(http["swarm"], [None] * AGENTS)

        print(f"origin: {swarm['origin_bytes'] / size:.2f} x the image (target <= 1.5); p95 "
              f"{swarm['p95'] / alone['max']:.2f} x one agent alone (target <= 2)")
        self.assertLessEqual(swarm["origin_bytes"], 1.5 * size)
        self.assertLessEqual(swarm["p95"], 2 * alone["max"])


if __name__ == "__main__":
    unittest.main()
