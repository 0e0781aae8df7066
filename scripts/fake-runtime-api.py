#!/usr/bin/env python3
"""A minimal AWS Lambda Runtime API for one invocation, to run a built `bootstrap` outside Lambda.

Usage: fake-runtime-api.py PORT EVENT_JSON_FILE OUT_FILE
Serves EVENT once at GET /2018-06-01/runtime/invocation/next (with a deadline 30 s away), writes
what the function posts back (`{"kind": "response"|"error", "body": ...}`) to OUT_FILE, then
holds every later `next` call until it is killed.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, event_file, out_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
event = open(event_file, "rb").read()
served = threading.Event()


class Api(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.endswith("/invocation/next"):
            self.send_error(404)
            return
        if served.is_set():
            time.sleep(3600)
            return
        served.set()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Lambda-Runtime-Aws-Request-Id", "smoke-1")
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:smoke")
        self.send_header("Content-Length", str(len(event)))
        self.end_headers()
        self.wfile.write(event)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        kind = "error" if self.path.endswith("/error") else "response"
        with open(out_file, "w") as f:
            json.dump({"kind": kind, "path": self.path, "body": json.loads(body or b"null")}, f)
        self.send_response(202)
        self.end_headers()


ThreadingHTTPServer(("127.0.0.1", port), Api).serve_forever()
