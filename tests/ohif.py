"""The OHIF viewer for tests: its built app served at the root of one origin, with ``/dicom-web`` passed through
to Orthanc's DICOMweb plugin, so the browser sees a single server (no CORS) as sites deploy it."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

from tests.peers import REPO

VIEWER = REPO / ".viewer"
OHIF = VIEWER / "ohif"
CHECK = Path(__file__).resolve().parent / "ohif_check.js"
#: OHIF's data source: this origin's /dicom-web, which the server forwards to Orthanc.
APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc', name: 'orthanc', wadoUriRoot: '/wado', qidoRoot: '/dicom-web', wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false, imageRendering: 'wadors', thumbnailRendering: 'wadors', enableStudyLazyLoad: true,
      supportsFuzzyMatching: false, supportsWildcard: true, bulkDataURI: { enabled: true }, omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


def available() -> bool:
    return (OHIF / "index.html").exists() and (VIEWER / "node_modules" / "playwright-core").exists()


class ViewerServer:
    """OHIF at http://127.0.0.1:{port}/ over the given Orthanc's DICOMweb."""

    def __init__(self, port: int, dicomweb_base: str) -> None:
        self.port, self.upstream = port, dicomweb_base.rstrip("/")
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(OHIF), **kwargs)  # type: ignore[arg-type]

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def end_headers(self) -> None:  # cross-origin isolation, which OHIF's decoders use
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                super().end_headers()

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web"):
                    return server.forward(self)
                if path == "/app-config.js":
                    return server.reply(self, 200, "application/javascript", APP_CONFIG.encode())
                if not (OHIF / path.lstrip("/")).is_file():
                    self.path = "/index.html"  # the app's own routes (/viewer, ...)
                return super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def reply(handler: http.server.BaseHTTPRequestHandler, code: int, content_type: str, body: bytes) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Cross-Origin-Resource-Policy", "same-origin")
        handler.end_headers()
        handler.wfile.write(body)

    def forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        accept = handler.headers.get("Accept")
        request = urllib.request.Request(self.upstream + handler.path, headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                self.reply(handler, response.status, response.headers.get("Content-Type", ""), response.read())
        except urllib.error.HTTPError as error:
            self.reply(handler, error.code, error.headers.get("Content-Type", ""), error.read())


def open_study(url: str, study_uid: str, seg_description: str, screenshot: Path) -> dict:
    """Open the study in headless Chromium, load the SEG, show its segments; what the page lists, as JSON."""
    result = subprocess.run(
        ["node", str(CHECK), url, study_uid, seg_description, str(screenshot)],
        capture_output=True, text=True, timeout=300, cwd=VIEWER,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"viewer check failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
