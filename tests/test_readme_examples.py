"""What README.md and the shipped examples promise a newcomer, against a real ``overrided serve``.

- The upload example sends the FIT and the modules CPIO in one request (a tarball through curl);
  a build uploaded without its modules CPIO leaves the board a warning, in the API and the log.
- ``boards/qemu-virt.toml`` as shipped boots any kernel FIT with QEMU's own device tree, in every
  form it is served in, even when no configuration names QEMU's machine.
- ``overrided boards ls`` says what each board resolves to; ``overrided fit verify`` checks what
  a FIT has (hashes always, signatures where present) and fails on a missing signature only when
  asked.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.builds import RELEASE, build_folder, modules_cpio
from tests.support.fits import SampleFit, sample_fit, signed_sample_fit
from tests.support.serve import REPO, Served

# rock3a's settings (boards/rock3a.toml) on the sample FIT's board A.
BOARD = 'compatible = ["v,board-a", "v,soc"]\nuser = "afa"\ninitrd = "append"\n'
WARNING = "initrd = 'append', but build {} has no modules CPIO"


def overrided(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m overrided ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "overrided", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleFit:
    return sample_fit(tmp_path_factory.mktemp("sample"))


def curl_upload(srv: Served, build: str, body: bytes, content_type: str) -> str:
    """README's upload: ``curl -T - -H 'Content-Type: …' /builds/<build>`` with the token."""
    r = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "-H",
            f"Authorization: Bearer {srv.token}",
            "-H",
            f"Content-Type: {content_type}",
            "-T",
            "-",
            f"{srv.http_base}/builds/{build}",
        ],
        input=body,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.decode()


