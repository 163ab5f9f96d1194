# Sourced by the Dockerfiles before pip runs (`. /tmp/pip/pip-env.sh`): pip trusts the
# extra CA certificates of ca-certificates.crt and prefers the wheels of wheels/, where
# this folder holds them. See README.md here.
here="${CNCLIP_PIP_DIR:-/tmp/pip}"
if [ -s "$here/ca-certificates.crt" ]; then
    base=/etc/ssl/certs/ca-certificates.crt
    if [ -s "$base" ]; then
        cat "$base" "$here/ca-certificates.crt" > "$here/trusted.pem"
    else
        cp "$here/ca-certificates.crt" "$here/trusted.pem"
    fi
    export PIP_CERT="$here/trusted.pem"
fi
if ls "$here"/wheels/*.whl > /dev/null 2>&1; then
    export PIP_FIND_LINKS="$here/wheels"
fi
