"""The run's state file: one JSON document per run that every stage reads and extends.

Layout: `<runs_dir>/<cluster>/<run-id>/state.json`, with `<runs_dir>/<cluster>/latest` (a symlink)
pointing at the newest run. Writes are atomic (temp file, fsync, rename) and come only from the
main thread; a lock file stops two operators from working on the same run at once.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from collectors.errors import UsageError

SCHEMA_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"
LATEST = "latest"
RESULTS_DIR = "results"  # the run's downloaded node tarballs

# Fixed node status values (DESIGN.md section 3).
PENDING, RUNNING, OK, OK_WITH_ERRORS = "pending", "running", "ok", "ok_with_errors"
FAILED, TIMEOUT, UNREACHABLE, THROTTLED = "failed", "timeout", "unreachable", "throttled"
SKIPPED, INTERRUPTED = "skipped", "interrupted"
NODE_STATUSES = (PENDING, RUNNING, OK, OK_WITH_ERRORS, FAILED, TIMEOUT, UNREACHABLE, THROTTLED, SKIPPED, INTERRUPTED)
SUCCESS_STATUSES = (OK, OK_WITH_ERRORS)
UNFINISHED_STATUSES = (PENDING, RUNNING, INTERRUPTED)
FAILURE_STATUSES = (FAILED, TIMEOUT, UNREACHABLE, THROTTLED)

# A stage's record says it is over: done, or nothing for it to do in this run.
FINISHED_STAGE_STATUSES = ("done", "not_applicable", "skipped")

RUN_ID_RE = re.compile(r"^\d{8}_\d{6}(_\d+)?$")
SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d_%H%M%S")


def cluster_dir_name(cluster: str) -> str:
    """A cluster given as an ARN must not create nested folders; keep the last segment."""
    return SAFE_NAME_RE.sub("_", cluster.rsplit("/", 1)[-1])


class RunState:
    """One run's state document plus where it lives."""

    def __init__(self, run_dir: Path, data: dict[str, Any]):
        self.run_dir = run_dir
        self.data = data

    # -- creation and lookup -------------------------------------------------------------
    @classmethod
    def create(cls, runs_dir: Path, cluster: str, run_id: str | None = None) -> "RunState":
        """Make a new run folder with a unique id and point `latest` at it."""
        base = runs_dir / cluster_dir_name(cluster)
        try:
            base.mkdir(parents=True, exist_ok=True)
            base.chmod(0o700)  # made by an earlier version, or under another umask
            run_dir = _make_unique_run_dir(base, run_id or new_run_id())
        except OSError as exc:
            raise UsageError(f"cannot make a run folder under {base} (hyperpod.runs_dir is {runs_dir}): "
                             f"{exc.strerror or exc}") from None
        state = cls(run_dir, {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_dir.name,
            "created": utc_now(),
            "cluster": {"requested": cluster},
            "options": {},
            "stages": {},
            "nodes": {},
        })
        state.save()
        _point_latest(base, run_dir.name)
        return state

    @classmethod
    def load(cls, runs_dir: Path, cluster: str, run_id: str | None = None) -> "RunState":
        """The run named by `run_id`, or the latest run of `cluster`."""
        base = runs_dir / cluster_dir_name(cluster)
        if run_id is None:
            latest = base / LATEST
            if not latest.exists():
                raise UsageError(f"no runs for cluster {cluster!r} under {base}: run `invoke discover` first")
            run_dir = latest.resolve()
        else:
            if not RUN_ID_RE.match(run_id):
                raise UsageError(f"--run-id must look like YYYYMMDD_HHMMSS, got {run_id!r}")
            run_dir = base / run_id
        path = run_dir / STATE_FILE
        if not path.is_file():
            raise UsageError(f"no state for run {run_id or 'latest'} of cluster {cluster!r} (looked for {path})")
        return cls(run_dir, _read_state(path))

    def adopt_cluster_name(self, name: str) -> None:
        """A run started with --cluster ARN was made under the ARN's last segment (the cluster id); once
        discovery knows the name it moves under that, where its S3 prefix, its resume hints and every
        later `--cluster NAME` look. The id's folder then links to the name's, so the ARN finds it too."""
        base, wanted = self.run_dir.parent, self.run_dir.parent.parent / cluster_dir_name(name)
        if base == wanted or (wanted / self.run_id).exists():
            return
        wanted.mkdir(parents=True, exist_ok=True)
        wanted.chmod(0o700)
        os.rename(self.run_dir, wanted / self.run_id)
        self.run_dir = wanted / self.run_id
        _point_latest(wanted, self.run_id)
        (base / LATEST).unlink(missing_ok=True)
        if not any(base.iterdir()):
            base.rmdir()
            base.symlink_to(wanted.name)

    def discard(self) -> None:
        """Remove a run that recorded nothing, and point `latest` back at the newest run left."""
        base = self.run_dir.parent
        shutil.rmtree(self.run_dir, ignore_errors=True)
        remaining = sorted(p.name for p in base.iterdir() if p.is_dir() and RUN_ID_RE.match(p.name))
        (base / LATEST).unlink(missing_ok=True)
        if remaining:
            _point_latest(base, remaining[-1])

    # -- persistence -----------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.run_dir / STATE_FILE

    def save(self) -> None:
        """Atomic replace: a crash leaves either the old or the new file, never half of one."""
        self.data["updated"] = utc_now()
        fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=".state.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(self.data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def locked(self) -> Iterator["RunState"]:
        """Hold the run's lock for one stage; a second operator gets a clear error, not a clash."""
        with open(self.run_dir / LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise UsageError(f"run {self.run_id} is in use by {holder}; wait for it or pick another run") from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()}")
            lock.flush()
            try:
                yield self
            finally:
                lock.seek(0)
                lock.truncate()

    # -- accessors ---------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.data["run_id"]

    @property
    def cluster(self) -> dict[str, Any]:
        return self.data["cluster"]

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        return self.data["nodes"]

    @property
    def options(self) -> dict[str, Any]:
        return self.data["options"]

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {})

    def stage_done(self, name: str) -> bool:
        return self.data["stages"].get(name, {}).get("status") == "done"

    def require_stage(self, name: str, needed_by: str) -> dict[str, Any]:
        if not self.stage_done(name):
            cluster = self.cluster.get("name") or self.cluster.get("requested")
            raise UsageError(f"`{needed_by}` needs the {name} stage of run {self.run_id}, which has not run: continue "
                             f"the run with `invoke collect --cluster {cluster} --run-id {self.run_id}`")
        return self.data["stages"][name]

    def stage_finished(self, name: str) -> bool:
        """Done, or nothing to do for this run (kubectl on a Slurm cluster, cluster after head-node discovery)."""
        return self.data["stages"].get(name, {}).get("status") in FINISHED_STAGE_STATUSES

    def is_downloaded(self) -> bool:
        """Whether the run's bundles were downloaded (the stages that read them offline need that)."""
        download = self.data["stages"].get("download", {}).get("status")
        return download in ("done", "incomplete") or (self.run_dir / RESULTS_DIR).is_dir()

    def mark_stage(self, name: str, status: str, **details: Any) -> None:
        record = self.stage(name)
        record.update(details, status=status, finished=utc_now())
        self.save()


def _make_unique_run_dir(base: Path, run_id: str) -> Path:
    """Two runs in the same second get `_2`, `_3`… instead of sharing a folder."""
    candidate, suffix = run_id, 1
    while True:
        try:
            (base / candidate).mkdir()
            return base / candidate
        except FileExistsError:
            suffix += 1
            candidate = f"{run_id}_{suffix}"


def _point_latest(base: Path, run_id: str) -> None:
    tmp = base / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_id)
    os.replace(tmp, base / LATEST)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read state file {path}: {exc}") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise UsageError(f"state file {path} has schema version {data.get('schema_version')}, "
                         f"this tool reads {SCHEMA_VERSION}")
    return data
