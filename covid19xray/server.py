"""The local page and its JSON API (serve_covid19.py), a Flask application.

- `GET /`: the page (covid19xray/page/: one HTML file, one script, one style sheet; nothing
  from the internet).
- `POST /api/predict`: multipart field `files`, one or more films; answers
  `{"results": [...], "csv": "..."}`: per film what predict_covid19.py prints and writes, from
  the same code (`prediction.classify`), with its Grad-CAM overlay as a data URI.
- `GET /api/model`: the model's record (`record.model_record`).

The model is loaded once, before the server starts. Requests are received in threads, and
classified one at a time behind one lock (TensorFlow, and the decoders' messages, caught on the
process's descriptor 2), so concurrent requests get the answers each would get alone. Uploads
stay in memory (or in Werkzeug's anonymous temporary files for large parts, deleted when
closed) and are dropped when the request is answered.
"""

import base64
import dataclasses
import logging
import os
import threading

import cv2
import numpy as np
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .images import IMAGE_SIZE, MAX_FILE_BYTES, NotAnImage, unusable
from .prediction import classify, csv_text, decoded_again, overlay, predict, shrunk
from .report import strict_json

PAGE_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
              "/page.js": ("page.js", "text/javascript; charset=utf-8"),
              "/page.css": ("page.css", "text/css; charset=utf-8")}
# Nothing the page runs or shows comes from elsewhere; images are data URIs.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; "
                                "object-src 'none'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

MAX_UPLOAD_MB = 64
MAX_FILES = 64
# The film and its overlay as the page shows them: at most this many pixels on the longer side
# (a 3,000-pixel film would be 10 MB of data URI, and no screen shows it whole)
DISPLAY_SIDE = 1024
DISPLAY_QUALITY = 90  # JPEG


@dataclasses.dataclass
class Service:
    """What the server answers with: the classifier, loaded once, and the model's record."""

    classifier: object  # a `prediction.Classifier` with Grad-CAM
    record: dict  # `record.model_record`
    batch_size: int = 8
    display_side: int = DISPLAY_SIDE
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def warm_up(self):
        """Trace the compiled forward pass and the Grad-CAM step once, before any request."""
        with self.lock:
            predict(self.classifier, np.zeros((1, *IMAGE_SIZE, 3), np.uint8), gradcam=True)

    def classify(self, uploads):
        """The API's results for [(file name, bytes)], in the order given, and predict's CSV."""
        films = [(name, _reader(data)) for name, data in uploads]
        class_names = self.classifier.class_names
        # one request at a time: TensorFlow, and the decoders, whose complaints are caught on
        # descriptor 2, which is the process's, not a thread's
        with self.lock:
            done = sorted(classify(self.classifier, films, self.batch_size, gradcam=True),
                          key=lambda film: film.index)
            results = [self._result(film, class_names) for film in done]
        return {"results": results, "csv": csv_text(done, class_names)}

    def _result(self, film, class_names):
        result = {"file": film.name, "prediction": None, "probabilities": None,
                  "input_check": film.outcome, "input_distance": None, "gradcam": None,
                  "film": None, "warning": None, "error": None}
        if film.error is not None:
            result["error"] = unusable(film.error, film.decoder_said)
            return result
        if film.damage:
            result["warning"] = ("damaged, used as far as it decodes (the decoder said: "
                                 f"{film.damage})")
        if film.distance is not None:
            result["input_distance"] = round(float(film.distance), 4)
        if film.classified:
            result["prediction"] = film.predicted(class_names)
            result["probabilities"] = {name: round(float(p), 6)
                                       for name, p in zip(class_names, film.probabilities)}
        image = decoded_again(film.read)
        result["film"] = _data_uri(shrunk(image, self.display_side))
        if film.heatmap is not None:
            result["gradcam"] = _data_uri(overlay(image, film.heatmap, self.display_side))
        return result


def _reader(data):
    def read():
        if len(data) > MAX_FILE_BYTES:
            raise NotAnImage("over the limit for one image file")
        return data
    return read


def _data_uri(image):
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, DISPLAY_QUALITY])
    if not ok:  # OpenCV encodes every 8-bit BGR image; never expected
        raise RuntimeError("OpenCV cannot encode JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _error(status, message):
    response = jsonify({"error": message})
    response.status_code = status
    return response


def _page_files():
    """The page's three files, read once."""
    files = {}
    for route, (name, mimetype) in PAGE_FILES.items():
        with open(os.path.join(PAGE_FOLDER, name), "rb") as f:
            files[route] = (f.read(), mimetype)
    return files


def log_apart_from_decoders():
    """Send the server's log lines (waitress's, Flask's) to a copy of stderr's descriptor.

    A film's decoder complaints are caught on descriptor 2 while it is read
    (`images.with_decoder_messages`); a line another thread logged meanwhile would be caught
    with them and shown as that film's damage. waitress's "Task queue depth" lines, which
    concurrent requests behind the model's lock cause, are left out."""
    stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


def create_app(service, max_upload_mb=MAX_UPLOAD_MB, max_files=MAX_FILES):
    """The Flask application answering the page and the API from `service`."""
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_mb << 20
    app.config["MAX_FORM_PARTS"] = max_files + 10  # a few form fields besides the files
    pages = _page_files()

    def page(route):
        body, mimetype = pages[route]
        return Response(body, mimetype=mimetype)

    for route in PAGE_FILES:
        app.add_url_rule(route, f"page:{route}", lambda route=route: page(route))

    @app.get("/api/model")
    def model():
        return jsonify(strict_json(service.record))

    @app.post("/api/predict")
    def predict():
        parts = request.files.getlist("files")
        uploads = []
        try:
            parts = [part for part in parts if part.filename or part.content_length]
            if not parts:
                return _error(400, "no files: send films as the multipart field 'files'")
            if len(parts) > max_files:
                return _error(413, f"{len(parts)} files in one request; at most {max_files}")
            for part in parts:
                uploads.append((part.filename or "(no name)", part.stream.read()))
        finally:  # every part, under any field name: Werkzeug spools large ones to files
            for _, part in request.files.items(multi=True):
                part.close()
        return jsonify(strict_json(service.classify(uploads)))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(err):
        if (request.content_length or 0) <= app.config["MAX_CONTENT_LENGTH"]:
            return _error(413, f"too many parts in one request; at most {max_files} files")
        return _error(413, f"the upload is over the limit of {max_upload_mb} MB a request "
                           "(--max-upload-mb)")

    @app.errorhandler(Exception)
    def failure(err):  # a bug of ours: one line, and the server goes on
        if isinstance(err, HTTPException):
            return http_error(err)
        app.logger.exception("request failed")
        return _error(500, f"internal error: {type(err).__name__}: {str(err)[:300]}")

    @app.errorhandler(HTTPException)
    def http_error(err):
        if request.path.startswith("/api/"):
            return _error(err.code, err.description or err.name)
        return err

    @app.after_request
    def headers(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    return app
