"""A key-value test guest in Python (componentize-py), importing wasi:keyvalue at 0.2.0-draft2.

* /incr?key=K  -- atomics.increment by 1; answers the new value
* /get?key=K   -- the value, or 404
* anything else -- 200 "kv-python"

A refusal answers 400 with the error; never a trap.
"""

from urllib.parse import parse_qs, urlparse

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import atomics, store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def respond(out: ResponseOutparam, status: int, text: str) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(out, Ok(response))
    stream = body.write()
    stream.blocking_write_and_flush(text.encode())
    stream.__exit__(None, None, None)
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        url = urlparse(request.path_with_query() or "/")
        key = parse_qs(url.query).get("key", ["k"])[0]
        op = url.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            bucket = store.open("default")
            if op == "incr":
                respond(response_out, 200, str(atomics.increment(bucket, key, 1)))
            elif op == "get":
                value = bucket.get(key)
                if value is None:
                    respond(response_out, 404, "absent")
                else:
                    respond(response_out, 200, value.decode())
            else:
                respond(response_out, 200, "kv-python")
        except Err as error:
            respond(response_out, 400, f"error: {error.value}")
