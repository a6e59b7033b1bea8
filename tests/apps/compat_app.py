"""The application rgun and Gunicorn both serve in the side-by-side comparisons
(tests/it/compat): /raise fails in the call, /raise_first in the body's first item,
/raise_mid after the head and some body went out; /echo_auth answers 200 with a
Content-Type and a small body, /empty 200 with no body; anything else "ok"."""


def fail_in_the_call():
    raise ValueError("boom in the call")


def body_failing_at_once():
    raise KeyError("boom in the first item")
    yield b""


def body_failing_midway():
    yield b"part one\n"
    raise RuntimeError("boom mid-body")


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/raise":
        fail_in_the_call()
    if path == "/raise_first":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body_failing_at_once()
    if path == "/raise_mid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body_failing_midway()
    if path == "/empty":
        start_response("200 OK", [("Content-Length", "0")])
        return []
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"ok"]
