"""Recovery after a crash: stale Snakemake locks and orphaned temporary files.

A run killed hard (``kill -9``, power loss, out-of-memory killer) leaves two things behind:

* Snakemake's lock files (``.snakemake/locks/*.lock``), which make the next run stop with
  "Directory cannot be locked" until ``snakemake --unlock``;
* the temporary siblings of the outputs being written (``.NAME.tmp-PID``, see
  :func:`cmpipe.io.tables.atomic_output`), which are never renamed into place.

:func:`clear_stale_locks` runs when the workflow is parsed (``workflow/rules/common.smk``),
before Snakemake takes its lock. It removes the lock files only when they are provably
stale: no Snakemake process is alive for this working directory on this machine, and the
run that recorded itself as the lock's owner (:func:`record_lock_owner`, called from the
workflow's ``onstart`` once the lock is held) was on this machine and is dead. A live run
(or a process whose working directory cannot be read, e.g. another user's) keeps its locks,
so concurrent runs are still locked out. :func:`remove_orphaned_temps` runs in ``onstart``
(with the lock held) and deletes ``.NAME.tmp-PID`` files whose process is dead.

This module never imports Snakemake.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path

__all__ = ["clear_stale_locks", "record_lock_owner", "remove_orphaned_temps",
           "live_snakemake_pids", "active_run", "blocking_run", "TEMP_PATTERN"]

log = logging.getLogger(__name__)

#: Names of the temporary files of cmpipe's atomic writers: ``.NAME.tmp-PID`` and Keras's
#: ``.NAME.tmp-PID.keras`` (:func:`cmpipe.io.training.save_model`: Keras needs the suffix).
TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)(?:\.keras)?$")
_OWNER = "cmpipe-owner.json"


def _locks_dir(workdir) -> Path:
    return Path(workdir) / ".snakemake" / "locks"


def _pid_alive(pid: int, create_time: float | None = None) -> bool:
    """Whether process ``pid`` exists (and, given ``create_time``, is the same process)."""
    if pid <= 0:
        return False
    try:
        import psutil
    except ImportError:                      # pragma: no cover - psutil comes with snakemake
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        p = psutil.Process(pid)
        if create_time is not None and abs(p.create_time() - create_time) > 1.0:
            return False                     # the pid was reused by another process
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _is_snakemake(cmdline) -> bool:
    """A Python process running Snakemake (``.../bin/snakemake``, ``python -m snakemake``),
    not a shell whose command line merely mentions it."""
    head = [os.path.basename(a) for a in cmdline[:3]]
    if "snakemake" in head:
        return True
    return any(a == "-m" and b == "snakemake" for a, b in zip(cmdline[:3], cmdline[1:4]))


def _workdir_of(cmdline, cwd) -> Path | None:
    for i, a in enumerate(cmdline):
        val = None
        if a in ("--directory", "-d") and i + 1 < len(cmdline):
            val = cmdline[i + 1]
        elif a.startswith("--directory="):
            val = a.split("=", 1)[1]
        if val is not None:
            return Path(cwd or ".", val).resolve() if cwd else None
    return Path(cwd).resolve() if cwd else None


def live_snakemake_pids(workdir) -> tuple[list[int], list[int]]:
    """Snakemake processes on this machine other than this one.

    Returns
    -------
    mine : list of int
        Those running in ``workdir`` (its cwd or ``--directory``).
    unknown : list of int
        Those whose working directory cannot be read (another user's): they might be.
    """
    import psutil

    me = os.getpid()
    target = Path(workdir).resolve()
    mine, unknown = [], []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["pid"] == me or not _is_snakemake(cmd):
                continue
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            try:
                cwd = p.cwd()
            except psutil.AccessDenied:
                unknown.append(p.info["pid"])
                continue
            if _workdir_of(cmd, cwd) == target:
                mine.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            unknown.append(p.info["pid"])
    return mine, unknown


def record_lock_owner(workdir=".") -> None:
    """Record this process (host, pid, start time) as the holder of the workflow's lock
    (``.snakemake/locks/cmpipe-owner.json``); called from ``onstart`` once it is held."""
    locks = _locks_dir(workdir)
    if not locks.is_dir():
        return
    try:
        import psutil
        started = psutil.Process().create_time()
    except Exception:                        # pragma: no cover
        started = None
    rec = dict(host=socket.gethostname(), pid=os.getpid(), create_time=started)
    tmp = locks / f".{_OWNER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, locks / _OWNER)


def active_run(workdir=".") -> int | None:
    """The PID of a live Snakemake run holding the locks of ``workdir``, else None.

    The locks are held by a live run when lock files exist and their recorded owner
    (:func:`record_lock_owner`) is alive on this machine, or another Snakemake process is
    alive in ``workdir``. Such a run must not be unlocked (``--unlock`` would let two runs
    write the same files): the workflow tells a second run to wait or to stop it.
    """
    locks = _locks_dir(workdir)
    if not (locks.is_dir() and any(locks.glob("*.lock"))):
        return None
    try:
        owner = json.loads((locks / _OWNER).read_text())
    except (OSError, ValueError):
        owner = None
    if (owner is not None and owner.get("host") == socket.gethostname()
            and int(owner.get("pid", -1)) != os.getpid()
            and _pid_alive(int(owner.get("pid", -1)), owner.get("create_time"))):
        return int(owner["pid"])
    try:
        mine, _ = live_snakemake_pids(workdir)
    except ImportError:                      # pragma: no cover - psutil comes with snakemake
        return None
    return mine[0] if mine else None


#: Snakemake options of commands that take no lock (dry runs, listings, unlocking).
LOCK_FREE_OPTIONS = frozenset({
    "-n", "--dry-run", "--dryrun", "--unlock", "--nolock", "--list", "-l", "--summary",
    "-S", "--detailed-summary", "-D", "--lint", "--dag", "--rulegraph", "--filegraph",
    "--list-target-rules", "--lt"})


def blocking_run(argv, workdir=".") -> int | None:
    """The PID of a live run (:func:`active_run`) that the Snakemake command ``argv`` would
    collide with, else None: commands that take no lock (:data:`LOCK_FREE_OPTIONS`) go on.
    Snakemake does not expose a dry run while its Snakefile is parsed, hence the options."""
    if LOCK_FREE_OPTIONS & set(argv):
        return None
    return active_run(workdir)


def clear_stale_locks(workdir=".") -> list[Path]:
    """Remove Snakemake's lock files in ``workdir`` when the run that held them is dead.

    The locks are kept if any Snakemake process other than this one is alive in
    ``workdir`` (or might be: its working directory is unreadable), or if the recorded
    owner ran on another machine or is still alive. Returns the files removed (logged).
    """
    locks = _locks_dir(workdir)
    files = sorted(locks.glob("*.lock")) if locks.is_dir() else []
    if not files:
        return []
    owner = None
    try:
        owner = json.loads((locks / _OWNER).read_text())
    except (OSError, ValueError):
        pass
    if owner is not None:
        if owner.get("host") != socket.gethostname():
            log.warning("%s: locked by a run on %s; not touched (run snakemake --unlock there "
                        "if that run is dead)", locks, owner.get("host"))
            return []
        if _pid_alive(int(owner.get("pid", -1)), owner.get("create_time")):
            return []
    try:
        mine, unknown = live_snakemake_pids(workdir)
    except ImportError:                      # pragma: no cover - no psutil: be safe
        return []
    if mine or unknown:
        return []
    removed = []
    for f in files + [locks / _OWNER]:
        try:
            f.unlink()
            removed.append(f)
        except FileNotFoundError:
            pass
    log.info("removed %d stale Snakemake lock file(s) in %s: the run that held them is no "
                "longer alive (killed?); resuming", len(files), locks)
    return removed


def remove_orphaned_temps(root) -> list[Path]:
    """Delete temporary files ``.NAME.tmp-PID`` under ``root`` whose process is dead.

    A temp of a live process (a concurrent run, a ``cmpipe infer``) is kept. Returns the
    files removed (logged, with the bytes freed).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed, freed = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            m = TEMP_PATTERN.match(name)
            if not m or _pid_alive(int(m.group(1))):
                continue
            p = Path(dirpath) / name
            try:
                if p.is_dir() and not p.is_symlink():
                    import shutil
                    freed += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                    shutil.rmtree(p)
                else:
                    freed += p.stat().st_size
                    p.unlink()
                removed.append(p)
            except FileNotFoundError:
                continue
    if removed:
        log.info("removed %d orphaned temporary file(s) (%.1f MB) left by killed jobs under "
                    "%s", len(removed), freed / 1e6, root)
    return removed
