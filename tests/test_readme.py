"""README.md, followed as a newcomer would: its commands, as written, in a fresh clone.

The repository is cloned (``git clone``) into a temporary folder; files changed in the working
tree but not committed yet are copied over the clone, so the test checks what the next commit
holds (the list is printed; it is empty on a clean checkout). The commands run with a clean
environment: a fresh ``HOME``, ``PATH`` of the system folders only, no venv, and of this
machine's settings only pip's (its index and CA configuration, and its cache, so that the
clone's ``make`` downloads nothing twice).

The commands are taken from README.md itself (its ``sh`` blocks, found by their section), so a
change to the README is tested as it reads:

1. the quick start line (``apt-get install … && make run``) until its ``ready:`` line;
2. while it serves: ``. .venv/bin/activate``, then ``make install && export PATH=…`` and
   ``overrided`` from ``~/.local/bin``; the tools block (``overrided fit ls``, ``fit verify``,
   ``boards check``, ``boards ls``) with a build in ``kernel-builds/my-fix``; the upload example
   in a stand-in kernel tree, against the running service;
3. Ctrl-C (SIGINT to the process group): the service stops cleanly.

``make run`` serves on the README's ports (TFTP 6969, HTTP 8080, all addresses): they must be
free. Needs root for the quick start's ``apt-get`` without ``sudo`` (as ``.ci/run`` runs).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.builds import RELEASE, modules_cpio
from tests.support.fits import sample_fit
from tests.support.serve import REPO

pytestmark = pytest.mark.timeout(1800)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# pip's own settings from this machine: where packages come from, and its cache.
PIP_SETTINGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT")
PIP_SETTINGS += ("PIP_FIND_LINKS", "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK")


def sh_blocks(readme: str, heading: str) -> list[str]:
    """The ``sh`` code blocks of the section that starts with `heading`, in order (indented
    blocks in list items too, their indentation removed)."""
    start = readme.index(heading + "\n")
    nxt = re.search(r"^#{1,3} ", readme[start + len(heading) :], re.M)
    section = readme[start : start + len(heading) + (nxt.start() if nxt else len(readme))]
    blocks = []
    for m in re.finditer(r"^( *)```sh\n(.*?)^\1```$", section, re.M | re.S):
        indent = len(m.group(1))
        blocks.append("".join(line[indent:] for line in m.group(2).splitlines(keepends=True)))
    assert blocks, f"README.md: no sh block under {heading!r}"
    return blocks


def clean_env(home: Path) -> dict[str, str]:
    """A new user's environment: system PATH, a fresh HOME, and this machine's pip settings."""
    env = {"HOME": str(home), "PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "TERM": "dumb"}
    env |= {k: v for k, v in os.environ.items() if k in PIP_SETTINGS}
    real_home = Path.home()
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR", str(real_home / ".cache" / "pip"))
    user_conf = real_home / ".config" / "pip" / "pip.conf"
    if user_conf.is_file():  # the user's pip configuration goes along to the new HOME
        (home / ".config" / "pip").mkdir(parents=True, exist_ok=True)
        shutil.copy(user_conf, home / ".config" / "pip" / "pip.conf")
    return env


def fresh_clone(dest: Path) -> list[str]:
    """``git clone`` of this repository's HEAD, with the uncommitted changes copied over it;
    returns what was copied or removed."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=300)

    def git(*args: str) -> list[str]:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
        ).stdout
        return [n for n in out.split("\n") if n]

    # Changed since HEAD (staged or not), and new files not ignored.
    changed = git("diff", "--name-only", "HEAD") + git("ls-files", "-o", "--exclude-standard")
    done = []
    for name in sorted(set(changed)):
        src, dst = REPO / name, dest / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            done.append(name)
        elif not src.exists() and dst.exists():
            dst.unlink()
            done.append(f"{name} (removed)")
    return done