def tarball(files: dict[str, Path]) -> bytes:
    """What ``tar -cf - modules-*.cpio -C arch/arm64/boot image.fit`` sends."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, path in files.items():
            tar.add(path, arcname=name)
    return buf.getvalue()


def test_upload_of_fit_and_modules_in_one_request_and_the_warning_without_them(
    tmp_path: Path, sample: SampleFit
) -> None:
    mods = modules_cpio(tmp_path / f"modules-{RELEASE}-arm64.cpio", RELEASE)
    with Served(tmp_path) as srv:
        (srv.boards / "rock3a.toml").write_text(BOARD)
        srv.wait_for(lambda: "board rock3a" in srv.log(), what="the board")

        # The README's one request: FIT and modules in one tarball.
        body = tarball({mods.name: mods, "image.fit": sample.fit})
        answer = curl_upload(srv, "my-fix", body, "application/x-tar")
        assert "afa-devboot-board-a" in answer, answer
        info = srv.api("/api/boards/rock3a")
        assert info["build"] == "my-fix" and "initrd" in info["artifacts"], info
        assert not any("has no modules CPIO" in w for w in info["warnings"]), info["warnings"]
        script = srv.tftp_get("afa-devboot-board-a").decode()
        assert f'devboot_initrd=":{info["artifacts"]["initrd"]}"' in script, script

        # The FIT alone: the newest build, so the board boots it, without its initrd, and says so.
        answer = curl_upload(
            srv, "fit-only", tarball({"image.fit": sample.fit}), "application/x-tar"
        )
        info = srv.api("/api/boards/rock3a")
        assert info["build"] == "fit-only", info
        assert "initrd" not in info["artifacts"], info
        assert WARNING.format("fit-only") in " ".join(info["warnings"]), info
        log = srv.wait_for(lambda: "board rock3a" in srv.log() and srv.log(), what="log")
        assert "build fit-only, conf-a: " in log and WARNING.format("fit-only") in log, log
        script = srv.tftp_get("afa-devboot-board-a").decode()
        assert "devboot_initrd" not in script and WARNING.format("fit-only") in script, script


def test_shipped_qemu_virt_boots_any_fit_with_qemus_device_tree(tmp_path: Path) -> None:
    # A FIT with no configuration for QEMU's machine and no default, as make image.fit writes.
    srv = Served(tmp_path)
    build_folder(srv.builds, "mainline", sample_fit(tmp_path / "fit", default=None).fit)
    shutil.copy(REPO / "boards" / "qemu-virt.toml", srv.boards)
    with srv:
        info = srv.api("/api/boards/qemu-virt")
        assert info["build"] == "mainline", info
        assert "board's own device tree" in info["reason"], info
        assert not info["warnings"], info
        assert "oftree" not in info["artifacts"] and "kernel" in info["artifacts"], info
        script = srv.tftp_get("none-devboot-virt64").decode()
        assert 'devboot_oftree=""' in script, script  # barebox passes its own (QEMU's) DT
        assert 'devboot_image="none-linux-virt64"' in script, script
        kernel = srv.tftp_get(info["artifacts"]["kernel"])
        assert srv.tftp_get("none-linux-virt64") == kernel  # the plain kernel, not the FIT
        pxe = srv.tftp_get("pxelinux.cfg/01-52-54-00-12-34-56").decode()
        assert f"kernel {info['artifacts']['kernel']}\n" in pxe and "fdt " not in pxe, pxe
        bootscr = srv.tftp_get("qemu-virt.scr")
        assert b"booti ${overrided_kernel_addr}" in bootscr and b"${fdtcontroladdr}" in bootscr, (
            bootscr
        )


def test_boards_ls_says_what_each_board_resolves_to(tmp_path: Path, sample: SampleFit) -> None:
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "rock3a.toml").write_text(BOARD)
    (boards / "other.toml").write_text('compatible = ["v,nothing"]\nrule = "u-boot"\n')
    shutil.copy(REPO / "boards" / "qemu-virt.toml", boards)
    r = overrided("boards", "ls", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "not served: no usable build in kernel-builds yet" in r.stdout, r.stdout

    build_folder(tmp_path / "kernel-builds", "my-fix", sample.fit)
    r = overrided("boards", "ls", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in r.stdout.splitlines()}
    assert rows["rock3a"][1] == "afa-devboot-board-a"
    assert rows["rock3a"][4].startswith(
        "build my-fix (latest), conf-a (Board A): conf-a: 'v,board-a'"
    )
    assert rows["other"][4].startswith("not served: build my-fix (latest): no match"), rows
    # No configuration names QEMU's machine: barebox's fallback, the FIT's default (conf-b).
    assert rows["qemu-virt"][4].startswith("build my-fix (latest), conf-b (Board B): "), rows


def test_fit_verify_checks_what_there_is_and_requires_signatures_only_when_asked(
    tmp_path: Path, sample: SampleFit
) -> None:
    # Unsigned: hashes are checked, no key is needed.
    r = overrided("fit", "verify", sample.fit)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK   /images/kernel/hash-1: sha256 matches" in r.stdout, r.stdout
    assert "SKIP /configurations/conf-a: unsigned" in r.stdout, r.stdout
    assert r.stdout.splitlines()[-1].startswith(f"{sample.fit}: OK ("), r.stdout
    r = overrided("fit", "verify", "--require-signature", sample.fit)
    assert r.returncode == 1 and "FAIL /configurations/conf-a: no signature node" in r.stdout

    # One byte of the kernel changed: caught without any key.
    data = bytearray(sample.fit.read_bytes())
    kernel = sample.kernel.read_bytes()
    at = data.find(kernel[:4096])
    data[at + 100] ^= 0xFF
    broken = tmp_path / "broken.itb"
    broken.write_bytes(data)
    r = overrided("fit", "verify", broken)
    assert r.returncode == 1 and "FAIL /images/kernel/hash-1: sha256 mismatch" in r.stdout

    # Signed for every configuration by mkimage: without --key the signatures are skipped,
    # with it they are checked.
    signed, pub = signed_sample_fit(tmp_path / "signed")
    r = overrided("fit", "verify", signed.fit)
    assert r.returncode == 0 and "SKIP /configurations/conf-a/signature-1: not checked" in r.stdout
    r = overrided("fit", "verify", "--require-signature", signed.fit)
    assert r.returncode == 1 and "no key to check it with" in r.stdout, r.stdout
    r = overrided("fit", "verify", "--require-signature", "--key", pub, signed.fit)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK   /configurations/conf-a/signature-1: sha256,rsa2048 signature verifies" in r.stdout


def test_code_points_at_docs_sections_that_exist() -> None:
    """Every ``docs/formats.md, "Section"`` (or design.md) in the code names a heading there,
    and nothing points at notes the repository does not carry."""
    headings = {
        doc: {
            line.lstrip("#").strip().replace("`", "")
            for line in (REPO / "docs" / doc).read_text().splitlines()
            if line.startswith("#")
        }
        for doc in ("formats.md", "design.md")
    }
    refs = 0
    for path in [*REPO.glob("overrided/**/*.py"), *REPO.glob("tests/**/*.py")]:
        if path == Path(__file__).resolve():
            continue  # this test names the files it checks
        # A reference may wrap onto the next comment or docstring line.
        text = re.sub(r"\n\s*(?:# ?)?", " ", path.read_text())
        assert not re.search(r"(?<![\w/])(?:fit|design)\.md", text), path
        for m in re.finditer(r"docs/(formats|design)\.md, \"([^\"]+)\"", text):
            refs += 1
            assert m.group(2) in headings[f"{m.group(1)}.md"], (path, m.group(0))
    assert refs >= 30
