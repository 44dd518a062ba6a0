#!/bin/sh
# Installs the real servers the tests start: Debian's postgresql, prometheus and prometheus-alertmanager; valgrind,
# which the instruction-count benchmark (bench/instructions.py) and its test run under; and chromium with
# chromium-driver, the real browser the cost page's tests (tests/test_html_page.py) drive through Selenium.
# Idempotent and quick when they are present (no apt call then). Needs root to install; without it, it only
# says what is missing and exits 0, so local tests skip (and CI, where CI=true, fails instead).
set -eu

missing=""

# PostgreSQL: Debian puts the server binaries in /usr/lib/postgresql/<major>/bin, off PATH.
have_postgres=no
for bindir in /usr/lib/postgresql/*/bin; do
    if [ -x "$bindir/initdb" ] && [ -x "$bindir/postgres" ]; then
        have_postgres=yes
    fi
done
[ "$have_postgres" = yes ] || missing="$missing postgresql"

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    missing="$missing prometheus"
fi
if ! command -v prometheus-alertmanager >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
    missing="$missing prometheus-alertmanager"
fi

command -v valgrind >/dev/null 2>&1 || missing="$missing valgrind"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
# Node.js and npm run the OpenTelemetry JS producer of the OTLP intake's tests (tests/test_otlp_intake_producers.py).
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"

if [ -z "$missing" ]; then
    echo "test servers: postgresql, prometheus, prometheus-alertmanager, valgrind, chromium and nodejs are installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "test servers: missing Debian package(s):$missing" >&2
    echo "test servers: not root, so not installing them; run: sudo $0" >&2
    echo "test servers: tests needing them are skipped locally and fail in CI (CI=true)" >&2
    exit 0
fi

# Packages must not start their daemons (the tests start their own, on free ports): invoke-rc.d asks
# policy-rc.d, and exit 101 means "action forbidden". Keep an existing policy that already forbids;
# otherwise put ours in place for the install and restore the old one afterwards.
policy=/usr/sbin/policy-rc.d
restore=""
if [ -e "$policy" ]; then
    rc=0
    "$policy" postgresql start >/dev/null 2>&1 || rc=$?
    if [ "$rc" -ne 101 ]; then
        restore="$(mktemp)"
        cp -p "$policy" "$restore"
        trap 'cp -p "$restore" "$policy"; rm -f "$restore"' EXIT
    fi
fi
if [ ! -e "$policy" ] || [ -n "$restore" ]; then
    printf '#!/bin/sh\n# Installed by spendwatch scripts/install-test-servers.sh: apt starts no daemons.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
fi

echo "test servers: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# Wait for a dpkg lock held by another apt run instead of failing at once.
apt-get -o DPkg::Lock::Timeout=600 update -q
# shellcheck disable=SC2086 # $missing is a word list of package names
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $missing
echo "test servers: installed$missing"
