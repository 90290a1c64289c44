"""The trivial app the ack benchmark compares gitdeploy's webhook with: what gunicorn alone costs
per request on the same settings (gunicorn.conf.py: the asgi worker class)."""


async def application(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body, as the webhook does
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 202,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"status": "queued"}'})
