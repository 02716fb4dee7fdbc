import asyncio, json, sys, re
from datetime import datetime, timezone, timedelta
from openleadr import OpenADRServer, OpenADRClient, enums
PORT = 18123
seq = [0]
def dump(kind, xml):
    seq[0] += 1
    m = re.search(r'<(?:\w+:)?(oadr\w+)', xml.split('oadrSignedObject',1)[1] if 'oadrSignedObject' in xml else xml)
    name = m.group(1) if m else 'x'
    open(f'{seq[0]:02d}-{kind}-{name}.xml', 'w').write(xml)
async def on_reg(info):
    return 'ven123', 'reg123'
async def on_register_report(ven_id, resource_id, measurement, unit, scale, min_sampling_interval, max_sampling_interval):
    async def cb(data): print('report', data, flush=True)
    return cb, timedelta(seconds=2)
async def on_created(ven_id, event_id, opt_type):
    print('opt', event_id, opt_type, flush=True)
async def main():
    s = OpenADRServer(vtn_id='vtn1', http_host='127.0.0.1', http_port=PORT)
    s.add_handler('on_create_party_registration', on_reg)
    s.add_handler('on_register_report', on_register_report)
    now = datetime.now(timezone.utc)
    s.add_event(ven_id='ven123', signal_name='simple', signal_type='level',
        intervals=[{'dtstart': now + timedelta(seconds=5), 'duration': timedelta(minutes=10), 'signal_payload': 2.0}],
        callback=on_created, event_id='ev-simple')
    s.add_event(ven_id='ven123', signal_name='LOAD_DISPATCH', signal_type='setpoint',
        intervals=[{'dtstart': now + timedelta(seconds=5), 'duration': timedelta(minutes=10), 'signal_payload': 40.0},
                   {'dtstart': now + timedelta(minutes=10, seconds=5), 'duration': timedelta(minutes=5), 'signal_payload': -20.0}],
        callback=on_created, event_id='ev-ld', target={'ven_id': 'ven123'}, measurement_name='REAL_POWER' if False else None) if False else None
    s.add_event(ven_id='ven123', signal_name='LOAD_DISPATCH', signal_type='setpoint',
        intervals=[{'dtstart': now + timedelta(seconds=5), 'duration': timedelta(minutes=10), 'signal_payload': 40.0},
                   {'dtstart': now + timedelta(minutes=10, seconds=5), 'duration': timedelta(minutes=5), 'signal_payload': -20.0}],
        callback=on_created, event_id='ev-ld')
    await s.run()
    c = OpenADRClient(ven_name='ven-cap', vtn_url=f'http://127.0.0.1:{PORT}/OpenADR2/Simple/2.0b')
    c.add_hook('before_send_xml', lambda x: dump('ven', x))
    c.add_hook('after_receive_xml', lambda x: dump('vtn', x))
    async def on_event(ev): return 'optIn'
    c.add_handler('on_event', on_event)
    c.add_report(callback=lambda: 12.5, resource_id='site', measurement='power', data_collection_mode='incremental', report_specifier_id='site-usage', r_id='site-power', report_type='usage', reading_type='Direct Read', unit='W' if False else None) if False else None
    c.add_report(callback=lambda: 12.5, resource_id='site', measurement='power', report_specifier_id='site-usage', r_id='site-power', sampling_rate=timedelta(seconds=2))
    await c.run()
    await asyncio.sleep(9)
    # cancel
    s.cancel_event('ven123', 'ev-simple')
    await asyncio.sleep(5)
    await c.stop(); await s.stop()
asyncio.run(main())
