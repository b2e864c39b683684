#!/usr/bin/python3
"""The swarm against plain HTTP for a rack (tests/fleet/fleet.py): N agents in network namespaces
deploy one image from an origin whose uplink tc caps, with and without the manifest's `torrent`,
and one agent alone for reference. Prints what the origin sent and the deploy times (p50, p95,
max) of each run; `--runs` repeats the rack runs (the swarm's figures vary from run to run).

  sudo BYOI_AGENT=build/byoi-agent tests/bench/fleet_bench.py --agents 10 --image-mib 128 \\
      --origin-mbit 200 --runs 3
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "fleet"))
from fleet import Rack, describe  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--image-mib", type=int, default=128)
    p.add_argument("--origin-mbit", type=int, default=200)
    p.add_argument("--piece-mib", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    rack = Rack(a.agents, image_mib=a.image_mib, origin_mbit=a.origin_mbit,
                piece_length=a.piece_mib << 20)
    try:
        alone = rack.run(torrent=False, agents=[0])
        print("alone:", describe(alone))
        for _ in range(a.runs):
            swarm = rack.run(torrent=True)
            print("rack: ", describe(swarm), "" if swarm["verified"] else "NOT VERIFIED")
        http = rack.run(torrent=False)
        print("rack: ", describe(http), "" if http["verified"] else "NOT VERIFIED")
        print(f"targets: origin <= 1.5 x the image ({1.5 * rack.image_size / (1 << 20):.0f} MiB), "
              f"p95 <= 2 x alone ({2 * alone['max']:.1f} s)")
    finally:
        rack.close()


if __name__ == "__main__":
    main()
