"""The probe tests/integration/test_one_process.py trusts (onysoft_tools.loop_probe): a DynamoDB call made on a thread
that runs an event loop is counted as blocking it, one from a pool thread is not."""

import asyncio
import threading


def test_a_call_on_the_loops_thread_is_caught_and_one_from_a_worker_is_not():
    from onysoft_tools import loop_probe

    loop_probe.reset()

    class Operation:
        name = "GetItem"

    async def on_the_loop():
        loop_probe._on_call(model=Operation())  # what botocore's before-call hook receives
        await asyncio.to_thread(loop_probe._on_call, model=Operation())

    asyncio.run(on_the_loop())
    worker = threading.Thread(target=loop_probe._on_call, kwargs={"model": Operation()})
    worker.start()
    worker.join()
    report = loop_probe.report()
    assert report["dynamodb_calls"] == {"on_loop": 1, "off_loop": 2}
    assert report["on_loop_operations"] == ["GetItem"]
    loop_probe.reset()
