#!/usr/bin/python3
"""The swarm against plain HTTP for a rack (tests/fleet/fleet.py): N agents in network namespaces
deploy one image from an origin whose uplink tc caps, with and without the manifest's `torrent`;
one agent alone, over HTTP and through the swarm, for reference. Prints what the origin sent (x
the image) and the deploy times (p50, p95, max) of each run, the swarm's against the HTTP rack's
and against one agent alone, and min / median / max over `--runs` swarm runs (the swarm's figures
vary from run to run).

  sudo BYOI_AGENT=build/byoi-agent tests/bench/fleet_bench.py --agents 50 --image-mib 24 \\
      --origin-mbit 64 --piece-kib 256 --runs 3
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "fleet"))
from fleet import Rack, describe  # noqa: E402


def spread(values, fmt):
    return (f"min {fmt.format(min(values))}, median {fmt.format(statistics.median(values))}, "
            f"max {fmt.format(max(values))}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--image-mib", type=int, default=24)
    p.add_argument("--origin-mbit", type=int, default=64)
    p.add_argument("--piece-kib", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-http", action="store_true", help="skip the HTTP-only rack (N x the image "
                   "over the capped link)")
    p.add_argument("--origin-ignores-range", action="store_true",
                   help="the origin answers every request with the whole image (HTTP 200)")
    a = p.parse_args()
    rack = Rack(a.agents, image_mib=a.image_mib, origin_mbit=a.origin_mbit,
                piece_length=a.piece_kib << 10, ranges=not a.origin_ignores_range)
    try:
        alone = rack.run(torrent=False, agents=[0])
        print("alone:       ", describe(alone), flush=True)
        alone_swarm = rack.run(torrent=True, agents=[0], seed_time=0)
        print("alone, swarm:", describe(alone_swarm), flush=True)
        swarms = []
        for _ in range(a.runs):
            swarm = rack.run(torrent=True)
            swarms.append(swarm)
            print("rack, swarm: ", describe(swarm), "" if swarm["verified"] else "NOT VERIFIED",
                  flush=True)
        http = None
        if not a.no_http:
            http = rack.run(torrent=False)
            print("rack, HTTP:  ", describe(http), "" if http["verified"] else "NOT VERIFIED",
                  flush=True)
        size = rack.image_size
        print(f"over {a.runs} swarm run(s) of {a.agents} agents:")
        print("  origin / image:     ", spread([s["origin_bytes"] / size for s in swarms],
                                               "{:.2f}"), "(target <= 1.5)")
        print("  CPU-s per agent:    ", spread([s["cpu_per_agent"] for s in swarms], "{:.2f}"),
              f"(alone: {alone_swarm['cpu_per_agent']:.2f}; the machine's busy time until the "
              "last agent was done, over the agents)")
        for key in ("p50", "p95", "max"):
            line = f"  {key} / alone:".ljust(24) + spread([s[key] / alone["max"] for s in swarms],
                                                          "{:.2f}")
            if http:
                line += "; / HTTP rack: " + spread([s[key] / http[key] for s in swarms],
                                                   "{:.2f}")
            print(line + (" (target: p95 <= 2 x alone)" if key == "p95" else ""))
    finally:
        rack.close()


if __name__ == "__main__":
    main()
