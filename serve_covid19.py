"""Try a model in a browser: a local page and JSON API over a model train_covid19.py saved.

For education only: this is not a medical device and its output is not a diagnosis.

Usage:
    python serve_covid19.py --model covid19.h5
    python serve_covid19.py --model covid19.keras --audit audit.json --port 0

Loads the model, its input check and its recalibration once, then prints one line with the
page's address (http://127.0.0.1:8000/) and answers until Ctrl-C or SIGTERM. The page takes
films chosen or dropped onto it and shows, for each, the film and its Grad-CAM overlay, each
class's probability (after the model's recalibration, where it carries one), the input check's
verdict with its distance, or predict's one-line reason a file cannot be used; a table of all
results with predict's CSV to download; and the model's record: its training report (the
`report.json` beside the model, or `--report`) and the shortcut audit's verdict (`--audit`).

The page and `POST /api/predict` classify through the same code as predict_covid19.py
(`covid19xray.prediction`): for the same files the same probabilities and verdicts. The API and
its limits: docs/serve.md. It binds 127.0.0.1 unless --host says otherwise: it has no
authentication, and is meant for one person's machine.
"""

import dataclasses
import sys

from covid19xray.cli import ArgumentParser, UserError, cli, import_tensorflow, positive, shown
from covid19xray.config import MODEL_FILE, PRECISION, PRECISIONS, Config, add_flags, flag
from covid19xray.prediction import load_model, make_classifier
from covid19xray.record import model_record
from covid19xray.server import (
    DISPLAY_SIDE,
    MAX_FILES,
    MAX_UPLOAD_MB,
    Service,
    create_app,
    log_apart_from_decoders,
)

# Films per forward pass, as predict_covid19.py
SERVE_BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeConfig(Config):
    """Everything this run is told, built once from the flags (`parse_args`)."""

    model: str = flag(MODEL_FILE, short="-m", help=(
        "model saved by train_covid19.py, .h5 or .keras"))
    report: str | None = flag(None, metavar="JSON", help=(
        "the training report to show (default: report.json beside the model, if there is one)"))
    audit: str | None = flag(None, metavar="JSON", help=(
        "an audit.json audit_covid19.py wrote for this dataset, to show its verdict"))
    host: str = flag("127.0.0.1", help=(
        "address to listen on; the page has no authentication, so keep it local"))
    port: int = flag(8000, type=int, help="port to listen on; 0 takes a free one")
    max_upload_mb: int = flag(MAX_UPLOAD_MB, type=positive(int), help=(
        "largest request, in MB; a larger one gets 413 and the server goes on"))
    max_files: int = flag(MAX_FILES, type=positive(int), help="most films in one request")
    threads: int = flag(4, type=positive(int), help=(
        "requests answered at once (the network itself runs one request at a time)"))
    display_size: int = flag(DISPLAY_SIDE, type=positive(int), help=(
        "the film and its overlay are shown at most this many pixels on the longer side"))
    batch_size: int = flag(SERVE_BATCH_SIZE, type=positive(int), help="films per forward pass")
    precision: str = flag(PRECISION, choices=PRECISIONS, help=(
        "what the network computes in; the softmax stays float32"))


def parse_args(argv=None):
    """Returns a `ServeConfig`."""
    ap = ArgumentParser(description="Serve a local page to try a model train_covid19.py saved. "
                                    "For education only.")
    add_flags(ap, ServeConfig)
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        ap.error(f"--port {args.port}: not a port (0 to 65535)")
    return ServeConfig.from_flags(args)


def load_service(config):
    """The model, its input check, recalibration and record, loaded once, and the first
    forward pass traced, before the address is printed: the first film is answered at the
    speed of the others."""
    import_tensorflow()
    model_file = load_model(config.model, gradcam=True, precision=config.precision)
    classifier = make_classifier(config.model, model_file, config.precision, gradcam=True)
    record = model_record(config.model, model_file, config.report, config.audit)
    service = Service(classifier, record, config.batch_size, config.display_size)
    service.warm_up()
    return service


def make_server(config, service):
    """waitress's server on --host and --port, not yet answering."""
    import waitress

    app = create_app(service, config.max_upload_mb, config.max_files)
    log_apart_from_decoders()
    try:
        # waitress reads a request whole before the application sees it: above its own bound
        # it answers with a plain-text 413; the application's JSON 413 needs the body to fit
        return waitress.create_server(
            app, host=config.host, port=config.port, threads=config.threads,
            max_request_body_size=2 * (config.max_upload_mb << 20) + (16 << 20),
            clear_untrusted_proxy_headers=True, ident="serve_covid19")
    except OSError as err:
        raise UserError(f"cannot listen on {config.host}:{config.port}: "
                        f"{err.strerror or err}") from None


def address(server, host):
    port = server.effective_port
    shown_host = f"[{host}]" if ":" in host else host
    return f"http://{shown_host}:{port}/"


def serve(server):
    """Answer until Ctrl-C or SIGTERM; then stop listening and close every connection."""
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM (`cli`'s Terminated)
        pass
    finally:
        server.close()


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    # load the model, its input check, its recalibration and its record, once
    service = load_service(config)
    # start listening, and say where
    server = make_server(config, service)
    print(f"[INFO] serving {shown(config.model)} at {address(server, config.host)} "
          "(for learning only, not a medical device; Ctrl-C stops)", flush=True)
    serve(server)
    print("[INFO] stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
