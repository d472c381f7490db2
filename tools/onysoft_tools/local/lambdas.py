"""The template's functions, loaded the way Lambda runs them: a plain handler, or the ASGI app the Lambda Web
Adapter serves (Handler run.sh), each imported from its CodeUri by file path; and the context object a handler
is called with."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onysoft_tools import iam_record, template
from onysoft_tools.local.moto_process import REGION

LOCAL_ACCOUNT_ID = "000000000000"  # the account id in local execute-api ARNs


class FakeLambdaContext:
    """The attributes handlers (and Powertools) read from a Lambda context object."""

    def __init__(self, function_name: str, timeout_seconds: float = 10.0, memory_mb: int = 512):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{LOCAL_ACCOUNT_ID}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _repo_root() -> Path:
    return template.template_path().resolve().parent


def load_function(tpl: dict, logical_id: str) -> tuple[str, Any]:
    """('asgi', app) for a function run by the Lambda Web Adapter (Handler run.sh → app.py's `app`),
    ('lambda', handler) for a plain Python handler: a LambdaInstances, which runs each call the way Lambda
    does, one call at a time per instance. Imported by file path under a unique module name."""
    props = ((tpl.get("Resources") or {}).get(logical_id) or {}).get("Properties") or {}
    code_uri = props.get("CodeUri")
    handler = str(props.get("Handler") or "")
    if not code_uri or not handler:
        raise RuntimeError(f"template.yaml: {logical_id} has no CodeUri/Handler")
    code_dir = _repo_root() / str(code_uri)
    if handler.endswith(".sh"):
        # The adapter runs one web server per instance, which serves its requests concurrently: so does ours.
        module = _import(code_dir / "app.py", f"onysoft_function_{logical_id}")
        return "asgi", iam_record.attributed(module.app, logical_id)
    module_name, _, attribute = handler.rpartition(".")
    path = code_dir / (module_name.replace(".", "/") + ".py")
    first = _import(path, f"onysoft_function_{logical_id}")
    instances = LambdaInstances(logical_id, lambda name: getattr(_import(path, name), attribute),
                                first=getattr(first, attribute),
                                one_at_a_time=RESOLVER_CALLS if _uses_a_resolver(first) else None)
    # Under the tests (ONYSOFT_IAM_RECORD set), the AWS calls it makes are recorded as this function's.
    return "lambda", iam_record.attributed(instances, logical_id)


# Powertools' event resolvers keep the event they serve in a class attribute (BaseRouter.current_event): one per
# process, which Lambda never shares between two calls. Every function built on one takes its turn here, or a
# request is answered with another's event: another person's principal (seen under load in
# test_dashboard_http's concurrent test before this lock).
RESOLVER_CALLS = threading.Lock()


def _uses_a_resolver(module) -> bool:
    resolvers = sys.modules.get("aws_lambda_powertools.event_handler.api_gateway")
    return resolvers is not None and any(isinstance(value, resolvers.BaseRouter) for value in vars(module).values())


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class LambdaInstances:
    """A plain handler's execution environments. Lambda gives an instance one call at a time and starts a new
    instance (a cold start: the module imported afresh) when every one is busy. Handlers rely on it: Powertools'
    resolver keeps the request it serves in its instance (app.context) and in its class (BaseRouter.current_event),
    and one module called from several threads at once lost a request's route arguments (a 500) or answered it
    with another's event. Instances separate the first; `one_at_a_time` (a lock shared by every function with a
    resolver) the second, which lives in the process as it does in a Lambda environment."""

    def __init__(self, logical_id: str, new_instance: Callable[[str], Callable], *, first: Callable | None = None,
                 one_at_a_time: threading.Lock | None = None):
        self._logical_id = logical_id
        self._new_instance = new_instance
        self._lock = threading.Lock()
        self._idle = [first or new_instance(f"onysoft_function_{logical_id}")]  # the first one at start, as before
        self.instances = 1
        self._one_at_a_time = one_at_a_time  # a lock shared with every function whose state is per process

    def __call__(self, event: Any, context: Any) -> Any:
        if self._one_at_a_time is None:
            return self._call(event, context)
        with self._one_at_a_time:
            return self._call(event, context)

    def _call(self, event: Any, context: Any) -> Any:
        with self._lock:
            handler = self._idle.pop() if self._idle else None
            if handler is None:
                self.instances += 1
                name = f"onysoft_function_{self._logical_id}_{self.instances}"
        if handler is None:
            handler = self._new_instance(name)
        try:
            return handler(event, context)
        finally:
            with self._lock:
                self._idle.append(handler)
