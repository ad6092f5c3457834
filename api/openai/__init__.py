"""The OpenAI dialect: /v1/chat/completions, /v1/completions and OpenAI batch lines over genq jobs."""
