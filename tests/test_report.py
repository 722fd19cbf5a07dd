"""The summary that ends run_demo.sh: both test tables, and stage 2's drops in words, including
the demo-scale case where the released normalisation is 0/0 and nothing can be dropped."""
import json

from avvp import report
from avvp.evaluate import KEYS


def write_run(tmp_path, v_class, dropped_visual):
    for stage, value in (("m1", 40.0), ("m3", 50.0)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "test_metrics.json").write_text(json.dumps({k: value for k in KEYS} | {"epoch": 12}))
    (tmp_path / "s2").mkdir()
    quality = {"audio": {"dropped": 3, "correct": 1, "truly_absent": 5, "weak_labels": 100, "precision": 1 / 3,
                         "recall": 0.2, "base_rate": 0.05},
               "visual": {"dropped": dropped_visual, "correct": 0, "truly_absent": 35, "weak_labels": 100,
                          "precision": float("nan"), "recall": 0.0, "base_rate": 0.35}}
    meta = {"a_class": [0.5] * 25, "v_class": v_class, "dropped_audio": 3, "dropped_visual": dropped_visual,
            "weak_labels": 100, "quality": quality}
    (tmp_path / "s2" / "estimate_meta.json").write_text(json.dumps(meta))  # NaN, as stage 2 writes it
    return ["--stage1", str(tmp_path / "m1"), "--stage2", str(tmp_path / "s2"), "--stage3", str(tmp_path / "m3")]


def test_report_says_why_no_visual_label_was_dropped(tmp_path, capsys):
    report.main(write_run(tmp_path, [float("nan")] * 25, 0))
    out = capsys.readouterr().out
    assert "stage 1 (base model): test set" in out and "stage 3 (retrained, MA): test set" in out
    assert "stage 2 dropped audio labels: precision 0.333, recall 0.200 (base rate 0.050)" in out
    assert ("stage 2 dropped no visual label: stage 1 made no visual error on the train labels, so the "
            "per-class normalisation is 0/0 and no visual label can be dropped") in out
    assert "35 of 100 weak labels are truly not visible" in out
    assert "nan" not in out


def test_report_without_drops_but_a_finite_scale_says_none_dropped(tmp_path, capsys):
    report.main(write_run(tmp_path, [0.25] * 25, 0))
    out = capsys.readouterr().out
    assert "stage 2 dropped visual labels: precision n/a (none dropped), recall 0.000 (base rate 0.350)" in out
    assert "0/0" not in out


def test_undefined_normalisation_is_all_nan_and_nothing_else():
    nan = float("nan")
    assert report.normalisation_is_undefined([nan] * 25)
    assert not report.normalisation_is_undefined([nan] * 24 + [0.0])  # one class with an error: defined
    assert not report.normalisation_is_undefined([])                  # no scale recorded: nothing to explain
