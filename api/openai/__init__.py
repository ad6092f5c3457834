"""The OpenAI dialect: /v1/chat/completions, /v1/completions and OpenAI batch lines over genq jobs.

One module per step, so that a new request parameter touches each step once:
- schemas.py: the wire shapes (a request field, and `unsupported()` while it is refused);
- routes.py: the routes, and a request body → its n checked `JobCreate`s (`request_jobs`);
- replies.py: finished jobs and their events → completion bodies and streamed chunks;
- openapi.py: the routes' OpenAPI entries; batch.py: OpenAI batch input and output lines.
Errors are classified once for both dialects and rendered in OpenAI's envelope by api/errors.py.
"""
