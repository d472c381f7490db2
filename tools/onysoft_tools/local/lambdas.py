"""The template's functions, loaded the way Lambda runs them: a plain handler, or the ASGI app the Lambda Web
Adapter serves (Handler run.sh), each imported from its CodeUri by file path; and the context object a handler
is called with."""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
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
    ('lambda', handler) for a plain Python handler. Imported by file path under a unique module name."""
    props = ((tpl.get("Resources") or {}).get(logical_id) or {}).get("Properties") or {}
    code_uri = props.get("CodeUri")
    handler = str(props.get("Handler") or "")
    if not code_uri or not handler:
        raise RuntimeError(f"template.yaml: {logical_id} has no CodeUri/Handler")
    code_dir = _repo_root() / str(code_uri)
    if handler.endswith(".sh"):
        module_file, attribute, kind = "app.py", "app", "asgi"
    else:
        module_name, _, attribute = handler.rpartition(".")
        module_file, kind = module_name.replace(".", "/") + ".py", "lambda"
    spec = importlib.util.spec_from_file_location(f"onysoft_function_{logical_id}", code_dir / module_file)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {code_dir / module_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    # Under the tests (ONYSOFT_IAM_RECORD set), the AWS calls it makes are recorded as this function's.
    return kind, iam_record.attributed(getattr(module, attribute), logical_id)

