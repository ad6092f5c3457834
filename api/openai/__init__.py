"""The OpenAI dialect: /v1/chat/completions, /v1/completions and OpenAI batch lines over genq jobs.

One module per step, so that a new request parameter touches each step once:
- schemas.py: the wire shapes (a request field, and `unsupported()` while it is refused);
- parse.py: a request body → its n checked `JobCreate`s (what the field asks of the job);
- replies.py: finished jobs and their events → completion bodies and streamed chunks;
- routes.py: the HTTP routes, thin: read the body, parse, submit, answer or stream;
- errors.py: OpenAI's error envelope, rendering api/errors.py's classifier;
- openapi.py: the routes' OpenAPI entries; batch.py: OpenAI batch input and output lines.
"""
