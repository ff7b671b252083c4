# shellcheck shell=bash disable=SC2034
# (SC2034: the pgs_* results are read by the scripts that source this file.)
# Install logic shared by the classic buildpack (bin/compile at the repository root) and the
# Cloud Native Buildpack (buildpack/bin/build): which pgsidecar release to install, where it comes
# from, which SHA-256 it must have, and a download that is verified before anything uses it.
#
# Sourced, not run. Before calling anything here the caller sets
#   PGSIDECAR_LOG_STYLE     `classic` (Heroku's "-----> " step lines) or `cnb`
#   pgsidecar_config NAME   a function printing config var NAME (nothing when unset)
# and makes `trap pgsidecar_on_exit EXIT`: paths handed to pgsidecar_cleanup_add are removed
# when the script exits (temporary files always; installed paths unless pgsidecar_forget was
# called for them, so a failed build leaves nothing half-installed).

# The default download: the project's GitHub releases. This is the one place it is written;
# {version} and {target} are filled in. PGSIDECAR_BINARY_URL replaces it (same placeholders).
PGSIDECAR_DEFAULT_URL='https://github.com/pgsidecar/pgsidecar/releases/download/v{version}/pgsidecar-{version}-{target}.tar.gz'

pgs_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The release this buildpack installs by default and each target's SHA-256 (scripts/release).
pgs_pin_file=$(cd "$pgs_lib_dir/.." && pwd)/pgsidecar.pin

pgs_cleanup=()

# Results, for the caller: set by pgsidecar_resolve, pgsidecar_fetch and pgsidecar_unpack.
pgs_target='' pgs_version='' pgs_url='' pgs_sha='' pgs_sha_from='' pgs_tarball='' pgs_reported=''

# --- output ------------------------------------------------------------------------------

pgsidecar_step() {
    case "${PGSIDECAR_LOG_STYLE:-classic}" in
        classic) printf -- '-----> %s\n' "$*" ;;
        *) printf -- '- %s\n' "$*" ;;
    esac
}

pgsidecar_detail() {
    case "${PGSIDECAR_LOG_STYLE:-classic}" in
        classic) printf -- '       %s\n' "$*" ;;
        *) printf -- '  %s\n' "$*" ;;
    esac
}

# One line saying what failed, then exit 1 (the EXIT trap removes what was not committed).
pgsidecar_die() {
    case "${PGSIDECAR_LOG_STYLE:-classic}" in
        classic) printf -- ' !     pgsidecar: %s\n' "$*" >&2 ;;
        *) printf -- 'ERROR: pgsidecar: %s\n' "$*" >&2 ;;
    esac
    exit 1
}

