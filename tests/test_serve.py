"""serve_covid19.py and covid19xray/server.py: the page and its JSON API, through Flask's test
client, through a real server in its own process, and in a real headless Chromium."""

import base64
import concurrent.futures
import csv
import io
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import requests

import predict_covid19
import serve_covid19
from covid19xray.server import create_app
from helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    assert_one_line_error,
    photograph,
    run_main,
    start_server,
    stop_server,
    write_encodings,
    write_huge_png,
    write_junk,
)

HOSTILE_NAME = "<img src=x onerror=alert(1)>.png"


def films(folder, shipped_model):
    """Films of every kind predict reads, a photograph, files that are no image, and a
    decompression bomb, copied into `folder`: their paths."""
    os.makedirs(folder, exist_ok=True)
    report = json.load(open(shipped_model["report"]))
    test_files = set(report["test_files"])
    paths = [shutil.copy(os.path.join(ROOT, "dataset", name), folder)
             for name in ["covid/19abe1f3.jpg", "normal/IM-0712-0001.jpeg"]]
    assert "normal/IM-0712-0001.jpeg" in test_files and "covid/19abe1f3.jpg" not in test_files
    paths += [shutil.copy(path, os.path.join(folder, f"{i}-{os.path.basename(path)}"))
              for i, path in enumerate(write_encodings(os.path.join(folder, "raw")).values())]
    shutil.rmtree(os.path.join(folder, "raw"))
    paths.append(shutil.copy(photograph(), folder))
    paths += write_junk(os.path.join(folder, "junk"))
    paths.append(write_huge_png(os.path.join(folder, "bomb.png"), 12_000, 12_000))
    return paths


@pytest.fixture(scope="module")
def service(shipped_model):
    return serve_covid19.load_service(serve_covid19.parse_args(
        ["--model", shipped_model["model"]]))


def post(client, paths, names=None):
    data = {"files": [(open(path, "rb"), name or os.path.basename(path))
                      for path, name in zip(paths, names or [None] * len(paths))]}
    try:
        return client.post("/api/predict", data=data, content_type="multipart/form-data")
    finally:
        for f, _ in data["files"]:
            f.close()


def predict_csv(model, paths, tmp_path):
    """predict_covid19.py's CSV rows for `paths`, by file name, and what it printed."""
    out = tmp_path / "predict.csv"
    code, stdout, stderr = run_main(predict_covid19.main, ["--model", model, *paths,
                                                           "--csv", str(out)])
    assert code == 0, stderr
    with open(out, newline="") as f:
        return {os.path.basename(row["file"]): row for row in csv.DictReader(f)}, stderr


def decoded(data_uri):
    assert data_uri.startswith("data:image/jpeg;base64,")
    image = cv2.imdecode(np.frombuffer(base64.b64decode(data_uri.split(",", 1)[1]), np.uint8),
                         cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_the_api_answers_what_predict_writes_for_every_kind_of_file(service, shipped_model,
                                                                      tmp_path):
    paths = films(str(tmp_path / "in"), shipped_model)
    response = post(service_client(service), paths)
    assert response.status_code == 200
    answer = response.get_json()
    results = answer["results"]
    assert [result["file"] for result in results] == [os.path.basename(p) for p in paths]
    rows, stderr = predict_csv(shipped_model["model"], paths, tmp_path)
    # the same rows, and the CSV the API gives is predict's, byte for byte
    with open(tmp_path / "predict.csv", newline="") as f:
        expected = f.read().replace(str(tmp_path / "in") + os.sep, "")
    expected = expected.replace(str(tmp_path / "in" / "junk") + os.sep, "")
    assert answer["csv"] == expected
    usable = [result for result in results if result["error"] is None]
    assert len(usable) == len(rows) == 9
    for result in usable:
        row = rows[result["file"]]
        assert result["input_check"] == row["input_check"]
        assert result["input_distance"] == pytest.approx(float(row["input_distance"]), abs=1e-4)
        assert result["prediction"] == (row["predicted"] or None)
        if result["prediction"] is None:
            assert result["probabilities"] is None and result["gradcam"] is None
        else:
            for name in ["covid", "normal"]:
                assert result["probabilities"][name] == pytest.approx(float(row[f"p_{name}"]),
                                                                      abs=1e-4)
            # Grad-CAM on every classified film, at the film's own shape (shrunk to 1024)
            film, heat = decoded(result["film"]), decoded(result["gradcam"])
            assert film.shape == heat.shape and max(film.shape[:2]) <= 1024
    # a training film of the shipped set is its own nearest training image
    by_name = {result["file"]: result for result in results}
    assert by_name["19abe1f3.jpg"]["input_check"] == "ok"
    assert by_name["19abe1f3.jpg"]["input_distance"] == 0
    # what predict says of a file it skips, in one line each
    for name in ["empty.jpg", "truncated.png", "text.jpg", "bomb.png"]:
        error = by_name[name]["error"]
        assert error and "\n" not in error
        assert f"skipping {tmp_path}" in stderr and error in stderr
    assert "pixels" in by_name["bomb.png"]["error"]


def service_client(service, **limits):
    return create_app(service, **limits).test_client()


def test_the_model_record_comes_from_the_report_and_the_audit(service, shipped_model, tmp_path):
    client = service_client(service)
    record = client.get("/api/model").get_json()
    report = json.load(open(shipped_model["report"]))
    assert record["class_names"] == report["class_names"] == ["covid", "normal"]
    assert record["training"]["train_counts"] == report["counts"]["train"]
    assert record["training"]["test"]["accuracy"] == report["accuracy"]["value"] or (
        record["training"]["test"]["accuracy"]["value"] == report["accuracy"]["value"])
    assert record["training"]["test"]["accuracy"]["ci95"] == report["accuracy"]["ci95"]
    assert record["sha256"] == report["outputs"]["model"]["sha256"]
    assert record["input_check"]["fitted_on"] == report["input_check"]["fitted_on"]
    assert record["missing"] == ["no external test", "no shortcut audit (give --audit audit.json)"]
    assert record["notes"] == []
    # with an audit, its verdict; without a report, said so
    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"shortcut": True, "verdict": "shortcut: the classes ...",
                                 "probe": {"lungs_hidden": {"auc": {"value": 0.9,
                                                                    "ci95": [0.8, 1.0]}}}}))
    model = shutil.copy(shipped_model["model"], tmp_path)
    alone = serve_covid19.load_service(serve_covid19.parse_args(
        ["--model", model, "--audit", str(audit)]))
    record = service_client(alone).get("/api/model").get_json()
    assert record["training"] is None
    assert record["audit"] == {"shortcut": True, "verdict": "shortcut: the classes ...",
                               "lungs_hidden_auc": {"value": 0.9, "ci95": [0.8, 1.0]}}
    assert record["missing"] == ["no training report (report.json beside the model)"]


