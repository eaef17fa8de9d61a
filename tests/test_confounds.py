"""covid19xray.confounds: what can tell two sources apart, and copies of one picture."""

import cv2
import numpy as np
import pytest

from covid19xray.confounds import (
    NEAR_DUPLICATE_BITS,
    NEAR_DUPLICATE_CORRELATION,
    duplicates,
    perceptual_hash,
    separation,
    thumbnail,
)


def film(phase):
    """A chest-film-like picture: two dark lung fields, and horizontal 'ribs' every 12 pixels
    whose phase differs from film to film. At the scale of a perceptual hash (the 8x8 lowest
    frequencies) every such film is the same picture, as real chest X-rays nearly are."""
    image = np.full((224, 224), 150, np.float32)
    for x in (75, 149):
        cv2.ellipse(image, (x, 110), (40, 70), 0, 0, 360, 60, -1)
    image += 20 * np.sin(2 * np.pi * np.arange(224)[:, None] / 12 + phase)
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def jpeg(image, quality=80):
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1],
                        cv2.IMREAD_COLOR)


def test_near_copies_are_found_and_look_alike_films_are_not():
    a, other = film(0), film(np.pi)
    # the same picture, brighter, recompressed, and resized down and back up
    copy = cv2.resize(cv2.resize(jpeg(np.clip(a.astype(int) + 6, 0, 255).astype(np.uint8)),
                                 (150, 150)), (224, 224))
    pictures = {"a.png": a, "other.png": other, "copy.jpg": copy, "a-again.png": a}
    hashes = [perceptual_hash(image) for image in pictures.values()]
    # the hash alone cannot tell the two films apart, and puts the copy within reach
    assert hashes[0] == hashes[1]
    assert bin(hashes[0] ^ hashes[2]).count("1") <= NEAR_DUPLICATE_BITS
    assert float(thumbnail(a) @ thumbnail(other)) < NEAR_DUPLICATE_CORRELATION
    found = duplicates(list(pictures), ["covid", "normal", "normal", "covid"],
                       ["da", "dother", "dcopy", "da"], hashes, pictures.get)
    exact = [d for d in found if d["kind"] == "exact"]
    near = [d for d in found if d["kind"] == "near"]
    assert exact == [{"kind": "exact", "files": ["a.png", "a-again.png"],
                      "classes": ["covid"], "cross_class": False, "distance": 0}]
    assert sorted((d["files"][0], d["files"][1], d["cross_class"]) for d in near) == [
        ("a.png", "copy.jpg", True), ("copy.jpg", "a-again.png", True)]
    assert all(d["correlation"] >= NEAR_DUPLICATE_CORRELATION for d in near)


def test_separation_does_not_care_which_class_is_larger():
    is_positive = np.array([True] * 5 + [False] * 5)
    larger = separation(is_positive, [10, 11, 12, 13, 14, 1, 2, 3, 4, 5])
    smaller = separation(is_positive, [1, 2, 3, 4, 5, 10, 11, 12, 13, 14])
    assert larger["value"] == smaller["value"] == 1.0
    assert larger["higher_in_positive"] and not smaller["higher_in_positive"]
    # positives 1, 10, 2, 11, 3 against 12, 4, 13, 5, 14: a positive is larger in 4 of 25
    # pairs, so the negatives' side separates them, at 21 of 25
    mixed = separation(is_positive, [1, 10, 2, 11, 3, 12, 4, 13, 5, 14])
    assert mixed["value"] == pytest.approx(0.84) and not mixed["higher_in_positive"]
