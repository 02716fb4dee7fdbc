"""An OCPP 2.1 charge point (the PyPI `ocpp` package) driven line by line from stdin, for the
tests of vehicles identified by token (actors/tests/ev_identity.rs).

Usage: ev_charge_point.py URL --password P

Connects, boots, then reads one JSON object per line from stdin:
  {"action": "Authorize", "payload": {...}}   a CALL (payload keys in snake_case, as the
                                               library's dataclasses take them)
  {"close": true}                              close the connection and exit
and prints one JSON object per line on stdout:
  {"event": "connected"} / {"event": "refused", "status": N} / {"event": "error", ...}
  {"event": "result", "action": ..., "payload": ...}   the CSMS's answer, as the library decoded it
  {"event": "received", "message": [...]}              every frame the CSMS sent, raw
  {"event": "closed"}
Nothing here sleeps; the test waits for these lines.
"""

import argparse
import asyncio
import base64
import dataclasses
import json
import sys

try:
    import websockets
    from websockets.asyncio.client import connect
    from ocpp.routing import on
    import ocpp.v21
except ImportError as e:  # the Rust test turns this into a failure naming what to install
    print(json.dumps({"event": "missing", "error": str(e)}), flush=True)
    sys.exit(3)

call = ocpp.v21.call
call_result = ocpp.v21.call_result


def emit(**obj):
    print(json.dumps(obj), flush=True)


class ChargePoint(ocpp.v21.ChargePoint):
    async def route_message(self, raw_msg):
        try:
            emit(event="received", message=json.loads(raw_msg))
        except ValueError:
            emit(event="received", message=raw_msg)
        return await super().route_message(raw_msg)

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, evse_id, charging_profile, **kwargs):
        return call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    async def on_clear_charging_profile(self, **kwargs):
        return call_result.ClearChargingProfile(status="Accepted")

    # What every 2.0.1/2.1 station answers: no profile read-back through reports (the node's
    # dispatch profiles are not kept here), and TriggerMessage refused (the EV reports on its
    # own schedule, driven by the test).
    @on("GetChargingProfiles")
    async def on_get_charging_profiles(self, request_id, charging_profile, **kwargs):
        return call_result.GetChargingProfiles(status="NoProfiles")

    @on("TriggerMessage")
    async def on_trigger_message(self, requested_message, **kwargs):
        return call_result.TriggerMessage(status="Rejected")

    @on("GetVariables")
    async def on_get_variables(self, get_variable_data, **kwargs):
        results = []
        for item in get_variable_data:
            # No profile read-back (not a standard variable); power comes from meter values.
            results.append({
                "attribute_status": "UnknownVariable",
                "component": item["component"],
                "variable": item["variable"],
            })
        return call_result.GetVariables(get_variable_result=results)


async def commands():
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield json.loads(line)


async def run(args):
    cp_id = args.url.rstrip("/").rsplit("/", 1)[-1]
    token = base64.b64encode(f"{cp_id}:{args.password}".encode()).decode()
    try:
        ws = await connect(args.url, subprotocols=["ocpp2.1"],
                           additional_headers={"Authorization": f"Basic {token}"},
                           open_timeout=10)
    except websockets.exceptions.InvalidStatus as e:
        emit(event="refused", status=e.response.status_code)
        return
    except Exception as e:
        emit(event="error", error=f"{type(e).__name__}: {e}")
        return
    emit(event="connected")
    cp = ChargePoint(cp_id, ws)
    reader = asyncio.create_task(cp.start())
    async for cmd in commands():
        if cmd.get("close"):
            break
        action = cmd["action"]
        try:
            result = await asyncio.wait_for(cp.call(getattr(call, action)(**cmd["payload"])), 10)
            emit(event="result", action=action,
                 payload=dataclasses.asdict(result) if result is not None else None)
        except Exception as e:
            emit(event="error", action=action, error=f"{type(e).__name__}: {e}")
    await ws.close()
    reader.cancel()
    emit(event="closed")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--password", required=True)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
