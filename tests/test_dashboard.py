"""cerberus.dashboard: optuna-dashboard on a study, read-only."""

import json
import signal
import urllib.error
import urllib.request

import pytest
from conftest import cli, popen


def get(url, method="GET"):
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
        return json.loads(r.read())



@pytest.mark.slow
def test_dashboard_serves_the_study_its_trials_and_their_user_attrs_read_only(smoke_study):
    folder, storage, study = smoke_study
    proc = popen("dashboard", "--study", study, "--storage", storage, "--port", "0", cwd=folder)
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert "read-only: http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split("read-only: ")[1].split()[0]
        base, study_id = url.split("/dashboard/studies/")
        assert url.startswith("http://127.0.0.1:")

        listed = get(f"{base}/api/studies")["study_summaries"]
        assert [(s["study_name"], s["study_id"]) for s in listed] == [(study, int(study_id))]
        detail = get(f"{base}/api/studies/{study_id}")
        assert detail["name"] == study and len(detail["trials"]) == 2
        for trial in detail["trials"]:
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            assert {"params", "flops", "images_per_s", "config", "worker", "device"} <= set(attrs), attrs
            assert trial["state"] == "Complete" and len(trial["intermediate_values"]) == 1
        assert urllib.request.urlopen(url, timeout=30).status == 200  # the page itself

        with pytest.raises(urllib.error.HTTPError) as refused:  # deleting the study would stop its workers
            get(f"{base}/api/studies/{study_id}", method="DELETE")
        assert refused.value.code == 403
        assert [s["study_name"] for s in get(f"{base}/api/studies")["study_summaries"]] == [study]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.slow
def test_dashboard_of_a_study_that_is_not_there_is_refused(smoke_study):
    folder, storage, _ = smoke_study
    r = cli("dashboard", "--study", "nope", "--storage", storage, "--port", "0", cwd=folder)
    assert r.returncode == 2 and r.stderr == "error: no study named 'nope' in sqlite:///studies/smoke.db; studies there: demo\n"
    assert r.stdout == ""
