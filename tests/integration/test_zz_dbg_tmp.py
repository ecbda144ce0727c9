import asyncio, pytest
from notifyd.web import dlq
from tests.integration.test_api import *  # noqa

async def test_dbg(api):
    key = new_id("dlq").encode()
    await api.produce(api.names.events, [(key, b"definitely not json")])
    await asyncio.sleep(3)
    recs = await api.read_topic(api.names.events_dlq, lambda rs: False, timeout=3)
    print("READ_TOPIC", [(r.partition, r.offset, r.key) for r in recs])
    items = await dlq.recent_dead_letters(api.bootstrap, api.names.events_dlq, 50)
    print("ITEMS", [(i["partition"], i["offset"], i["key"]) for i in items])
    page = http("GET", f"{api.workers[0].url}/api/v1/admin/dlq", token=api.operator_token)
    print("HTTP", page.status, page.raw[:1000])
