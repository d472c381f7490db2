"""Helpers shared by the test suites."""


def load_function_module(function: str):
    """Import functions/<function>/app.py under a unique name (every function's module is `app`)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "functions" / function / "app.py"
    spec = importlib.util.spec_from_file_location(f"onysoft_function_{function}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "handler"):  # its AWS calls are recorded as the function's (tests/test_iam_conformance.py)
        from onysoft_tools import iam_record

        module.handler = iam_record.attributed(module.handler, iam_record.function_of_code(f"functions/{function}"))
    return module


def load_event(name: str) -> dict:
    import json
    import pathlib

    return json.loads((pathlib.Path(__file__).resolve().parent.parent / "events" / name).read_text())


# The key that events/authorizer-valid-key.json carries (tests seed it; it is no real key).
EVENT_KEY = "sk-ony-" + "0123456789abcdef" * 3
