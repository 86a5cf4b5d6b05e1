# Dimmy's original webhook example (Optioryx/ExampleDimmyWebhooks, main.py), the baseline the
# benchmarks compare with. Adapted only where needed: settings come from the environment instead
# of being edited in, and current svix's verify() returns None, so the body is parsed after it.
# Run: gunicorn -w 2 -b 127.0.0.1:5000 seed_example:app
import json
import os

import requests
from flask import Flask, request
from svix.webhooks import Webhook

app = Flask(__name__)
secret = os.environ["DIMMY_WEBHOOK_SECRET"]
dimmy_api_key = os.environ["DIMMY_API_KEY"]
dimmy_api_url = os.environ.get("DIMMY_API_URL", "https://dimmy.api.optioryx.com")


@app.route("/webhook", methods=["POST"])
def hook():
    headers = request.headers
    payload = request.data

    wh = Webhook(secret)
    wh.verify(payload, headers)
    payload = json.loads(payload)

    for id in payload["item_ids"]:
        res = requests.get(f"{dimmy_api_url}/items/{id}", headers={"X-API-KEY": dimmy_api_key})  # noqa: S113
        print(id, res.json())

    return "OK"


if __name__ == "__main__":
    app.run()
