"""No request's state in a module of the proxy (issue 25): on managed instances one process serves many requests at
once, so a module-level container or a `global` the request path writes would mix them. Every mutable thing a module
of the proxy's path keeps is listed here with why it is the process's, not a request's; a new one fails until it is
(a request's state belongs in a context variable or a local)."""

import ast
import importlib
import inspect
import subprocess
import sys

PROCESS_WIDE = {
    ("onysoft.catalog", "catalog_cache"): "the 60 s catalog cache, the same for every request (loads under a lock)",
    ("onysoft.forwarding", "catalog_cache"): "the same cache, imported",
    ("onysoft.proxy_app", "catalog_cache"): "the same cache, imported",
    ("onysoft.forwarding", "_closing"): "stream relays still settling, which the process's stop waits for",
    ("onysoft.models", "_shared_clients"): "one botocore client per DynamoDB endpoint for the process",
    ("onysoft.upstream", "_clients"): "one httpx client (connection pool) per provider for the process",
    ("onysoft.providers", "_keys"): "each provider's key from its secret as last read, for SECRET_MAX_AGE",
    ("onysoft.upstream", "_urls"): "each provider endpoint's URL, parsed once (immutable; the providers' config)",
    ("onysoft.events", "_clients"): "one EventBridge client per endpoint for the process (under its lock)",
    ("onysoft.circuit_breaker", "_breakers"): "one breaker per provider: the process's view of it (under its lock)",
    ("onysoft.circuit_breaker", "_settings"): "the breakers' settings, read from the environment once (None before)",
    ("onysoft.telemetry", "_metrics"): "one EMF writer per service name, cleared by each flush (under its lock)",
}
GLOBALS_WRITTEN = {
    ("onysoft.telemetry", "_logger"): "the Powertools logger, made once",
    ("onysoft.circuit_breaker", "_settings"): "the breakers' settings, read from the environment once",
    ("onysoft.blocking", "_pool"): "the thread pool that runs the DynamoDB calls, made once (under its lock)",
}
PROXY_ENTRY_POINTS = ("onysoft.proxy_app", "onysoft.count_tokens", "onysoft.balance_alerts")


def _proxy_modules():
    """The onysoft modules the proxy's entry points import, in a fresh interpreter (this one has imported others)."""
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {PROXY_ENTRY_POINTS!r}]; "
            "print(' '.join(m for m in sys.modules if m == 'onysoft' or m.startswith('onysoft.')))")
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           timeout=120).stdout.split()
    assert "onysoft.forwarding" in names
    return {name: importlib.import_module(name) for name in names}


def _constant(name: str) -> bool:
    return name.lstrip("_").isupper()  # UPSTREAM_PATHS, _TRANSACT_ITEM_ACTIONS: tables, never written


def test_module_level_mutable_state_is_only_the_processs():
    found = set()
    for name, module in _proxy_modules().items():
        for attr, value in vars(module).items():
            if attr.startswith("__") or _constant(attr) or inspect.ismodule(value) or isinstance(value, type):
                continue
            mutable = isinstance(value, dict | list | set | bytearray) or (
                type(value).__module__.startswith("onysoft") and not callable(value))
            if mutable:
                found.add((name, attr))
    assert found <= set(PROCESS_WIDE), f"module-level state not known to be the process's: {found - set(PROCESS_WIDE)}"


def test_no_function_of_the_proxy_rebinds_a_global_but_the_known_ones():
    written = set()
    for name, module in _proxy_modules().items():
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Global):
                written |= {(name, each) for each in node.names}
    assert written <= set(GLOBALS_WRITTEN), f"globals rebound at run time: {written - set(GLOBALS_WRITTEN)}"
