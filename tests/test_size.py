"""The closed-form size of cerberus.size against its oracle, the meta-device count of
cerberus.model.measure, on random architectures of every stage count, kernel, skip kernel and
pool; and the paths that read it (the budget check, `count`) never import torch."""

import json
import random
import subprocess
import sys

import pytest

from cerberus import size
from cerberus.config import MAX_STAGES, Arch
from cerberus.model import measure

from conftest import ROOT

ORACLE_ARCHS = 600  # ~25 ms each on the meta device; benchmarks/size_oracle.py checks 10,000


def random_arch(rng: random.Random) -> Arch:
    stages = rng.randint(1, MAX_STAGES)
    final = max(1, 32 >> (stages - 1))
    return Arch(
        blocks=tuple(rng.choice([1, 1, 2, 3]) for _ in range(stages)),
        widths=tuple(rng.randint(1, 48) for _ in range(stages)),  # equal neighbours too: no projection
        conv_kernel=rng.choice([1, 3, 5, 7]),
        skip_kernel=rng.choice([1, 3]),
        pool=rng.randint(0, final),
    )


def test_closed_form_equals_the_meta_device_count_on_random_architectures():
    rng = random.Random(12)
    archs = [random_arch(rng) for _ in range(ORACLE_ARCHS)]
    kinds = {(len(a.blocks), a.conv_kernel, a.skip_kernel, a.pool == 0) for a in archs}
    assert len(kinds) >= 80  # stage counts x kernels x skip kernels x global-or-not pooling, nearly all of them
    for arch in archs:
        assert size.of(arch) == measure(arch), arch


@pytest.mark.parametrize("arch", [Arch((3, 5, 3), (64, 128, 256)), Arch((3, 5, 3), (64, 128, 256), skip_kernel=3),
                                  Arch((3, 5, 3), (16, 32, 64)), Arch((200,), (16,)), Arch((1,) * 6, (4,) * 6, pool=1)],
                         ids=["course", "course-skip3", "quarter", "deep", "six-stages"])
def test_known_nets(arch):
    assert size.of(arch) == measure(arch)


def test_the_course_nets_sizes():
    assert size.params(Arch((3, 5, 3), (64, 128, 256))) == 4_918_602
    assert size.params(Arch((3, 5, 3), (16, 32, 64))) == 309_594


def test_count_and_the_budget_check_never_import_torch():
    """`count` answers without torch and optuna (what keeps it well under a second, cold), and
    so does sizing a space's architectures."""
    code = ("import sys\nfrom cerberus.cli import main\n"
            "sys.argv = ['cerberus-search', 'count', '--blocks', '3,5,3', '--channels', '64,128,256', '--device', 'cpu', '--json']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    counted, loaded = r.stdout.strip().splitlines()
    assert json.loads(counted)["params"] == 4_918_602 and loaded == "[]"
