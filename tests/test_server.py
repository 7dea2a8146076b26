"""The web app's server (`mimistack.server.app`, `mimistack serve`): a real uvicorn on 127.0.0.1 in a fixture.

Covers the page and static files (path traversal, media types), the security headers (CSP, COOP/COEP), the
Host/Origin checks, the ONNX files the page fetches, the server-side encode/decode API (results equal the Python
codec's, size limits, content checks, the model lock) and the CLI's refusal to bind a non-loopback address.
The page itself is tested in a browser by tests/test_web_e2e.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

pytest.importorskip("fastapi", reason="the server needs the [server] extra: pip install 'mimistack[server]'")
import uvicorn

from mimistack.audio import load_audio
from mimistack.cli import main
from mimistack.container import grid_from_bytes, grid_to_bytes
from mimistack.server import app as server_app
from mimistack.server.app import ServerSettings, create_app, sniff_audio
from mimistack.server.security import resolve_static

SECRET = "top secret: outside the static folder"


# -- a real server on 127.0.0.1 -------------------------------------------------------------------------------------
class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 (a port picked by the OS) in a thread, stopped on exit."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="none", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.socket.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send `path` exactly as given (no normalisation, so traversal attempts reach the server)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            if chunked:
                connection.putrequest(method, path, skip_host=True)
                for key, value in {**sent, "Transfer-Encoding": "chunked"}.items():
                    connection.putheader(key, value)
                connection.endheaders()
                for start in range(0, len(body or b""), 4096):
                    piece = (body or b"")[start : start + 4096]
                    connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                connection.send(b"0\r\n\r\n")
            else:
                connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, body: bytes | None = None, **kwargs: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kwargs)
        return status, json.loads(data)


@contextlib.contextmanager
def running(settings: ServerSettings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built page stand-in, with a secret beside (not inside) the static folder."""
    tmp_path = tmp_path_factory.mktemp("site")
    root = tmp_path / "static"
    (root / "assets").mkdir(parents=True)
    (root / "ort").mkdir()
    (root / "index.html").write_text("<!doctype html><title>mimistack test page</title>")
    (root / "assets" / "app-1234.js").write_text("console.log('hi')")
    (root / "ort" / "runtime.mjs").write_text("export {}")
    (root / "ort" / "runtime.wasm").write_bytes(b"\x00asm\x01\x00\x00\x00")
    (root / ".gitignore").write_text("*")
    (tmp_path / "secret.txt").write_text(SECRET)
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture(scope="module")
def server(static_dir: Path, tiny_checkpoint: Path) -> Iterator[LiveServer]:
    """One server for the tests that do not change its settings."""
    with running(ServerSettings(weights=str(tiny_checkpoint), static_dir=static_dir)) as live:
        yield live


# -- the page, static files and headers ---------------------------------------------------------------------------
def test_page_is_served_with_security_headers(server: LiveServer) -> None:
    status, headers, body = server.request("GET", "/")
    assert status == 200 and b"mimistack test page" in body
    assert headers["content-type"].startswith("text/html")
    policy = headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"
    # Connections may go out (ws:/wss: progressive streams, https: bundles from ?model=URL); nothing else may load
    # from another origin, and no plain http: anywhere.
    assert directives["connect-src"] == "'self' https: ws: wss:" and directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    others = [value for name, value in directives.items() if name != "connect-src"]
    assert not any("http" in value for value in others) and "http:" not in policy
    assert "*" not in policy and "unsafe-inline" not in policy
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-embedder-policy"] == "require-corp"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        pytest.param("/assets/app-1234.js", "text/javascript", id="script"),
        pytest.param("/ort/runtime.mjs", "text/javascript", id="module"),
        pytest.param("/ort/runtime.wasm", "application/wasm", id="wasm"),
    ],
)
def test_static_files_have_media_types_modules_and_wasm_need(server: LiveServer, path: str, media_type: str) -> None:
    status, headers, _ = server.request("GET", path)
    assert status == 200 and headers["content-type"].split(";")[0] == media_type
    assert "content-security-policy" in headers


