#!/bin/sh
# Installs the system programs that `make test` (and `make cluster`) need and pip cannot bring:
# Debian/Ubuntu through apt-get (as root, or with sudo that asks no password), macOS through
# Homebrew. Where nothing can install a missing program it stops at once with one line
# saying what to install, instead of letting the tests fail one by one.
#
# Usage: system_packages.sh PROGRAM:DEBIAN_PACKAGES:HOMEBREW_FORMULA ...
#   DEBIAN_PACKAGES may list alternatives separated by '|' (tried in order, e.g. a package
#   renamed between Debian and Ubuntu); a HOMEBREW_FORMULA of '-' means that on macOS the
#   program is not needed from Homebrew (the Makefile brings it another way).
set -u

fail() {
    echo "make: $1" >&2
    exit 1
}

apt_install() {  # $1: the program, $2: '|'-separated package alternatives
    if [ "$(id -u)" = 0 ]; then
        as_root=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        as_root="sudo -n"
    else
        fail "$1 is needed; install it as root with: apt-get install $(echo "$2" | cut -d'|' -f1)"
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        $as_root apt-get update -qq >/dev/null 2>&1 || true
        APT_UPDATED=1
    fi
    old_ifs=$IFS
    IFS='|'
    for package in $2; do
        IFS=$old_ifs
        if $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" \
            >/dev/null 2>&1 && command -v "$1" >/dev/null 2>&1; then
            echo "make: installed $1 (apt-get install $package)"
            return 0
        fi
    done
    IFS=$old_ifs
    fail "$1 is needed and apt-get could not install it; install one of: $(echo "$2" | tr '|' ' ')"
}

for spec in "$@"; do
    program=${spec%%:*}
    rest=${spec#*:}
    debian=${rest%%:*}
    homebrew=${rest#*:}
    command -v "$program" >/dev/null 2>&1 && continue
    if [ "$(uname -s)" = Darwin ]; then
        [ "$homebrew" = - ] && continue
        command -v brew >/dev/null 2>&1 || fail "$program is needed; install Homebrew, then: brew install $homebrew"
        brew install "$homebrew" >/dev/null || fail "$program is needed and 'brew install $homebrew' failed"
        echo "make: installed $program (brew install $homebrew)"
    elif command -v apt-get >/dev/null 2>&1; then
        apt_install "$program" "$debian"
    else
        fail "$program is needed; install it with your system's package manager (Debian: $(echo "$debian" | cut -d'|' -f1))"
    fi
done
