"""A CloudEvents subscriber written with the `cloudevents` Python SDK (1.x).

Usage: python3 subscriber.py PORT OUTFILE

Serves HTTP/1.1 on 127.0.0.1:PORT, parses every POST with `from_http` and
appends one JSON line per event to OUTFILE:
  {"mode": "binary"|"structured", "attributes": {...}, "data": ...}
where `data` is the event's data as JSON, or {"base64": ...} if it is bytes.
Answers 202 when the event parses, 400 with a JSON error body otherwise.
Prints `listening on PORT` once the socket is bound.
"""
import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.http import from_http

WRITE_LOCK = threading.Lock()


def read_body(handler):
    if "chunked" in handler.headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                # Trailers end with an empty line.
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("content-length", "0") or 0)
    return handler.rfile.read(length) if length > 0 else b""


def data_as_json(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(data)).decode("ascii")}
    return data


def make_handler(outfile):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = read_body(self)
            headers = {name: value for name, value in self.headers.items()}
            content_type = self.headers.get("content-type", "").strip().lower()
            mode = "structured" if content_type.startswith("application/cloudevents+json") else "binary"
            try:
                event = from_http(headers, body)
                line = json.dumps({
                    "mode": mode,
                    "attributes": {name: str(value) for name, value in event.get_attributes().items()},
                    "data": data_as_json(event.get_data()),
                })
            except Exception as error:  # noqa: BLE001 - every parse failure is a 400
                self.answer(400, json.dumps({"error": f"{type(error).__name__}: {error}"}).encode())
                return
            with WRITE_LOCK:
                with open(outfile, "a", encoding="utf-8") as out:
                    out.write(line + "\n")
                    out.flush()
            self.answer(202, b"")

        def answer(self, status, body):
            self.send_response(status)
            if body:
                self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002 - signature from the base class
            pass

    return Handler


def main(port, outfile):
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), make_handler(outfile))
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
