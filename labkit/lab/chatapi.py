"""An OpenAI-compatible chat endpoint as the labs call it: the key at run time, counted requests and
retries, replies cached by the hash of their request, and every failure named in one line.

Shared by chatglm-private-data (its generator asks for question/answer pairs) and rlhf (its AI judge
labels preference pairs and scores completions). Any endpoint that speaks OpenAI's chat completions
works: OpenAI, DeepSeek, vLLM, Ollama, ``transformers serve``, or the labs' local replay server
(:mod:`labkit.lab.replay`).

* :func:`client_for`: an ``openai.OpenAI`` client; ``OPENAI_API_KEY`` is read from the environment at
  run time and never printed, logged or written; rate limits (429) and server errors (5xx) are retried
  by the client's exponential backoff (honouring ``retry-after``), and counted.
* :func:`ask`: one chat completion's text, from the cache (``<cache>/<sha256 of model and messages>.json``)
  or from the endpoint (then cached atomically), so a stopped run resumes without paying twice. Only a
  reply the caller's ``valid`` accepts is cached: a malformed one is asked again on the next run, as
  it would be of a real endpoint, instead of being replayed for ever.

Counters are any object with the integer attributes ``requests``, ``retries``, ``cache_hits``,
``prompt_tokens`` and ``completion_tokens`` (:class:`ApiCounts`, or a lab's own report).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.errors import LabError


@dataclass
class ApiCounts:
    """What calls to an endpoint cost: HTTP requests (retries included), retried answers (429, 5xx),
    replies read from the cache, and tokens as the endpoint reported them."""

    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def client_for(base_url: str | None, timeout_s: float, max_retries: int, counts):
    """An ``openai.OpenAI`` client for ``base_url`` (``None``: ``OPENAI_BASE_URL``, else OpenAI's) whose
    HTTP layer counts requests and retried statuses into ``counts``.

    Raises:
        LabError: ``OPENAI_API_KEY`` is not set (names the variable and where to set it).
    """
    import openai

    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise LabError(
            "OPENAI_API_KEY is not set: export it (or pass it to the container with -e OPENAI_API_KEY); "
            "it is read at run time and never saved. A local server that needs no key takes any value."
        )

    def count(response) -> None:
        counts.requests += 1
        if response.status_code == 429 or response.status_code >= 500:
            counts.retries += 1

    http = openai.DefaultHttpxClient(event_hooks={"response": [count]})
    url = base_url or os.environ.get("OPENAI_BASE_URL")
    return openai.OpenAI(api_key=key, base_url=url, timeout=timeout_s, max_retries=max_retries, http_client=http)


def request_key(cfg: dict, messages: list[dict]) -> str:
    """The cache key of a request: SHA-256 of what shapes the reply (the model, ``temperature``,
    ``max_tokens``) and the messages, as JSON with sorted keys. The endpoint's address is left out: the
    same model behind another address (a replay server's free port, a mirror) answers the same."""
    shaping = [cfg["model"], cfg["temperature"], cfg["max_tokens"], messages]
    return hashlib.sha256(json.dumps(shaping, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def shown_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(str(url))
    if "@" not in parts.netloc:
        return str(url)
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def ask(
    client,
    cfg: dict,
    messages: list[dict],
    cache: Path,
    counts,
    model_setting: str = "model",
    valid: Callable[[str], bool] | None = None,
) -> str:
    """The reply text for ``messages``: from the cache, or from the endpoint as a JSON object (then
    cached when ``valid`` accepts it).

    Args:
        cfg: ``model``, ``temperature``, ``max_tokens``, ``timeout_s``, ``max_retries`` (a profile section).
        cache: folder of cached replies (created on the first write).
        counts: counters (:class:`ApiCounts` or any object with its attributes).
        model_setting: the profile setting that names the model, for the HTTP 404 message.
        valid: ``valid(reply) -> bool``, the caller's validation; a reply it rejects is returned but not
            cached (the next run asks again), and a cached one it rejects is asked again. ``None``:
            every reply is cached.

    Raises:
        LabError: the key is rejected, the endpoint does not answer within the timeout after its
            retries, cannot be reached, does not serve the model, or keeps failing (names the
            endpoint and what to check).
    """
    import openai

    path = Path(cache) / f"{request_key(cfg, messages)}.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))["content"]
        if valid is None or valid(cached):  # else a rejected reply an earlier version cached: ask again
            counts.cache_hits += 1
            return cached
    url = shown_url(client.base_url)
    try:
        response = client.chat.completions.create(
            model=cfg["model"],
            messages=messages,
            temperature=cfg["temperature"],
            max_tokens=cfg["max_tokens"],
            response_format={"type": "json_object"},
        )
    except openai.AuthenticationError as exc:
        raise LabError(f"{url} rejected the API key (HTTP {exc.status_code}): check OPENAI_API_KEY") from None
    except openai.APITimeoutError:
        raise LabError(
            f"{url} did not answer within {cfg['timeout_s']} s ({cfg['max_retries']} retries): is the server up?"
        ) from None
    except openai.APIConnectionError as exc:
        raise LabError(f"cannot reach {url}: {exc.__cause__ or exc}") from None
    except openai.NotFoundError:
        raise LabError(
            f"{url} answered HTTP 404 for model {cfg['model']!r}: set {model_setting} to a model it serves "
            "(and check that the URL ends in /v1)"
        ) from None
    except openai.APIStatusError as exc:
        said = " ".join(str(getattr(exc, "message", "") or exc).split())[:300]
        retried = f" after {cfg['max_retries']} retries" if exc.status_code == 429 or exc.status_code >= 500 else ""
        raise LabError(f"{url} answered HTTP {exc.status_code}{retried}: {said}") from None
    if not response.choices:
        raise LabError(f"{url} answered with no choices for model {cfg['model']!r}: is it a chat model?")
    content = response.choices[0].message.content or ""
    if response.usage:
        counts.prompt_tokens += response.usage.prompt_tokens or 0
        counts.completion_tokens += response.usage.completion_tokens or 0
    if valid is not None and not valid(content):
        return content
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")  # a run killed mid-write leaves no half reply
    partial.write_text(json.dumps({"content": content}, ensure_ascii=False), encoding="utf-8")
    partial.replace(path)
    return content
