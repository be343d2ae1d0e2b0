# overrided: per-board FITs, initrds and barebox devboot scripts over TFTP and HTTP.
#
#   docker build -t overrided .
#   docker run --rm -p 69:69/udp -p 8080:8080 --cap-add LEASE \
#     -v "$PWD/boards:/srv/boards:ro" -v "$PWD/kernel-builds:/srv/kernel-builds" \
#     -v overrided-state:/var/lib/overrided overrided
#
# CAP_LEASE lets overrided (root in the container, not the owner of your files) see that a file
# in kernel-builds/ is still open for writing and index it the moment it is closed; without it,
# it waits for files to stop changing (kernel-builds/README.md).
#
# TFTP needs the board to reach the container's port 69/udp directly: with NAT, TFTP's reply
# comes from a new port (RFC 1350 TIDs), which `-p` mappings handle only with the host network
# (`--network host`) on many setups.
#
# Wheels are built in a stage with a C compiler (PyPI has no binary wheel of pylibfdt, and
# overrided's TFTP lockstep loop is a small C extension); the image itself carries none.
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY overrided ./overrided
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm

# Decompressors for modules CPIOs compressed with these formats.
RUN apt-get update \
    && apt-get install -y --no-install-recommends zstd xz-utils lz4 lzop bzip2 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels

VOLUME ["/srv/boards", "/srv/kernel-builds", "/var/lib/overrided"]
EXPOSE 69/udp 8080/tcp

# Signing keys, if any, are mounted at /srv/keys (outside every served folder).
CMD ["overrided", "serve", \
     "--boards", "/srv/boards", "--builds", "/srv/kernel-builds", \
     "--store", "/var/lib/overrided", "--keys", "/srv/keys", \
     "--tftp-port", "69", "--http-port", "8080"]
