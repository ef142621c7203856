"""The Python CloudEvents SDK (`cloudevents` 1.x) as a producer and as a subscriber, for the SDK round-trip
test (tests/tests/cross_process/t43_sdk_round_trip.rs).

  python3 python_sdk.py produce URL EVENTS_JSON   send every event twice, binary (`to_binary`) and structured
                                                  (`to_structured`), with id `<id>.py-bin` / `<id>.py-json`;
                                                  prints one HTTP status per request
  python3 python_sdk.py subscribe PORT OUTFILE    serve HTTP/1.1, parse every POST with `from_http`, append one
                                                  JSON line {"id", "fingerprint"} per event; prints `listening`
  python3 python_sdk.py expect EVENTS_JSON        the fingerprint of each event as this SDK parses it when sent
                                                  to it directly (structured mode): what must arrive

The fingerprint is what the SDK parsed: attributes (binary mode carries every attribute as a string, so they
are compared in their canonical string form) and the data (JSON data re-serialised in the order the SDK kept,
integers exact; text and bytes as bytes).

Header values: Python's HTTP stack encodes `str` header values as ISO-8859-1 and its servers decode them the
same way (PEP 3333). A producer that sends characters beyond U+00FF encodes the value as UTF-8 bytes itself,
and a subscriber re-reads the header as UTF-8, as every Python user must; docs/ingress.md says so.
"""
import base64
import json
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

WRITE_LOCK = threading.Lock()


def load(path, producer=None):
    with open(path, encoding="utf-8") as f:
        events = json.load(f)["events"]
    return [e for e in events if producer is None or producer in e.get("producers", [producer])]


def canonical(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def event_of(spec, event_id):
    attributes = {k: v for k, v in spec.items() if k not in ("data", "data_base64", "producers")}
    attributes["id"] = event_id
    if "data_base64" in spec:
        data = base64.b64decode(spec["data_base64"])
    else:
        data = spec.get("data")
    return CloudEvent(attributes, data)


def post(url, headers, body):
    # Non-ASCII header values go as their UTF-8 bytes (http.client would refuse them as ISO-8859-1).
    encoded = {k: (v.encode("utf-8") if isinstance(v, str) else v) for k, v in headers.items()}
    request = urllib.request.Request(url, data=body, headers=encoded, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return str(response.status)
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode('utf-8', 'replace')}"


def produce(url, path):
    for spec in load(path, "python"):
        binary = event_of(spec, spec["id"] + ".py-bin")
        # requests/http.client take only str or bytes header values: integers and booleans go canonical.
        for name, value in list(binary.get_attributes().items()):
            if isinstance(value, (bool, int)):
                binary[name] = canonical(value)
        if isinstance(binary.data, str):
            # to_binary writes str data JSON-quoted (`"text"`) whatever the content type: send the text's bytes.
            binary.data = binary.data.encode("utf-8")
        headers, body = to_binary(binary)
        print(post(url, headers, body), flush=True)
        headers, body = to_structured(event_of(spec, spec["id"] + ".py-json"))
        print(post(url, headers, body), flush=True)


def normalised_data(data):
    if data is None:
        return None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return {"bytes": base64.b64encode(bytes(data)).decode("ascii")}
    if isinstance(data, str):
        return {"bytes": base64.b64encode(data.encode("utf-8")).decode("ascii")}
    return {"json": json.dumps(data, ensure_ascii=False)}


def fingerprint(event, names):
    attributes = event.get_attributes()
    return {
        "attributes": {n: canonical(attributes[n]) if n in attributes else None for n in sorted(names)},
        "data": normalised_data(event.get_data()),
    }


def compared_names(spec):
    return [k for k in spec if k not in ("data", "data_base64", "producers", "id", "comment")]


def expect(path):
    for spec in load(path):
        headers, body = to_structured(event_of(spec, spec["id"]))
        event = from_http(headers, body)
        print(json.dumps({"id": spec["id"], "fingerprint": fingerprint(event, compared_names(spec))},
                         ensure_ascii=False), flush=True)


def read_body(handler):
    length = int(handler.headers.get("content-length", "0") or 0)
    return handler.rfile.read(length) if length > 0 else b""


def utf8_header(value):
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def subscribe(port, outfile, events_path):
    specs = {spec["id"]: spec for spec in load(events_path)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = read_body(self)
            headers = {name: utf8_header(value) for name, value in self.headers.items()}
            try:
                event = from_http(headers, body)
                base = event["id"].split(".")[0]
                names = compared_names(specs.get(base, {}))
                line = json.dumps({"id": event["id"], "fingerprint": fingerprint(event, names)}, ensure_ascii=False)
            except Exception as error:  # noqa: BLE001 - every parse failure is a 400
                self.answer(400, json.dumps({"error": f"{type(error).__name__}: {error}"}).encode())
                return
            with WRITE_LOCK:
                with open(outfile, "a", encoding="utf-8") as out:
                    out.write(line + "\n")
            self.answer(202, b"")

        def answer(self, status, body):
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002 - signature from the base class
            pass

    server = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "produce":
        produce(sys.argv[2], sys.argv[3])
    elif command == "subscribe":
        subscribe(sys.argv[2], sys.argv[3], sys.argv[4])
    elif command == "expect":
        expect(sys.argv[2])
    else:
        sys.exit(f"unknown command {command}")
