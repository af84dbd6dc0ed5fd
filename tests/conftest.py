"""Shared helpers: the real CLI in a subprocess, in a scratch folder with its own studies/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# `pytest -n auto` runs a test process per core, and each starts CLI subprocesses: at torch's
# default of a thread per core each, their threads outnumber the cores and spin waiting for one
# another (the suite took 32 CPU-minutes so, against 28 run serially). One thread each, set
# before any test module imports torch, and inherited by the subprocesses they start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder like a user's checkout: search/ copied in, no studies/ yet."""
    shutil.copytree(ROOT / "search", tmp_path / "search")
    return tmp_path


def cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "cerberus", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_cli(*args: str) -> int:
    """The command line in this process, for checks that need no fresh process (a subprocess
    spends seconds importing torch): its exit code; output goes to pytest's capsys."""
    from cerberus.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code


def refusal(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """What a refused command prints, run in this process: it must exit 2 with exactly one line
    on stderr (an exception instead would fail the test, as a traceback would)."""
    code = run_cli(*args)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, (args, code, err)
    return err


def popen(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "cerberus", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A throwaway PostgreSQL server on 127.0.0.1, started here from Debian's `postgresql`
    binaries (.ci/run installs them) and stopped after the tests. Skips, saying why, only
    when no server can be started."""
    import socket

    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql): PostgreSQL tests not run")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root; Debian's package made the postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as its own user")
        as_user = ["runuser", "-u", "postgres", "--"]
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="cerberus-pg-"))  # not under pytest's root-only tmp folder
    data = root / "data"
    if as_user:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    steps = [
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
         f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off", "start"],
        [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "cerberus"],
    ]
    for cmd in steps:
        r = run(*cmd)
        if r.returncode != 0:
            pytest.skip(f"PostgreSQL could not be started ({Path(cmd[0]).name}: {r.stderr.strip()[:200]}): PostgreSQL tests not run")
    yield f"postgresql://postgres@127.0.0.1:{port}/cerberus"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def default_search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `search/` and a real two-trial smoke search in the default storage
    (studies/cerberus.db, study 'cerberus'), made once; a test that changes it works on a copy."""
    folder = tmp_path_factory.mktemp("default-search")
    shutil.copytree(ROOT / "search", folder / "search")
    r = cli("run", "--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu", "--trials", "2",
            cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """(folder, storage URL, study name) of a real two-trial smoke search, made once for the
    tests that only look at a finished study (report, export, dashboard)."""
    folder = tmp_path_factory.mktemp("smoke")
    shutil.copytree(ROOT / "search", folder / "search")
    storage, study = "sqlite:///studies/smoke.db", "demo"
    r = cli("run", "--space", "search/smoke.toml", "--data", "synthetic", "--device", "cpu", "--trials", "2",
            "--seed", "2", "--study", study, "--storage", storage, cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder, storage, study


def tiny_splits():
    """(train, validation) of 600 and 100 synthetic images: in-process runs in a second or two."""
    import torch

    from cerberus.data import Split, stratified_holdout, synthetic

    full = synthetic(700, seed=5)
    val = stratified_holdout(full.labels, 100, 0)
    keep = torch.ones(700, dtype=torch.bool)
    keep[val] = False
    return Split(full.images[keep], full.labels[keep]), Split(full.images[val], full.labels[val])


def terminal(*args: str, cwd: Path, columns: int = 80, timeout: float = 120) -> str:
    """What the command prints on a real terminal (a pty) of ``columns`` columns."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(ROOT)
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is this many columns wide before anything asks
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", "cerberus", *args], env)
    out, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed its side
                break
            if not chunk:
                break
            out += chunk
    os.waitpid(pid, 0)
    os.close(fd)
    return out.decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture
def full_disk(tmp_path):
    """A real 4 MiB tmpfs (the tests run as root on CI), and ``fill()``, which leaves it no free
    byte; skips, saying why, where it cannot be mounted. Unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'}): the full-disk tests are not run")

    def fill() -> None:
        for name, chunk in (("filler", 65536), ("filler-small", 512)):  # the last partial blocks too
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * chunk):
                    pass
            except OSError:  # no space left
                pass
            finally:
                os.close(fd)

    yield folder, fill
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def refused(workdir, monkeypatch, capsys):
    """``refused(args, message)``: the command, in this process (the same app, without seconds
    of imports; a real process is checked above), exits 2 with one line and creates nothing."""
    monkeypatch.chdir(workdir)

    def check(args, message):
        assert message in refusal(capsys, *args)
        assert not (workdir / "studies").exists()

    return check


@pytest.fixture
def finished(smoke_study, tmp_path):
    """A copy of a finished smoke study: (folder, storage URL, study), its file in WAL mode with
    no -wal or -shm beside it, as a search leaves it."""
    folder, storage, study = smoke_study
    copy = shutil.copytree(folder / "studies", tmp_path / "studies")
    assert sorted(p.name for p in copy.iterdir() if p.is_file()) == ["smoke.db"]
    return copy, f"sqlite:///{copy / 'smoke.db'}", study


@pytest.fixture
def plain_optuna(tmp_path):
    """A study made by plain Optuna, minimising, three trials; (folder, URL)."""
    import optuna

    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url, direction="minimize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    del study
    return tmp_path, url