def test_cross_origin_isolation_can_be_turned_off(static_dir: Path, tiny_checkpoint: Path) -> None:
    with running(
        ServerSettings(weights=str(tiny_checkpoint), static_dir=static_dir, cross_origin_isolation=False)
    ) as live:
        status, headers, _ = live.request("GET", "/")
    assert status == 200 and "cross-origin-embedder-policy" not in headers
    assert "content-security-policy" in headers


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/../secret.txt", id="dotdot"),
        pytest.param("/assets/../../secret.txt", id="nested-dotdot"),
        pytest.param("/%2e%2e/secret.txt", id="encoded-dots"),
        pytest.param("/assets/%2e%2e/%2e%2e/secret.txt", id="encoded-nested"),
        pytest.param("/..%2fsecret.txt", id="encoded-slash"),
        pytest.param("/assets%2f..%2f..%2fsecret.txt", id="all-encoded"),
        pytest.param("/..%5csecret.txt", id="backslash"),
        pytest.param("//tmp/../secret.txt", id="double-slash"),
        pytest.param("/escape", id="symlink-out"),
        pytest.param("/.gitignore", id="hidden-file"),
        pytest.param("/assets/%00../secret.txt", id="nul"),
        pytest.param("/models/..%2fsecret.txt", id="models-traversal"),
    ],
)
def test_static_paths_cannot_escape_their_folder(server: LiveServer, path: str) -> None:
    status, _, body = server.request("GET", path)
    assert status in (400, 404) and SECRET.encode() not in body


def test_resolve_static_allows_only_plain_files_inside(static_dir: Path) -> None:
    assert resolve_static(static_dir, "assets/app-1234.js") == (static_dir / "assets" / "app-1234.js").resolve()
    for bad in (
        "",
        "/etc/passwd",
        "assets",
        "../secret.txt",
        "assets/./app-1234.js",
        "escape",
        ".gitignore",
        "assets\\..\\..\\secret.txt",
    ):
        assert resolve_static(static_dir, bad) is None, bad


