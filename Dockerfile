# memcachedlock: a static binary on a distroless base, run as a non-root
# user. Build with `make docker` (or docker build --build-arg COMMIT=...).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
ARG COMMIT="unknown"
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/memcachedlock/memcachedlock/proxy.Commit=${COMMIT} ${VERSION:+-X github.com/memcachedlock/memcachedlock/proxy.Version=${VERSION}}" \
      -o /out/memcachedlock ./cmd/memcachedlock \
 && mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/memcachedlock /usr/local/bin/memcachedlock
# The lock state file must outlive the container: mount a volume on /state
# (a new named volume takes this directory's owner, the non-root user).
COPY --from=build --chown=nonroot:nonroot /out/state /state
VOLUME /state
USER nonroot:nonroot
# In a container the proxy must listen beyond loopback to be reached.
ENV MEMCACHEDLOCK_LISTEN=0.0.0.0:11311 MEMCACHEDLOCK_LOCK_STATE_FILE=/state/lockstate
EXPOSE 11311
ENTRYPOINT ["/usr/local/bin/memcachedlock"]
CMD ["serve"]
