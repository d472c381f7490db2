"""`make build`'s check that the built functions and layer run on arm64 Lambda (onysoft_tools.arm64_check)."""

import struct
from pathlib import Path

import pytest

from onysoft_tools import arm64_check

ROOT = Path(__file__).resolve().parents[2]


def _elf(path: Path, machine: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HH", 3, machine)
    path.write_bytes(header + bytes(64))


def _wheel(directory: Path, tag: str) -> None:
    directory.mkdir(parents=True)
    (directory / "WHEEL").write_text(f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")


def test_an_x86_module_or_wheel_fails_and_aarch64_passes(tmp_path):
    good = tmp_path / "good"
    _elf(good / "pydantic_core" / "_pydantic_core.cpython-313-aarch64-linux-gnu.so", 183)
    _wheel(good / "pydantic_core-2.41.5.dist-info", "cp313-cp313-manylinux_2_17_aarch64.manylinux2014_aarch64")
    _wheel(good / "httpx-0.28.1.dist-info", "py3-none-any")
    assert arm64_check.problems(good, ("pydantic_core",))[0] == []
    assert arm64_check.main([str(good), "--require", "pydantic_core"]) == 0

    bad = tmp_path / "bad"
    _elf(bad / "pydantic_core" / "_pydantic_core.cpython-311-x86_64-linux-gnu.so", 62)
    _wheel(bad / "pydantic_core-2.41.5.dist-info", "cp311-cp311-manylinux_2_17_x86_64")
    found, _ = arm64_check.problems(bad, ("pydantic_core",))
    assert any("compiled for x86_64" in p for p in found)
    assert any("CPython 311" in p for p in found)
    assert any("not aarch64" in p and "dist-info" in p for p in found)
    assert arm64_check.main([str(bad)]) == 1
    assert arm64_check.problems(tmp_path / "empty-nothing", ("pydantic_core",))[0]  # required but missing


@pytest.mark.skipif(not (ROOT / ".aws-sam" / "build").is_dir(), reason="no `make build` output here")
def test_the_last_sam_build_is_arm64():
    found, counts = arm64_check.problems(ROOT / ".aws-sam" / "build", ("pydantic_core", "cryptography/hazmat/bindings"))
    assert found == [] and counts["elf_aarch64"] >= 1
