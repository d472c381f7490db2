"""How long one request may last in the proxy, and so how young a hold the sweeper may never touch: one number
for both (the proxy's deadline; the sweeper's floor is it plus a margin)."""

import os

FUNCTION_TIMEOUT_SECONDS = 900  # template.yaml's ProxyFunction Timeout (a template test keeps them equal)
DEADLINE_MARGIN_SECONDS = 30  # time to settle and answer before Lambda would end the invocation


def deadline_seconds() -> float:
    """ONYSOFT_PROXY_DEADLINE_SECONDS, or the function's timeout minus a margin."""
    configured = os.environ.get("ONYSOFT_PROXY_DEADLINE_SECONDS")
    return float(configured) if configured else float(FUNCTION_TIMEOUT_SECONDS - DEADLINE_MARGIN_SECONDS)
