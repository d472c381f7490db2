"""Three pieces of per-request work moto server repeats for nothing, done once (`install()`).

Measured with cProfile in serial_moto over 500 sequential chat requests through `onysoft dev` (each makes ~9
DynamoDB calls, all serialized):
- Every request, moto's host dispatcher asks `backends.list_of_moto_modules()`, which lists moto's package
  directory and stats each of its ~270 entries: ~5% of the server's time. The directory does not change while
  the server runs: the list is taken once.
- Every UpdateItem (alone or in a transaction) validates its update expression with ten depth-first passes over
  the expression's tree, and at each node each pass rebuilds its node-type-to-handler dict twice
  (`DepthFirstTraverser._processing_map()`, from `nodes_to_be_processed()` and `process()`): ~1.3 M dicts for
  500 requests. A pass's map is fixed (handlers bound to the pass), so it is kept on the pass.
- Every UpdateItem parses its update expression twice (the request handler, to check its names and values; the
  backend, to validate and run it): ~12% of the server's time. The gateway sends a handful of distinct
  expressions (the values are placeholders), so the parsed tree is kept by expression text (LRU, 512). Sound
  because nothing changes a parsed tree: the handler only searches it, and the backend's validator works on a
  deep copy (moto's own `Validator.__init__`).
None changes what moto answers; tests/unit/test_moto_hot_path.py compares. Replaying 300 chat requests' writes
through moto's WSGI app in-process: 10.3 s → 8.2 s and 11.8 s → 9.2 s of CPU (~20% less). Installed by
serial_moto, on the moto range moto_transactions checks.
"""

from __future__ import annotations

import functools
from typing import Any

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    import moto
    from moto import backends
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    from onysoft_tools.local import moto_transactions

    moto_transactions.check_version(moto.__version__)

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules

    def processing_map(self: Any) -> dict:
        cached = self.__dict__.get("_onysoft_processing_map")
        if cached is None:
            cached = self._processing_map()
            self.__dict__["_onysoft_processing_map"] = cached
            self.__dict__["_onysoft_node_types"] = tuple(cached)
        return cached

    def nodes_to_be_processed(self: Any) -> tuple:
        processing_map(self)
        return self.__dict__["_onysoft_node_types"]

    def process(self: Any, node: Any) -> Any:
        for class_key, processor in processing_map(self).items():
            if isinstance(node, class_key):
                return processor(node)
        return None

    stock_make = UpdateExpressionParser.make.__func__
    parsed = functools.lru_cache(maxsize=512)(lambda text: stock_make(UpdateExpressionParser, text))

    def make(cls: Any, expression_str: Any) -> Any:
        if cls is UpdateExpressionParser and isinstance(expression_str, str):
            return parsed(expression_str)
        return stock_make(cls, expression_str)

    make.parsed = parsed  # type: ignore[attr-defined] # its cache_info(), for onysoft_tools.local.memory_probe
    UpdateExpressionParser.make = classmethod(make)
    DepthFirstTraverser.nodes_to_be_processed = nodes_to_be_processed
    DepthFirstTraverser.process = process
    _installed = True
