#!/usr/bin/env bash
# Stop the one-node test cluster started by tests/slurm/start_cluster.sh: slurmd, slurmctld,
# slurmdbd, MariaDB and munged, each through its own pid file (nothing is killed by name).
# Configuration, accounting database and logs stay, so start_cluster.sh restarts quickly.
set -uo pipefail

log() { printf '[stop_cluster] %s\n' "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { log "must run as root"; exit 1; }

stop_pidfile() { # stop_pidfile NAME PIDFILE
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 60; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop in 30 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -f "$pidfile"
}

if [[ -f /etc/slurm/slurm.conf ]] && ! grep -q cmpipe-test-cluster /etc/slurm/slurm.conf; then
    log "/etc/slurm/slurm.conf was not written by start_cluster.sh; not stopping a real cluster"
    exit 1
fi

# Jobs still queued or running would be lost anyway; cancel them first.
if [[ -s /run/slurmctld.pid ]] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
    squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
fi
stop_pidfile slurmd /run/slurmd.pid
stop_pidfile slurmctld /run/slurmctld.pid
stop_pidfile slurmdbd /run/slurmdbd.pid
stop_pidfile mariadb /run/mysqld/mysqld.pid
stop_pidfile munged /run/munge/munged.pid
log "stopped"
