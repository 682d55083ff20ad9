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

print("python clients ok")
