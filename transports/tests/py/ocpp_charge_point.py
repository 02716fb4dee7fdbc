"""An independent OCPP charge point (the PyPI `ocpp` package) for gridvisor's interop tests.

Usage: ocpp_charge_point.py URL VERSION [--password P] [--ca CA.pem] [--cert C.pem --key K.pem]
       [--mode full|connect]

VERSION is 2.0.1 or 2.1. Every observation is printed on stdout as one JSON object per line:
  {"event": "connected", "subprotocol": ...}
  {"event": "raw", "sent": ..., "received": ...}        (malformed frames and their answers)
  {"event": "result", "action": ..., "payload": ...}      (answers to our CALLs)
  {"event": "ready"}                                       (our CALLs are done)
  {"event": "received", "message": [...]}                  (every frame the CSMS sent, raw)
  {"event": "sent", "action": ..., "payload": ...}        (CALLs the CSMS's actions asked for)
  {"event": "refused", "status": N} / {"event": "error", "error": ...}
  {"event": "closed"}
The test that starts this script waits for these lines; nothing here sleeps.
"""

import argparse
import asyncio
import dataclasses
import json
import ssl
import sys

try:
    import websockets
    from websockets.asyncio.client import connect
    from ocpp.routing import on, after
    import ocpp.v201
    import ocpp.v21
except ImportError as e:  # the Rust test turns this into a failure naming what to install
    print(json.dumps({"event": "missing", "error": str(e)}), flush=True)
    sys.exit(3)


def emit(**obj):
    print(json.dumps(obj), flush=True)


def now():
    return "2026-01-01T00:00:00Z"


