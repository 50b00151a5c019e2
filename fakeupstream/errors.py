"""What the fake upstream answers when it refuses: error bodies, byte for byte as real servers send them.

Where it sits: the server (fakeupstream/server.py) sends one of these, with its status, when a
directive asks for an HTTP fault (``fault=status``, ``fault=context``, ``fault=quota``) or when a
request cannot be served. The app's openai provider must turn each into the right ``fail`` code
(streamchat/providers/openai_compatible.py), and its tests read them from here.

Try it::

    python -m fakeupstream --port 8001 &
    curl -s http://127.0.0.1:8001/v1/chat/completions -H 'Authorization: Bearer fake' -d '{"model": "m",
        "stream": true, "messages": [{"role": "user", "content": "[fake fault=context dialect=llamacpp]"}]}'

Context-window errors, one per server family (``fault=context dialect=NAME``): every family says
"the conversation does not fit" in its own words, and a relay that only knows OpenAI's words shows
the user "the model server rejected the request" instead of "shorten the conversation". Each body
below is recorded from the family's own source or from a body a user of it posted, with the numbers
of our scenario (a 4,096-token model, a 9,000-token prompt) where the body has numbers:

- ``openai``: OpenAI's ``invalid_request_error`` with ``code: context_length_exceeded``.
- ``vllm``: vLLM's OpenAI server, ``_validate_input`` in vllm/entrypoints/openai/serving_engine.py:
  "This model's maximum context length is N tokens. However, your request has M input tokens...",
  ``type: BadRequestError`` and the number 400 as ``code``, inside ``{"error": ...}``; the trailing
  " None" is in the bodies users post (vLLM appends the missing parameter's name).
- ``llamacpp``: llama.cpp's server (tools/server: ``format_error_response`` with
  ``ERROR_TYPE_EXCEED_CONTEXT_SIZE``, raised in server-context.cpp): ``type:
  exceed_context_size_error``, ``code: 400``, and the two counts ``n_prompt_tokens`` and ``n_ctx``.
- ``litellm``: the LiteLLM proxy in front of Anthropic. LiteLLM names its exception class first in
  the message (``litellm.ContextWindowExceededError``), wraps the backend's own words, sets ``type``
  and ``param`` to null and the code to the string "400" (as posted in
  https://github.com/OpenHands/OpenHands/issues/5350). Anthropic's words ("prompt is too long")
  name neither a context nor a length: only LiteLLM's class name says what happened.
- ``ollama``: Ollama's OpenAI-compatible endpoint: its runner's ``errorInputTooLong`` ("the input
  length exceeds the context length") in ``openai.NewError``'s shape (``type:
  invalid_request_error``, ``param`` and ``code`` null), written by Go's ``json.Encoder``, which
  ends the body with a newline.
"""

from __future__ import annotations

# Bodies of fault=status, in OpenAI's error shape: status -> (type, code, message).
STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Fake bad request (fault=status status=400)."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        (
            "Incorrect API key provided: fake. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        ),
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    409: ("invalid_request_error", None, "Fake conflict (fault=status status=409)."),
    422: ("invalid_request_error", None, "Fake unprocessable entity (fault=status status=422)."),
    429: (
        "requests",
        "rate_limit_exceeded",
        (
            "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
            "Please try again in 1s."
        ),
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}

QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."

# fault=context: dialect -> the whole body of the 400 (see the module docstring for each source).
CONTEXT_ERRORS: dict[str, bytes] = {
    "openai": (
        b'{"error":{"message":"This model\'s maximum context length is 4096 tokens. However, your '
        b'messages resulted in 9000 tokens. Please reduce the length of the messages.",'
        b'"type":"invalid_request_error","param":null,"code":"context_length_exceeded"}}'
    ),
    "vllm": (
        b'{"error":{"message":"This model\'s maximum context length is 4096 tokens. However, your '
        b'request has 9000 input tokens. Please reduce the length of the input messages. None",'
        b'"type":"BadRequestError","param":null,"code":400}}'
    ),
    "llamacpp": (
        b'{"error":{"code":400,"message":"request (9000 tokens) exceeds the available context size '
        b'(4096 tokens), try increasing it","type":"exceed_context_size_error",'
        b'"n_prompt_tokens":9000,"n_ctx":4096}}'
    ),
    "litellm": (
        b'{"error":{"message":"litellm.BadRequestError: litellm.ContextWindowExceededError: '
        b'AnthropicError - {\\"type\\":\\"error\\",\\"error\\":{\\"type\\":\\"invalid_request_error\\",'
        b'\\"message\\":\\"prompt is too long: 209303 tokens > 200000 maximum\\"}}\\n'
        b"Received Model Group=anthropic/claude-3-5-sonnet-20241022\\n"
        b'Available Model Group Fallbacks=None","type":null,"param":null,"code":"400"}}'
    ),
    "ollama": (
        b'{"error":{"message":"the input length exceeds the context length",'
        b'"type":"invalid_request_error","param":null,"code":null}}\n'
    ),
}
CONTEXT_DIALECTS = tuple(CONTEXT_ERRORS)


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    """Return an error in OpenAI's shape."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}
