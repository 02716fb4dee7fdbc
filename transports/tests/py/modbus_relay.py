#!/usr/bin/env python3
"""A trip relay's I/O module for the interop tests: a pymodbus TCP server with 16 coils
(addresses 0..15, all off), as a Modbus relay module in front of a breaker.

On stdout, one JSON line first: {"port": P, "coils": 16}. Then one JSON line per coil write
the server gets: {"write": {"function": 5|15, "address": A, "values": [true|false, ...]}}.
A line "read" on stdin makes the server print the coils as its writes left them:
{"coils": [true|false, ...]}.

The server stops when stdin closes or after --timeout seconds, whichever comes first.
"""

import argparse
import asyncio
import json
import sys
import threading

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

COILS = 16


async def serve(args):
    out_lock = threading.Lock()
    coils = [False] * COILS

    def emit(obj):
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    async def action(function_code, _start, address, _count, _registers, set_values):
        if set_values is not None and function_code in (5, 15):
            values = [bool(v) for v in set_values]
            for i, v in enumerate(values):
                if 0 <= address + i < COILS:
                    coils[address + i] = v
            emit({"write": {"function": function_code, "address": address, "values": values}})
        return None

    block = [SimData(address=0, values=[False] * COILS, datatype=DataType.BITS)]
    empty = [SimData(address=0, values=[0], datatype=DataType.REGISTERS)]
    device = SimDevice(id=0, simdata=(block, block, empty, empty), action=action)
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    emit({"port": port, "coils": COILS})

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "read":
                emit({"coils": list(coils)})
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.timeout)
    except asyncio.TimeoutError:
        pass
    await server.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=120.0)
    asyncio.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
