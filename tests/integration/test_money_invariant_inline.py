"""The money invariant (test_money_invariant's state machine, its provider that keeps its own bill) with the proxy's
blocking calls on the event loop's thread, as template.yaml runs it on on-demand Lambda (ONYSOFT_BLOCKING_CALLS=
inline: one request per execution environment, so no thread hop; onysoft/blocking.py). The rest of the suite runs
the default, the thread pool, as managed instances and `onysoft dev` do: both ways are the production's."""

from tests.integration.test_money_invariant import (  # noqa: F401 - the module's fixture and test, run again here
    GATEWAY_OPTIONS as POOL_OPTIONS,
)
from tests.integration.test_money_invariant import (  # noqa: F401
    accounts,
    test_the_platform_never_pays_a_provider_more_than_it_charged,
)

GATEWAY_OPTIONS = {**POOL_OPTIONS, "ONYSOFT_BLOCKING_CALLS": "inline"}
