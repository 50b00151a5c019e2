"""The bytes of a streamed chat completion: OpenAI's ``chat.completion.chunk`` JSON, one HTTP chunk each.

Where it sits: the server (fakeupstream/server.py) and the ticker (fakeupstream/ticker.py) write
what this module returns, as it is, to the client's socket. Pure: no sockets, no clocks.

Try it::

    python -c "from fakeupstream.frames import Frames; print(Frames('chatcmpl-1', 0, 'm', False).token('Hi'))"

Deliberate choices:

- Each SSE frame (``data: {json}\\n\\n``) is one HTTP chunk, sent in one write, as OpenAI's are.
- JSON is compact, with non-ASCII text as raw UTF-8 and the keys in OpenAI's order.
- The parts of a chunk that never change within a response (id, created, model) are encoded once
  per response, and each distinct token once: the benchmark streams thousands of tokens a second
  through this server, which must cost far less than the relay it measures.
"""

from __future__ import annotations

import json

from streamchat.http1 import LAST_CHUNK, encode_chunk

TOKEN_CACHE_SIZE = 64  # encoded token chunks kept per response (echo answers never repeat)

DONE = b"data: [DONE]\n\n"
ERROR_FRAME = (
    b'data: {"error":{"message":"The server had an error while processing your request.",'
    b'"type":"server_error","param":null,"code":null}}\n\n'
)
GARBAGE_FRAME = b'data: {"id": this is not json\n\n'
CONTENT_TYPE_BODY = b'{"object":"chat.completion","choices":[]}'


def json_bytes(value: object) -> bytes:
    """Encode compact JSON with raw UTF-8, as OpenAI does."""
    # A lone surrogate (legal in a JSON request, "\ud800") cannot be UTF-8; backslashreplace turns it
    # back into the JSON escape "\ud800", which is valid here because it can only occur inside a string.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace")


class Frames:
    """Encode one completion's chunks; the parts that never change are encoded once per request."""

    __slots__ = ("_head", "_meta", "_tail", "_tokens", "_usage_null")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        meta = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        self._meta = b"data: " + json_bytes(meta)[:-1]  # open, so that "choices" can follow
        # With include_usage, OpenAI puts "usage":null on every chunk before the usage chunk.
        self._usage_null = b',"usage":null' if include_usage else b""
        self._head = self._meta + b',"choices":[{"index":0,"delta":'
        self._tail = b',"logprobs":null,"finish_reason":null}]' + self._usage_null + b"}\n\n"
        self._tokens: dict[str, bytes] = {}  # an answer repeats a few words: encode each once

    def role(self) -> bytes:
        """Return the first chunk, which only announces the assistant role."""
        return encode_chunk(self._head + b'{"role":"assistant","content":"","refusal":null}' + self._tail)

    def token(self, text: str) -> bytes:
        """Return the chunk carrying one token."""
        frame = self._tokens.get(text)
        if frame is None:
            frame = encode_chunk(b'%s{"content":%s}%s' % (self._head, json_bytes(text), self._tail))
            if len(self._tokens) < TOKEN_CACHE_SIZE:
                self._tokens[text] = frame
        return frame

    def reasoning(self) -> bytes:
        """Return a chunk of a reasoning model's thinking: ``reasoning_content``, no ``content``."""
        return encode_chunk(self._head + b'{"reasoning_content":"Let me think."}' + self._tail)

    def interlude(self) -> bytes:
        """Return chunks a client must skip: a null content, an empty delta, and empty choices."""
        empty_choices = self._meta + b',"choices":[]' + self._usage_null + b"}\n\n"
        return (
            encode_chunk(self._head + b'{"content":null}' + self._tail)
            + encode_chunk(self._head + b"{}" + self._tail)
            + encode_chunk(empty_choices)
        )

    def ending(self, finish: str, usage: dict[str, int] | None) -> bytes:
        """Return the finish chunk, the usage chunk if asked for, ``[DONE]`` and the last chunk."""
        tail = b',"logprobs":null,"finish_reason":"%s"}]%s}\n\n' % (finish.encode(), self._usage_null)
        out = encode_chunk(self._head + b"{}" + tail)
        if usage is not None:
            out += encode_chunk(self._meta + b',"choices":[],"usage":' + json_bytes(usage) + b"}\n\n")
        return out + encode_chunk(DONE) + LAST_CHUNK
