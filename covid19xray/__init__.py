"""The machinery the eight scripts at the repository's root share, one concern a module.

Read the scripts first: they follow the tutorial step by step and call into these.

- `cli`: one-line errors, Ctrl-C and SIGTERM, the lazy TensorFlow import that keeps --help fast.
- `images`: which files are images (DICOM too), reading them safely, and the one
  preprocessing: every file as a viewer shows it, 8-bit, then the tutorial's steps.
- `store`: the decoded-image store: every image decoded once; `layout`: which files of a
  dataset folder are its images and their classes (class folders, the Radiography Database's
  `<class>/images/` and `masks/`).
- The frozen base, whose code keys the feature cache (`cache`): `frozen` (batches of images to
  VGG16's features, in a precision, cropped to what the head reads; the input check's
  description of an image; the cache's key, from `code_digest`), with `transforms` (rotation,
  masks); `extractor`, the scheduling around it; `cost`, what a run's VGG16 work will cost.
- `head`: the head that learns, on the frozen base's features: its batches, class weights,
  compile and fit.
- `model`: VGG16 (loaded seeded) with the tutorial's head, precision; `model_file`: everything
  this project keeps in a model file; `h5attributes`: its text attributes, sized before read.
- `prediction`: from a film's bytes to what the model says of it, Grad-CAM included (predict
  and the page); `server`, `record` and `page/`: the local page (serve_covid19.py).
- `input_check`: the check of predict's inputs against the training images.
- `calibration`: whether the probabilities mean what they say (Brier, ECE, intercept and
  slope), and the recalibration for a new site.
- `evaluation`: a labelled set's report as every script prints it, and train's external test;
  `external_set`: a labelled folder from elsewhere (its classes, identical files, shared
  patients, where each image comes from).
- `splits`: the class encoding, the 80/20 holdout split, cross-validation folds, patients.
- `lungs`, `confounds`, `auc_interval`, `audit_output`: the audit's lung masks or box, its
  confounds and near-duplicates, its AUCs with their bootstrap intervals, and what it prints
  and draws.
- `config`: the tutorial's hyperparameters and every script's flags, one field each.
- `preflight`: every path a script reads or writes, checked before any slow work.
- `report`: a labelled test's metrics with their 95% intervals, by source and by the input
  check's outcome, as printed and as the JSON reports hold them; `plots`: train's figures.
- `writing`: atomic and locked outputs, writes in a thread; `spreadsheet`: CSV cells that stay
  text.
- `collection`, with `cohen`, `kaggle`, `nih` and `covidx`: the public collections the
  builders copy from, one class each, giving each film's path, label, patient and source.
- `manifest`, `building`, `fetch`: the dataset's manifest, the builders' copy step, and
  downloading a collection's files over HTTP(S), checked and cached.
- `export`: the SavedModel and TensorFlow Lite files; `progress`: progress bars and log lines.
"""
