"""The model's record, as the page shows it beside every answer: what it was trained on, how it
did on its held-out test split and on each external test, how calibrated it is, and what the
shortcut audit found. It is read from the `report.json` train_covid19.py wrote beside the model
and from an `audit.json` audit_covid19.py wrote; whatever is missing is said, never guessed.
"""

import json
import os

from .building import file_sha256
from .cli import UserError, shown
from .preflight import read_regular

# report.json and audit.json are a few hundred kB; a bound keeps a wrong file from filling memory
MAX_RECORD_BYTES = 32 << 20
REPORT_FILE = "report.json"


def read_json_file(path, flag):
    """The JSON object in the regular file at `path` (at most MAX_RECORD_BYTES); a `UserError`
    naming `flag` for anything else."""
    data, why = read_regular(path, MAX_RECORD_BYTES)
    if data is None:
        raise UserError(f"{flag} {shown(path)!r} {why}")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{flag} {shown(path)!r}: not JSON ({str(err)[:200]})") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag} {shown(path)!r}: not a JSON object, not a report this project "
                        "wrote")
    return value


def _metric(value):
    """{"value", "ci95"} of a report's metric, or None."""
    if isinstance(value, dict) and isinstance(value.get("value"), (int, float)):
        ci95 = value.get("ci95")
        return {"value": value["value"],
                "ci95": ci95 if isinstance(ci95, list) and len(ci95) == 2 else None}
    if isinstance(value, (int, float)):
        return {"value": value, "ci95": None}
    return None


def _evaluation(report):
    """What a report says of one labelled set: counts, accuracy, sensitivity, specificity, AUC
    with their intervals, and calibration."""
    calibration = report.get("calibration") if isinstance(report.get("calibration"), dict) else {}
    counts = report.get("counts")
    return {
        "counts": counts if isinstance(counts, dict) else None,
        "positive_class": report.get("positive_class"),
        "accuracy": _metric(report.get("accuracy")),
        "sensitivity": _metric(report.get("sensitivity")),
        "specificity": _metric(report.get("specificity")),
        "auc": _metric(report.get("roc_auc", report.get("macro_auc"))),
        "calibration": {name: _metric(calibration.get(name))
                        for name in ("brier", "ece", "intercept", "slope")},
    }


def _training(report):
    counts = report.get("counts") if isinstance(report.get("counts"), dict) else {}
    test = _evaluation(report)
    test["counts"] = counts.get("test")
    external = report.get("external") if isinstance(report.get("external"), dict) else {}
    return {
        "class_names": report.get("class_names"),
        "train_counts": counts.get("train"),
        "split": (report.get("split") or {}).get("kind") if isinstance(report.get("split"),
                                                                        dict) else None,
        "test": test,
        "external": [{"folder": folder, **_evaluation(result)}
                     for folder, result in external.items() if isinstance(result, dict)],
        "sha256": ((report.get("outputs") or {}).get("model") or {}).get("sha256")
        if isinstance(report.get("outputs"), dict) else None,
    }


def _audit(audit):
    probe = audit.get("probe") if isinstance(audit.get("probe"), dict) else {}
    return {"shortcut": audit.get("shortcut") if isinstance(audit.get("shortcut"), bool)
            else None,
            "verdict": audit.get("verdict") if isinstance(audit.get("verdict"), str) else None,
            "lungs_hidden_auc": _metric((probe.get("lungs_hidden") or {}).get("auc"))
            if isinstance(probe.get("lungs_hidden"), dict) else None}


def model_record(model_path, model_file, report_path=None, audit_path=None):
    """The record `/api/model` gives and the page shows. `report_path` None: the report.json
    beside the model, if there is one; a report named and unreadable is a `UserError`, as is
    an audit named and unreadable."""
    sha256 = file_sha256(model_path)
    missing, notes = [], []
    training = None
    path = report_path or os.path.join(os.path.dirname(os.path.abspath(model_path)), REPORT_FILE)
    if not (report_path or os.path.lexists(path)):
        missing.append("no training report (report.json beside the model)")
    else:
        try:
            training = _training(read_json_file(path, "--report"))
        except UserError as err:
            if report_path:  # named: the user means it
                raise
            missing.append("no training report: the one beside the model cannot be used "
                           f"({str(err).removeprefix('--report ')})")
    if training is not None:
        if training["sha256"] and training["sha256"] != sha256:
            notes.append(f"{os.path.basename(path)} was written for another model file (its "
                         "SHA-256 differs): a copy trained again, or recalibrated")
        if training["class_names"] != model_file.class_names:
            notes.append(f"{os.path.basename(path)} names classes {training['class_names']}, "
                         f"the model {model_file.class_names}")
    if training is not None and not training["external"]:
        missing.append("no external test")
    audit = None
    if audit_path:
        audit = _audit(read_json_file(audit_path, "--audit"))
    else:
        missing.append("no shortcut audit (give --audit audit.json)")
    recalibration = model_file.recalibration
    return {
        "model": os.path.basename(model_path),
        "sha256": sha256,
        "class_names": model_file.class_names,
        "input_check": None if model_file.input_check is None
        else model_file.input_check.summary(),
        "recalibration": None if recalibration is None else recalibration.summary(),
        "report": None if training is None else os.path.basename(path),
        "training": training,
        "audit": audit,
        "missing": missing + ([] if model_file.input_check is not None else
                              ["no input check: every film is classified unchecked"]),
        "notes": notes,
    }
