#!/usr/bin/python3
"""The architecture as the build states it (CMakeLists.txt BYOI_STAGES): every stage under agent/
includes only itself and the stages before it, lists exactly the .cpp files of its folder, and the
README's layout section names the stages in the same order. The link order already refuses most
upward calls; this also catches an upward include of a header-only piece."""
import os
import re
import unittest

ROOT = os.environ.get("BYOI_SOURCE_DIR",
                      os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def stages():
    m = re.search(r"^set\(BYOI_STAGES ([a-z ]+)\)$", read("CMakeLists.txt"), re.M)
    return m.group(1).split()


def includes(path):
    return re.findall(r'^#include "agent/([a-z_]+)/', read(path), re.M)


class LayeringTest(unittest.TestCase):
    def test_stage_folders_are_the_build_stages(self):
        folders = sorted(d for d in os.listdir(os.path.join(ROOT, "agent"))
                         if os.path.isdir(os.path.join(ROOT, "agent", d)))
        self.assertEqual(folders, sorted(stages()))

    def test_includes_point_only_down(self):
        order = {s: i for i, s in enumerate(stages())}
        upward = []
        for stage in order:
            folder = os.path.join("agent", stage)
            for name in sorted(os.listdir(os.path.join(ROOT, folder))):
                if not name.endswith((".cpp", ".hpp")):
                    continue
                for target in includes(os.path.join(folder, name)):
                    if target not in order:
                        upward.append(f"{folder}/{name} includes unknown stage {target}")
                    elif order[target] > order[stage]:
                        upward.append(f"{folder}/{name} includes agent/{target}/")
        self.assertEqual(upward, [])

    def test_every_source_is_listed_once(self):
        for stage in stages():
            folder = os.path.join("agent", stage)
            # A stage's library and its program (the swarm's helper), main.cpp aside.
            listed = [n for n in re.findall(r"^\s+(\w+\.cpp)$",
                                            read(os.path.join(folder, "CMakeLists.txt")), re.M)
                      if n != "main.cpp"]
            present = sorted(n for n in os.listdir(os.path.join(ROOT, folder))
                             if n.endswith(".cpp") and n != "main.cpp")
            self.assertEqual(sorted(listed), present, folder)

    def test_readme_layout_draws_the_same_order(self):
        readme = read("README.md")
        layout = readme[readme.index("## Layout"):]
        drawn = re.findall(r"^  ([a-z]+)/ ", layout, re.M)
        self.assertEqual(drawn, stages())


if __name__ == "__main__":
    unittest.main()
