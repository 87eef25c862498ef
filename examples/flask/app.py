"""Flask example for Tako: served by gunicorn on 127.0.0.1:$PORT, /_tako/status answered by the Tako SDK."""

import time

import tako_sdk
from flask import Flask, jsonify, request

app = Flask(__name__)
app.wsgi_app = tako_sdk.WSGIMiddleware(app.wsgi_app)


@app.get("/")
def index():
    tako = tako_sdk.env()
    return jsonify(
        message="Hello from Flask on Tako", env=tako.env, version=tako.build, instance=tako.instance
    )


@app.get("/slow")
def slow():
    """A request that takes a while: deploy or stop during it to see graceful shutdown finish it."""
    seconds = min(float(request.args.get("seconds", "1")), 20.0)
    print(f"slow request started ({seconds} s)", flush=True)
    time.sleep(seconds)
    return jsonify(slept=seconds)