# A URL as it may be shown: no user:password@, no query string or fragment (a presigned URL's
# token lives there).
pgsidecar_redact_url() {
    local url=$1 scheme=
    url=${url%%[?#]*}
    case "$url" in
        *://*)
            scheme=${url%%://*}://
            url=${url#*://}
            ;;
    esac
    case "$url" in
        *@*) url=${url##*@} ;;
    esac
    printf '%s%s' "$scheme" "$url"
}

# --- cleanup -----------------------------------------------------------------------------

pgsidecar_cleanup_add() {
    pgs_cleanup+=("$1")
}

pgsidecar_forget() {
    local keep=() p
    for p in ${pgs_cleanup[@]+"${pgs_cleanup[@]}"}; do
        [ "$p" = "$1" ] || keep+=("$p")
    done
    pgs_cleanup=(${keep[@]+"${keep[@]}"})
}

pgsidecar_on_exit() {
    local p
    for p in ${pgs_cleanup[@]+"${pgs_cleanup[@]}"}; do
        rm -rf -- "$p"
    done
}

# mkdir -p that registers for removal each directory it creates.
pgsidecar_mkdir_tracked() {
    local dir=$1 missing=()
    while [ ! -d "$dir" ]; do
        missing=("$dir" ${missing[@]+"${missing[@]}"})
        dir=$(dirname "$dir")
    done
    for dir in ${missing[@]+"${missing[@]}"}; do
        mkdir "$dir" || pgsidecar_die "cannot create $dir"
        pgsidecar_cleanup_add "$dir"
    done
}

# --- what to install ---------------------------------------------------------------------

pgs_trim() {
    local s=$1
    s=${s#"${s%%[![:space:]]*}"}
    s=${s%"${s##*[![:space:]]}"}
    printf '%s' "$s"
}

# pgs_pin_get KEY: a value of the pin file (`key=value` lines, `#` comments).
pgs_pin_get() {
    [ -f "$pgs_pin_file" ] || return 0
    sed -n "s/^$1=//p" "$pgs_pin_file" | head -n 1
}

pgsidecar_sha256() {
    local out
    out=$(sha256sum -- "$1") || pgsidecar_die "cannot compute the SHA-256 of $1"
    printf '%s' "${out%% *}"
}

# The Rust target triple of the machine the app will run on.
pgsidecar_target() {
    local arch=${CNB_TARGET_ARCH:-}
    [ -n "$arch" ] || arch=$(uname -m)
    case "$arch" in
        x86_64 | amd64) echo x86_64-unknown-linux-gnu ;;
        aarch64 | arm64) echo aarch64-unknown-linux-gnu ;;
        *) pgsidecar_die "no pgsidecar build for the $arch architecture (x86_64 and arm64 only)" ;;
    esac
}

# Sets pgs_target, pgs_version, pgs_url (to download from), pgs_sha (expected SHA-256; empty
# when it is to be read from the release's published .sha256) and pgs_sha_from (where it came
# from, for the log).
#
# The checksum, in this order:
#  1. PGSIDECAR_BINARY_SHA256 when set (whatever the URL);
#  2. the pin, for the version the buildpack pins (from the default URL or a mirror of it in
#     PGSIDECAR_BINARY_URL: a mirror must serve the release's own bytes);
#  3. another version from the default URL: the .sha256 file published with that release;
#  4. another version from PGSIDECAR_BINARY_URL: refused. A checksum fetched from the server
#     that serves the tarball proves only that the download is whole, not what it is.
pgsidecar_resolve() {
    local pinned custom sha
    pgs_target=$(pgsidecar_target)
    pinned=$(pgs_pin_get version)
    pgs_version=$(pgs_trim "$(pgsidecar_config PGSIDECAR_VERSION)")
    pgs_version=${pgs_version#v}
    [ -n "$pgs_version" ] || pgs_version=$pinned
    [ -n "$pgs_version" ] || pgsidecar_die "no version to install: $pgs_pin_file has none and PGSIDECAR_VERSION is not set"
    [[ "$pgs_version" =~ ^[0-9A-Za-z][0-9A-Za-z.+-]*$ ]] ||
        pgsidecar_die "PGSIDECAR_VERSION=$pgs_version is not a version (e.g. 0.1.0)"

    custom=$(pgs_trim "$(pgsidecar_config PGSIDECAR_BINARY_URL)")
    pgs_url=${custom:-$PGSIDECAR_DEFAULT_URL}
    pgs_url=${pgs_url//\{version\}/$pgs_version}
    pgs_url=${pgs_url//\{target\}/$pgs_target}
    case "$pgs_url" in
        http://* | https://*) ;;
        *) pgsidecar_die "PGSIDECAR_BINARY_URL must be an http:// or https:// URL" ;;
    esac

    sha=$(pgs_trim "$(pgsidecar_config PGSIDECAR_BINARY_SHA256)")
    sha=$(printf '%s' "$sha" | tr '[:upper:]' '[:lower:]')
    if [ -n "$sha" ]; then
        [[ "$sha" =~ ^[0-9a-f]{64}$ ]] || pgsidecar_die "PGSIDECAR_BINARY_SHA256 is not a SHA-256 (64 hex digits)"
        pgs_sha=$sha
        pgs_sha_from="PGSIDECAR_BINARY_SHA256"
    elif [ "$pgs_version" = "$pinned" ]; then
        pgs_sha=$(pgs_pin_get "sha256.$pgs_target")
        [ -n "$pgs_sha" ] ||
            pgsidecar_die "this buildpack pins no checksum for pgsidecar $pgs_version on $pgs_target: set PGSIDECAR_BINARY_URL and PGSIDECAR_BINARY_SHA256 to a build of your own"
        pgs_sha_from="pinned by the buildpack"
    elif [ -z "$custom" ]; then
        pgs_sha=
        pgs_sha_from="published with the release"
    else
        pgsidecar_die "PGSIDECAR_BINARY_URL for pgsidecar $pgs_version needs PGSIDECAR_BINARY_SHA256 (this buildpack pins only ${pinned:-no version})"
    fi
}

# --- download ----------------------------------------------------------------------------

# pgs_download URL FILE: fails the build with one line saying why.
pgs_download() {
    local url=$1 file=$2 shown code rc=0 hostport
    shown=$(pgsidecar_redact_url "$url")
    code=$(curl --silent --location --proto '=http,https' --proto-redir '=http,https' \
        --connect-timeout 20 --max-time 600 --retry 3 --retry-delay 2 \
        --output "$file" --write-out '%{http_code}' -- "$url" 2>/dev/null) || rc=$?
    hostport=${shown#*://}
    hostport=${hostport%%/*}
    case "$rc" in
        0)
            [ "$code" = 200 ] || pgsidecar_die "download failed: HTTP $code from $shown; nothing was installed"
            return 0
            ;;
        6) pgsidecar_die "download failed: cannot resolve the host of $shown; nothing was installed" ;;
        7) pgsidecar_die "download failed: cannot connect to $hostport ($shown); nothing was installed" ;;
        28) pgsidecar_die "download failed: timed out fetching $shown; nothing was installed" ;;
        35 | 51 | 53 | 54 | 58 | 59 | 60 | 77 | 80 | 82 | 83 | 90 | 91)
            pgsidecar_die "download failed: TLS error (curl exit $rc) fetching $shown; nothing was installed"
            ;;
        *) pgsidecar_die "download failed: curl exit $rc fetching $shown; nothing was installed" ;;
    esac
}

# pgsidecar_published_sha CACHE_DIR: sets pgs_sha from the release's .sha256 file when the
# resolved source has no checksum yet (case 3 above).
pgsidecar_published_sha() {
    local dir=$1/pgsidecar tmp sha
    [ -z "$pgs_sha" ] || return 0
    mkdir -p "$dir" || pgsidecar_die "cannot create $dir"
    tmp=$(mktemp "$dir/sha256.XXXXXX") || pgsidecar_die "cannot write to $dir"
    pgsidecar_cleanup_add "$tmp"
    pgs_download "$pgs_url.sha256" "$tmp"
    sha=$(grep -o -m 1 -E '^[0-9a-fA-F]{64}' "$tmp" | tr '[:upper:]' '[:lower:]') || true
    [ -n "$sha" ] || pgsidecar_die "no SHA-256 in $(pgsidecar_redact_url "$pgs_url.sha256"); nothing was installed"
    pgs_sha=$sha
}

# pgsidecar_fetch CACHE_DIR: sets pgs_tarball to a verified tarball in CACHE_DIR/pgsidecar,
# from the cache when it is there (checked again), downloaded otherwise. The download goes to
# a temporary file beside it and takes its name only once its checksum is right.
pgsidecar_fetch() {
    local dir=$1/pgsidecar cached tmp actual
    pgsidecar_published_sha "$1"
    mkdir -p "$dir" || pgsidecar_die "cannot create $dir"
    cached=$dir/$pgs_sha.tar.gz
    if [ -f "$cached" ]; then
        if [ "$(pgsidecar_sha256 "$cached")" = "$pgs_sha" ]; then
            pgsidecar_detail "Using the cached download (sha256 $pgs_sha, $pgs_sha_from)"
            pgs_tarball=$cached
            return 0
        fi
        rm -f -- "$cached"
    fi
    pgsidecar_detail "Downloading $(pgsidecar_redact_url "$pgs_url")"
    tmp=$(mktemp "$dir/download.XXXXXX") || pgsidecar_die "cannot write to $dir"
    pgsidecar_cleanup_add "$tmp"
    pgs_download "$pgs_url" "$tmp"
    actual=$(pgsidecar_sha256 "$tmp")
    [ "$actual" = "$pgs_sha" ] ||
        pgsidecar_die "checksum mismatch for $(pgsidecar_redact_url "$pgs_url"): expected sha256 $pgs_sha ($pgs_sha_from), got $actual; nothing was installed"
    mv -f -- "$tmp" "$cached" || pgsidecar_die "cannot write to $dir"
    pgsidecar_forget "$tmp"
    pgsidecar_detail "Verified sha256 $pgs_sha ($pgs_sha_from)"
    pgs_tarball=$cached
}

# pgsidecar_prune_cache CACHE_DIR: drops cached tarballs other than the one just installed.
pgsidecar_prune_cache() {
    local f
    for f in "$1"/pgsidecar/*.tar.gz; do
        [ -e "$f" ] || continue
        [ "$f" = "$1/pgsidecar/$pgs_sha.tar.gz" ] || rm -f -- "$f"
    done
}

# --- unpack ------------------------------------------------------------------------------

# pgsidecar_unpack TARBALL DEST: DEST (an empty directory) gets bin/pgsidecar and, when the
# tarball has it, bin/start-pgsidecar; then the binary must run here. Sets pgs_reported (what
# `pgsidecar --version` printed).
pgsidecar_unpack() {
    local tarball=$1 dest=$2 x bin start out
    x=$(mktemp -d "$dest/.unpack.XXXXXX") || pgsidecar_die "cannot write to $dest"
    tar -xzf "$tarball" -C "$x" --no-same-owner --no-same-permissions 2>/dev/null ||
        pgsidecar_die "the downloaded file is not a .tar.gz; nothing was installed"
    # bin/pgsidecar, or DIR/bin/pgsidecar (the release's layout: pgsidecar-VERSION-TARGET/bin/).
    bin=$(find "$x" -mindepth 2 -maxdepth 3 -type f -path '*/bin/pgsidecar' | sort | head -n 1)
    [ -n "$bin" ] || pgsidecar_die "the tarball has no bin/pgsidecar; nothing was installed"
    start=$(dirname "$bin")/start-pgsidecar
    # mktemp -d made DEST 0700; the app may run as another user than the build.
    chmod 0755 "$dest"
    mkdir -m 0755 "$dest/bin"
    mv -- "$bin" "$dest/bin/pgsidecar"
    chmod 0755 "$dest/bin/pgsidecar"
    if [ -f "$start" ]; then
        mv -- "$start" "$dest/bin/start-pgsidecar"
        chmod 0755 "$dest/bin/start-pgsidecar"
    fi
    rm -rf -- "$x"
    out=$("$dest/bin/pgsidecar" --version 2>&1) ||
        pgsidecar_die "the downloaded pgsidecar does not run here: $(printf '%s' "$out" | head -n 1); nothing was installed"
    pgs_reported=$(printf '%s' "$out" | head -n 1)
}
