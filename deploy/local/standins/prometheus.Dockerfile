# Stand-in for prom/prometheus:v2.53.0, built from Debian's prometheus (2.42). What our
# files use of the upstream image: the entrypoint /bin/prometheus (/bin is /usr/bin on
# bookworm; compose passes only flags), its configuration at
# /etc/prometheus/prometheus.yml, the working directory and volume /prometheus (where it
# keeps data/: Debian's build defaults to /var/lib/prometheus/metrics2, linked there), the
# user nobody, and port 9090.
FROM cnclip-standin/debian:bookworm
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /prometheus/data && chown -R nobody:nogroup /prometheus /etc/prometheus \
    && rm -rf /var/lib/prometheus/metrics2 \
    && ln -s /prometheus/data /var/lib/prometheus/metrics2
USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
