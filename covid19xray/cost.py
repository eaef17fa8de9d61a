"""What a training run's VGG16 work will cost, said before it starts: the passes it makes
(what is in the feature cache is free), their time on this machine from a first batch, and what
--cache-features would make instead."""

import dataclasses

from .progress import duration


@dataclasses.dataclass(frozen=True)
class Cost:
    """What the run's VGG16 work will cost (`estimate_cost`), said before it starts."""

    passes: int  # VGG16 passes this run makes: the entries not found in the feature cache
    seconds: float  # their estimate here, from a batch timed on this machine
    cache_features_passes: int | None  # what --cache-features would make (None: it is on)


def estimate_cost(extractors, images, split, epochs):
    """Before the VGG16 work, say what it will cost: the passes this run makes (what is in the
    feature cache is free), their time on this machine from a first batch, and what
    --cache-features would make instead. On thousands of images the default, augmented run
    makes one pass per training image and epoch: hours where --cache-features takes minutes."""
    # --cache-features: one pass of each image for its features and description
    both = extractors.whole.passes(images, split.trainP + split.testP)
    if extractors.rotated is None:
        parts, alternative = {"whole": both}, None
        what = (f"{len(split.trainP) + len(split.testP):,} images, their features and "
                "descriptions in one pass each")
    else:
        parts = {"cropped": extractors.unchanged.passes(images, split.testP)
                 + extractors.rotated.passes(images, split.trainP, epochs),
                 "whole": extractors.whole.passes(images, split.trainP)}
        alternative = both
        what = (f"{len(split.trainP):,} training images x {epochs} epochs, "
                f"{len(split.testP):,} test images and {len(split.trainP):,} descriptions")
    passes = sum(parts.values())
    if not passes:
        print("[INFO] VGG16 work: none, every feature this run needs is in the feature cache")
        return Cost(0, 0.0, alternative)
    # each timed on the first batches of this run's own work, which the run then uses
    per_image = {"whole": extractors.whole.seconds_per_image(images, split.trainP)}
    if "cropped" in parts:
        per_image["cropped"] = extractors.rotated.seconds_per_image(images, split.trainP,
                                                                    epochs)
    seconds = sum(n * per_image[kind] for kind, n in parts.items())
    line = (f"[INFO] VGG16 work: {what} = {passes:,} passes to compute, about "
            f"{duration(seconds)} here ({max(per_image.values()) * 1e3:.0f} ms an image at "
            "most, timed on a first batch)")
    if alternative is not None:
        line += (f"; --cache-features: {alternative:,}, about "
                 f"{duration(alternative * per_image['whole'])}")
    print(line)
    return Cost(passes, seconds, alternative)
