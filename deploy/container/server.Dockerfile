# The Vouch server. Build from the repository root:
#   docker build -f deploy/container/server.Dockerfile -t vouch .
# Run (SQLite in the volume; the first start with VOUCH_TRUST_DOMAIN creates the CA):
#   docker run -p 8443:8443 -v vouch-data:/var/lib/vouch -e VOUCH_TRUST_DOMAIN=fleet.example vouch
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p vouch-ca --bin vouch

FROM debian:bookworm-slim
# Debian's security updates arrive through the unpinned package; the image is rebuilt for them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/vouch --create-home vouch \
    && chmod 0700 /var/lib/vouch
COPY --from=build /src/target/release/vouch /usr/local/bin/vouch
USER 10001:10001
ENV VOUCH_DATA_DIR=/var/lib/vouch \
    VOUCH_LISTEN=0.0.0.0:8443
VOLUME ["/var/lib/vouch"]
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/vouch"]
CMD ["serve"]
