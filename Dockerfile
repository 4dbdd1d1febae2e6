# atlas-exporter container image.
#
#   docker build -t atlas-exporter .
#   docker run -d --name atlas-exporter --pid=host --network=host \
#     --user 0 --cap-drop ALL --cap-add SYS_PTRACE --cap-add DAC_READ_SEARCH --cap-add NET_ADMIN \
#     --security-opt no-new-privileges --read-only --tmpfs /tmp -e HOME=/tmp \
#     -v /proc:/host/proc:ro atlas-exporter --path.procfs=/host/proc
#
# The image runs as an unprivileged user by default. That user sees every process's CPU, memory
# and threads, but not the disk I/O, open files or sockets of other users' processes, and not the
# proc connector (crashes). A container cannot hand capabilities to a non-root user without
# file capabilities on the Python interpreter, so for full data run it as uid 0 with every
# capability dropped except the three above (as deploy/compose and deploy/kubernetes do).
FROM python:3.11-slim

LABEL org.opencontainers.image.title="atlas-exporter" \
      org.opencontainers.image.description="Prometheus exporter of per-application CPU, memory, disk, network, crashes and hangs" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY atlas_exporter ./atlas_exporter
RUN pip install . \
    && cd / && rm -rf /build \
    && groupadd --system --gid 10001 atlas \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/atlas-exporter --create-home \
       --shell /usr/sbin/nologin atlas

WORKDIR /var/lib/atlas-exporter
USER 10001:10001
EXPOSE 9858
ENTRYPOINT ["atlas-exporter"]
CMD ["--web.listen-address=:9858"]
