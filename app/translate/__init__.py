"""Other APIs served over chat-completions upstreams: each is a pure conversion module plus a step pair.

- Responses (`/v1/responses`, OpenAI): app/translate/responses.py, responses_steps.py, store.py.
- Messages (`/v1/messages`, Anthropic): app/translate/messages.py, messages_steps.py.

The early step of a pair (`attempt`, `resend`) turns the client's request into a chat-completions
request for the attempt (`ex.family = "chat"`), so every chat step applies to it; the late one turns
the chat answer back. docs/translation.md describes the mappings.
"""
