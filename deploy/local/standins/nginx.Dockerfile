# Stand-in for nginx:1.27-alpine, built from Debian's nginx (1.22). What our files use of
# the upstream image: nginx reading /etc/nginx/nginx.conf in the foreground (the default
# command), logs on the container's stdout and stderr, SIGQUIT for a graceful stop, and
# wget for the compose health check.
FROM cnclip-standin/debian:bookworm
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends nginx-light wget \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && rm -f /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
