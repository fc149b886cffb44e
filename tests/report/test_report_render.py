"""write_report on a real run, checked in a real headless Chromium: it renders, every figure is
an inline image that decodes, the console stays clean and the page makes no request at all."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from reports import ReportError, write_report
from tests.report.replicated import write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Hosts Chromium itself calls (clock, component updates, accounts) whatever the page holds.
CHROMIUM_OWN_HOSTS = re.compile(
    rb"^\S+ (?:https?://)?[\w.-]*(google\.com|googleapis\.com|gstatic\.com)[:/ ]"
)
CONSOLE_TROUBLE = ("Uncaught", "ERR_", "Refused to", "Failed to load", "Content Security Policy")


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))


def images_in(html: str) -> list[dict[str, str | None]]:
    parser = _Images()
    parser.feed(html)
    return parser.images


@contextmanager
def request_trap() -> Iterator[tuple[int, list[bytes]]]:
    """A local 'proxy' that records the first bytes of every connection made to it."""
    server = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def record(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                seen.append(conn.recv(300))
            except OSError:
                seen.append(b"")  # a preconnect that never sent a request

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=record, args=(conn,), daemon=True).start()

    stop = threading.Event()
    server.settimeout(0.05)  # a closed socket does not wake accept(): poll for the stop flag
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], seen
    finally:
        stop.set()
        thread.join(5)
        server.close()


@dataclass
class Visit:
    dom: str
    console: list[str]
    requests: list[bytes]


def visit(chromium: str, page: Path, *extra: str) -> Visit:
    """Open ``page`` in headless Chromium with every request routed to a trap."""
    with request_trap() as (port, seen), tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                f"--proxy-server=http://127.0.0.1:{port}",
                "--proxy-bypass-list=<-loopback>",
                "--window-size=1280,2400",
                *extra,
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
        return Visit(done.stdout, console, list(seen))


def page_requests(visit: Visit) -> list[bytes]:
    """Requests the page made. Chromium's own calls to its vendor's hosts are not the page's,
    and neither are connections that sent nothing (Chromium preconnects to a proxy
    speculatively; a resource fetch always sends its request line)."""
    return [r for r in visit.requests if r and not CHROMIUM_OWN_HOSTS.match(r)]


# ------------------------------------------------------------------------------ the files


def test_writes_html_and_png(run_copy: Path) -> None:
    html_path, png_path = write_report(run_copy)
    assert (html_path, png_path) == (run_copy / "report.html", run_copy / "report.png")
    assert png_path.read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]  # atomic: no leftovers
    html = html_path.read_text()
    manifest = json.loads((run_copy / "manifest.json").read_text())
    assert manifest["spec_hash"] in html
    assert "<code>mlp</code>" in html
    assert "synthetic://?classes=4&amp;shape=1,6,6&amp;train=400&amp;test=200" in html
    assert "tiny &lt;run&gt; &amp; &quot;friends&quot;" in html
    assert f"round {manifest['summary']['ticket_round']} of 2" in html
    table = html[html.index('<table id="rounds">') :]
    assert table.count("<tr") == 1 + 3  # header + rounds 0, 1, 2
    for column in (
        "density",
        "remaining weights",
        "ticket accuracy",
        "early-stop step",
        "min val loss",
        "random_reinit accuracy",
        "random_prune accuracy",
        "wall time",
    ):
        assert f">{column}" in table
    images = images_in(html)
    assert len(images) == 3
    for image in images:
        assert (image["src"] or "").startswith("data:image/png;base64,")
        assert len(image["alt"] or "") > 20
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"(?i)\b(https?|ftp|wss?):|//[a-z0-9]|@import|url\(", text)
    assert "<script" not in html.lower()


def test_report_reads_json_only(run_copy: Path) -> None:
    """No torch, no engine: the API process can draw a report cheaply."""
    code = (
        "import sys; from pathlib import Path; from reports import write_report; "
        f"write_report(Path({str(run_copy)!r})); "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('worker.engine')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_mid_run_from_rounds_json_alone(tiny_run: Path, tmp_path: Path) -> None:
    rounds = json.loads((tiny_run / "rounds.json").read_text())
    (tmp_path / "rounds.json").write_text(json.dumps(rounds[:2]))
    html_path, png_path = write_report(tmp_path)
    html = html_path.read_text()
    assert "Run in progress: 1 pruning round finished" in html
    assert "unnamed job" in html
    assert png_path.read_bytes().startswith(PNG_MAGIC)
    (tmp_path / "spec.json").write_text((tiny_run / "spec.json").read_text())  # engine's early file
    html = write_report(tmp_path, stem=".draft")[0].read_text()
    assert "tiny &lt;run&gt;" in html and "Run in progress" in html


def test_nothing_to_report(tmp_path: Path) -> None:
    with pytest.raises(ReportError):
        write_report(tmp_path)
    (tmp_path / "rounds.json").write_text("[]")
    with pytest.raises(ReportError):
        write_report(tmp_path)


def test_user_text_is_escaped(run_copy: Path) -> None:
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["spec"]["name"] = '<script>alert("x")</script> & <img src=x onerror=1> $\\frac{'
    manifest["spec"]["labels"] = {"owner<": '"><b>'}
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    html = write_report(run_copy)[0].read_text()  # "$\frac{" must not break matplotlib's title
    assert "<script" not in html and "<img src=x" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x" in html
    assert "owner&lt;=&quot;&gt;&lt;b&gt;" in html
    assert len(images_in(html)) == 3


# ------------------------------------------------------------------------------ in Chromium


@pytest.mark.e2e
def test_renders_in_chromium(run_copy: Path, chromium: str, tmp_path: Path) -> None:
    html_path, _ = write_report(run_copy)
    shot = tmp_path / "shot.png"
    rendered = visit(chromium, html_path, f"--screenshot={shot}")
    assert not [line for line in rendered.console if any(t in line for t in CONSOLE_TROUBLE)]
    assert page_requests(rendered) == []
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 0.05  # not a blank page
    ticket_blue = np.all(np.abs(pixels - np.array([31, 95, 168]) / 255) < 0.06, axis=-1)
    assert ticket_blue.sum() > 500  # the figures decoded and were drawn

    dom = visit(chromium, html_path, "--dump-dom")
    assert "<table" in dom.dom and "random_prune accuracy" in dom.dom
    images = images_in(dom.dom)
    assert len(images) == 3
    assert all((i["src"] or "").startswith("data:image/png;base64,") for i in images)
    assert all(i["alt"] for i in images)
    assert page_requests(dom) == []


@pytest.mark.e2e
def test_replicates_render_in_chromium(chromium: str, tmp_path: Path) -> None:
    """A run of three replicates: error bars in the figures, mean ± std in the page."""
    html_path, _ = write_report(write_run(tmp_path / "run"))
    shot = tmp_path / "shot.png"
    rendered = visit(chromium, html_path, f"--screenshot={shot}")
    assert not [line for line in rendered.console if any(t in line for t in CONSOLE_TROUBLE)]
    assert page_requests(rendered) == []
    pixels = imread(shot)[..., :3]
    ticket_blue = np.all(np.abs(pixels - np.array([31, 95, 168]) / 255) < 0.06, axis=-1)
    assert ticket_blue.sum() > 500

    dom = visit(chromium, html_path, "--dump-dom").dom
    assert "92.00% ± 0.82 (mean of 3 replicates)" in dom
    assert "<td>83.33% ± 2.49</td>" in dom and "over 3 replicates" in dom
    assert len(images_in(dom)) == 3


@pytest.mark.e2e
def test_page_cannot_reach_out(run_copy: Path, chromium: str, tmp_path: Path) -> None:
    """The trap sees a page's requests (control), and the report's CSP blocks them even when
    something external got into the page."""
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><img src="http://canary.invalid/x.png">')
    assert any(b"canary.invalid" in r for r in visit(chromium, control, "--dump-dom").requests)

    html_path, _ = write_report(run_copy)
    tampered = tmp_path / "tampered.html"
    tampered.write_text(
        html_path.read_text().replace(
            "</body>", '<img src="http://canary.invalid/x.png"><script>fetch("//x")</script></body>'
        )
    )
    blocked = visit(chromium, tampered, "--dump-dom")
    assert not any(b"canary.invalid" in r for r in blocked.requests)
    assert any("Content Security Policy" in line for line in blocked.console)
