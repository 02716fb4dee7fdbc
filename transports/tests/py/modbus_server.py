#!/usr/bin/env python3
"""A Modbus device for the interop tests (transports/tests/modbus_interop.rs): a pymodbus TCP
server over a register image built here.

--mode sunspec (the default): a SunSpec device whose image is built by hand from the official
SunSpec model definitions (the JSON files of pysunspec2), independently of the Rust tables and
encoders under test.

The image: "SunS" at --base, then models 1, 701, 704, 713, 203 and a vendor model (63001,
without a table in gridvisor), then the end marker (unless --no-end-marker). Point values are
drawn from --seed: about one point in five is left "not implemented" (SunSpec's sentinel),
the others get a random raw value in their type's range (never the sentinel), and every scale
factor a random exponent in -3..=3.

On stdout, one JSON line first:
  {"port", "base", "models": [{"id", "addr", "len"}], "illegal_address",
   "points": {"<model id>": {"<point>": {"raw": int|str|null, "value": number|str|null}}}}
"value" is the raw value scaled by its scale factor (raw / 10**-sf for a negative one, so
that Rust's division gives the same float), null for "not implemented".
Then one JSON line per register write the server gets:
  {"write": {"function": 6|16, "address", "values", "points": {"<id>.<point>": [registers]}}}

--mode plain: the field's example of a device without SunSpec: 40001 (active power, i16),
40002 (reactive power, i16) and 0x4001 (discharge limit, u16), values from --seed. Its first
line is {"port", "registers": {"<address>": value}}; writes are reported as above (without
"points").

The server stops when stdin closes or after --timeout seconds, whichever comes first.
"""

import argparse
import asyncio
import json
import os
import random
import struct
import sys
import threading

import sunspec2
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

MODEL_DIR = os.path.join(os.path.dirname(sunspec2.__file__), "models", "json")

# SunSpec "not implemented" values, by type.
SENTINEL = {
    "int16": 0x8000, "uint16": 0xFFFF, "enum16": 0xFFFF, "bitfield16": 0xFFFF, "count": 0xFFFF,
    "acc16": 0, "sunssf": 0x8000, "pad": 0,
    "int32": 0x80000000, "uint32": 0xFFFFFFFF, "enum32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF,
    "acc32": 0, "int64": 0x8000000000000000, "uint64": 0xFFFFFFFFFFFFFFFF, "acc64": 0,
}
# Raw ranges of real values (sentinels excluded).
RANGE = {
    "int16": (-0x7FFF, 0x7FFF), "uint16": (0, 0xFFFE), "count": (0, 0xFFFE), "acc16": (1, 0xFFFF),
    "int32": (-0x7FFFFFFF, 0x7FFFFFFF), "uint32": (0, 0xFFFFFFFE), "acc32": (1, 0xFFFFFFFF),
    "bitfield16": (0, 0x7FFF), "bitfield32": (0, 0x7FFFFFFF),
    "int64": (-(2**63 - 1), 2**63 - 1), "uint64": (0, 2**64 - 2), "acc64": (1, 2**64 - 1),
}
SIGNED = {"int16", "int32", "int64", "sunssf"}


def load(mid):
    with open(os.path.join(MODEL_DIR, f"model_{mid}.json"), encoding="utf-8") as f:
        return json.load(f)


def flat_points(group, prefix=""):
    """(name, point) pairs in register order, groups (not repeating) as Group.Point."""
    for p in group.get("points", []):
        yield prefix + p["name"], p
    for g in group.get("groups", []):
        assert "count" not in g, "repeating groups are not used by these models"
        yield from flat_points(g, prefix + g["name"] + ".")


def to_regs(ptype, size, raw):
    if ptype == "string":
        data = raw.encode("ascii").ljust(size * 2, b"\0")
        return list(struct.unpack(f">{size}H", data))
    if ptype in SIGNED and raw < 0:
        raw += 1 << (16 * size)
    return [(raw >> (16 * (size - 1 - i))) & 0xFFFF for i in range(size)]


def scaled(raw, sf):
    return raw / 10 ** (-sf) if sf < 0 else raw * 10 ** sf


