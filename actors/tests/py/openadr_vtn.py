"""An independent OpenADR 2.0b VTN (PyPI openleadr 0.5.36) for actors/tests/openadr_vtn.rs.

Listens on 127.0.0.1 at a free port and prints, one JSON object per line on stdout:
  {"event": "listening", "port": P}
  {"event": "registered", "ven_name": ..., "ven_id": ...}
  {"event": "report_registered", "r_id": ..., "measurement": ..., "unit": ..., "scale": ...}
  {"event": "opt", "event_id": ..., "opt": "optIn" | "optOut"}
  {"event": "report", "values": [[iso time, value], ...]}
  {"event": "added", "event_id": ..., "starts": [iso time, ...], "starts_unix": [s, ...]}
Commands arrive on stdin, one JSON object per line:
  {"cmd": "add_event", "id": ..., "signal_name": ..., "signal_type": ...,
   "intervals": [{"start_in_s": s, "duration_s": d, "value": v}, ...]}
  {"cmd": "cancel", "id": ...}
openleadr's own prints go to stderr.
"""

import asyncio
import json
import os
import sys
from datetime import datetime, timedelta, timezone

OUT = os.fdopen(os.dup(1), "w", buffering=1)
sys.stdout = sys.stderr

try:
    from openleadr import OpenADRServer
except ImportError as e:  # the venv lacks it: say so, the test names the requirement
    print(json.dumps({"event": "missing", "error": str(e)}), file=OUT, flush=True)
    sys.exit(1)

VEN_ID = "ven-under-test"
REGISTRATION_ID = "reg-under-test"


def say(**fields):
    print(json.dumps(fields, default=str), file=OUT, flush=True)


async def on_create_party_registration(info):
    say(event="registered", ven_name=info.get("ven_name"), ven_id=VEN_ID)
    return VEN_ID, REGISTRATION_ID


async def on_register_report(ven_id, resource_id, measurement, unit, scale,
                             min_sampling_interval, max_sampling_interval):
    say(event="report_registered", ven_id=ven_id, resource_id=resource_id,
        measurement=measurement, unit=unit, scale=scale)

    async def on_data(values):
        say(event="report", values=[[t.isoformat(), v] for t, v in values])

    return on_data, timedelta(seconds=1)


async def on_opt(ven_id, event_id, opt_type):
    say(event="opt", ven_id=ven_id, event_id=event_id, opt=opt_type)


async def commands(server):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = json.loads(line)
        if cmd["cmd"] == "add_event":
            now = datetime.now(timezone.utc)
            intervals = [{
                "dtstart": now + timedelta(seconds=i["start_in_s"]),
                "duration": timedelta(seconds=i["duration_s"]),
                "signal_payload": float(i["value"]),
            } for i in cmd["intervals"]]
            server.add_event(ven_id=VEN_ID, signal_name=cmd["signal_name"],
                             signal_type=cmd["signal_type"], intervals=intervals,
                             callback=on_opt, event_id=cmd["id"])
            say(event="added", event_id=cmd["id"],
                starts=[i["dtstart"].isoformat() for i in intervals],
                starts_unix=[i["dtstart"].timestamp() for i in intervals])
        elif cmd["cmd"] == "cancel":
            server.cancel_event(VEN_ID, cmd["id"])
            say(event="cancelled", event_id=cmd["id"])


async def main():
    server = OpenADRServer(vtn_id="vtn-under-test", http_host="127.0.0.1", http_port=0)
    server.add_handler("on_create_party_registration", on_create_party_registration)
    server.add_handler("on_register_report", on_register_report)
    await server.run()
    port = server.app_runner.addresses[0][1]
    say(event="listening", port=port)
    await commands(server)
    await server.stop()


asyncio.run(main())
