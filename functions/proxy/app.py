"""Proxy entry point for uvicorn (run.sh): the ASGI app lives in the core layer."""

from onysoft.proxy_app import app

__all__ = ["app"]
