# Stand-in for python:3.11-slim-bookworm, built from Debian's own packages (no registry).
# What our Dockerfiles use of the upstream image: Python 3.11 at /usr/local/bin/python,
# pip at /usr/local/bin/pip (installing into the system site, as upstream allows),
# `python -m venv` with pip, CA certificates, useradd, LANG=C.UTF-8.
FROM cnclip-standin/debian:bookworm
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends \
        python3.11 python3.11-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && for name in python python3; do ln -s /usr/bin/python3.11 /usr/local/bin/$name; done \
    && for name in pip pip3; do ln -s /usr/bin/pip3 /usr/local/bin/$name; done
ENV LANG=C.UTF-8
CMD ["python3"]
