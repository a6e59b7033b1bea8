"""A real Flask application for tests/it/frameworks.rs. The Django app in `djapp`
serves the same URLs with the same JSON shapes, so one Rust check covers both.

`create_app(propagate=True)` lets view exceptions reach the server (Flask's
PROPAGATE_EXCEPTIONS) instead of Flask's own 500 page."""

import zlib

from flask import Flask, Response, jsonify, redirect, request, session


def create_app(propagate=False):
    app = Flask(__name__)
    app.secret_key = "rgun-test-secret"
    app.config["PROPAGATE_EXCEPTIONS"] = propagate

    @app.get("/")
    def index():
        return "hello from flask\n"

    @app.post("/form")
    def form():
        return jsonify(name=request.form["name"], tags=request.form.getlist("tag"))

    @app.post("/upload")
    def upload():
        upload = request.files["file"]
        size, crc = 0, 0
        while block := upload.stream.read(64 * 1024):
            size += len(block)
            crc = zlib.crc32(block, crc)
        return jsonify(filename=upload.filename, size=size, crc32=crc, note=request.form.get("note"))

    @app.post("/login")
    def login():
        session["user"] = request.form["user"]
        return redirect("/whoami")

    @app.get("/whoami")
    def whoami():
        return jsonify(user=session.get("user"))

    @app.get("/stream")
    def stream():
        lines = request.args.get("lines", 10, type=int)

        def generate():
            for i in range(lines):
                yield f"line {i}\n"

        return Response(generate(), mimetype="text/plain")

    @app.get("/boom")
    def boom():
        raise RuntimeError("view exploded on purpose")

    @app.get("/greet/<name>")
    def greet(name):
        return jsonify(name=name, q=request.args.get("q"))

    @app.get("/café")
    def cafe():
        return "bienvenue au café"

    return app


app = create_app()
