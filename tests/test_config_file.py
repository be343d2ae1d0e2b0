"""``overrided serve --config overrided.toml``: one-line errors naming file and key, flags
winning over the file, relative paths taken from the file's folder, ``[dhcp]`` handed through
to the ``--dhcp*`` options, and a real ``overrided serve`` started from a file alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from overrided.cli import build_parser
from overrided.commands.serve import resolve_options
from overrided.config_file import ConfigFileError, load_config_file
from tests.support.fits import sample_fit
from tests.support.nginx import Nginx, nginx_binary
from tests.support.serve import REPO, Served, free_port


def options(tmp_path: Path, text: str, *flags: str) -> dict[str, object]:
    """The serve options after ``--config`` (holding ``text``) and ``flags``."""
    path = tmp_path / "lab" / "overrided.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    args = build_parser().parse_args(["serve", "--config", str(path), *flags])
    resolve_options(args)
    return vars(args)


BAD = [
    ("colour = 1\n", "overrided.toml: colour: is not a setting"),
    ("[tftp]\nport = 70000\n", "overrided.toml: tftp.port: Input should be less than or equal"),
    ("[http]\nport = 'web'\n", "overrided.toml: http.port: Input should be a valid integer"),
    ("[fetch]\nallow = ['ftp://x/']\n", "overrided.toml: fetch.allow.0: 'ftp://x/': a prefix is"),
    ("[fetch]\nallow = ['https://x/?sig=1']\n", "fetch.allow.0: 'https://x/?sig=1': a prefix has"),
    ("[fetch]\nredirects = 99\n", "overrided.toml: fetch.redirects: Input should be less"),
    ("boards = \n", "overrided.toml: not valid TOML: Invalid value (at line 1, column 10)"),
    ("[dhcp]\ncolour = 'blue'\n", "overrided.toml: dhcp.colour: is not a DHCP setting (known: "),
    ("[dhcp]\nproxy = 'maybe'\n", "overrided.toml: dhcp.proxy: 'maybe' is not"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as err:
        options(tmp_path, text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"nope\.toml: cannot read: .*No such file"):
        load_config_file(tmp_path / "nope.toml")


FILE = """
boards = "boards"
store = "/var/lib/overrided"
token_file = "token"
[tftp]
port = 69
[http]
port = 80
timeout = 30
public_url = "http://192.0.2.1/"
[fetch]
allow = ["https://artifacts.example.org/kernels/"]
max_size = 1000
[dhcp]
interface = "lab0"
range = "192.0.2.100,192.0.2.150"
"""


def test_the_file_sets_what_the_flags_do_not(tmp_path: Path) -> None:
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "token").write_text("from-file\n")
    got = options(tmp_path, FILE)
    lab = tmp_path / "lab"
    assert got["boards"] == lab / "boards"  # relative to the file's folder
    assert got["store"] == Path("/var/lib/overrided")
    assert got["builds"] == Path("kernel-builds")  # not in the file: the flag's default
    assert got["tftp_port"] == 69 and got["http_port"] == 80 and got["http_timeout"] == 30
    assert got["public_url"] == "http://192.0.2.1/"
    assert got["allow_url"] == ["https://artifacts.example.org/kernels/"]
    assert got["fetch_max_size"] == 1000 and got["fetch_redirects"] == 5
    assert got["dhcp"] == "lab0" and got["dhcp_range"] == "192.0.2.100,192.0.2.150"
    assert got["token_file"] == lab / "token"


def test_flags_win_over_the_file_even_at_their_default_value(tmp_path: Path) -> None:
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "token").write_text("from-file\n")
    got = options(
        tmp_path,
        FILE,
        "--tftp-port",
        "6969",  # the default, given on purpose
        "--allow-url",
        "http://192.0.2.1:8000/ci/",
        "--boards",
        "here",
    )
    assert got["tftp_port"] == 6969 and got["http_port"] == 80
    assert got["allow_url"] == ["http://192.0.2.1:8000/ci/"]
    assert got["boards"] == Path("here")
    assert got["token"] == (os.environ.get("OVERRIDED_TOKEN") or "from-file")


def test_http_enabled_false_is_no_http(tmp_path: Path) -> None:
    assert options(tmp_path, "[http]\nenabled = false\n")["no_http"] is True


def test_serve_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[tftp]\nport = -1\n")
    r = subprocess.run(
        [sys.executable, "-m", "overrided", "serve", "--config", str(tmp_path / "bad.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        check=False,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"overrided: error: {tmp_path / 'bad.toml'}: tftp.port: Input should be greater than "
        "or equal to 0"
    ]


@pytest.mark.skipif(nginx_binary() is None, reason="needs nginx")
def test_serve_from_a_config_file_fetches_a_build(tmp_path: Path) -> None:
    """Ports, folders, the token file and the allowed prefix all come from the file."""
    fit = sample_fit(tmp_path / "fit").fit
    with Nginx(tmp_path / "nginx") as nginx:
        (nginx.www / "ci").mkdir()
        (nginx.www / "ci" / "image.fit").write_bytes(fit.read_bytes())
        lab = tmp_path / "lab"
        (lab / "boards").mkdir(parents=True)
        (lab / "boards" / "board-a.toml").write_text('compatible = ["v,board-a"]\n')
        (lab / "token").write_text("lab-token\n")
        srv = Served(lab, boards=lab / "boards")
        port = free_port(__import__("socket").SOCK_STREAM)
        (lab / "overrided.toml").write_text(
            f'boards = "boards"\nbuilds = "kernel-builds"\nstore = "store"\n'
            f'token_file = "token"\n[tftp]\naddr = "127.0.0.1"\nport = {srv.tftp_port}\n'
            f'[http]\naddr = "127.0.0.1"\nport = {port}\n[fetch]\nallow = ["{nginx.url("ci/")}"]\n'
        )
        srv.command = lambda: [  # type: ignore[method-assign]
            sys.executable, "-m", "overrided", "serve", "--config", str(lab / "overrided.toml"),
        ]  # fmt: skip
        srv.http_port = port
        srv.env = {"OVERRIDED_TOKEN": ""}
        with srv:
            body = json.dumps({"files": [{"name": "image.fit", "url": nginx.url("ci/image.fit")}]})
            req = urllib.request.Request(
                f"{srv.http_base}/api/builds/k1",
                data=body.encode(),
                method="PUT",
                headers={"Authorization": "Bearer lab-token"},
            )
            with urllib.request.urlopen(req, timeout=60) as r:
                answer = json.loads(r.read())
            assert answer["on_build"] == ["board-a: none-devboot-board-a"]
            assert srv.tftp_get("none-devboot-board-a")
            assert (lab / "kernel-builds" / "k1" / "image.fit").read_bytes() == fit.read_bytes()
            srv.stop()
