#!/bin/sh
# ProxyFunction's handler: the Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap) runs this
# script, waits for GET /healthz on $PORT, then forwards each API Gateway event to uvicorn as HTTP.
# The core layer's package lives in /opt/python; app.py sits next to this script.
set -e
cd "$(dirname "$0")"
export PYTHONPATH="/opt/python:${LAMBDA_TASK_ROOT:-.}${PYTHONPATH:+:$PYTHONPATH}"
exec python -m uvicorn app:app --host 0.0.0.0 --port "${PORT:-8080}" --no-access-log
