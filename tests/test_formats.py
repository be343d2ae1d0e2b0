"""Override formats register themselves where they are defined (``overrided/clients/``): a board
file may list any registered format, and the renderer finds it in the registry alone."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from overrided.builds import index_build
from overrided.clients import FORMATS, Artifacts, register
from overrided.config import Board, BoardError, load_board
from overrided.render import RenderContext, render_board
from overrided.store import Store
from tests.support.fits import sample_fit


def test_the_shipped_formats_are_registered() -> None:
    assert set(FORMATS) >= {"barebox", "pxe", "bootscr", "ipxe"}
    assert FORMATS["ipxe"].plain_kernel and not FORMATS["barebox"].plain_kernel


def test_a_board_file_naming_an_unknown_format_says_which_exist(tmp_path: Path) -> None:
    (tmp_path / "boards").mkdir()
    path = tmp_path / "boards" / "x.toml"
    path.write_text('compatible = ["v,b"]\nformats = ["grub"]\n')
    with pytest.raises(BoardError) as err:
        load_board(path)
    assert str(err.value).startswith("boards/x.toml: formats: 'grub' is not a format (known: ")
    assert "barebox" in str(err.value) and "ipxe" in str(err.value)


@pytest.fixture
def registry() -> Iterator[None]:
    """The registry as it was before the test (a test's format must not outlive it)."""
    before = dict(FORMATS)
    yield
    FORMATS.clear()
    FORMATS.update(before)


@pytest.mark.usefixtures("registry")
def test_a_format_registered_by_its_own_module_is_rendered(tmp_path: Path) -> None:
    seen: list[Artifacts] = []

    @register("listing", plain_kernel=True)
    def render(a: Artifacts) -> dict[str, bytes]:
        seen.append(a)
        return {f"{a.user}-listing-{a.hostname}": f"{a.fit} {a.kernel}\n".encode()}

    folder = tmp_path / "kernel-builds" / "b1"
    folder.mkdir(parents=True)
    shutil.copy(sample_fit(tmp_path / "fit").fit, folder / "image.fit")
    store = Store(tmp_path / "store")
    build = index_build(folder, store)
    ctx = RenderContext(store=store, boards_dir=tmp_path, keys_dir=tmp_path / "keys")
    board = Board(name="a", compatible=["v,board-a"], formats=["barebox", "listing"])
    r = render_board(board, [build], ctx)

    assert r.info.served["listing"] == ["none-listing-board-a"]
    (a,) = seen
    # plain_kernel: the format gets the kernel outside the FIT, as iPXE does.
    assert a.kernel is not None and a.fit is not None, asdict(a)
    assert r.names["none-listing-board-a"].read() == f"{a.fit} {a.kernel}\n".encode()
    with pytest.raises(ValueError, match="registered twice"):
        register("listing")(render)


def test_only_the_barebox_module_spells_barebox_names() -> None:
    repo = Path(__file__).resolve().parent.parent
    spelling = sorted(
        str(p.relative_to(repo))
        for p in (repo / "overrided").rglob("*.py")
        if "-devboot-" in p.read_text()
    )
    assert spelling == ["overrided/clients/barebox.py"]