def test_limits_and_errors_are_json_and_the_server_goes_on(service, tmp_path):
    client = service_client(service, max_upload_mb=1, max_files=2)
    film = os.path.join(ROOT, "dataset", "normal", "IM-0712-0001.jpeg")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2 << 20))
    response = post(client, [str(big)])
    assert response.status_code == 413
    assert "over the limit of 1 MB" in response.get_json()["error"]
    response = post(client, [film] * 3)
    assert response.status_code == 413
    assert response.get_json() == {"error": "3 files in one request; at most 2"}
    response = client.post("/api/predict", data={}, content_type="multipart/form-data")
    assert response.status_code == 400 and "'files'" in response.get_json()["error"]
    assert client.get("/api/nothing").status_code == 404
    assert client.get("/api/nothing").get_json()["error"]
    assert client.get("/api/predict").status_code == 405
    # and then a film is answered as before
    response = post(client, [film])
    assert response.status_code == 200 and response.get_json()["results"][0]["error"] is None


def test_the_page_loads_nothing_from_elsewhere(service):
    client = service_client(service)
    for route in ["/", "/page.js", "/page.css"]:
        response = client.get(route)
        assert response.status_code == 200
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert "://" not in response.get_data(as_text=True)
    page = client.get("/").get_data(as_text=True)
    assert "For learning only; not a medical device" in page
    # every name and message is set as text, never as HTML
    assert "innerHTML" not in client.get("/page.js").get_data(as_text=True)


def test_serve_refuses_bad_input_in_one_line(shipped_model, tmp_path):
    cases = [
        (["--model", str(tmp_path / "none.h5")], "none.h5"),
        (["--model", shipped_model["model"], "--report", str(tmp_path / "none.json")],
         "--report"),
        (["--model", shipped_model["model"], "--audit", shipped_model["model"]], "--audit"),
        (["--model", shipped_model["model"], "--audit", str(tmp_path)], "not a regular file"),
    ]
    for argv, phrase in cases:
        code, out, err = run_main(serve_covid19.main, argv)
        assert_one_line_error(code, err, "serve_covid19.py", phrase)
        assert out == ""


# ---------------------------------------------------------------------------------------------
# A real server in its own process, and the page in a real headless Chromium
# ---------------------------------------------------------------------------------------------