def run(script: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """``bash -euo pipefail -c script``; fails the test with its output unless it succeeds."""
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"README command failed ({r.returncode}):\n{script}\n---\n{out}"
    return out


def wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = path.read_text(errors="replace")
        if text in log:
            return log
        assert proc.poll() is None, f"exited ({proc.returncode}) before {text!r}:\n{log}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{log[-6000:]}"
        time.sleep(0.5)


def kernel_tree(root: Path) -> Path:
    """A stand-in for a kernel tree after the build: ``make image.fit modules-cpio-pkg`` has
    nothing left to do, its outputs are where kbuild writes them."""
    tree = root / "linux"
    boot = tree / "arch" / "arm64" / "boot"
    boot.mkdir(parents=True)
    shutil.copy(sample_fit(root / "fit").fit, boot / "image.fit")
    modules_cpio(tree / f"modules-{RELEASE}-arm64.cpio", RELEASE)
    (tree / "Makefile").write_text(
        ".PHONY: image.fit modules-cpio-pkg\nimage.fit modules-cpio-pkg:\n"
    )
    return tree


@pytest.mark.skipif(os.geteuid() != 0, reason="the quick start's apt-get runs as root")
def test_readme_walkthrough_in_a_fresh_clone(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    clone = tmp_path / "overrided"
    overlaid = fresh_clone(clone)
    print(f"\nuncommitted files copied over the clone: {overlaid or 'none'}")
    # The README being followed is the clone's own.
    assert (clone / "README.md").read_text() == readme
    # README runs the test suite as `.ci/run`: the clone must have it executable.
    assert os.access(clone / ".ci" / "run", os.X_OK), ".ci/run is not executable in the clone"
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)

    [quick] = sh_blocks(readme, "## Quick start (fresh Debian 12)")
    assert "make run" in quick
    log_path = tmp_path / "make-run.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", "-c", quick],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        text = wait_for(log_path, " ready: ", proc, timeout=1200)
        print(f"quick start to 'ready': {time.monotonic() - started:.0f} s")
        assert "Traceback" not in text, text

        # The `overrided` command: from the checkout's venv, then installed for the user.
        activate, install = sh_blocks(readme, "### The `overrided` command")
        out = run(f"{activate}\noverrided --version\ncommand -v overrided", clone, env)
        assert str(clone / ".venv" / "bin" / "overrided") in out, out
        out = run(f"{install}\noverrided --version\ncommand -v overrided", clone, env)
        assert str(home / ".local" / "bin" / "overrided") in out, out

        # The tools, with a build in kernel-builds/my-fix.
        tree = kernel_tree(tmp_path)
        build = clone / "kernel-builds" / "my-fix"
        build.mkdir()
        shutil.copy(tree / "arch" / "arm64" / "boot" / "image.fit", build)
        shutil.copy(tree / f"modules-{RELEASE}-arm64.cpio", build)
        [tools] = sh_blocks(readme, "## Other bootloaders, signing, tools")
        out = run(f"{activate}\n{tools}", clone, env)
        assert "conf-a" in out and "OK" in out, out  # fit ls, fit verify
        assert re.search(r"\d+ valid, 0 invalid", out), out  # boards check
        assert re.search(r"^rock3a\tafa-devboot-rock3a\t.*\t(build|not served)", out, re.M), out

        # The upload, from the (stand-in) kernel tree, to the service `make run` started.
        [upload] = sh_blocks(readme, "## Upload a build over HTTP")
        token = (clone / ".overrided" / "token").read_text().strip()
        script = upload.replace("http://server:8080", "http://127.0.0.1:8080")
        out = run(f"T={token}\n{script}", tree, env)
        assert "my-fix" in out, out
        assert (clone / "kernel-builds" / "my-fix" / "image.fit").exists()
    finally:
        # Ctrl-C in the terminal: SIGINT to the whole process group.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert "shutting down" in text and "Traceback" not in text, text[-4000:]
