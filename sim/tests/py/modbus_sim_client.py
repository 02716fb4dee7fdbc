#!/usr/bin/env python3
"""A pymodbus 3.16.1 client of gridvisor's simulated SunSpec inverter (sim/tests/modbus_interop.rs).

It knows nothing of gridvisor's tables: point offsets come from the official SunSpec model
definitions shipped in pysunspec2. It finds "SunS" at 40000, walks the model headers to the end
marker, reads 701 W (with W_SF) and 713 SoC (with Pct_SF), and prints one JSON line:

    {"models": [[id, addr, len], ...], "w": <W>, "soc": <%>, "limit_addr": <addr of WMaxLimPct>}

With --limit PCT --revert SECS it then writes the 704 maximum active power limit the way a
SunSpec client does (WMaxLimPct, WMaxLimPctRvrt, WMaxLimPctEnaRvrt, WMaxLimPctRvrtTms in one
write of function 0x10, then WMaxLimPctEna = 1 with function 0x06), reads 704 back and prints
{"written": {...}} with what it read. Every failure exits non-zero with a message on stderr.
"""

import argparse
import json
import os
import sys

import pymodbus
import sunspec2
from pymodbus.client import ModbusTcpClient

if pymodbus.__version__ != "3.16.1":
    sys.exit(f"pymodbus 3.16.1 required (pip install -r transports/tests/py/requirements.txt), found {pymodbus.__version__}")

MODEL_DIR = os.path.join(os.path.dirname(sunspec2.__file__), "models", "json")
END = 0xFFFF
MAX_MODELS = 64


def offsets(mid):
    """Point name -> (offset from ID, size, sf name) from the official definition."""
    with open(os.path.join(MODEL_DIR, f"model_{mid}.json"), encoding="utf-8") as f:
        group = json.load(f)["group"]
    out, off = {}, 0

    def walk(g, prefix=""):
        nonlocal off
        for p in g.get("points", []):
            out[prefix + p["name"]] = (off, p["size"], p.get("sf"))
            off += p["size"]
        for sub in g.get("groups", []):
            walk(sub, prefix + sub["name"] + ".")

    walk(group)
    return out


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def read(client, addr, count):
    rr = client.read_holding_registers(addr, count=count, device_id=1)
    if rr.isError():
        fail(f"read {count} at {addr}: {rr}")
    return rr.registers


def s16(v):
    return v - 0x10000 if v & 0x8000 else v


def scaled(client, base, points, name):
    off, size, sf = points[name]
    if size != 1:
        fail(f"{name}: {size} registers, this client reads 1-register points only")
    raw = read(client, base + off, 1)[0]
    sf_raw = s16(read(client, base + points[sf][0], 1)[0])
    if not -10 <= sf_raw <= 10:
        fail(f"{sf} = {sf_raw} is outside -10..=10")
    signed = s16(raw) if name == "W" else raw
    return signed * 10.0**sf_raw, sf_raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--limit", type=float)
    ap.add_argument("--revert", type=int, default=60)
    a = ap.parse_args()

    client = ModbusTcpClient("127.0.0.1", port=a.port, timeout=3, retries=1)
    if not client.connect():
        fail(f"cannot connect to 127.0.0.1:{a.port}")
    try:
        if read(client, 40000, 2) != [0x5375, 0x6E53]:
            fail("no SunS at 40000")
        models, addr = [], 40002
        for _ in range(MAX_MODELS):
            mid, length = read(client, addr, 2)
            if mid == END:
                break
            models.append([mid, addr, length])
            addr += 2 + length
        else:
            fail("no end marker")
        where = {m[0]: m[1] for m in models}
        for need in (1, 701, 704, 713):
            if need not in where:
                fail(f"model {need} missing: {models}")
        p701, p713, p704 = offsets(701), offsets(713), offsets(704)
        w, _ = scaled(client, where[701], p701, "W")
        soc, _ = scaled(client, where[713], p713, "SoC")
        limit_addr = where[704] + p704["WMaxLimPct"][0]
        print(json.dumps({"models": models, "w": w, "soc": soc, "limit_addr": limit_addr}), flush=True)

        if a.limit is not None:
            base = where[704]
            sf = s16(read(client, base + p704["WMaxLimPct_SF"][0], 1)[0])
            raw = round(a.limit / 10.0**sf)
            first = base + p704["WMaxLimPct"][0]
            if base + p704["WMaxLimPctRvrtTms"][0] != first + 3:
                fail("unexpected 704 layout")
            values = [raw, round(100 / 10.0**sf), 0, a.revert >> 16, a.revert & 0xFFFF]
            wr = client.write_registers(first, values, device_id=1)
            if wr.isError():
                fail(f"write limit: {wr}")
            wr = client.write_register(base + p704["WMaxLimPctEna"][0], 1, device_id=1)
            if wr.isError():
                fail(f"enable limit: {wr}")
            ena = read(client, base + p704["WMaxLimPctEna"][0], 1)[0]
            pct = read(client, first, 1)[0] * 10.0**sf
            rem_hi, rem_lo = read(client, base + p704["WMaxLimPctRvrtRem"][0], 2)
            print(json.dumps({"written": {"enabled": ena, "pct": pct, "remaining": (rem_hi << 16) | rem_lo}}), flush=True)

            # An out-of-range limit must come back as exception 3 (illegal data value).
            bad = client.write_register(first, round(150 / 10.0**sf), device_id=1)
            code = getattr(bad, "exception_code", None) if bad.isError() else None
            print(json.dumps({"out_of_range": {"error": bad.isError(), "exception_code": code}}), flush=True)
    finally:
        client.close()


if __name__ == "__main__":
    main()
