# nvidia-docker-plugin in a container. The host's / is mounted read-only at /host (driver files,
# /proc/driver/nvidia and /dev nodes are read from there, and NVP_HOST_ROOT=/host makes the device
# paths handed to Docker the host's own: /host/dev/nvidia0 is given as /dev/nvidia0); the socket
# and volumes directories are mounted at the same paths as on the host, because Docker mounts
# volumes by host path.
# docs/running.md has the full `docker run` line.
#
#   docker build -t nvplugin .                                  # pip reaches PyPI
#   docker build --build-arg WHEELS=wheels -t nvplugin .        # offline: ./wheels holds them all
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
# A directory of the build context with every wheel needed (nvplugin's own included); empty:
# install from the source tree with whatever index pip reaches.
ARG WHEELS=
COPY . /src
RUN python3 -m venv /opt/nvplugin \
 && if [ -n "$WHEELS" ]; then \
        /opt/nvplugin/bin/python -m pip install --no-cache-dir --no-index \
            --find-links "/src/$WHEELS" nvplugin; \
    else \
        /opt/nvplugin/bin/python -m pip install --no-cache-dir /src; \
    fi \
 && /opt/nvplugin/bin/nvidia-docker-plugin --version \
 && (/opt/nvplugin/bin/python -m pip uninstall --yes --quiet pip setuptools 2>/dev/null || true)

FROM ${BASE}
COPY --from=build /opt/nvplugin /opt/nvplugin
ENV PATH=/opt/nvplugin/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    NVP_DRIVER_ROOT=/host \
    NVP_DEV_ROOT=/host \
    NVP_HOST_ROOT=/host \
    NVP_LISTEN=127.0.0.1:3476 \
    PYTHONDONTWRITEBYTECODE=1
# 127.0.0.1 rather than localhost: containers often have no ::1, and binding it would fail.
LABEL org.opencontainers.image.title="nvidia-docker-plugin" \
      org.opencontainers.image.description="NVIDIA Docker volume plugin and GPU REST API" \
      org.opencontainers.image.licenses="BSD-3-Clause"
# SIGTERM: in-flight requests finish, the socket is removed, exit 0 ("Successfully terminated").
STOPSIGNAL SIGTERM
ENTRYPOINT ["nvidia-docker-plugin"]
