"""`onysoft catalog set|list` (models and their USD prices per million tokens) and `onysoft fx set|show`."""

from __future__ import annotations

import argparse

from onysoft.operations import catalog
from onysoft.operations.access import cli_operator

from .output import UsageError, fields, output, table


def _model_fields(view: dict) -> list[tuple[str, object]]:
    return [
        ("model", view["model"]), ("provider", view["provider"]), ("upstream_model", view["upstream_model"]),
        ("input", f"{view['input_usd_per_mtok']} USD / 1M tokens"),
        ("output", f"{view['output_usd_per_mtok']} USD / 1M tokens"),
        ("cached input", f"{view['cached_input_usd_per_mtok'] or view['input_usd_per_mtok']} USD / 1M tokens"),
        ("cache write", f"{view['cache_write_usd_per_mtok'] or view['input_usd_per_mtok']} USD / 1M tokens"),
        ("enabled", view["enabled"]), ("max_output_tokens", view["max_output_tokens"] or "default"),
        ("tokens_per_image", view["tokens_per_image"] or "default"),
        ("updated_at", view["updated_at"]),
    ]


def set_(args: argparse.Namespace) -> int:
    """One MODEL: its view (`--json`: the model's object). Several, with the same prices: `{"models": [...]}`."""
    for flag, value in (("--max-output-tokens", args.max_output_tokens), ("--tokens-per-image", args.tokens_per_image)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive number")
    if len(args.model) > 1 and (args.provider or args.upstream_model):
        raise UsageError("--provider and --upstream-model name one model's upstream: set one MODEL at a time")
    views = [catalog.set_model(
        cli_operator(), model, input_usd_per_mtok=args.input_usd_per_mtok,
        output_usd_per_mtok=args.output_usd_per_mtok, provider=args.provider, upstream_model=args.upstream_model,
        enabled=not args.disable, max_output_tokens=args.max_output_tokens,
        cached_input_usd_per_mtok=args.cached_input_usd_per_mtok,
        cache_write_usd_per_mtok=args.cache_write_usd_per_mtok, tokens_per_image=args.tokens_per_image,
    ) for model in args.model]
    if len(views) == 1:
        return output(args, views[0], lambda: fields(_model_fields(views[0])))
    return output(args, {"models": views}, lambda: "\n\n".join(fields(_model_fields(v)) for v in views))


def list_(args: argparse.Namespace) -> int:
    views = catalog.list_models(cli_operator())["models"]
    return output(args, {"models": views}, lambda: table(
        ["MODEL", "PROVIDER", "UPSTREAM_MODEL", "INPUT_USD/MTOK", "OUTPUT_USD/MTOK", "ENABLED", "UPDATED_AT"],
        [[v["model"], v["provider"], v["upstream_model"], v["input_usd_per_mtok"], v["output_usd_per_mtok"],
          v["enabled"], v["updated_at"]] for v in views],
        right=(3, 4),
    ) if views else "The catalog has no models.")


def _fx_human(view: dict) -> str:
    if view["rate"] is None:
        return f"No {view['pair']} rate is set."
    return f"{view['pair']} {view['rate']} (updated {view['updated_at']})"


def fx_set(args: argparse.Namespace) -> int:
    view = catalog.set_fx(cli_operator(), args.pair, args.rate)
    return output(args, view, lambda: _fx_human(view))


def fx_show(args: argparse.Namespace) -> int:
    view = catalog.get_fx(cli_operator(), args.pair)
    return output(args, view, lambda: _fx_human(view))


def register(commands, leaf) -> None:
    group = commands.add_parser("catalog", help="models and their prices")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(sub, "set", set_, "add or change a model's USD prices per million tokens")
    p.add_argument("model", metavar="MODEL", nargs="+",
                   help="provider/model, e.g. openai/gpt-4o-mini (several: the same prices for each)")
    p.add_argument("--input-usd-per-mtok", required=True, metavar="X")
    p.add_argument("--output-usd-per-mtok", required=True, metavar="Y")
    p.add_argument("--provider", metavar="P", help="default: MODEL's part before the /")
    p.add_argument("--upstream-model", metavar="M", help="default: MODEL's part after the /")
    p.add_argument("--max-output-tokens", type=int, metavar="N",
                   help="the most output a request holds and is sent upstream (default 16384)")
    p.add_argument("--cached-input-usd-per-mtok", metavar="X", help="price of cached input (default: input price)")
    p.add_argument("--cache-write-usd-per-mtok", metavar="X", help="price of cache writes (default: input price)")
    p.add_argument("--tokens-per-image", type=int, metavar="N",
                   help="prompt tokens one image, audio or file part may cost (default 4096)")
    p.add_argument("--disable", action="store_true", help="keep the entry but refuse requests for it")
    leaf(sub, "list", list_, "list the catalog's models (disabled ones too)")


def register_fx(commands, leaf) -> None:
    group = commands.add_parser("fx", help="the USD→TRY rate")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(sub, "set", fx_set, "set an exchange rate (USDTRY)")
    p.add_argument("pair", metavar="USDTRY")
    p.add_argument("rate", metavar="RATE", help="TRY per USD, e.g. 41.5")
    p = leaf(sub, "show", fx_show, "show an exchange rate")
    p.add_argument("pair", metavar="PAIR", nargs="?", default="USDTRY")
