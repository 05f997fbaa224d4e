# static-registry on stock nginx: serves a store bind-mounted at /images (or at
# /var/lib/images, where the old static-registry image had it).
#   docker build -t static-registry .
#   docker run -v $PWD/images:/images:ro -p 8080:80 static-registry
# The root can be read-only: all that is written goes to /run and /var/cache/nginx.
#   docker run --read-only --mount type=tmpfs,destination=/run \
#     --mount type=tmpfs,destination=/var/cache/nginx -v $PWD/images:/images:ro -p 8080:80 static-registry
# After a new fetch into ./images: docker exec <container> static-registry-nginx reload
# tests/it/harness/image.rs builds this image's final stage from this file: keep to the
# instructions it reads (COPY, RUN rm -f, VOLUME, EXPOSE, ENTRYPOINT, CMD).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
    && strip target/release/static-registry

# The official nginx image (Debian bookworm, like the build stage, so glibc matches).
FROM nginx:1-bookworm
COPY --from=build /src/target/release/static-registry /usr/local/bin/static-registry
COPY nginx/nginx.conf /etc/nginx/nginx.conf
COPY nginx/static-registry-nginx /usr/local/bin/static-registry-nginx
RUN rm -f /etc/nginx/conf.d/default.conf
VOLUME /images
EXPOSE 80
ENTRYPOINT ["/usr/local/bin/static-registry-nginx", "start"]
CMD ["nginx", "-g", "daemon off;"]
