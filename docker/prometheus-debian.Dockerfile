# Prometheus from Debian's `prometheus` package, in place of prom/prometheus for the CPU smoke of
# docker-compose.yml (scripts/docker_smoke.sh, issue 37), where no image registry is reachable.
# It behaves as the official image does for the compose file: the binary is the entry point,
# compose's `command:` gives its flags, it runs as a non-root user that owns /prometheus (so a
# fresh named volume there is writable), and the config is bind-mounted at
# /etc/prometheus/prometheus.yml. Debian bookworm ships Prometheus 2.42 (the compose file's
# image is 3.5): the config and the flags the compose file uses mean the same in both.
#
#   docker build --network host --build-arg BASE_IMAGE=factory-inspect-base:bookworm \
#       -t factory-inspect-prometheus:debian - < docker/prometheus-debian.Dockerfile
ARG BASE_IMAGE=factory-inspect-base:bookworm
FROM ${BASE_IMAGE}
# policy-rc.d: the package's postinst must not try to start the service inside the build.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /prometheus && chown prometheus:prometheus /prometheus \
    && prometheus --version
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