def make_charge_point(version):
    mod = ocpp.v21 if version == "2.1" else ocpp.v201
    call_result = mod.call_result
    call = mod.call

    class ChargePoint(mod.ChargePoint):
        async def route_message(self, raw_msg):
            try:
                emit(event="received", message=json.loads(raw_msg))
            except ValueError:
                emit(event="received", message=raw_msg)
            return await super().route_message(raw_msg)

        # What the CSMS installed (id -> profile, as the library decoded it) and the running
        # transaction: the state the remote-control and read-back handlers answer from.
        profiles = {}
        tx = None
        tx_seq = 0
        remote_starts = 0

        async def send(self, action, payload):
            result = await asyncio.wait_for(self.call(payload), 10)
            emit(event="sent", action=action,
                 payload=dataclasses.asdict(result) if result is not None else None)

        @on("SetChargingProfile")
        async def on_set_charging_profile(self, evse_id, charging_profile, **kwargs):
            accepted = charging_profile["charging_profile_purpose"] == "TxDefaultProfile"
            if accepted:
                self.profiles[charging_profile["id"]] = (evse_id, charging_profile)
            return call_result.SetChargingProfile(status="Accepted" if accepted else "Rejected")

        @on("ClearChargingProfile")
        async def on_clear_charging_profile(self, charging_profile_id=None,
                                            charging_profile_criteria=None, **kwargs):
            c = charging_profile_criteria or {}
            hit = [i for i, (evse, p) in self.profiles.items()
                   if charging_profile_id in (None, i)
                   and c.get("evse_id") in (None, evse)
                   and c.get("charging_profile_purpose") in (None, p["charging_profile_purpose"])
                   and c.get("stack_level") in (None, p["stack_level"])]
            for i in hit:
                del self.profiles[i]
            return call_result.ClearChargingProfile(status="Accepted" if hit else "Unknown")

        def matching(self, evse_id, criterion):
            return [p for (evse, p) in self.profiles.values()
                    if evse_id in (None, evse)
                    and criterion.get("charging_profile_purpose") in (None, p["charging_profile_purpose"])
                    and criterion.get("stack_level") in (None, p["stack_level"])]

        @on("GetChargingProfiles")
        async def on_get_charging_profiles(self, request_id, charging_profile, evse_id=None, **kwargs):
            found = self.matching(evse_id, charging_profile)
            return call_result.GetChargingProfiles(status="Accepted" if found else "NoProfiles")

        @after("GetChargingProfiles")
        async def report_charging_profiles(self, request_id, charging_profile, evse_id=None, **kwargs):
            found = self.matching(evse_id, charging_profile)
            if found:
                await self.send("ReportChargingProfiles", call.ReportChargingProfiles(
                    request_id=request_id, charging_limit_source="CSO", evse_id=1,
                    charging_profile=found, tbc=False))

        @on("TriggerMessage")
        async def on_trigger_message(self, requested_message, **kwargs):
            ok = requested_message in ("StatusNotification", "MeterValues")
            return call_result.TriggerMessage(status="Accepted" if ok else "NotImplemented")

        @after("TriggerMessage")
        async def triggered(self, requested_message, **kwargs):
            if requested_message == "StatusNotification":
                await self.send("StatusNotification", call.StatusNotification(
                    timestamp=now(), connector_status="Occupied", evse_id=1, connector_id=1))
            elif requested_message == "MeterValues":
                await self.send("MeterValues", call.MeterValues(evse_id=1, meter_value=[
                    {"timestamp": now(), "sampled_value": [{"value": 3.3, "measurand": "Power.Active.Import",
                                                            "unit_of_measure": {"unit": "kW"}}]}]))

        @on("RequestStopTransaction")
        async def on_request_stop(self, transaction_id, **kwargs):
            ok = transaction_id == self.tx
            return call_result.RequestStopTransaction(status="Accepted" if ok else "Rejected")

        @after("RequestStopTransaction")
        async def stop_remotely(self, transaction_id, **kwargs):
            if transaction_id != self.tx:
                return
            self.tx = None
            self.tx_seq += 1
            await self.send("TransactionEvent", call.TransactionEvent(
                event_type="Ended", timestamp=now(), trigger_reason="RemoteStop", seq_no=self.tx_seq,
                transaction_info={"transaction_id": transaction_id, "stopped_reason": "Remote"}))

        @on("RequestStartTransaction")
        async def on_request_start(self, id_token, remote_start_id, evse_id=None, **kwargs):
            if self.tx is not None:
                return call_result.RequestStartTransaction(
                    status="Rejected", transaction_id=self.tx,
                    status_info={"reason_code": "TxInProgress"})
            return call_result.RequestStartTransaction(status="Accepted")

        @after("RequestStartTransaction")
        async def start_remotely(self, id_token, remote_start_id, **kwargs):
            if self.tx is not None:
                return
            self.remote_starts += 1
            self.tx = f"tx-remote-{self.remote_starts}"
            self.tx_seq = 0
            await self.send("TransactionEvent", call.TransactionEvent(
                event_type="Started", timestamp=now(), trigger_reason="RemoteStart", seq_no=0,
                transaction_info={"transaction_id": self.tx, "remote_start_id": remote_start_id},
                evse={"id": 1, "connector_id": 1}, id_token=id_token))

        @on("GetVariables")
        async def on_get_variables(self, get_variable_data, **kwargs):
            results = []
            for item in get_variable_data:
                if item["variable"]["name"] == "AppliedProfile":
                    # Not a standard variable: a real charger does not know it.
                    results.append({
                        "attribute_status": "UnknownVariable",
                        "component": item["component"],
                        "variable": item["variable"],
                    })
                    continue
                results.append({
                    "attribute_status": "Accepted",
                    "attribute_value": "42",
                    "component": item["component"],
                    "variable": item["variable"],
                })
            return call_result.GetVariables(get_variable_result=results)

        @on("SetVariables")
        async def on_set_variables(self, set_variable_data, **kwargs):
            results = []
            for item in set_variable_data:
                results.append({
                    "attribute_status": "RebootRequired",
                    "component": item["component"],
                    "variable": item["variable"],
                })
            return call_result.SetVariables(set_variable_result=results)

        @on("Reset")
        async def on_reset(self, type, **kwargs):
            return call_result.Reset(status="Scheduled" if type == "OnIdle" else "Accepted")

    return ChargePoint, mod.call


