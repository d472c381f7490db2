"""`onysoft catalog set|list` (models and their USD prices per million tokens) and `onysoft fx set|show`."""

from __future__ import annotations

import argparse

from onysoft.operations import catalog
from onysoft.operations.access import cli_operator

from .output import UsageError, fields, output, table

COUNT_FLAGS = ("max_output_tokens", "tokens_per_image", "tokens_per_audio", "tokens_per_document",
               "tier_above_tokens")
PRICE_FLAGS = ("cached_input_usd_per_mtok", "cache_write_usd_per_mtok", "audio_input_usd_per_mtok",
               "tier_input_usd_per_mtok", "tier_output_usd_per_mtok")


def _per_mtok(view: dict, name: str, default: str) -> str:
    return f"{view[name] or default} USD / 1M tokens"


def _model_fields(view: dict) -> list[tuple[str, object]]:
    tier = (f"above {view['tier_above_tokens']} prompt tokens: {view['tier_input_usd_per_mtok']} in, "
            f"{view['tier_output_usd_per_mtok']} out USD / 1M tokens" if view["tier_above_tokens"] else "none")
    return [
        ("model", view["model"]), ("provider", view["provider"]), ("upstream_model", view["upstream_model"]),
        ("input", _per_mtok(view, "input_usd_per_mtok", "")),
        ("output", _per_mtok(view, "output_usd_per_mtok", "")),
        ("cached input", _per_mtok(view, "cached_input_usd_per_mtok", view["input_usd_per_mtok"])),
        ("cache write", _per_mtok(view, "cache_write_usd_per_mtok", view["input_usd_per_mtok"])),
        ("audio input", _per_mtok(view, "audio_input_usd_per_mtok", "") if view["audio_input_usd_per_mtok"]
         else "refused (no price)"),
        ("long-context tier", tier),
        ("enabled", view["enabled"]), ("max_output_tokens", view["max_output_tokens"] or "default"),
        *((name, view[name] or "refused (no bound)") for name in ("tokens_per_image", "tokens_per_audio",
                                                                 "tokens_per_document")),
        ("updated_at", view["updated_at"]),
    ]


def set_(args: argparse.Namespace) -> int:
    """One MODEL: its view (`--json`: the model's object). Several, with the same prices: `{"models": [...]}`."""
    for name in COUNT_FLAGS:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number")
    if len(args.model) > 1 and (args.provider or args.upstream_model):
        raise UsageError("--provider and --upstream-model name one model's upstream: set one MODEL at a time")
    options = {name: getattr(args, name) for name in (*COUNT_FLAGS, *PRICE_FLAGS) if getattr(args, name) is not None}
    views = [catalog.set_model(
        cli_operator(), model, input_usd_per_mtok=args.input_usd_per_mtok,
        output_usd_per_mtok=args.output_usd_per_mtok, provider=args.provider, upstream_model=args.upstream_model,
        enabled=not args.disable, **options) for model in args.model]
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
    note = {"fresh": "", "stale": "  [past its warning age: update it]",
            "expired": "  [too old: TRY requests are refused until it is updated]"}.get(view["state"], "")
    return f"{view['pair']} {view['rate']} (updated {view['updated_at']}, {view['age_hours']} hours ago){note}"


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
                   help="the most prompt tokens one image part may cost (none: image parts are refused)")
    p.add_argument("--tokens-per-audio", type=int, metavar="N",
                   help="the most audio tokens one audio part may cost (with --audio-input-usd-per-mtok)")
    p.add_argument("--audio-input-usd-per-mtok", metavar="X", help="price of audio input (none: audio is refused)")
    p.add_argument("--tokens-per-document", type=int, metavar="N",
                   help="the most prompt tokens one document or file part may cost, inline or by URL "
                        "(none: such parts are refused)")
    p.add_argument("--tier-above-tokens", type=int, metavar="N",
                   help="long-context tier: a prompt above N tokens is priced wholly at the tier's prices")
    p.add_argument("--tier-input-usd-per-mtok", metavar="X", help="the tier's input price")
    p.add_argument("--tier-output-usd-per-mtok", metavar="Y", help="the tier's output price")
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