def test_unbuilt_page_says_how_to_build_it(tmp_path: Path, tiny_checkpoint: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with running(ServerSettings(weights=str(tiny_checkpoint), static_dir=empty)) as live:
        status, _, body = live.request("GET", "/")
        missing, _, _ = live.request("GET", "/assets/app.js")
    assert status == 503 and b"npm ci --prefix web" in body
    assert missing == 404


def test_foreign_host_and_cross_origin_posts_are_refused(server: LiveServer) -> None:
    status, body = server.json("GET", "/api/info", headers={"Host": "attacker.example"})
    assert status == 403 and "attacker.example" in body["error"]  # DNS rebinding
    status, body = server.json("POST", "/api/encode", b"RIFF", headers={"Origin": "http://attacker.example"})
    assert status == 403 and "origin" in body["error"]
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        assert server.request("GET", "/", headers={"Host": host})[0] == 200


def test_remote_mode_answers_other_host_names(static_dir: Path, tiny_checkpoint: Path) -> None:
    settings = ServerSettings(weights=str(tiny_checkpoint), static_dir=static_dir, loopback_only=False)
    with running(settings) as live:
        assert live.request("GET", "/", headers={"Host": "workstation.lan:8765"})[0] == 200


# -- model description and ONNX files -----------------------------------------------------------------------------
def test_info_describes_the_model(server: LiveServer, tiny_codec: Any) -> None:
    status, info = server.json("GET", "/api/info")
    assert status == 200
    assert (info["num_levels"], info["codebook_size"], info["sample_rate"]) == (32, 64, 24000)
    assert info["frame_size"] == 1920 and info["frame_rate"] == 12.5 and info["random_weights"] is False
    assert info["weights"] == "tiny.safetensors" and info["max_upload_bytes"] > 0


def test_model_bundles_are_served_from_the_export_only(
    static_dir: Path, tiny_onnx_dir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """`/models/bundles.json` lists the page's two bundles (made from the export on first use) and
    `/models/<bundle>/<file>` serves exactly the files their manifests list."""
    (tmp_path / "secret.txt").write_text(SECRET)
    settings = ServerSettings(weights=str(tiny_checkpoint), static_dir=static_dir, onnx_dir=tiny_onnx_dir)
    with running(settings) as live:
        status, index = live.json("GET", "/models/bundles.json")
        assert status == 200 and index["format"] == "mimistack-web-bundles" and index["server"] is True
        assert sorted(index["bundles"]) == ["exact", "light"] and index["default"] == "exact"
        assert index["bundles"]["light"]["bytes"] < index["bundles"]["exact"]["bytes"]
        for name in ("exact", "light"):
            status, manifest = live.json("GET", f"/models/{name}/manifest.json")
            assert status == 200 and manifest["bundle"] == name and manifest["format"] == "mimistack-web"
            for file, entry in manifest["files"].items():
                status, headers, body = live.request("GET", f"/models/{name}/{file}")
                assert status == 200 and len(body) == entry["bytes"]
                assert hashlib.sha256(body).hexdigest() == entry["sha256"]
                assert headers["content-type"] == "application/octet-stream"
        status, info = live.json("GET", "/api/info")  # config from the manifest when --onnx is given
        assert status == 200 and info["codebook_size"] == 64
        for path in (
            "/models/exact/notes.txt",
            "/models/exact/..%2fsecret.txt",
            "/models/%2e%2e/secret.txt",
            "/models/exact/.manifest.json",
            "/models/exact/embed.onnx",  # in the export folder, but no part of a bundle
            "/models/int8/encoder_stream.onnx",
            "/models/encoder_stream.onnx",
        ):
            status, _, body = live.request("GET", path)
            assert status == 404 and SECRET.encode() not in body, path


def test_missing_export_is_an_error_the_page_can_show(static_dir: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    not_export = tmp_path / "not-an-export"
    not_export.mkdir()
    with running(ServerSettings(weights=str(tiny_checkpoint), static_dir=static_dir, onnx_dir=not_export)) as live:
        status, body = live.json("GET", "/models/exact/encoder_stream.onnx")
        assert status == 503 and "manifest.json" in body["error"]
        status, body = live.json("GET", "/api/models")
    assert status == 200 and body["ready"] is False and "manifest.json" in body["error"]


def test_graphs_are_exported_in_the_background_on_first_use(
    static_dir: Path, tiny_onnx_dir: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --onnx the page waits on /api/models while the export (minutes for real weights) runs."""
    release = threading.Event()
    exported: list[Path] = []

    def slow_export(weights: Path) -> Path:
        exported.append(weights)
        release.wait(timeout=30)
        return tiny_onnx_dir

    monkeypatch.setattr(server_app, "export_to_cache", slow_export)
    with running(ServerSettings(weights=str(tiny_checkpoint), static_dir=static_dir)) as live:
        status, body = live.json("GET", "/api/models")
        assert status == 200 and body == {"ready": False, "error": None, "exporting": True}
        release.set()
        deadline = time.monotonic() + 60
        while not body["ready"] and time.monotonic() < deadline:
            time.sleep(0.05)
            body = live.json("GET", "/api/models")[1]
        assert body == {"ready": True, "error": None, "exporting": False}
        manifest = live.json("GET", "/models/exact/manifest.json")[1]
        body = live.request("GET", "/models/exact/decoder_stream.onnx")[2]
        assert hashlib.sha256(body).hexdigest() == manifest["files"]["decoder_stream.onnx"]["sha256"]
    assert exported == [tiny_checkpoint]


# -- server-side encode and decode --------------------------------------------------------------------------------
def test_encode_returns_the_grid_python_computes(server: LiveServer, speech: list[Path], tiny_codec: Any) -> None:
    source = speech[0]
    status, body = server.json("POST", "/api/encode?name=speech.wav", source.read_bytes())
    assert status == 200
    expected = tiny_codec.encode(load_audio(source))
    codes = np.frombuffer(base64.b64decode(body["codes"]), dtype="<u2").reshape(body["num_levels"], -1)
    assert body["num_samples"] == expected.num_samples and body["num_frames"] == expected.num_frames
    assert np.array_equal(codes, expected.codes)
    assert body["weights_sha256"] == tiny_codec.weights_sha256 and body["codebook_size"] == 64


def test_encode_as_mimi_file(server: LiveServer, speech: list[Path], tiny_codec: Any) -> None:
    status, headers, data = server.request("POST", "/api/encode?format=mimi&name=clip.wav", speech[1].read_bytes())
    assert status == 200 and 'filename="clip.mimi"' in headers["content-disposition"]
    grid = grid_from_bytes(data)
    assert np.array_equal(grid.codes, tiny_codec.encode(load_audio(speech[1])).codes)
    assert grid.metadata["source"] == "clip.wav"


@pytest.mark.parametrize("levels", ["0-7", "0,3,9", "0", None])
def test_decode_returns_what_python_decodes(
    server: LiveServer, speech: list[Path], tiny_codec: Any, levels: str | None
) -> None:
    grid = tiny_codec.encode(load_audio(speech[0]))
    query = "" if levels is None else f"?levels={levels}"
    status, headers, data = server.request("POST", f"/api/decode{query}", grid_to_bytes(grid))
    assert status == 200 and headers["content-type"] == "audio/wav"
    pcm, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000 and len(pcm) == grid.num_samples
    expected = tiny_codec.decode(grid, levels)
    assert np.abs(pcm - expected).max() <= 1e-6
    assert headers["x-mimistack-levels"] == (levels or "0-31")


def test_decode_of_a_truncated_file_uses_the_levels_it_holds(
    server: LiveServer, speech: list[Path], tiny_codec: Any
) -> None:
    grid = tiny_codec.encode(load_audio(speech[0]))
    data = grid_to_bytes(grid)
    section = -(-grid.num_frames * 6 // 8)  # packed bytes of one level (6-bit tokens in the tiny model)
    cut = data[: len(data) - 29 * section - 1]  # levels 0-1 complete, level 2 cut short
    status, headers, body = server.request("POST", "/api/decode", cut)
    assert status == 200 and headers["x-mimistack-levels"] == "0-1" and "truncated" in headers["x-mimistack-warning"]
    pcm, _ = soundfile.read(io.BytesIO(body), dtype="float32")
    assert np.abs(pcm - tiny_codec.decode(grid, "0-1")).max() <= 1e-6


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        pytest.param("/api/encode", b"hello, this is not audio at all", 415, "not an audio file", id="not-audio"),
        pytest.param(
            "/api/encode", b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk", 400, "cannot read the audio", id="broken-wav"
        ),
        pytest.param("/api/encode", b"", 400, "no body", id="empty"),
        pytest.param("/api/encode?format=xml", b"RIFF", 400, "format", id="bad-format"),
        pytest.param("/api/decode", b"MIMI\x00TOK\x07\x00", 400, "not a valid .mimi file", id="bad-mimi"),
        pytest.param("/api/decode", b"a wav file, say", 400, "not a valid .mimi file", id="not-mimi"),
    ],
)
def test_bad_uploads_get_errors_that_say_why(
    server: LiveServer, path: str, body: bytes, status: int, message: str
) -> None:
    got, answer = server.json("POST", path, body)
    assert got == status and message in answer["error"]


def test_decode_refuses_levels_that_are_not_there(server: LiveServer, speech: list[Path], tiny_codec: Any) -> None:
    grid = tiny_codec.encode(load_audio(speech[0]))
    status, body = server.json("POST", "/api/decode?levels=0-40", grid_to_bytes(grid))
    assert status == 400 and "out of range" in body["error"]
    status, body = server.json("POST", "/api/decode?levels=0-7", grid_to_bytes(grid.with_levels("0-3")))
    assert status == 400 and "4" in body["error"]


def test_upload_size_limit(static_dir: Path, tiny_checkpoint: Path, speech: list[Path]) -> None:
    settings = ServerSettings(weights=str(tiny_checkpoint), static_dir=static_dir, max_upload_bytes=50_000)
    # Barely over the limit: the server reads it all before answering, so the answer is not lost to a reset.
    data = speech[0].read_bytes()[:60_000]
    with running(settings) as live:
        status, body = live.json("POST", "/api/encode", data)
        assert status == 413 and "50000" in body["error"]
        # Without a Content-Length the limit holds while the body streams in.
        status, _, raw = live.request("POST", "/api/encode", data, chunked=True)
        assert status == 413 and "50000" in json.loads(raw)["error"]
        status, _, _ = live.request("POST", "/api/encode", data[:40_000])
        assert status in (200, 400)  # under the limit: processed (a cut WAV may still be readable)


def test_audio_length_limit(static_dir: Path, tiny_checkpoint: Path, speech: list[Path]) -> None:
    settings = ServerSettings(weights=str(tiny_checkpoint), static_dir=static_dir, max_audio_seconds=1.0)
    with running(settings) as live:
        status, body = live.json("POST", "/api/encode", speech[0].read_bytes())
    assert status == 413 and "at most 1 s" in body["error"]


def test_one_request_at_a_time_uses_the_model(server: LiveServer, speech: list[Path], tiny_codec: Any) -> None:
    """Concurrent uploads are serialised by the model lock: never two encoders running at once."""
    service = server.app.state.service
    real_codec = service.codec()
    active = 0
    most = 0
    guard = threading.Lock()

    class CountingCodec:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_codec, name)

        def encode_file(self, path: Path, **options: Any) -> Any:
            nonlocal active, most
            with guard:
                active += 1
                most = max(most, active)
            time.sleep(0.05)  # widen the window in which an unserialised request would overlap
            try:
                return real_codec.encode_file(path, **options)
            finally:
                with guard:
                    active -= 1

    service._codec = CountingCodec()
    results: list[tuple[int, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(server.json("POST", "/api/encode", speech[0].read_bytes())))
        for _ in range(3)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        service._codec = real_codec
    assert [status for status, _ in results] == [200, 200, 200]
    assert len({body["codes"] for _, body in results}) == 1
    assert most == 1


def test_sniff_audio_recognises_containers() -> None:
    assert sniff_audio(b"RIFF\x00\x00\x00\x00WAVEfmt ") == ".wav"
    assert sniff_audio(b"fLaC\x00\x00") == ".flac"
    assert sniff_audio(b"OggS\x00\x02") == ".ogg"
    assert sniff_audio(b"ID3\x04\x00") == ".mp3"
    assert sniff_audio(b"\x00\x00\x00\x20ftypM4A ") == ".m4a"
    assert sniff_audio(b"\xff\xfb\x90\x00") == ".mp3"
    assert sniff_audio(b"MIMI\x00TOK") is None and sniff_audio(b"<html>") is None


# -- the command line -----------------------------------------------------------------------------------------------
@pytest.fixture()
def fake_serve(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record what `mimistack serve` would run instead of binding a socket."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server_app, "serve", lambda settings, **kwargs: calls.append({"settings": settings, **kwargs}))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_serve_refuses_a_remote_bind_without_the_flag(
    host: str, tiny_checkpoint: Path, fake_serve: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--weights", str(tiny_checkpoint), "--host", host])
    err = capsys.readouterr().err
    assert code == 2 and "--allow-remote" in err and fake_serve == []


def test_serve_remote_bind_with_the_flag_warns(
    tiny_checkpoint: Path, fake_serve: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--weights", str(tiny_checkpoint), "--host", "0.0.0.0", "--allow-remote", "--port", "9000"])
    err = capsys.readouterr().err
    assert code == 0 and "WARNING" in err and "0.0.0.0" in err
    assert fake_serve[0]["host"] == "0.0.0.0" and fake_serve[0]["port"] == 9000
    assert fake_serve[0]["settings"].loopback_only is False


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_serve_binds_loopback_without_warning(
    host: str, tiny_checkpoint: Path, fake_serve: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--weights", str(tiny_checkpoint), "--host", host, "--max-upload-mb", "1"])
    err = capsys.readouterr().err
    assert code == 0 and "WARNING" not in err
    settings = fake_serve[0]["settings"]
    assert settings.loopback_only is True and settings.max_upload_bytes == 1024 * 1024
    assert settings.cross_origin_isolation is True


def test_serve_default_is_loopback(
    tiny_checkpoint: Path, fake_serve: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--weights", str(tiny_checkpoint), "--no-isolation"]) == 0
    assert fake_serve[0]["host"] == "127.0.0.1" and fake_serve[0]["port"] == 8765
    assert fake_serve[0]["settings"].cross_origin_isolation is False
    assert "http://127.0.0.1:8765/" in capsys.readouterr().err


def test_serve_checks_the_onnx_folder(
    tmp_path: Path, tiny_checkpoint: Path, fake_serve: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--weights", str(tiny_checkpoint), "--onnx", str(tmp_path)])
    assert code == 2 and "manifest.json" in capsys.readouterr().err and fake_serve == []
