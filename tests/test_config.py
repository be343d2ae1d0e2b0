"""Board files: what a valid one means, and one clear line naming file, field and problem for
every invalid one. One bad file never stops the others from loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from overrided.config import Board, BoardError, Settings, load_board, load_boards

REPO = Path(__file__).resolve().parents[1]


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_minimal_board_takes_barebox_defaults(tmp_path: Path) -> None:
    board = load_board(write(tmp_path / "boards", "rock3a.toml", 'compatible = ["radxa,rock3a"]'))
    assert board.name == "rock3a"
    # barebox: global.hostname = first compatible without its vendor; global.user = "none"
    assert board.hostname == "rock3a"
    assert board.user == "none"
    assert board.rule == "barebox"
    assert (board.image, board.oftree, board.initrd) == ("fit", "fit", "replace")
    assert board.build is None  # the latest build
    assert board.formats == ["barebox"]


def test_none_means_leave_that_part_alone(tmp_path: Path) -> None:
    text = 'compatible = ["v,b"]\nimage = "none"\ninitrd = "none"\noftree = "keep"'
    board = load_board(write(tmp_path / "boards", "b.toml", text))
    assert (board.image, board.initrd, board.oftree) == (None, None, "keep")


def test_full_board(tmp_path: Path) -> None:
    text = """
