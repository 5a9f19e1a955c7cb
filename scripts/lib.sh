# Shared by scripts/*: installs the Debian packages the tests, demo and benchmarks use.
# Installing them does not start the system daemons; our tests start private instances.

need_pkg() {
    # $1 = a command that the package provides, $2 = the package
    command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || echo "$2"
}

ensure_packages() {
    local missing
    missing=$( {
        need_pkg dovecot dovecot-imapd
        need_pkg doveadm dovecot-core
        need_pkg /usr/sbin/smtp-sink postfix
        need_pkg openssl openssl
        need_pkg debootstrap debootstrap  # Cyrus and Courier chroots (crates/testkit/src/chroot.rs)
        need_pkg faketime faketime      # whole-process clock checks (tests/outbox.rs)
        need_pkg sqlite3 sqlite3        # schema comparisons (tests/edges.rs)
        /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || echo python3-aiosmtpd
        for extra in "$@"; do echo "$extra"; done
    } | sort -u | tr '\n' ' ')
    if [ -n "${missing// /}" ]; then
        echo "installing: $missing" >&2
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        # postfix asks questions on install unless told not to.
        echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections 2>/dev/null || true
        $sudo apt-get update -q >/dev/null
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $missing >/dev/null
    fi
}
