# raftd and raftctl in one image. Anywhere with a registry: `docker build .` (official slim Python base).
# With no registry: `make image`, which builds a base from the host's Debian package sources and passes it
# as BASE_IMAGE, with Python wheels prepared on the host in deploy/wheelhouse (no network in the build).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# deploy/build-image.sh removes this stage's image after the build (the classic builder keeps it, untagged).
LABEL org.raftd.stage=build
COPY . /src
RUN python3 -m venv /opt/raftd \
    && if ls /src/deploy/wheelhouse/raftd-*.whl >/dev/null 2>&1; then \
           /opt/raftd/bin/pip install --no-cache-dir --no-index --find-links /src/deploy/wheelhouse raftd; \
       else \
           /opt/raftd/bin/pip install --no-cache-dir /src; \
       fi

FROM ${BASE_IMAGE}
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/raftd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RAFTD_DATA_DIR=/data
COPY --from=build /opt/raftd /opt/raftd
RUN mkdir -p /data /etc/raftd && chown 10001:10001 /data
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 50000
ENTRYPOINT ["raftd"]
