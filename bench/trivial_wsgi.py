"""The trivial WSGI app the ack benchmark compares gitdeploy's webhook with: what gunicorn alone
costs per request on the same settings."""


def application(environ, start_response):
    environ["wsgi.input"].read()
    start_response("202 Accepted", [("Content-Type", "application/json")])
    return [b'{"status": "queued"}']
