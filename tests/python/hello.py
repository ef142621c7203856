"""Knative's helloworld in Python (stdlib only): the serving benchmark's Python app. Listens on $PORT and
answers every GET with "Hello $TARGET!" and its revision in `x-revision`."""
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"Hello {os.environ.get('TARGET', 'World')}!\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-revision", os.environ.get("K_REVISION", ""))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def exit_when_orphaned(parent):
    """A test app must not outlive the node that runs it (tests kill nodes with SIGKILL)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


if __name__ == "__main__":
    threading.Thread(target=exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
