"""Sends CloudEvents with the `cloudevents` Python SDK to a Sluice broker:
one binary, one structured and one batch of two. Prints each HTTP status."""
import json
import sys
import urllib.request

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent


def post(url, headers, body):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request) as response:
        return response.status


def main(url):
    binary = CloudEvent(
        {"type": "py.binary", "source": "/python/sdk", "id": "py-1", "subject": "a subject", "myext": "value",
         "datacontenttype": "application/json"},
        {"hello": "binary", "n": 1},
    )
    headers, body = to_binary(binary)
    print(post(url, headers, body))

    structured = CloudEvent(
        {"type": "py.structured", "source": "/python/sdk", "id": "py-2", "datacontenttype": "text/plain"},
        "plain text data",
    )
    headers, body = to_structured(structured)
    print(post(url, headers, body))

    batch = [
        {"specversion": "1.0", "type": "py.batch", "source": "/python/sdk", "id": "py-3", "data": {"i": 3}},
        {"specversion": "1.0", "type": "py.batch", "source": "/python/sdk", "id": "py-4", "data_base64": "AAEC"},
    ]
    print(post(url, {"content-type": "application/cloudevents-batch+json"}, json.dumps(batch).encode()))


if __name__ == "__main__":
    main(sys.argv[1])
