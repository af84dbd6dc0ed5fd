"""cerberus.report and the `report` command: the study on one HTML page."""

import json
import re
import struct

import chromium
import fake_studies
import optuna
import pytest
from conftest import cli, refusal

from cerberus import report
from cerberus import trials as records

PLOTS = ("history", "pareto", "importances", "parallel", "curves", "timeline")


# Per plot: its size, whether plotly drew its SVG, its traces and the marks (lines, points, bars) in them.
MEASURE = """Array.from(document.querySelectorAll('.plot .js-plotly-plot')).map(d => {
    const box = d.getBoundingClientRect();
    return {id: d.id, width: box.width, height: box.height, svg: d.querySelectorAll('.main-svg').length,
            traces: (d._fullData || []).length, marks: d.querySelectorAll('g.trace path, g.trace .point').length};
})"""


def memory_study(trials):
    study = optuna.create_study(direction="maximize", study_name="fake")
    study.add_trials(trials)
    return study


def pareto_figure(html):
    """The accuracy-vs-parameters figure's traces, as plotly's ``to_html`` embeds them."""
    text = html[html.index('"plot-pareto",'):]
    return {"data": json.JSONDecoder().raw_decode(text[text.index("["):])[0]}



def test_report_and_export_count_over_memory_as_a_rejection():
    import re

    import fake_studies

    from cerberus import export, report

    trials = [fake_studies.trial(n, ending=e) for n, e in enumerate(("complete", "complete", "over_budget", "over_budget"))]
    trials[3].user_attrs["reason"] = "over_memory"
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    assert [records.is_trained(t) for t in study.trials] == [True, True, False, False]
    counts = dict(re.findall(r"<tr><th>([^<]+)</th><td>([\d,]+)</td></tr>", report.render(study)))
    assert counts["pruned: over memory (never trained)"] == counts["pruned: over budget (never trained)"] == "1"
    assert list(export.frame(study)["reason"])[2:] == ["over_budget", "over_memory"]


@pytest.mark.slow
@pytest.mark.skipif(chromium.find() is None, reason="Debian's chromium is not installed (.ci/run installs it): the report is not opened in a browser")
def test_report_of_a_smoke_study_renders_in_headless_chromium(smoke_study):
    folder, storage, study = smoke_study
    r = cli("report", "--study", study, "--storage", storage, cwd=folder)
    assert r.returncode == 0, r.stderr
    page = folder / "studies" / study / "report.html"  # the default --out: the study's folder
    assert f"written to {page.relative_to(folder)}" in r.stdout
    text = page.read_text()
    assert text.count("* plotly.js v") == 1 and "<script src" not in text  # embedded once, nothing fetched

    with chromium.Page(page.as_uri()) as tab:
        plots = tab.evaluate(MEASURE)
        shot = page.with_suffix(".png")
        tab.screenshot(shot, full_page=True)
        assert tab.errors == []
        assert [u for u in tab.requests if not u.startswith(("file:", "data:"))] == []  # opens offline
    assert [p["id"] for p in plots] == [f"plot-{name}" for name in PLOTS]
    for p in plots:
        assert p["width"] > 600 and p["height"] >= 300 and p["svg"] > 0 and p["traces"] > 0 and p["marks"] > 0, p
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == 1280 and height > sum(p["height"] for p in plots)  # the whole page, not the window
    print(f"screenshot: {shot}")


