"""The frozen network's outputs for a run: looked up in the feature cache, the rest computed a
batch at a time, stored as each batch finishes, and timed for the cost line.

One `Extractor` serves every use. Its network (`frozen`) gives one output per image (the head's
features, cropped to what the head reads) or several from one pass (the whole image's features
and its description for the input check); each output has its own cache. Nothing here decides a
number: what is computed is `frozen`'s, and editing this module keeps every cached entry (its
code is not in the key).

Each distinct entry (`transforms.entry_key`: the image and the transform's parameters for it) is
computed once: an image that the transform leaves the same every epoch passes through VGG16
once, not once per epoch, and so does a file that stands twice. A run stopped halfway keeps
what it computed, and the rerun computes only the rest.
"""

import dataclasses
import time

import numpy as np

from .cache import FeatureCache
from .cli import lazy_import
from .frozen import (
    cache_configuration,
    make_feature_extractor,
    make_joint_extractor,
    model_batches,
)
from .progress import progress
from .transforms import UNCHANGED

tf = lazy_import("tensorflow")


@dataclasses.dataclass
class Extractor:
    """A frozen network's outputs for images of an `ImageStore`, as they are or changed by
    `transform`, computed `batch_size` at a time, each output kept in its cache (`caches`: one
    per output, () with --no-cache)."""

    extract: object  # a batch of scaled images -> its output, or a tuple of outputs
    batch_size: int
    transform: object = UNCHANGED
    caches: tuple = ()
    what: str = "VGG16 features"  # what its progress bar says it computes
    # keep every output this run computed or read in memory: an image asked for one output,
    # then another (features, then description), passes through VGG16 once, cache or not
    remember: bool = False
    # {entry: outputs} computed to time the cost line, until the run's own pass takes them
    ahead: dict = dataclasses.field(default_factory=dict, compare=False)
    kept: dict = dataclasses.field(default_factory=dict, compare=False)

    def _entries(self, images, paths, epochs):
        """The entry of every place (epoch by epoch, image by image within each), and {each
        distinct entry: (the path it is computed from, its row of parameters)}."""
        parameters, keys = self.transform.parameters_and_keys(
            [images.digest(path) for path in paths], epochs)
        sources = {}
        for n, key in enumerate(keys):
            if key not in sources:
                sources[key] = (paths[n % len(paths)], parameters[n])
        return keys, sources

    def _to_compute(self, keys):
        """Of the distinct `keys`, those neither in memory nor in every cache."""
        return [key for key in dict.fromkeys(keys) if key not in self.kept
                and key not in self.ahead
                and not (self.caches and all(cache.has(key) for cache in self.caches))]

    def _compute(self, images, sources, keys):
        """Compute the entries `keys`, a batch at a time, storing each batch as it finishes:
        yields (the batch's keys, each key's tuple of outputs, the batch)."""
        batches = model_batches(images, [sources[key][0] for key in keys], self.batch_size,
                                self.transform, np.stack([sources[key][1] for key in keys]))
        done = 0
        for batch in batches:
            outputs = self.extract(batch)
            outputs = [np.asarray(output) for output in
                       (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]
            batch_keys = keys[done:done + len(outputs[0])]
            for cache, rows in zip(self.caches, outputs):
                cache.store(batch_keys, rows)
            rows = list(zip(*outputs))
            if self.remember:
                self.kept.update(zip(batch_keys, rows))
            done += len(batch_keys)
            yield batch_keys, rows, batch

    def outputs_per_epoch(self, images, paths, epochs):
        """Each output of the images at `paths` as `transform` changes them in each of `epochs`
        epochs: a tuple of (epochs, len(paths), size) arrays, in order. What is in memory or in
        the caches is not computed again; every missing entry goes through VGG16 in one pass,
        under one progress bar."""
        keys, sources = self._entries(images, paths, epochs)
        early = {key: self.ahead.pop(key) for key in sources if key in self.ahead}
        values = {key: self.kept[key] for key in sources if key in self.kept}
        rest = [key for key in sources if key not in early and key not in values]
        if self.caches and rest:
            for key, *outputs in zip(rest, *(cache.lookup(rest) for cache in self.caches)):
                if all(output is not None for output in outputs):
                    values[key] = tuple(outputs)
        values.update(early)
        missing = [key for key in rest if key not in values]
        if missing or early:
            with progress(len(missing) + len(early), self.what) as bar:
                bar.update(len(early))
                if missing:
                    for batch_keys, rows, _ in self._compute(images, sources, missing):
                        values.update(zip(batch_keys, rows))
                        bar.update(len(batch_keys))
        if self.remember:
            self.kept.update(values)
        count = len(values[keys[0]])
        return tuple(np.stack([values[key][n] for key in keys]).reshape(epochs, len(paths), -1)
                     for n in range(count))

    def outputs(self, images, paths):
        """Each output of the images at `paths`, as they are changed in the first epoch: a
        tuple of (len(paths), size) arrays."""
        return tuple(output[0] for output in self.outputs_per_epoch(images, paths, 1))

    def features(self, images, paths):
        """The first output (the features) of the images at `paths`: (len(paths), size)."""
        return self.outputs(images, paths)[0]

    def passes(self, images, paths, epochs=1):
        """The VGG16 passes computing these entries would take now: those not in memory, nor in
        every cache as an entry `get` would trust (a damaged one is work to do)."""
        return len(self._to_compute(self._entries(images, paths, epochs)[0]))

    def seconds_per_image(self, images, paths, epochs=1):
        """What one image costs this extractor here, timed on the first two batches of what
        computing `paths` over `epochs` epochs will compute (`time_own_batches`)."""
        keys, sources = self._entries(images, paths, epochs)
        pending = self._to_compute(keys)[:2 * self.batch_size]
        if not pending:
            return 0.0
        return time_own_batches(self._compute(images, sources, pending), self.ahead.update,
                                self.extract)


def time_own_batches(batches, keep, extract):
    """Seconds an image costs `extract`, for the cost line before a long run, timed on the
    run's own work: of `batches` (an iterator computing (keys, outputs, the batch), a batch at
    a time), the first traces the network, the second is timed, and both go to `keep` (as
    (key, output) pairs: the run takes them from there, nothing is computed twice). With a
    single batch of work, that batch is timed once more: a batch thrown away, in a run of one
    batch."""
    first = start = None
    for count, (keys, outputs, batch) in enumerate(batches):
        if count == 1:
            seconds = (time.perf_counter() - start) / len(keys)
            keep(zip(keys, outputs))
            return seconds
        keep(zip(keys, outputs))
        first, start = batch, time.perf_counter()
    start = time.perf_counter()
    tf.nest.map_structure(np.asarray, extract(first))
    return (time.perf_counter() - start) / len(first)


def make_extractors(config, model, transforms=()):
    """The run's extractors, all made, and every cache's folders checked, before any image
    passes through VGG16 (`config` is a `config.RunConfig`):

    - the whole image's: its features and its description for the input check from one pass
      (`frozen.make_joint_extractor`), each kept in its own cache and, for this run, in
      memory: asked for one, then the other, an image passes through VGG16 once;
    - one per transform of `transforms`: `model`'s features, cropped to what the head reads,
      each with its cache.

    Returns (the whole image's, [one per transform])."""
    joint = make_joint_extractor(model, config.precision)
    cropped, crops = (make_feature_extractor(model, config.precision) if transforms
                      else (None, {}))
    # every key first, then every cache
    configurations = [cache_configuration(model, {}, config.precision),
                      cache_configuration(model, {}, config.precision, output="description"),
                      *[cache_configuration(model, crops, config.precision, transform)
                        for transform in transforms]]
    names = ["whole image(s)", "input check description(s)",
             *[transform.entries for transform in transforms]]
    caches = () if config.cache_folder is None else tuple(
        FeatureCache(config.cache_folder, configuration, what=name)
        for configuration, name in zip(configurations, names))
    whole = Extractor(joint, config.batch_size, UNCHANGED, caches[:2],
                      "VGG16 features and descriptions", remember=True)
    return whole, [Extractor(cropped, config.batch_size, transform, caches[2 + n:3 + n],
                             "VGG16 features" + (f" ({transform.label})" if transform.label
                                                 else ""))
                   for n, transform in enumerate(transforms)]
