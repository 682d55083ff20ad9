"""The official Python clients (ollama, openai) through the gate.

Run by tests/python_clients.rs with OLLAMA_HOST and OLLAMA_API_KEY set to the gate and
a valid key. Exits non-zero with a message on the first surprise.
"""

import os
import sys

import ollama
import openai

host = os.environ["OLLAMA_HOST"]
key = os.environ["OLLAMA_API_KEY"]

# ollama: the client sends OLLAMA_API_KEY as a bearer token by itself.
client = ollama.Client()
names = [m.model for m in client.list().models]
assert "llama3.2:latest" in names, names

parts = list(client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True))
assert len(parts) > 1, parts
assert parts[-1].done and parts[-1].eval_count == 42, parts[-1]

reply = client.generate(model="llama3.2", prompt="hi")
assert reply.prompt_eval_count == 26, reply

try:
    ollama.Client(headers={"Authorization": "Bearer aig_wrong"}).list()
    sys.exit("a wrong key was accepted")
except ollama.ResponseError as e:
    assert e.status_code == 401, e
    assert e.error == "Invalid API key", e.error

# openai: api_key goes out as a bearer token.
oa = openai.OpenAI(base_url=f"{host}/v1", api_key=key)
stream = oa.chat.completions.create(
    model="llama3.2",
    messages=[{"role": "user", "content": "hi"}],
    stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
usage = [c.usage for c in chunks if c.usage]
assert usage and usage[-1].prompt_tokens == 26 and usage[-1].completion_tokens == 42, chunks[-1]

done = oa.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
assert done.usage.completion_tokens == 42, done

try:
    openai.OpenAI(base_url=f"{host}/v1", api_key="nope").models.list()
    sys.exit("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401, e
    assert "Invalid API key" in str(e), str(e)
    assert e.code == "invalid_api_key", e.code

# The gate's refusals reach the user in each client's own words.
limited = os.environ["LIMITED_KEY"]  # tier allows llama3* only
try:
    ollama.Client(headers={"Authorization": f"Bearer {limited}"}).chat(
        model="qwen2.5:7b", messages=[{"role": "user", "content": "hi"}]
    )
    sys.exit("a model outside the tier was served")
except ollama.ResponseError as e:
    assert e.status_code == 403 and "is not allowed for tier" in e.error, (e.status_code, e.error)
try:
    openai.OpenAI(base_url=f"{host}/v1", api_key=limited, max_retries=0).chat.completions.create(
        model="qwen2.5:7b", messages=[{"role": "user", "content": "hi"}]
    )
    sys.exit("a model outside the tier was served")
except openai.PermissionDeniedError as e:
    assert "is not allowed for tier" in str(e), str(e)

rated = os.environ["RATED_KEY"]  # one request per minute
ollama.Client(headers={"Authorization": f"Bearer {rated}"}).chat(
    model="llama3.2", messages=[{"role": "user", "content": "hi"}]
)
try:
    ollama.Client(headers={"Authorization": f"Bearer {rated}"}).chat(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}]
    )
    sys.exit("the rate limit let a second request through")
except ollama.ResponseError as e:
    assert e.status_code == 429 and "Rate limit exceeded" in e.error, (e.status_code, e.error)
try:
    openai.OpenAI(base_url=f"{host}/v1", api_key=rated, max_retries=0).chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}]
    )
    sys.exit("the rate limit let a request through")
except openai.RateLimitError as e:
    assert "Rate limit exceeded" in str(e), str(e)

print("python clients ok")
