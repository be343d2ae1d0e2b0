"""The name rules every server applies before looking anything up."""

from __future__ import annotations

from pathlib import Path

import pytest

from overrided.served import NotServed, View, clean_name


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("none-devboot-rock3a", "none-devboot-rock3a"),
        ("/none-devboot-rock3a", "none-devboot-rock3a"),
        ("//a//b/", "a/b"),
        ("./a/./b", "a/b"),
        ("pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/01-52-54-00-12-34-56"),
        ("a\\b", "a/b"),
    ],
)
def test_clean_name_accepts(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        ("/", "empty"),
        ("../etc/passwd", ".."),
        ("a/../../b", ".."),
        ("/..", ".."),
        ("a\x00b", "NUL"),
        ("..\\secret", ".."),
    ],
)
def test_clean_name_refuses(raw: str, why: str) -> None:
    with pytest.raises(NotServed, match=why):
        clean_name(raw)


def test_an_open_view_survives_unlink(tmp_path: Path) -> None:
    p = tmp_path / "b"
    p.write_bytes(b"0123456789")
    view = View.of_file(p, 10)
    with view.open() as opened:
        p.unlink()
        assert opened.read_at(3, 4) == b"3456"
        assert opened.read_at(8, 100) == b"89"
        assert opened.read_at(10, 1) == b""
        assert opened.size == 10
