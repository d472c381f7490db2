"""The template's scheduled functions that `onysoft dev` runs itself, as EventBridge Scheduler would in AWS:
KeyExpiryFunction (Key Expiring / Key Expired events: onysoft.key_expiry), every
ONYSOFT_DEV_KEY_EXPIRY_SECONDS seconds (default 60; its schedule in AWS is 15 minutes, which is too slow to see
locally; the tests set 1). The handler is the template's, loaded as Lambda runs it (its AWS calls are recorded as
that function's for the IAM check). The sweeper is not run here: `onysoft sweep` does what it does, on demand.

A run that fails is logged and the next one goes on: a scheduled function's error never stops the gateway.
"""

from __future__ import annotations

import logging
import os
import threading

from onysoft_tools.local.lambdas import FakeLambdaContext, load_function

logger = logging.getLogger("onysoft.dev")

# logical id -> (the environment variable giving its local period in seconds, the default)
LOCAL_SCHEDULES = {"KeyExpiryFunction": ("ONYSOFT_DEV_KEY_EXPIRY_SECONDS", 60.0)}


class Schedules:
    def __init__(self, tpl: dict):
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._jobs = []
        for logical_id, (env_var, default) in LOCAL_SCHEDULES.items():
            period = float(os.environ.get(env_var) or default)
            _, handler = load_function(tpl, logical_id)
            self._jobs.append((logical_id, handler, max(period, 0.2)))

    def start(self) -> Schedules:
        for logical_id, handler, period in self._jobs:
            thread = threading.Thread(target=self._loop, args=(logical_id, handler, period), daemon=True,
                                      name=f"schedule-{logical_id}")
            thread.start()
            self._threads.append(thread)
        return self

    def _loop(self, logical_id: str, handler, period: float) -> None:
        while not self._stop.wait(period):
            try:
                handler({"source": "aws.scheduler", "detail-type": "Scheduled Event"}, FakeLambdaContext(logical_id))
            except Exception:  # noqa: BLE001 - logged; the next run goes on
                logger.exception("scheduled function %s failed", logical_id)

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