hostname = "lab-7"
user = "afa"
arch = "arm64"
compatible = ["radxa,rock3a", "rockchip,rk3568"]
rule = "u-boot"
build = "next-20260101"
image = "kernel"
oftree = ["overlays/spi.dtbo", "overlays/uart.dtbo"]
initrd = "append"
init = "init.cpio"
sign = "dev"
signed_images_forced = true
formats = ["barebox", "pxe"]
mac = "52-54-00-AB-cd-01"
[bootargs]
rsinit = "rsinit.bind_modules"
console = "console=ttyS2,1500000 earlycon"
"""
    b = load_board(write(tmp_path / "boards", "lab.toml", text))
    assert b.hostname == "lab-7" and b.user == "afa" and b.rule == "u-boot"
    assert b.overlays == ("overlays/spi.dtbo", "overlays/uart.dtbo")
    assert b.mac == ("52:54:00:ab:cd:01",)
    assert b.bootargs["console"] == "console=ttyS2,1500000 earlycon"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("compatible = []", "boards/x.toml: compatible: must list at least one string"),
        ("", "boards/x.toml: compatible: is required"),
        ('compatible = "radxa,rock3a"', "boards/x.toml: compatible: Input should be a valid list"),
        ('compatible = ["a b"]', "boards/x.toml: compatible: 'a b' is not a compatible string"),
        ('compatible = ["v,b"]\nrule = "grub"', "boards/x.toml: rule: Input should be 'barebox'"),
        ('compatible = ["v,b"]\nimage = "zimage"', "boards/x.toml: image: Input should be 'fit'"),
        ('compatible = ["v,b"]\ninitrd = "prepend"', "boards/x.toml: initrd: Input should be"),
        ('compatible = ["v,b"]\noftree = []', "boards/x.toml: oftree: "),
        ('compatible = ["v,b"]\nhostname = "a b"', "boards/x.toml: hostname: 'a b' must be"),
        ('compatible = ["v,b"]\nuser = "a/b"', "boards/x.toml: user: 'a/b' must be"),
        ('compatible = ["v,b"]\ncolour = "red"', "boards/x.toml: colour: is not a board field"),
        ('compatible = ["v,b"]\nmac = "52:54:00"', "boards/x.toml: mac: '52:54:00' is not a MAC"),
        ('compatible = ["v,b"]\nformats = ["grub"]', "boards/x.toml: formats: 'grub' is not a"),
        ('compatible = ["v,b"]\nname = "y"', "boards/x.toml: name: is the file name"),
        ("compatible = [", "boards/x.toml: not valid TOML: "),
        # Values end up inside barebox hush double quotes: refuse what hush would interpret.
        ('compatible = ["v,b"]\n[bootargs]\nx = "a\\"b"', "boards/x.toml: bootargs: x: must not"),
        ('compatible = ["v,b"]\n[bootargs]\nx = "$foo"', "boards/x.toml: bootargs: x: must not"),
        (
            'compatible = ["v,b"]\n[bootargs]\nx = "`reset`"',
            "boards/x.toml: bootargs: x: must not contain '`'",
        ),
        (
            'compatible = ["v,b"]\n[bootargs]\nx = "a\\nb"',
            "boards/x.toml: bootargs: x: must not contain '\\n'",
        ),
        (
            'compatible = ["v,b"]\n[bootargs]\nx = "a\\\\b"',
            "boards/x.toml: bootargs: x: must not contain",
        ),
        (
            'compatible = ["v,b"]\n[bootargs]\n"a b" = "c"',
            "boards/x.toml: bootargs: 'a b' is not a barebox",
        ),
        (
            'compatible = ["v,b"]\noftree = ["a:b"]',
            "boards/x.toml: oftree: 'a:b' is not an overlay",
        ),
    ],
)
def test_invalid_board_names_file_field_and_problem(tmp_path: Path, text: str, error: str) -> None:
    path = write(tmp_path / "boards", "x.toml", text)
    with pytest.raises(BoardError) as info:
        load_board(path)
    message = str(info.value)
    assert message.startswith(error), message
    assert "\n" not in message


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    write(boards, "a.toml", 'compatible = ["v,board-a"]')
    write(boards, "b.toml", "compatible = []")
    write(boards, "c.toml", 'compatible = ["v,board-c"]\nuser = "afa"')
    write(boards, ".d.toml", "garbage")  # an editor's temp file: not a board
    write(boards, "notes.txt", "not a board either")
    loaded, errors = load_boards(boards)
    assert [b.name for b in loaded] == ["a", "c"]
    assert errors == {"boards/b.toml": "boards/b.toml: compatible: must list at least one string"}


def test_two_boards_cannot_claim_the_same_names(tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    write(boards, "a.toml", 'compatible = ["v,x"]')
    write(boards, "b.toml", 'compatible = ["w,y"]\nhostname = "x"')
    write(boards, "c.toml", 'compatible = ["w,y"]\nhostname = "x"\nuser = "afa"')  # other user
    loaded, errors = load_boards(boards)
    assert [b.name for b in loaded] == ["a", "c"]
    assert errors["boards/b.toml"] == (
        "boards/b.toml: hostname: none/x is already used by boards/a.toml"
    )


def test_missing_boards_folder_is_empty() -> None:
    assert load_boards(Path("/nonexistent-boards")) == ([], {})


@pytest.mark.parametrize(
    ("file", "hostname", "first"),
    [
        ("rock3a.toml", "rock3a", "radxa,rock3a"),
        ("imx8mm-evk.toml", "imx8mm-evk", "fsl,imx8mm-evk"),
        ("qemu-virt.toml", "virt64", "linux,dummy-virt"),
    ],
)
def test_shipped_boards_are_valid(file: str, hostname: str, first: str) -> None:
    board = load_board(REPO / "boards" / file)
    assert board.hostname == hostname
    assert board.compatible[0] == first


def test_board_model_is_frozen() -> None:
    board = Board(compatible=["v,b"])
    with pytest.raises(ValueError):
        board.user = "x"  # type: ignore[misc]


def test_settings_defaults_are_the_repo_folders_and_unprivileged_ports() -> None:
    s = Settings()
    assert (s.boards_dir, s.builds_dir) == (Path("boards"), Path("kernel-builds"))
    assert s.tftp_port == 6969 and s.http_port == 8080
    assert s.grace == 600.0
    assert s.pin_idle == 60.0  # a client's pin of a board's names, after its last read


def test_serve_options_reach_the_settings() -> None:
    import argparse

    from overrided.commands.serve import register, settings_of

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--grace", "30", "--pin-idle", "0"])
    s = settings_of(args)
    assert (s.grace, s.pin_idle) == (30.0, 0.0)
    with pytest.raises(ValueError, match="pin_idle"):
        Settings(pin_idle=-1)


def test_boards_check_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    boards = tmp_path / "boards"
    write(boards, "a.toml", 'compatible = ["v,board-a"]\nuser = "afa"')
    write(boards, "b.toml", 'compatible = ["v,board-b"]\nrule = "grub"')
    cmd = [sys.executable, "-m", "overrided", "boards"]
    check = subprocess.run(
        [*cmd, "check", "--boards", str(boards)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 1
    assert check.stdout.splitlines()[0].startswith("boards/b.toml: rule: Input should be")
    assert check.stdout.splitlines()[-1] == "1 valid, 1 invalid"
    ls = subprocess.run(
        [*cmd, "ls", "--boards", str(boards)], capture_output=True, text=True, check=True
    )
    assert ls.stdout.splitlines()[0].split("\t")[:2] == ["a", "afa-devboot-board-a"]
