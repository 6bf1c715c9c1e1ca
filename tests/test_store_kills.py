"""The run store under random kills (issue 15 item 8): a writer saving runs in a loop is
SIGKILLed at seeded random moments, ten times over one store file. After each kill the store
opens (its ``PRAGMA quick_check`` passes, and a full ``integrity_check`` here too), every run
whose ``save`` returned before the kill is there and loads exactly, and no half-written run
is: every row is some complete run the writer built. (tests/test_store.py kills a writer once,
deliberately inside an open transaction; this is the randomized many-kills version.)
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from memlab.store import Store

from .runs_data import make_result

ROOT = Path(__file__).resolve().parents[1]
EVENTS = 3000  # a few hundred kB per run: a save takes milliseconds, so kills land inside one
KILLS = 10

# The writer reports each run on stdout right after its save returned (committed), flushed:
# "seed id". The pipe keeps what was written before the kill.
_WRITER = """
import sys
from memlab.store import Store
from tests.runs_data import make_result
s = Store(sys.argv[1])
seed = int(sys.argv[2])
print("ready", flush=True)
while True:
    rid = s.save(make_result(seed, events={events}))
    print(seed, rid, flush=True)
    seed += 1
"""


def _integrity(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def test_random_kills_lose_no_committed_run(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    Store(path).close()
    rng = random.Random(15)
    committed: dict[str, int] = {}  # id -> seed, of every save that returned before a kill
    seed = 0
    for kill in range(KILLS):
        p = subprocess.Popen(
            [sys.executable, "-c", _WRITER.format(events=EVENTS), str(path), str(seed)],
            cwd=ROOT,
            env={**os.environ, "MEMLAB_STORE": str(path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr and p.stderr.read()
        time.sleep(rng.uniform(0.02, 0.4))  # some kills before the first save ends
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL
        # whole "seed id" lines only: "ready" came first, a line cut by the kill is not one
        new = {w[1]: int(w[0]) for w in map(str.split, out.splitlines()) if len(w) == 2}
        committed.update(new)
        seed += len(new) + 1  # the next writer never reuses the seed the killed one was saving

        assert _integrity(path) == "ok", f"kill {kill}"
        with Store(path) as s:  # opening runs PRAGMA quick_check and refuses a damaged file
            ids = set(s.runs(limit=10**6)["id"])
            assert set(committed) <= ids, f"kill {kill}: lost {set(committed) - ids}"
            # At most one more row per kill: the save that committed just before the kill,
            # before its id reached the pipe.
            assert len(ids - set(committed)) <= kill + 1
            for rid in sorted(set(new) | (ids - set(committed))):
                back = s.load(rid)
                want = make_result(int(back.experiment["seed"]), events=EVENTS)
                assert back.to_dict() == want.to_dict(), rid  # complete, not half-written
                if rid in new:
                    assert back.experiment["seed"] == new[rid]
    assert len(committed) >= KILLS  # the kills were spread over real saves
    with Store(path) as s:  # the store still takes writes after all that
        s.save(make_result(10**6, events=10))
        assert len(s) >= len(committed) + 1
