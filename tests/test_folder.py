"""What a plain served folder gives out, and what it never does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from overrided.folder import FolderNamespace
from overrided.served import NotServed


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "image.fit").write_bytes(b"F" * 100)
    (root / "sub" / "a.dtb").write_bytes(b"D" * 10)
    (root / "empty").write_bytes(b"")
    (root / "signing.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (root / "dev.KEY").write_text("secret")
    (root / ".hidden").write_text("x")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("x")
    (tmp_path / "outside").write_text("outside")
    os.symlink("image.fit", root / "latest")
    os.symlink("sub/a.dtb", root / "board.dtb")
    os.symlink(tmp_path / "outside", root / "escape")
    os.symlink("../outside", root / "escape-rel")
    os.symlink("signing.pem", root / "innocent")
    os.symlink("loop", root / "loop")
    os.symlink("sub", root / "subdir-link")
    os.mkfifo(root / "fifo")
    return root


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("image.fit", 100),
        ("/image.fit", 100),
        ("sub/a.dtb", 10),
        ("sub//a.dtb", 10),
        ("empty", 0),
        ("latest", 100),  # symlink inside the root
        ("board.dtb", 10),
        ("subdir-link/a.dtb", 10),
    ],
)
def test_serves(tree: Path, name: str, size: int) -> None:
    entry = FolderNamespace(tree).lookup(name)
    assert entry.view.size == size
    assert all(
        p.path is not None and p.path.is_relative_to(tree.resolve()) for p in entry.view.pieces
    )
    with entry.view.open() as opened:
        assert len(opened.read_at(0, 1000)) == size


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("missing", "does not exist"),
        ("sub", "not a regular file"),
        ("fifo", "not a regular file"),
        ("signing.pem", "key file"),
        ("dev.KEY", "key file"),
        (".hidden", "hidden"),
        (".git/config", "hidden"),
        ("innocent", "hidden or key file"),  # a symlink to a key is still a key
        ("escape", "outside the served folder"),
        ("escape-rel", "outside the served folder"),
        ("../outside", "'..'"),
        ("sub/../../outside", "'..'"),
        ("loop", "does not exist"),
        ("", "empty"),
        ("a\x00b", "NUL"),
    ],
)
def test_refuses(tree: Path, name: str, why: str) -> None:
    with pytest.raises(NotServed, match=why):
        FolderNamespace(tree).lookup(name)