async def run(args):
    ctx = None
    if args.ca:
        ctx = ssl.create_default_context(cafile=args.ca)
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
    headers = {}
    if args.password is not None:
        cp_id = args.url.rstrip("/").rsplit("/", 1)[-1]
        import base64
        token = base64.b64encode(f"{cp_id}:{args.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    subprotocol = "ocpp2.1" if args.version == "2.1" else "ocpp2.0.1"
    try:
        ws = await connect(args.url, subprotocols=[subprotocol], additional_headers=headers,
                           ssl=ctx, open_timeout=10)
    except websockets.exceptions.InvalidStatus as e:
        emit(event="refused", status=e.response.status_code)
        return
    except Exception as e:  # TLS alerts, resets: the test only needs to see a failure
        emit(event="error", error=f"{type(e).__name__}: {e}")
        return
    emit(event="connected", subprotocol=ws.subprotocol)
    if args.mode == "connect":
        try:
            await ws.recv()
        except Exception as e:
            emit(event="error", error=f"{type(e).__name__}: {e}")
        emit(event="closed")
        return

    # Malformed frames first, read raw (before the library's reader owns the socket).
    for raw in ["this is not json", '[2,"bad-1","BootNotification",{"reason":"PowerUp"}]',
                '[2,"bad-2","FlyToTheMoon",{}]']:
        await ws.send(raw)
        while True:
            got = json.loads(await asyncio.wait_for(ws.recv(), 10))
            # A CSMS may call us already (a node reading its new charger): note it and wait
            # for the answer to our frame; the CALL goes unanswered, as a busy charger's may.
            if isinstance(got, list) and got and got[0] == 2:
                emit(event="received", message=got)
                continue
            break
        emit(event="raw", sent=raw, received=got)

    ChargePoint, call = make_charge_point(args.version)
    cp_id = args.url.rstrip("/").rsplit("/", 1)[-1]
    cp = ChargePoint(cp_id, ws)
    reader = asyncio.create_task(cp.start())

    async def do(action, payload):
        result = await asyncio.wait_for(cp.call(payload), 10)
        emit(event="result", action=action,
             payload=dataclasses.asdict(result) if result is not None else None)

    await do("BootNotification", call.BootNotification(
        charging_station={"model": "PyCP", "vendor_name": "interop", "serial_number": "S-1"},
        reason="PowerUp"))
    await do("Heartbeat", call.Heartbeat())
    await do("StatusNotification", call.StatusNotification(
        timestamp=now(), connector_status="Available", evse_id=1, connector_id=1))
    token_type = "ISO14443"
    await do("Authorize", call.Authorize(id_token={"id_token": "04A1B2C3", "type": token_type}))
    await do("TransactionEvent", call.TransactionEvent(
        event_type="Started", timestamp=now(), trigger_reason="Authorized", seq_no=0,
        transaction_info={"transaction_id": "tx-1", "charging_state": "Charging"},
        evse={"id": 1, "connector_id": 1},
        id_token={"id_token": "04A1B2C3", "type": token_type},
        meter_value=[{"timestamp": now(), "sampled_value": [
            {"value": 1234.5, "measurand": "Energy.Active.Import.Register"}]}]))
    cp.tx = "tx-1"
    await do("MeterValues", call.MeterValues(evse_id=1, meter_value=[{"timestamp": now(), "sampled_value": [
        {"value": 7.4, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "kW"}}]}]))
    needs = {"requested_energy_transfer": "DC", "departure_time": now(),
             "dc_charging_parameters": {"ev_max_current": 200, "ev_max_voltage": 450}}
    if args.version == "2.1":
        needs["requested_energy_transfer"] = "DC_BPT"
        needs["available_energy_transfer"] = ["DC", "DC_BPT"]
        needs["control_mode"] = "DynamicControl"
        needs["v2x_charging_parameters"] = {"max_charge_power": 50000, "max_discharge_power": 30000}
    await do("NotifyEVChargingNeeds", call.NotifyEVChargingNeeds(evse_id=1, charging_needs=needs))
    emit(event="ready")
    try:
        await reader
    except websockets.exceptions.ConnectionClosed:
        pass
    except Exception as e:
        emit(event="error", error=f"{type(e).__name__}: {e}")
    emit(event="closed")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("version", choices=["2.0.1", "2.1"])
    p.add_argument("--password")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--mode", choices=["full", "connect"], default="full")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
