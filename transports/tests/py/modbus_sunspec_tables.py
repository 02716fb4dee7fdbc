#!/usr/bin/env python3
"""Prints the point tables of the SunSpec models gridvisor decodes, straight from the official
model definitions (the JSON files of pysunspec2), one line per point:

    <model id> <point> <offset> <type> <size> <scale factor or -> <r|rw>

after one line per model: `model <id> <length L>`. tests/modbus_sunspec_tables.rs prints the
Rust tables the same way and compares.
"""

import json
import os
import sys

import sunspec2

MODELS = [1, 701, 704, 713, 201, 202, 203, 204]
MODEL_DIR = os.path.join(os.path.dirname(sunspec2.__file__), "models", "json")


def flat_points(group, prefix=""):
    for p in group.get("points", []):
        yield prefix + p["name"], p
    for g in group.get("groups", []):
        assert "count" not in g, "repeating groups are not used by these models"
        yield from flat_points(g, prefix + g["name"] + ".")


def main():
    models = [int(a) for a in sys.argv[1:]] or MODELS
    for mid in models:
        with open(os.path.join(MODEL_DIR, f"model_{mid}.json"), encoding="utf-8") as f:
            model = json.load(f)
        points = list(flat_points(model["group"]))
        print(f"model {mid} {sum(p['size'] for _, p in points) - 2}")
        offset = 0
        for name, p in points:
            access = "rw" if p.get("access", "R") == "RW" else "r"
            print(f"{mid} {name} {offset} {p['type']} {p['size']} {p.get('sf') or '-'} {access}")
            offset += p["size"]


if __name__ == "__main__":
    main()