class Image:
    def __init__(self, base, rng):
        self.base = base
        self.rng = rng
        self.regs = [0x5375, 0x6E53]
        self.models = []
        self.expected = {}
        self.layout = []  # (first address, last address, "<id>.<point>")

    def add_model(self, mid, choose):
        """Lays out model `mid`; choose(name, point, sfs) returns a raw value or None."""
        model = load(mid)
        points = list(flat_points(model["group"]))
        length = sum(p["size"] for _, p in points) - 2
        addr = self.base + len(self.regs)
        regs = []
        raws = {}
        # Scale factors first: a scale factor stays "not implemented" only if every point it
        # scales is, so they are drawn after the points below and patched in.
        sf_names = {p["name"] for _, p in points if p["type"] == "sunssf"}
        sfs = {n: self.rng.randint(-3, 3) for n in sf_names}
        for name, p in points:
            if name == "ID":
                raw = mid
            elif name == "L":
                raw = length
            elif p["type"] == "sunssf" or p["type"] == "pad":
                raw = None  # patched below / padding
            else:
                raw = choose(name, p, sfs)
            raws[name] = raw
        used_sfs = {p["sf"] for n, p in points if p.get("sf") and raws[n] is not None}
        for n in sf_names:
            raws[n] = sfs[n] if n in used_sfs or self.rng.random() < 0.5 else None
        expected = {}
        for name, p in points:
            raw = raws[name]
            t = p["type"]
            first = addr + len(regs)
            if raw is None:
                if t == "string":
                    regs += [0] * p["size"]
                else:
                    regs += to_regs(t, p["size"], SENTINEL[t])
            else:
                regs += to_regs(t, p["size"], raw)
            self.layout.append((first, addr + len(regs) - 1, f"{mid}.{name}"))
            if t == "pad":
                continue
            if raw is None:
                value = None
            elif t == "string" or t in ("enum16", "enum32", "bitfield16", "bitfield32"):
                value = raw
            elif p.get("sf"):
                value = scaled(raw, raws[p["sf"]])
            else:
                value = raw
            expected[name] = {"raw": raw, "value": value}
        assert len(regs) == length + 2
        self.regs += regs
        self.models.append({"id": mid, "addr": addr, "len": length})
        self.expected[str(mid)] = expected

    def add_raw(self, mid, body):
        addr = self.base + len(self.regs)
        self.regs += [mid, len(body)] + body
        self.models.append({"id": mid, "addr": addr, "len": len(body)})

    def points_of(self, address, values):
        out = {}
        for i, v in enumerate(values):
            a = address + i
            for first, last, name in self.layout:
                if first <= a <= last:
                    out.setdefault(name, []).append(v)
        return out


def chooser(rng, implemented=0.8):
    def choose(name, p, sfs):
        t = p["type"]
        if rng.random() > implemented:
            return None
        if t == "string":
            n = rng.randint(1, p["size"] * 2)
            return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") for _ in range(n))
        if t in ("enum16", "enum32"):
            symbols = [s["value"] for s in p.get("symbols", [])]
            return rng.choice(symbols) if symbols else rng.randint(0, 10)
        lo, hi = RANGE[t]
        if p.get("units") == "Pct" and p.get("sf"):
            # Percentages (SoC, SoH, limits) within 0..=100 after scaling.
            sf = sfs[p["sf"]]
            hi = min(hi, int(100 / 10 ** sf))
            lo = max(lo, 0) if t.startswith("uint") else max(lo, -hi)
        # Small values half the time, so that scaled ones look like real readings.
        if rng.random() < 0.5:
            lo, hi = max(lo, -1000), min(hi, 10000)
        return rng.randint(lo, hi)
    return choose


def build(args):
    rng = random.Random(args.seed)
    image = Image(args.base, rng)
    choose = chooser(rng)
    # The common model always has its identity (strings) so that discovery logs are readable.
    image.add_model(1, chooser(rng, implemented=1.0))
    image.add_model(701, choose)
    image.add_model(704, choose)
    image.add_model(713, choose)
    image.add_raw(63001, [rng.randint(0, 0xFFFF) for _ in range(5)])
    image.add_model(203, choose)
    if not args.no_end_marker:
        image.regs += [0xFFFF, 0]
    return image


class Plain:
    """The field's example: three registers, no SunSpec."""

    def __init__(self, rng):
        self.registers = {
            40001: rng.randint(-2000, 2000) & 0xFFFF,
            40002: rng.randint(-500, 500) & 0xFFFF,
            0x4001: rng.randint(0, 150),
        }

    def points_of(self, _address, _values):
        return {}


async def serve(args, image):
    out_lock = threading.Lock()

    def emit(obj):
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    async def action(function_code, _start, address, _count, _registers, set_values):
        if set_values:
            values = [int(v) for v in set_values]
            emit({"write": {"function": function_code, "address": address, "values": values,
                            "points": image.points_of(address, values)}})
        return None

    if isinstance(image, Plain):
        simdata = [SimData(address=a, values=[v], datatype=DataType.REGISTERS)
                   for a, v in sorted(image.registers.items())]
    else:
        simdata = [SimData(address=args.base, values=image.regs, datatype=DataType.REGISTERS)]
    device = SimDevice(id=0, simdata=simdata, action=action)  # id 0: every unit id
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    if isinstance(image, Plain):
        emit({"port": port, "registers": {str(a): v for a, v in image.registers.items()}})
    else:
        end = args.base + len(image.regs)
        illegal = args.base - 1 if args.base > 0 else end + 1
        emit({"port": port, "base": args.base, "models": image.models,
              "illegal_address": illegal, "points": image.expected})

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin():
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.timeout)
    except asyncio.TimeoutError:
        pass
    await server.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["sunspec", "plain"], default="sunspec")
    ap.add_argument("--base", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--no-end-marker", action="store_true")
    args = ap.parse_args()
    image = build(args) if args.mode == "sunspec" else Plain(random.Random(args.seed))
    asyncio.run(serve(args, image))


if __name__ == "__main__":
    main()
