"""The Flask workload of the benchmark (`flask_apps:flask_json`)."""

from flask import Flask, jsonify

flask_json = Flask(__name__)


@flask_json.route("/")
def _json_route():
    return jsonify(message="Hello, World!", id=42, tags=["a", "b", "c"], ok=True)
