#!/bin/sh
# Build the HAProxy that Elastin's service mesh runs and install it as $VENV/bin/haproxy.
#
# Debian 12 ships HAProxy 2.6, which ends an HTTP/2 or gRPC response cleanly when the
# endpoint dies in the middle of it (the caller cannot tell a cut answer from a whole one;
# docs/mesh.md, "A response cut short"). HAProxy 3.0 resets the stream instead. No newer
# HAProxy is packaged for Debian 12, so this script builds Debian 13's: the upstream source
# and Debian's patches, both from deb.debian.org and checked against pinned sha256 sums,
# compiled with the features Debian enables that the mesh uses and Debian's hardening flags
# (dpkg-buildflags, hardening=+all, as Debian's own package). The binary is cached
# (ELASTIN_CACHE, default ~/.cache/elastin) under a key that includes this script's own hash,
# so a changed recipe builds again, with its sha256 beside it, checked before reuse; a fresh
# clone reuses it; it takes about a minute on 2 cores otherwise. Safe to run again.
#
# Without a compiler, the headers (not root, packages missing) or the network it says so and
# leaves the mesh to a haproxy found on PATH, which Elastin runs with a warning when it is
# older (exit 0). A download whose sha256 differs is never used.
set -eu
VENV=${VENV:-.venv}
VERSION=3.0.11
DEBIAN_REVISION=1+deb13u3
ORIG_SHA256=a133e2d550c5fd9a849b5c7ab17bb945bcdad209ca140d41f45ebf31943ae783
DEBIAN_SHA256=3c038b0a9f488a846d723aed4cc24f36b12c3cb846deece50e506386a8dbe6b7
POOLS="http://deb.debian.org/debian/pool/main/h/haproxy http://deb.debian.org/debian-security/pool/updates/main/h/haproxy"
CACHE=${ELASTIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/elastin}
RECIPE=$(sha256sum "$0" | cut -c1-12)
BUILT="$CACHE/haproxy-$VERSION-$DEBIAN_REVISION-$RECIPE/haproxy"

install_built() {
    mkdir -p "$VENV/bin"
    new=$(mktemp "$VENV/bin/.haproxy.XXXXXX")
    cp "$BUILT" "$new"
    chmod 755 "$new"
    mv -f "$new" "$VENV/bin/haproxy"
}

if [ -x "$BUILT" ] && [ -f "$BUILT.sha256" ] &&
        (cd "$(dirname "$BUILT")" && sha256sum -c --quiet haproxy.sha256 >/dev/null 2>&1); then
    install_built
    exit 0
fi

for tool in cc make curl sha256sum patch tar xz dpkg-buildflags; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "setup: cannot build HAProxy $VERSION: '$tool' is missing (run make as root to" \
             "install the build packages); the mesh will use the haproxy on PATH, if any" >&2
        exit 0
    fi
done
for header in /usr/include/openssl/ssl.h /usr/include/lua5.4/lua.h /usr/include/pcre2.h; do
    if [ ! -f "$header" ]; then
        echo "setup: cannot build HAProxy $VERSION: $header is missing (libssl-dev," \
             "liblua5.4-dev, libpcre2-dev; run make as root to install them)" >&2
        exit 0
    fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch() {  # fetch FILE SHA256: from the first pool that has it whole and unchanged
    for pool in $POOLS; do
        rm -f "$work/$1"
        if curl -fsSL --retry 2 -m 120 -o "$work/$1" "$pool/$1"; then
            if echo "$2  $work/$1" | sha256sum -c --quiet >/dev/null 2>&1; then
                return 0
            fi
            echo "setup: $pool/$1 came damaged or changed (its sha256 is not $2): not used" >&2
            rm -f "$work/$1"
        fi
    done
    echo "setup: cannot download $1 whole from deb.debian.org (network?); the mesh will use" \
         "the haproxy on PATH, if any: run make setup again to build HAProxy $VERSION" >&2
    exit 0
}
echo "setup: building HAProxy $VERSION ($DEBIAN_REVISION, Debian 13's) into $CACHE (about a minute)"
fetch "haproxy_$VERSION.orig.tar.gz" "$ORIG_SHA256"
fetch "haproxy_$VERSION-$DEBIAN_REVISION.debian.tar.xz" "$DEBIAN_SHA256"
tar -xzf "$work/haproxy_$VERSION.orig.tar.gz" -C "$work"
tar -xJf "$work/haproxy_$VERSION-$DEBIAN_REVISION.debian.tar.xz" -C "$work"
src="$work/haproxy-$VERSION"
grep -v '^#' "$work/debian/patches/series" | grep . | while read -r p; do
    patch -d "$src" -p1 -s -N <"$work/debian/patches/$p"
done
jobs=$(nproc 2>/dev/null || echo 2)
export DEB_BUILD_MAINT_OPTIONS=hardening=+all  # as debian/rules: stack protector, fortify, relro, now
cflags="$(cd "$src" && dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS)"
ldflags=$(dpkg-buildflags --get LDFLAGS)
if ! make -C "$src" -j"$jobs" TARGET=linux-glibc USE_OPENSSL=1 USE_PCRE2=1 USE_PCRE2_JIT=1 \
        USE_LUA=1 LUA_INC=/usr/include/lua5.4 LUA_LIB_NAME=lua5.4 USE_PROMEX=1 \
        CFLAGS="$cflags" LDFLAGS="$ldflags" \
        VERSION="$VERSION" SUBVERS="-$DEBIAN_REVISION" >"$work/build.log" 2>&1; then
    tail -20 "$work/build.log" >&2
    echo "setup: building HAProxy $VERSION failed (the lines above are the end of its log)" >&2
    exit 1
fi
mkdir -p "$(dirname "$BUILT")"
new=$(mktemp "$(dirname "$BUILT")/.haproxy.XXXXXX")
cp "$src/haproxy" "$new"
chmod 755 "$new"
mv -f "$new" "$BUILT"
(cd "$(dirname "$BUILT")" && sha256sum haproxy >haproxy.sha256)
install_built
echo "setup: HAProxy $VERSION built: $BUILT"
