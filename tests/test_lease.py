"""One writer per output: the lease on local files and on a real S3 protocol server (moto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from unsafe2safe_ray.storage.fs import filesystem
from unsafe2safe_ray.storage.lease import (LEASE_NAME, LeaseHeldError, LeaseLostError, OutputLease, read_lease,
                                           removable_files)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """(filesystem, output root) on a local folder or a fresh moto bucket."""
    if request.param == "local":
        fs, root = filesystem(str(tmp_path / "out"))
        return fs, root
    bucket, fs = request.getfixturevalue("s3_bucket")
    return fs, f"{bucket}/out"


def test_second_run_refuses_naming_the_holder(store):
    fs, root = store
    first = OutputLease(fs, root, "first", expiry_s=60).acquire()
    with pytest.raises(LeaseHeldError) as e:
        OutputLease(fs, root, "second", expiry_s=60).acquire()
    msg = str(e.value)
    assert "\n" not in msg and "run first" in msg and "host " in msg and "since " in msg and "--break-lease" in msg
    assert read_lease(fs, root).run_id == "first"
    first.refresh()  # still ours
    first.release()
    assert read_lease(fs, root) is None
    second = OutputLease(fs, root, "second", expiry_s=60).acquire()
    assert read_lease(fs, root).run_id == "second" and second.taken_over is None
    second.release()


def test_only_one_of_many_simultaneous_runs_wins(store):
    fs, root = store
    won, refused = [], []
    barrier = threading.Barrier(6)

    def take(i: int) -> None:
        lease = OutputLease(fs, root, f"run{i}", expiry_s=60)
        barrier.wait()
        try:
            lease.acquire()
            won.append(lease)
        except LeaseHeldError:
            refused.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    assert read_lease(fs, root).run_id == won[0].run_id
    won[0].release()


def test_expired_lease_is_taken_over_and_the_old_holder_stops(store):
    fs, root = store
    old = OutputLease(fs, root, "old", expiry_s=1.5).acquire()  # no heartbeat: it will expire
    with pytest.raises(LeaseHeldError):
        OutputLease(fs, root, "new", expiry_s=60).acquire()
    time.sleep(max(0.0, old.record.expires_at - time.time()) + 0.1)
    new = OutputLease(fs, root, "new", expiry_s=60).acquire()
    assert new.taken_over is not None and new.taken_over.run_id == "old"
    with pytest.raises(LeaseLostError, match="taken over by run new"):
        old.refresh()
    with pytest.raises(LeaseLostError):
        old.check()
    old.release()  # does not delete the new holder's lease
    assert read_lease(fs, root).run_id == "new"
    new.release()


def test_heartbeat_keeps_the_lease_alive(store):
    fs, root = store
    with OutputLease(fs, root, "alive", expiry_s=1.0):
        time.sleep(2.2)  # two expiries: only the heartbeat keeps it
        with pytest.raises(LeaseHeldError):
            OutputLease(fs, root, "other", expiry_s=60).acquire()
    assert read_lease(fs, root) is None  # released on exit


def test_break_lease_takes_a_live_lease(store):
    fs, root = store
    live = OutputLease(fs, root, "live", expiry_s=600).acquire()
    broke = OutputLease(fs, root, "operator", expiry_s=60).acquire(break_lease=True)
    assert broke.taken_over.run_id == "live"
    with pytest.raises(LeaseLostError):
        live.refresh()
    broke.release()


def test_dead_driver_on_this_host_is_taken_over_at_once(tmp_path):
    """A SIGKILLed driver leaves its lease behind; a rerun on the same host need not wait."""
    fs, root = filesystem(str(tmp_path / "out"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    lease = OutputLease(fs, root, "killed", expiry_s=600).acquire()
    record = json.loads((tmp_path / "out" / LEASE_NAME).read_text())
    (tmp_path / "out" / LEASE_NAME).write_text(json.dumps(dict(record, pid=pid)))
    lease.record = None  # forget it: this stands for the killed process
    rerun = OutputLease(fs, root, "rerun", expiry_s=60).acquire()
    assert rerun.taken_over.run_id == "killed"
    rerun.release()


def test_cleanup_rules_spare_other_runs_new_files(tmp_path):
    out = tmp_path / "out"
    for d in ("images", "captions", "_commits"):
        (out / d).mkdir(parents=True)
    old = time.time() - 3600
    files = {
        "images/shard-00000-killed-aaaaaaaaaa.tar": old,          # orphan of a killed run: goes
        "images/shard-00000-committed-bbbbbbbbbb.tar": old,       # a marker lists it: stays
        "images/shard-00001-killed-cccccccccc.tar": old,          # shard not selected: stays
        "images/.tmp-0123-shard-00001-x-dddddddddd.tar": old,     # temp part of a failed write: goes
        "_commits/.tmp-0123-shard-00003.json": old,               # temp marker: goes
    }
    for rel, mtime in files.items():
        (out / rel).write_bytes(b"x")
        os.utime(out / rel, (mtime, mtime))
    fs, root = filesystem(str(out))
    lease = OutputLease(fs, root, "mine", expiry_s=60).acquire()
    # Written after the lease was taken: this run's own part goes, another run's stays.
    (out / "images/shard-00000-mine-eeeeeeeeee.tar").write_bytes(b"x")
    (out / "captions/shard-00000-zombie-ffffffffff.parquet").write_bytes(b"x")
    got = removable_files(fs, root, ("images", "captions", "_commits"), {0},
                          {"images/shard-00000-committed-bbbbbbbbbb.tar"}, lease)
    assert got == {"images/shard-00000-killed-aaaaaaaaaa.tar", "images/.tmp-0123-shard-00001-x-dddddddddd.tar",
                   "_commits/.tmp-0123-shard-00003.json", "images/shard-00000-mine-eeeeeeeeee.tar"}
    lease.release()
