"""The exact lines a user sees, in one place: the tutorial's report as the README shows it,
and predict's lines with the input check's words.

Every other test reads what it checks (a number, a decision, a selection) from report.json,
the CSV or a step's return value, so that rewording a message breaks only the tests here.
"""

import os
import re

import pytest

import predict_covid19
from covid19xray.input_check import REJECT_FACTOR, UNLIKE_FACTOR
from helpers import parse_report, run_main


def test_training_run_prints_the_tutorials_report(trained):
    assert trained["code"] == 0, trained["stderr"]
    out = trained["stdout"]
    for line in ["[INFO] loading images...", "[INFO] compiling model...",
                 "[INFO] training head...", "Epoch 1/2", "Epoch 2/2",
                 "[INFO] evaluating network...", "[INFO] saving COVID-19 detector model..."]:
        assert line in out
    # the default run augments and does not say otherwise
    assert "trained with --cache-features" not in out and "augmentation off" not in out
    assert "computed in" not in out  # float32 by default, as the tutorial
    assert re.search(r"^\s+precision\s+recall\s+f1-score\s+support$", out, re.M)
    # scikit-learn prints a support of 1 as "1.0" when every score of the row is 0
    assert re.search(r"^\s+covid\s+\d\.\d\d\s+\d\.\d\d\s+\d\.\d\d\s+1(\.0)?$", out, re.M)
    assert re.search(r"^\s+normal\s+\d\.\d\d\s+\d\.\d\d\s+\d\.\d\d\s+1(\.0)?$", out, re.M)
    cm, metrics = parse_report(out)
    assert cm.shape == (2, 2) and cm.sum() == 2 and cm.sum(axis=1).tolist() == [1, 1]
    assert metrics["acc"] == pytest.approx((cm[0, 0] + cm[1, 1]) / cm.sum(), abs=1e-4)
    assert metrics["sensitivity"] == pytest.approx(cm[0, 0] / cm[0].sum(), abs=1e-4)
    assert metrics["specificity"] == pytest.approx(cm[1, 1] / cm[1].sum(), abs=1e-4)
    out_dir = os.path.dirname(trained["model"])
    assert out.strip().splitlines()[-2:] == [
        f"[INFO] wrote {trained['model']} (model), {trained['plot']}, "
        f"{os.path.join(out_dir, 'roc.png')} and {os.path.join(out_dir, 'calibration.png')} "
        f"(plots), {trained['report']} (report)",
        "[INFO] does it read the lungs or the image source? python audit_covid19.py "
        f"--dataset {trained['dataset']}"]


def test_predict_prints_a_line_per_image_with_the_input_checks_words(trained, odd_inputs):
    """`<file>: not classified [input rejected: distance D > 1.7: looks like no frontal chest
    X-ray the model knows]` for what no X-ray looks like, then the closing count."""
    code, out, err = run_main(predict_covid19.main, ["--model", trained["model"], *odd_inputs])
    assert code == 0, err
    lines = out.strip().splitlines()
    for line, path in zip(lines, odd_inputs, strict=False):
        assert re.fullmatch(re.escape(f"{path}: not classified [input rejected: distance ")
                            + r"\d+\.\d\d" + re.escape(f" > {REJECT_FACTOR:g}: looks like no "
                                                     "frontal chest X-ray the model knows]"),
                            line), line
    assert lines[-1] == "[INFO] input check: 2 of 2 images rejected, 0 unlike the training images"
    assert f" <= {UNLIKE_FACTOR:g}]" not in out
