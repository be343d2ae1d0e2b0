"""Real inputs for FIT tests: DTBs compiled by `dtc`, FITs assembled by `mkimage -f x.its`.

Nothing here writes FIT or DTB bytes itself; the tools do, so tests check our code against
what U-Boot's own tools produce. Typical use::

    sample = sample_fit(tmp_path)                  # 3 boards, 4 configurations, default set
    fit = Fit.open(sample.fit)
    external = sample_fit(tmp_path / "e", external=True)  # `mkimage -E`
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    """Run a tool, return its stdout; on failure raise with its stderr in the message."""
    r = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def _dts_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dts_strings(values: Sequence[str]) -> str:
    """A dts string-list literal: ``"a", "b"``."""
    return ", ".join(_dts_str(v) for v in values)


def compile_dts(source: str, out: Path) -> Path:
    """Compile dts `source` to the DTB `out` with dtc; return `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".dts")
    src.write_text(source)
    run("dtc", "-q", "-I", "dts", "-O", "dtb", "-o", out, src)
    return out


def board_dtb(
    out: Path, compatible: Sequence[str] | None, model: str | None = None, extra: str = ""
) -> Path:
    """A minimal board DTB: root ``compatible`` (omitted when None), ``model``, and `extra` dts."""
    props = []
    if compatible is not None:
        props.append(f"compatible = {dts_strings(compatible)};")
    if model is not None:
        props.append(f"model = {_dts_str(model)};")
    body = " ".join(props)
    return compile_dts(f"/dts-v1/;\n/ {{ {body} {extra} }};\n", out)


@dataclass
class ItsImage:
    """One ``/images/<name>`` node of an .its; `data` is a file path given to ``/incbin/``."""

    name: str
    data: Path
    type: str
    arch: str | None = "arm64"
    os: str | None = None
    compression: str = "none"
    load: int | None = None
    entry: int | None = None
    description: str | None = None
    hashes: Sequence[str] = ("sha256",)

    def dts(self) -> str:
        """The node as .its text."""
        lines = [f"{self.name} {{"]
        if self.description is not None:
            lines.append(f"  description = {_dts_str(self.description)};")
        lines.append(f"  data = /incbin/({_dts_str(str(self.data))});")
        lines.append(f"  type = {_dts_str(self.type)};")
        if self.arch is not None:
            lines.append(f"  arch = {_dts_str(self.arch)};")
        if self.os is not None:
            lines.append(f"  os = {_dts_str(self.os)};")
        lines.append(f"  compression = {_dts_str(self.compression)};")
        if self.load is not None:
            lines.append(f"  load = <{self.load:#x}>;")
        if self.entry is not None:
            lines.append(f"  entry = <{self.entry:#x}>;")
        for i, algo in enumerate(self.hashes, 1):
            lines.append(f"  hash-{i} {{ algo = {_dts_str(algo)}; }};")
        lines.append("};")
        return "\n".join(lines)


@dataclass
class ItsConfig:
    """One ``/configurations/<name>`` node; `sign_key` adds ``signature-1`` with that key hint."""

    name: str
    kernel: str | None
    fdt: Sequence[str] = ()
    ramdisk: Sequence[str] = ()
    loadables: Sequence[str] = ()
    compatible: Sequence[str] | None = None
    description: str | None = None
    sign_key: str | None = None
    extra: str = ""

    def dts(self) -> str:
        """The node as .its text."""
        lines = [f"{self.name} {{"]
        if self.description is not None:
            lines.append(f"  description = {_dts_str(self.description)};")
        if self.kernel is not None:
            lines.append(f"  kernel = {_dts_str(self.kernel)};")
        for prop in ("fdt", "ramdisk", "loadables"):
            values = getattr(self, prop)
            if values:
                lines.append(f"  {prop} = {dts_strings(values)};")
        if self.compatible is not None:
            lines.append(f"  compatible = {dts_strings(self.compatible)};")
        if self.extra:
            lines.append(f"  {self.extra}")
        if self.sign_key is not None:
            signed = [p for p in ("kernel", "fdt", "ramdisk", "loadables") if getattr(self, p)]
            lines.append(
                '  signature-1 { algo = "sha256,rsa2048"; '
                f"key-name-hint = {_dts_str(self.sign_key)}; "
                f"sign-images = {dts_strings(signed)}; }};"
            )
        lines.append("};")
        return "\n".join(lines)


def its_source(
    images: Sequence[ItsImage],
    configs: Sequence[ItsConfig],
    *,
    default: str | None = None,
    description: str = "test FIT",
) -> str:
    """A complete .its document."""
    default_line = f"  default = {_dts_str(default)};\n" if default is not None else ""
    return (
        "/dts-v1/;\n/ {\n"
        f"  description = {_dts_str(description)};\n  #address-cells = <1>;\n"
        "  images {\n" + "\n".join(i.dts() for i in images) + "\n  };\n"
        "  configurations {\n" + default_line + "\n".join(c.dts() for c in configs) + "\n  };\n"
        "};\n"
    )


def mkimage_fit(
    its: str,
    out: Path,
    *,
    external: bool = False,
    position: int | None = None,
    extra: Sequence[str | Path] = (),
) -> Path:
    """Assemble `its` into the FIT `out` with `mkimage -f`; `external` adds ``-E``, `position`
    adds ``-p`` (absolute ``data-position``); `extra` is passed on (e.g. ``-k keys -K pub.dtb -r``).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".its")
    src.write_text(its)
    args: list[str | Path] = ["mkimage"]
    if external:
        args.append("-E")
    if position is not None:
        args += ["-p", hex(position)]
    run(*args, *extra, "-f", src, out, cwd=out.parent)
    return out


def dumpimage_list(fit: Path) -> str:
    """`dumpimage -l` output for `fit` (raises if dumpimage rejects it)."""
    return run("dumpimage", "-l", fit)


def dumpimage_extract(fit: Path, index: int, out: Path) -> bytes:
    """The bytes of image number `index` (node order) as `dumpimage -p` extracts them."""
    run("dumpimage", "-T", "flat_dt", "-p", str(index), "-o", out, fit)
    return out.read_bytes()


def payload(size: int, seed: int) -> bytes:
    """Deterministic filler bytes standing in for a kernel or ramdisk."""
    block = bytes((seed * 31 + i * 7) & 0xFF for i in range(256))
    return (block * (size // 256 + 1))[:size]


@dataclass
class SampleFit:
    """A small multi-configuration FIT made by mkimage, with the files that went into it."""

    fit: Path
    its: str
    kernel: Path
    ramdisk: Path
    firmware: Path
    dtbs: dict[str, Path] = field(default_factory=dict)  # image unit name -> DTB file


# The sample's boards: fdt unit -> root compatible of its DTB.
SAMPLE_BOARDS: dict[str, list[str]] = {
    "fdt-a": ["v,board-a", "v,soc"],
    "fdt-b": ["v,board-b", "v,soc"],
    "fdt-c": ["v,board-c", "v,soc-c"],
}


def sample_configs(sign_key: str | None = None) -> list[ItsConfig]:
    """The sample's configurations (all names without ``@``)."""
    return [
        ItsConfig(
            "conf-a",
            "kernel",
            fdt=["fdt-a"],
            ramdisk=["ramdisk"],
            compatible=["v,board-a", "v,soc"],
            description="Board A",
            sign_key=sign_key,
        ),
        ItsConfig(
            "conf-b",
            "kernel",
            fdt=["fdt-b"],
            loadables=["firmware"],
            compatible=["v,board-b", "v,soc"],
            description="Board B",
            sign_key=sign_key,
        ),
        # No compatible: matching falls back to the root compatible inside fdt-c.
        ItsConfig("conf-c", "kernel", fdt=["fdt-c"], description="Board C", sign_key=sign_key),
        ItsConfig(
            "conf-soc",
            "kernel",
            fdt=["fdt-a"],
            compatible=["v,soc"],
            description="any v,soc",
            sign_key=sign_key,
        ),
    ]


def sample_fit(
    folder: Path,
    *,
    external: bool = False,
    position: int | None = None,
    default: str | None = "conf-b",
    hashes: Sequence[str] = ("sha256",),
    configs: Sequence[ItsConfig] | None = None,
    extra: Sequence[str | Path] = (),
) -> SampleFit:
    """Build the sample FIT in `folder`: a kernel, three board DTBs, a ramdisk and a firmware
    loadable; configurations from `sample_configs()` unless `configs` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    kernel = folder / "Image"
    kernel.write_bytes(payload(70_001, 1))
    ramdisk = folder / "ramdisk.cpio"
    ramdisk.write_bytes(payload(9_000, 2))
    firmware = folder / "firmware.bin"
    firmware.write_bytes(payload(1_234, 3))
    dtbs = {
        unit: board_dtb(folder / f"{unit}.dtb", compat, model=f"Board {unit[-1].upper()}")
        for unit, compat in SAMPLE_BOARDS.items()
    }
    images = [
        ItsImage(
            "kernel",
            kernel,
            "kernel",
            os="linux",
            load=0x40080000,
            entry=0x40080000,
            description="Linux",
            hashes=hashes,
        ),
        *(
            ItsImage(unit, path, "flat_dt", description=path.name, hashes=hashes)
            for unit, path in dtbs.items()
        ),
        ItsImage("ramdisk", ramdisk, "ramdisk", os="linux", hashes=hashes),
        ItsImage("firmware", firmware, "firmware", load=0x1000, hashes=hashes),
    ]
    its = its_source(images, configs if configs is not None else sample_configs(), default=default)
    fit = mkimage_fit(its, folder / "sample.itb", external=external, position=position, extra=extra)
    return SampleFit(fit=fit, its=its, kernel=kernel, ramdisk=ramdisk, firmware=firmware, dtbs=dtbs)


def signing_keys(folder: Path, hint: str = "dev") -> Path:
    """An RSA-2048 key and self-signed certificate as mkimage ``-k`` wants them
    (``<folder>/<hint>.key`` and ``<hint>.crt``); returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / f"{hint}.key"
    run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
    run(
        "openssl",
        "req",
        "-batch",
        "-new",
        "-x509",
        "-key",
        key,
        "-out",
        folder / f"{hint}.crt",
        "-subj",
        f"/CN={hint}",
        "-days",
        "3650",
    )
    return folder


def signed_sample_fit(folder: Path, hint: str = "dev") -> tuple[SampleFit, Path]:
    """The sample FIT with every configuration signed by mkimage (``-k keys -K pub.dtb -r``);
    returns it and the public-key DTB."""
    keys = signing_keys(folder / "keys", hint)
    pub = board_dtb(folder / "pub.dtb", ["v,u-boot"])
    sample = sample_fit(
        folder, configs=sample_configs(sign_key=hint), extra=["-k", keys, "-K", pub, "-r"]
    )
    return sample, pub
