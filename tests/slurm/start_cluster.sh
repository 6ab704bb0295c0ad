#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for tests/test_slurm.py.
#
#   sudo tests/slurm/start_cluster.sh      # install (once), configure, start, wait until idle
#   sudo tests/slurm/stop_cluster.sh       # stop every daemon again
#
# Debian 12 (SLURM 22.05). Installs slurm-wlm, slurmdbd, munge and mariadb-server when
# missing, writes /etc/slurm/{slurm,gres,slurmdbd}.conf from the templates next to this
# script (one node: this host, all its CPUs, ~90% of its memory but at least 16000 MB, one
# fake GPU backed by /dev/null), then starts munged, MariaDB, slurmdbd, slurmctld and slurmd
# directly (no systemd), registers cluster "cmpipe", account "cmpipe" and the calling user
# with sacctmgr, and waits until `sinfo` shows the node idle. Safe to run again: running
# daemons are left alone. It refuses to overwrite a slurm.conf it did not write (a real
# cluster's).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MARKER="cmpipe-test-cluster"
CLUSTER=cmpipe
ACCOUNT=cmpipe
ETC=/etc/slurm
LOG=/var/log/slurm
WAIT_S="${SLURM_START_TIMEOUT:-120}"

log() { printf '[start_cluster] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    for f in "$LOG"/slurmdbd.log "$LOG"/slurmctld.log "$LOG"/slurmd.log "$LOG"/mariadb.log; do
        [[ -f $f ]] && { log "--- last lines of $f"; tail -n 25 "$f" >&2; }
    done
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts system daemons)"

# --- packages --------------------------------------------------------------------------
missing=()
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v slurmd >/dev/null || missing+=(slurm-wlm)
command -v slurmdbd >/dev/null || missing+=(slurmdbd)
command -v munged >/dev/null || missing+=(munge)
command -v mariadbd >/dev/null || missing+=(mariadb-server)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} yourself"
    mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing ${pkgs[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
        "${pkgs[@]}" >/dev/null
fi

# --- this machine ----------------------------------------------------------------------
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
# The workflow's rules ask for up to 8000 MB (tiny runs use far less). On a smaller machine
# declare at least MIN_MEM_MB anyway: SlurmdParameters=config_overrides keeps such a node
# valid, and without cgroups SLURM does not enforce the memory requests.
MIN_MEM_MB="${SLURM_TEST_MIN_MEM_MB:-16000}"
if ((MEM_MB < MIN_MEM_MB)); then
    log "declaring RealMemory=${MIN_MEM_MB}MB although this machine has only ~${MEM_MB}MB to give"
    MEM_MB=$MIN_MEM_MB
fi
log "node $NODE: CPUs=$CPUS RealMemory=${MEM_MB}MB, one gres/gpu on /dev/null"

# --- directories, owners ---------------------------------------------------------------
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld "$LOG"
install -d -o root -g root -m 0755 /var/spool/slurmd "$ETC"
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge /etc/munge
install -d -o mysql -g mysql -m 0755 /run/mysqld

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local t=$1 what=$2
    shift 2
    for ((i = 0; i < t * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "timed out after ${t}s waiting for $what"
}

# --- munge -----------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! pid_alive /run/munge/munged.pid; then
    log "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged
fi
wait_for 20 munge bash -c 'munge -n | unmunge'

# --- MariaDB (accounting storage) ------------------------------------------------------
if [[ ! -d /var/lib/mysql/mysql ]]; then
    log "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
fi
if ! mariadb-admin ping >/dev/null 2>&1; then
    log "starting MariaDB"
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql \
        --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
        --bind-address=127.0.0.1 --skip-name-resolve \
        </dev/null >>"$LOG/mariadb.log" 2>&1 &
fi
wait_for 60 MariaDB mariadb-admin ping

# --- configuration files ---------------------------------------------------------------
if [[ -f $ETC/slurm.conf ]] && ! grep -q "$MARKER" "$ETC/slurm.conf"; then
    die "$ETC/slurm.conf exists and was not written by this script; not touching a real cluster"
fi
# Keep the database password of an earlier run (a running slurmdbd holds it).
DBPASS=""
[[ -f $ETC/slurmdbd.conf ]] && DBPASS="$(sed -n 's/^StoragePass=//p' "$ETC/slurmdbd.conf")"
[[ -n $DBPASS ]] || DBPASS="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"

mariadb <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

CHANGED=0
render() { # render TEMPLATE DEST MODE OWNER: write DEST only if its content changes
    local tmp
    tmp="$(mktemp)"
    sed -e "s/@NODE@/$NODE/g" -e "s/@CPUS@/$CPUS/g" -e "s/@MEM@/$MEM_MB/g" \
        -e "s/@DBPASS@/$DBPASS/g" "$1" >"$tmp"
    if ! cmp -s "$tmp" "$2"; then
        install -m "$3" -o "$4" -g "$4" "$tmp" "$2"
        CHANGED=1
        log "wrote $2"
    fi
    rm -f "$tmp"
}
render "$HERE/slurm.conf.in" "$ETC/slurm.conf" 0644 root
render "$HERE/gres.conf.in" "$ETC/gres.conf" 0644 root
render "$HERE/slurmdbd.conf.in" "$ETC/slurmdbd.conf" 0600 slurm

# --- slurmdbd, then the accounting objects ---------------------------------------------
if ! pid_alive /run/slurmdbd.pid; then
    log "starting slurmdbd"
    slurmdbd
fi
wait_for 60 "slurmdbd (sacctmgr list cluster)" sacctmgr -n list cluster

USER_NAME="${SUDO_USER:-$(id -un)}"
[[ -n $(sacctmgr -n -P list cluster "$CLUSTER" format=cluster) ]] ||
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
[[ -n $(sacctmgr -n -P list account "$ACCOUNT" format=account) ]] ||
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" \
        description="cmpipe tests" organization=cmpipe >/dev/null
for u in root "$USER_NAME"; do
    [[ -n $(sacctmgr -n -P list assoc user="$u" account="$ACCOUNT" cluster="$CLUSTER" format=user) ]] ||
        sacctmgr -i add user "$u" account="$ACCOUNT" defaultaccount="$ACCOUNT" cluster="$CLUSTER" >/dev/null
done

# --- slurmctld and slurmd --------------------------------------------------------------
if ! pid_alive /run/slurmctld.pid; then
    log "starting slurmctld"
    slurmctld
elif ((CHANGED)); then
    log "configuration changed: scontrol reconfigure"
    scontrol reconfigure
fi
wait_for 60 slurmctld scontrol ping
if ! pid_alive /run/slurmd.pid; then
    log "starting slurmd"
    slurmd -N "$NODE"
fi

# --- wait until the node takes jobs ----------------------------------------------------
for ((i = 0; i < WAIT_S; i++)); do
    state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1)"
    case "$state" in
    idle | mixed | allocated | completing)
        log "node $NODE is $state; cluster ready"
        sinfo >&2
        exit 0
        ;;
    down* | drain* | drained*)
        # e.g. "Node unexpectedly rebooted" after a restart: bring it back.
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        ;;
    esac
    sleep 1
done
scontrol show node "$NODE" >&2 || true
die "node $NODE not idle after ${WAIT_S}s (state: ${state:-unknown})"
