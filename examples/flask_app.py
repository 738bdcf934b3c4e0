"""A Flask app (WSGI): `python -m pyclusterc run flask_app:app --app-dir examples -i 2`."""
import os
import time

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(pid=os.getpid())


@app.post("/echo")
def echo():
    return request.get_data()


@app.get("/stream")
def stream():
    def chunks():
        for i in range(5):
            yield f"chunk {i}\n"
    return Response(chunks(), mimetype="text/plain")


@app.get("/slow")
def slow():
    time.sleep(float(request.args.get("s", "1")))
    return "slow done"
