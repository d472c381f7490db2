"""Helpers shared by the test suites."""


def load_function_module(function: str):
    """Import functions/<function>/app.py under a unique name (every function's module is `app`)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "functions" / function / "app.py"
    spec = importlib.util.spec_from_file_location(f"onysoft_function_{function}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_event(name: str) -> dict:
    import json
    import pathlib

    return json.loads((pathlib.Path(__file__).resolve().parent.parent / "events" / name).read_text())


# The key that events/authorizer-valid-key.json carries (tests seed it; it is no real key).
EVENT_KEY = "sk-ony-" + "0123456789abcdef" * 3
