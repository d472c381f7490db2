"""Check that a `sam build` output runs on the functions' arm64 Lambda with Python 3.13.

`sam build` on an x86 machine must fetch aarch64 wheels for compiled dependencies (pydantic_core, …); a
package built for the machine it ran on would import-fail only in AWS. This reads every ELF file's machine
field and every installed wheel's tags: aarch64 and CPython 3.13 (or pure Python) only.

Standard library only: `make build` runs it with any python3 (`python3 tools/onysoft_tools/arm64_check.py`).
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from pathlib import Path

EM_AARCH64 = 183
MACHINES = {3: "x86", 62: "x86_64", 40: "arm", 183: "aarch64"}
PYTHON_TAG = "313"


def elf_machine(path: Path) -> int | None:
    """The ELF e_machine of `path`, or None when it is no ELF file."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    endian = "<" if header[5] == 1 else ">"
    return struct.unpack(endian + "H", header[18:20])[0]


def wheel_tags(wheel_file: Path) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in wheel_file.read_text(errors="replace").splitlines()
            if line.startswith("Tag:")]


def problems(build_dir: Path, require: tuple[str, ...] = ()) -> tuple[list[str], dict[str, int]]:
    """(what is wrong, counts) for every artifact under build_dir."""
    found: list[str] = []
    counts = {"elf_aarch64": 0, "wheels": 0}
    for path in sorted(build_dir.rglob("*")):
        if not path.is_file():
            continue
        machine = elf_machine(path)
        if machine is not None:
            if machine != EM_AARCH64:
                found.append(f"{path}: compiled for {MACHINES.get(machine, machine)}, not aarch64")
            else:
                counts["elf_aarch64"] += 1
            abi = re.search(r"\.cpython-(\d+)", path.name)
            if abi and abi.group(1) != PYTHON_TAG:
                found.append(f"{path}: built for CPython {abi.group(1)}, the runtime is {PYTHON_TAG}")
        elif path.name == "WHEEL" and path.parent.name.endswith(".dist-info"):
            counts["wheels"] += 1
            for tag in wheel_tags(path):
                _python, abi_tag, platform = tag.split("-")
                if platform != "any" and "aarch64" not in platform:
                    found.append(f"{path.parent.name}: wheel for {platform}, not aarch64")
                if abi_tag.startswith("cp") and abi_tag not in (f"cp{PYTHON_TAG}", "abi3") and platform != "any":
                    found.append(f"{path.parent.name}: wheel for {abi_tag}, the runtime is cp{PYTHON_TAG}")
    for package in require:
        compiled = [p for p in build_dir.rglob(f"{package}/*.so")]
        if not compiled:
            found.append(f"{package}: no compiled module under {build_dir} (was it built?)")
    return found, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", default=".aws-sam/build")
    parser.add_argument("--require", action="append", default=[],
                        help="a compiled package that must be present (e.g. pydantic_core)")
    args = parser.parse_args(argv)
    build_dir = Path(args.build_dir)
    if not build_dir.is_dir():
        print(f"arm64 check: {build_dir} does not exist (run sam build first)", file=sys.stderr)
        return 2
    found, counts = problems(build_dir, tuple(args.require))
    for problem in found:
        print(f"arm64 check: {problem}", file=sys.stderr)
    if found:
        return 1
    print(f"arm64 check: {counts['elf_aarch64']} compiled files, all aarch64 / CPython {PYTHON_TAG}; "
          f"{counts['wheels']} installed wheels, all aarch64 or pure Python")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
