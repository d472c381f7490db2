"""`make bench`: the gateway's overhead, cold starts, DynamoDB work per request and cost per million requests.

Run from the repository root: `.venv/bin/python -m tools.bench` (what `make bench` does). It writes
docs/BENCHMARKS.md. Everything runs on this machine, on loopback only: a fake OpenAI-compatible upstream,
moto server, `onysoft dev`. Nothing here is part of `make test` or of what ships to Lambda.
"""
