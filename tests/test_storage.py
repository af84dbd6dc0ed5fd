"""Opening storage: several processes meeting a new database at the same moment."""

import subprocess
import sys
import time

import optuna

from conftest import ROOT

RACES = 3
OPEN_AT = """
import sys, time
from cerberus.storage import open_storage
folder, at = sys.argv[1], float(sys.argv[2])
for race in range(int(sys.argv[3])):
    time.sleep(max(0.0, at + race - time.time()))
    open_storage(f"sqlite:///{folder}/new-{race}.db", create=True, heartbeat=1)
"""


def test_processes_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path):
    """All create Optuna's tables and insert its schema version; before cerberus looked again,
    the losers died with 'table studies already exists' or 'UNIQUE constraint failed:
    alembic_version' (seen when a test polled the file a worker was creating)."""
    at = time.time() + 4  # after every process has imported torch and optuna
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, str(tmp_path), str(at), str(RACES)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-600:] for e in errors if e][:1]
    for race in range(RACES):
        assert optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/new-{race}.db").get_all_studies() == []
