"""The machinery the five scripts at the repository's root share, one concern a module.

Read the scripts first: they follow the tutorial step by step and call into these.

- `cli`: one-line errors, Ctrl-C and SIGTERM, the lazy TensorFlow import that keeps --help fast.
- `images`: which files are images (DICOM too), reading them safely, and the one
  preprocessing: every file as a viewer shows it, 8-bit, then the tutorial's steps.
- `data`: the decoded-image store and the tf.data pipelines that feed the model from it.
- `model`: VGG16 with the tutorial's head, its optimizer, the model file, precision.
- `features`, `cache`: the frozen network computed once per image, and its on-disk cache.
- `splits`: the class encoding, the 80/20 holdout split, cross-validation folds, patients.
- `external`: testing on a labelled folder from elsewhere: its classes, identical files,
  shared patients.
- `training`: what train_covid19.py and audit_covid19.py share: flags, checks, the head's fit.
- `report`: metrics with their 95% intervals, the plots, the JSON reports.
- `outputs`: checked, atomic and locked outputs; `spreadsheet`: CSV cells that stay text.
- `manifest`, `building`, `fetch`: the dataset's manifest, the builders' copy step, and
  downloading a collection's files over HTTP(S), checked and cached.
- `properties`: the audit's confounds and near-duplicate detection.
"""
