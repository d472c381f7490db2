#!/bin/sh
# Prints the directory of a python3.13 executable (the Lambda runtime's version, which `sam build` needs on
# PATH), installing one if none is found. Order: PATH, pyenv's versions, uv's, then an install through the
# system's package manager (apt: Debian 13 / Ubuntu 24.10+ ship python3.13) or uv (from PyPI).
set -eu
VERSION=3.13
here() { dirname "$(command -v "$1")"; }

if command -v python$VERSION >/dev/null 2>&1 && python$VERSION -c 'import sys' 2>/dev/null; then
    here python$VERSION; exit 0
fi
root=$( (command -v pyenv >/dev/null 2>&1 && pyenv root) || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for dir in "$root"/versions/$VERSION.*/bin; do
    if [ -x "$dir/python$VERSION" ]; then echo "$dir"; exit 0; fi
done
TOOLS=${TOOLS_DIR:-.tools}
if [ -x "$TOOLS/uv-venv/bin/uv" ]; then
    found=$("$TOOLS/uv-venv/bin/uv" python find $VERSION 2>/dev/null || true)
    if [ -n "$found" ]; then dirname "$found"; exit 0; fi
fi

echo "find_python313: no python$VERSION found; installing one" >&2
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && apt-cache show python$VERSION >/dev/null 2>&1; then
    apt-get install -y -q python$VERSION >&2 && here python$VERSION && exit 0
fi
python3 -m venv "$TOOLS/uv-venv" >&2
"$TOOLS/uv-venv/bin/pip" install --quiet uv >&2
"$TOOLS/uv-venv/bin/uv" python install $VERSION >&2
dirname "$("$TOOLS/uv-venv/bin/uv" python find $VERSION)"
