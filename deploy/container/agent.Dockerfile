# The Vouch sidecar. Build from the repository root:
#   docker build -f deploy/container/agent.Dockerfile -t vouch-agent .
# Run beside a workload (its state in a volume, its socket in a volume the workload shares):
#   docker run -v agent-state:/var/lib/vouch-agent -v agent-run:/run/vouch-agent \
#     -e VOUCH_JOIN_TOKEN=... vouch-agent run --server https://vouch.example:8443
FROM rust:1-bookworm AS build
# tss-esapi links the TPM2 Software Stack; lld lays out the code the sidecar runs side by
# side (agent/build.rs).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libtss2-dev lld \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The dist profile: optimised for size as a whole program (Cargo.toml says why).
# vouch-agent-tpm is the TPM helper: the only program that links the TSS.
RUN cargo build --profile dist --locked -p vouch-agent --bin vouch-agent --bin vouch-agent-tpm

FROM debian:bookworm-slim
# The TSS libraries the TPM helper links (ESYS and the TCTI loader); security updates arrive
# through the unpinned packages, and the image is rebuilt for them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libtss2-esys-3.0.2-0 libtss2-tctildr0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10002 --home-dir /var/lib/vouch-agent --create-home vouch-agent \
    && mkdir -p /run/vouch-agent \
    && chown 10002:10002 /run/vouch-agent \
    && chmod 0700 /var/lib/vouch-agent
COPY --from=build /src/target/dist/vouch-agent /src/target/dist/vouch-agent-tpm /usr/local/bin/
USER 10002:10002
VOLUME ["/var/lib/vouch-agent", "/run/vouch-agent"]
ENTRYPOINT ["/usr/local/bin/vouch-agent"]
CMD ["run", "--state-dir", "/var/lib/vouch-agent", "--socket", "/run/vouch-agent/api.sock"]