def test_the_counts_best_table_budget_and_reference_net_of_a_larger_study():
    study = memory_study(fake_studies.search(60, seed=4, archs=12))
    trials = study.trials  # numbered by the study
    html = report.render(study)
    reasons = [t.user_attrs.get("reason") for t in trials]
    assert {"over_budget", "pruned", "diverged", "error", None} <= set(reasons)  # every ending is there to count
    assert any(t.state.name == "FAIL" and r is None for t, r in zip(trials, reasons))
    counts = dict(re.findall(r"<tr><th>([^<]+)</th><td>([\d,]+)</td></tr>", html))
    assert counts["completed"] == str(sum(t.state.name == "COMPLETE" for t in trials))
    assert counts["pruned: over budget (never trained)"] == str(reasons.count("over_budget"))
    assert counts["pruned: by the pruner"] == str(reasons.count("pruned"))
    assert counts["pruned: diverged"] == str(reasons.count("diverged"))
    assert counts["failed"] == str(sum(t.state.name == "FAIL" for t in trials))
    assert counts["failed: error"] == str(reasons.count("error"))
    assert counts["failed: worker died"] == str(sum(t.state.name == "FAIL" and r is None for t, r in zip(trials, reasons)))
    assert counts["total"] == "60"
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert f"<tr><th>trial</th><td>{best.number}</td></tr>" in html
    assert f"<tr><th>validation accuracy</th><td>{best.value:.4f}</td></tr>" in html
    figure = pareto_figure(html)
    names = [t["name"] for t in figure["data"]]
    assert "budget 5,000,000" in names and "course ResNet-24 (4,918,602)" in names and "Pareto front" in names
    for section in ("Hyperparameter importances", "Parallel coordinates", "Learning curves", "Timeline"):
        assert f"<h2>{section}</h2><p class=\"caption\">" in html  # drawn, not replaced by a note


def test_the_pareto_front_is_the_best_at_or_under_each_size():
    trials = [t for t in memory_study(fake_studies.search(80, seed=5, archs=12)).trials if t.state.name == "COMPLETE"]
    front = report._pareto(trials)
    for t in trials:  # every trial is matched or beaten by a front member no larger than it
        assert any(f.user_attrs["params"] <= t.user_attrs["params"] and f.value >= t.value for f in front)
    for f in front:  # and no front member is beaten by a trial no larger than it
        assert not any(t.user_attrs["params"] <= f.user_attrs["params"] and t.value > f.value for t in trials)


@pytest.mark.parametrize("endings, says, drawn", [
    (["complete"], None, {"history", "pareto", "parallel", "curves", "timeline"}),  # importances need 2 completed
    (["over_budget", "pruned", "diverged"],
     "No trial has completed: all 3 trial(s) ended as 1 diverged, 1 over budget, 1 pruned by the pruner",
     {"pareto", "curves", "timeline"}),  # a pruned trial's last epoch is still an accuracy
    (["over_budget", "over_budget"], "No trial has completed: all 2 trial(s) ended as 2 over budget", {"timeline"}),
    ([], "This study has no trials yet.", set()),
])
def test_small_and_pruned_only_studies_say_what_is_missing(endings, says, drawn):
    html = report.render(memory_study([fake_studies.trial(i, ending=e) for i, e in enumerate(endings)]))
    assert (says in html) if says else ('class="banner"' not in html)
    assert set(re.findall(r'<div id="plot-(\w+)"', html)) == drawn
    assert html.count('<p class="note">') >= len(PLOTS) - len(drawn)  # each missing plot says why


def test_an_unrecorded_budget_is_shown_as_the_default():
    t = fake_studies.trial(0)
    del t.system_attrs["constraints:params"]  # a study from before constraints were stored
    names = [d["name"] for d in pareto_figure(report.render(memory_study([t])))["data"]]
    assert "budget 5,000,000 (the default; not recorded)" in names


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("--study", "nope"), "no study named 'nope' in sqlite:///studies/smoke.db; studies there: demo"),
    (("--out", "search"), "--out search is a folder; give a file name"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(smoke_study, args, message, monkeypatch, capsys):
    folder, storage, study = smoke_study
    monkeypatch.chdir(folder)
    files = lambda: sorted(p for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm")))  # noqa: E731
    before = files()
    assert message in refusal(capsys, "report", "--study", study, "--storage", storage, *args)
    assert files() == before