def chromium():
    """Playwright's Chromium, Debian's build: skipped, saying how to install it, where there is
    none; CI sets COVID19_REQUIRE_BROWSER=1, and a skip is then a failure."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "Playwright is not installed: pip install -r requirements-test.txt"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium)"
    if reason:
        if os.environ.get("COVID19_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture
def server(shipped_model, tmp_path):
    """serve_covid19.py on the shipped model, in a working folder and a temporary folder of
    its own. One process for the tests below, which are one test: starting it is most of their
    cost."""
    work = tmp_path / "work"
    temporary = work / "tmp"
    temporary.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(temporary)}
    process, url = start_server(["--model", shipped_model["model"]], str(work), env)
    try:
        yield {"process": process, "url": url, "work": work, "tmp": temporary}
    finally:
        # SIGTERM stops it cleanly: exit 0, one line, no traceback
        code, out, err = stop_server(process)
    assert code == 0, err
    assert out.strip() == "[INFO] stopped"
    assert "Traceback" not in err
    assert os.listdir(temporary) == [] and os.listdir(work) == ["tmp"]


def upload(url, paths):
    files = [("files", (os.path.basename(path), open(path, "rb").read())) for path in paths]
    return requests.post(url + "api/predict", files=files, timeout=120)


@pytest.mark.slow(seconds=15)
def test_a_real_server_in_chromium_under_load_and_over_its_limit(server, shipped_model,
                                                                 tmp_path):
    # TensorFlow's own, while it traced the model at start-up (removed when it exits)
    traced = sorted(os.listdir(server["tmp"]))
    check_the_page_in_chromium(server["url"], shipped_model, tmp_path)
    check_concurrent_requests_and_the_upload_limit(server["url"], shipped_model, tmp_path)
    # no upload kept: nothing new in its temporary folder, nothing in its working folder
    assert sorted(os.listdir(server["tmp"])) == traced
    assert os.listdir(server["work"]) == ["tmp"]


def check_concurrent_requests_and_the_upload_limit(url, shipped_model, tmp_path):
    paths = films(str(tmp_path / "in"), shipped_model)
    paths = [paths[0], paths[1], paths[-5], paths[-1]]  # two films, the photograph, a bomb
    alone = upload(url, paths).json()
    assert [result["error"] is None for result in alone["results"]] == [True] * 3 + [False]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: upload(url, paths).json(), range(8)))
    assert all(answer == alone for answer in answers)
    # a request over the default 64 MB: a JSON 413, and the next request is answered
    response = requests.post(url + "api/predict", timeout=120,
                             files=[("files", ("huge.png", bytes(65 << 20)))])
    assert response.status_code == 413 and "64 MB" in response.json()["error"]
    [again] = upload(url, paths[:1]).json()["results"]
    assert again["prediction"] == alone["results"][0]["prediction"]
    assert again["probabilities"] == pytest.approx(alone["results"][0]["probabilities"],
                                                   abs=1e-4)


def check_the_page_in_chromium(url, shipped_model, tmp_path):
    """A shipped film and a photograph (named as markup) chosen in the file input: the
    verdicts are predict's, the Grad-CAM image loads, the CSV download is predict's CSV."""
    sync_playwright = chromium()
    film = shutil.copy(os.path.join(ROOT, "dataset", "covid", "19abe1f3.jpg"), tmp_path)
    photo = shutil.copy(photograph(), str(tmp_path / HOSTILE_NAME))
    rows, _ = predict_csv(shipped_model["model"], [film, photo], tmp_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            outside = []
            page.on("request", lambda request: outside.append(request.url)
                    if not request.url.startswith((url, "data:", "blob:")) else None)
            dialogs = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(url)
            page.locator("#files").set_input_files([film, photo])
            page.wait_for_selector("#status:has-text('Done')", timeout=60_000)
            cards = page.locator("article.film")
            assert cards.count() == 2
            # names shown as text
            assert cards.nth(1).locator("h3").inner_text() == HOSTILE_NAME
            assert page.locator("img[src='x']").count() == 0 and dialogs == []
            # the verdicts are predict's
            for card, name in zip([cards.nth(0), cards.nth(1)], ["19abe1f3.jpg", HOSTILE_NAME]):
                verdict = card.locator("[data-verdict]").get_attribute("data-verdict")
                assert verdict == rows[name]["input_check"]
            assert rows["19abe1f3.jpg"]["input_check"] == "ok"
            # a Grad-CAM image, loaded, on the classified film
            gradcam = cards.nth(0).locator("img").nth(1)
            assert gradcam.evaluate("img => img.complete && img.naturalWidth > 0")
            assert page.get_by_text("For learning only; not a medical device").is_visible()
            assert "no external test" in page.locator("#record").inner_text()
            # the CSV download is predict's file
            with page.expect_download() as download:
                page.locator("#csv").click()
            text = open(download.value.path(), newline="").read()
            got = {row["file"]: row for row in csv.DictReader(io.StringIO(text))}
            assert set(got) == {"19abe1f3.jpg", HOSTILE_NAME}
            for name, row in got.items():
                assert {k: v for k, v in row.items() if k != "file"} == {
                    k: v for k, v in rows[name].items() if k != "file"}
            page.evaluate("window.scrollTo(0, 0)")  # the banner, sticky, at the top
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            if os.environ.get("COVID19_SCREENSHOT"):  # the README's picture, docs/serve.jpg
                page.screenshot(path=os.environ["COVID19_SCREENSHOT"], full_page=True,
                                type="jpeg", quality=70)
            assert outside == []
        finally:
            browser.close()


def test_a_damaged_report_beside_the_model_is_said_and_the_page_still_serves(shipped_model,
                                                                             tmp_path):
    model = shutil.copy(shipped_model["model"], str(tmp_path / "covid19.h5"))
    (tmp_path / "report.json").write_text("{not json")
    service = serve_covid19.load_service(serve_covid19.parse_args(["--model", model]))
    record = service_client(service).get("/api/model").get_json()
    assert record["training"] is None
    assert record["missing"][0].startswith("no training report: the one beside the model "
                                           "cannot be used (")
    assert "not JSON" in record["missing"][0]
