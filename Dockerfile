# overrided: per-board FITs, initrds and barebox devboot scripts over TFTP and HTTP.
#
#   podman build -t overrided .            # or: docker build -t overrided .
#   podman run --rm -p 69:69/udp -p 8080:8080 --cap-add LEASE \
#     -v "$PWD/boards:/srv/boards:ro" -v "$PWD/kernel-builds:/srv/kernel-builds" \
#     -v overrided-state:/var/lib/overrided overrided
#
# The base is plain Debian 12. BASE picks another image of it, for example one made without any
# registry (as tests/test_container.py does, and README.md describes):
#
#   mmdebstrap --variant=minbase bookworm base.tar
#   podman import base.tar localhost/debian:bookworm
#   podman build --build-arg BASE=localhost/debian:bookworm -t overrided .
#
# pip reads its usual configuration during the build: pass an index or a CA bundle with
# `--build-arg PIP_INDEX_URL=…` / `PIP_CERT=…` (and `-v` to mount the file) when the
# build machine needs them.
#
# CAP_LEASE lets overrided (root in the container, not the owner of your files) see that a file
# in kernel-builds/ is still open for writing and index it the moment it is closed; without it,
# it waits for files to stop changing (kernel-builds/README.md).
#
# TFTP needs the board to reach the container's port 69/udp directly: with NAT, TFTP's reply
# comes from a new port (RFC 1350 TIDs), which `-p` mappings handle only with the host network
# (`--network host`) on many setups.
#
# The wheels are built in a stage with a C compiler (PyPI has no binary wheel of pylibfdt, and
# overrided's TFTP lockstep loop is a small C extension); the image itself carries none.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY overrided ./overrided
RUN python3 -m venv /opt/overrided \
    && /opt/overrided/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM ${BASE}
# Python, and the decompressors for modules CPIOs compressed with these formats.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 zstd xz-utils lz4 lzop bzip2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/overrided /opt/overrided
ENV PATH=/opt/overrided/bin:$PATH

VOLUME ["/srv/boards", "/srv/kernel-builds", "/var/lib/overrided"]
EXPOSE 69/udp 8080/tcp

# Signing keys, if any, are mounted at /srv/keys (outside every served folder).
CMD ["overrided", "serve", \
     "--boards", "/srv/boards", "--builds", "/srv/kernel-builds", \
     "--store", "/var/lib/overrided", "--keys", "/srv/keys", \
     "--tftp-port", "69", "--http-port", "8080"]
