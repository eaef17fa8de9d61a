"""The machinery the seven scripts at the repository's root share, one concern a module.

Read the scripts first: they follow the tutorial step by step and call into these.

- `cli`: one-line errors, Ctrl-C and SIGTERM, the lazy TensorFlow import that keeps --help fast.
- `images`: which files are images (DICOM too), reading them safely, and the one
  preprocessing: every file as a viewer shows it, 8-bit, then the tutorial's steps.
- `store`: the decoded-image store: every image decoded once; `layout`: which files of a
  dataset folder are its images and their classes (class folders, the Radiography Database's
  `<class>/images/` and `masks/`).
- The frozen base, whose code keys the feature cache (`cache`): `frozen` (batches of images to
  VGG16's features, in a precision, cropped to what the head reads; the input check's
  description of an image; the `Extractor`s; the cache's key), with `transforms` (rotation,
  masks).
- `head`: the head that learns, on the frozen base's features: its batches, compile and fit.
- `model`: VGG16 (loaded seeded) with the tutorial's head, the model file, precision;
  `h5attributes`: the model file's text attributes, sized before they are read.
- `input_check`, `screening`: the check of predict's inputs against the training images.
- `calibration`: whether the probabilities mean what they say (Brier, ECE, intercept and
  slope), the reliability diagram, and the recalibration for a new site.
- `splits`: the class encoding, the 80/20 holdout split, cross-validation folds, patients.
- `external`: testing on a labelled folder from elsewhere: its classes, identical files,
  shared patients.
- `config`: the tutorial's hyperparameters and every script's flags, one field each.
- `checks`: every path a script reads or writes, checked before any slow work.
- `report`: metrics with their 95% intervals, the plots, the JSON reports.
- `outputs`: checked, atomic and locked outputs; `spreadsheet`: CSV cells that stay text.
- `manifest`, `building`, `fetch`, `covidx`: the dataset's manifest, the builders' copy step,
  downloading a collection's files over HTTP(S), checked and cached, and COVIDx's label files.
- `properties`: the audit's confounds and near-duplicate detection.
- `export`: the SavedModel and TensorFlow Lite files; `progress`: progress bars and log lines.
"""
