// The official JavaScript client (`ollama` on npm) through the gate.
//
// Run by tests/js_client.rs with OLLAMA_HOST, OLLAMA_API_KEY (a valid key), LIMITED_KEY
// (a tier that allows llama3* only), RATED_KEY (one request per minute) and OLLAMA_JS
// (the path of the installed module). Exits non-zero with a message on the first surprise.

import assert from "node:assert/strict";

const { Ollama } = await import(process.env.OLLAMA_JS);
const host = process.env.OLLAMA_HOST;

const bearer = (key) => new Ollama({ host, headers: { Authorization: `Bearer ${key}` } });
// Unlike the Python client, ollama-js sends OLLAMA_API_KEY only to https://ollama.com:
// in front of aigate the key goes in `headers`.
const client = bearer(process.env.OLLAMA_API_KEY);
const names = (await client.list()).models.map((m) => m.model);
assert.ok(names.includes("llama3.2:latest"), `models: ${names}`);

const parts = [];
for await (const part of await client.chat({
  model: "llama3.2",
  messages: [{ role: "user", content: "hi" }],
  stream: true,
})) {
  parts.push(part);
}
assert.ok(parts.length > 1, "streamed in parts");
assert.equal(parts.at(-1).done, true);
assert.equal(parts.at(-1).eval_count, 42);

// The gate's refusals reach the user in the client's words (it reads `error`).
async function refused(what, call, status, text) {
  try {
    await call();
  } catch (e) {
    assert.equal(e.name, "ResponseError", `${what}: ${e}`);
    assert.equal(e.status_code, status, `${what}: ${e}`);
    assert.ok(e.error.includes(text), `${what}: ${e.error}`);
    return;
  }
  assert.fail(`${what} was served`);
}
await refused("no key", () => new Ollama({ host }).list(), 401, "Not authenticated");
await refused("a wrong key", () => bearer("aig_wrong").list(), 401, "Invalid API key");
await refused(
  "a model outside the tier",
  () => bearer(process.env.LIMITED_KEY).chat({ model: "qwen2.5:7b", messages: [] }),
  403,
  "is not allowed for tier",
);
const rated = bearer(process.env.RATED_KEY);
await rated.chat({ model: "llama3.2", messages: [{ role: "user", content: "hi" }] });
await refused(
  "a second request in the minute",
  () => rated.chat({ model: "llama3.2", messages: [{ role: "user", content: "hi" }] }),
  429,
  "Rate limit exceeded",
);

console.log("javascript client ok");
