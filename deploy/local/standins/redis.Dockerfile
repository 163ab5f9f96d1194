# Stand-in for redis:7-alpine, built from Debian's redis (7.0). What our files use of the
# upstream image: redis-server and redis-cli on the PATH, a command starting with
# redis-server run as the redis user (the upstream entrypoint drops root the same way),
# protected mode off unless the command turns it on (upstream builds Redis with that
# default, for connections from other containers), and /data as the working directory.
FROM cnclip-standin/debian:bookworm
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /data && chown redis:redis /data \
    && printf '%s\n' '#!/bin/sh' 'set -e' \
        'if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi' \
        'if [ "$1" = redis-server ]; then shift; set -- redis-server --protected-mode no "$@"; fi' \
        'if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then' \
        '    exec setpriv --reuid=redis --regid=redis --init-groups "$@"' \
        'fi' \
        'exec "$@"' > /usr/local/bin/docker-entrypoint.sh \
    && chmod 755 /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
VOLUME /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
