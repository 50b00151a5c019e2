// ANCHOR (not the app; do not deploy): Node's http + the openai npm package, as tutorials write it.
//
// One of the benchmark's anchors (see bench/anchors/__init__.py): the same relay in Node. Each request's
// handler iterates the SDK's chunks with `for await` and writes one `data: {json}` event per chunk,
// then `data: [DONE]`. The benchmark runs it as one process pinned to the relay's core.
//
// Run it by hand (`npm ci --prefix bench/anchors/node` first):
//
//   python -m fakeupstream --port 8001 &
//   OPENAI_BASE_URL=http://127.0.0.1:8001/v1 OPENAI_API_KEY=fake PORT=8002 node bench/anchors/node/relay.mjs
//   curl -N localhost:8002/stream -H 'content-type: application/json' \
//        -d '{"messages": [{"role": "user", "content": "hi [fake tokens=5]"}]}'

import http from "node:http";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.OPENAI_BASE_URL,
  apiKey: process.env.OPENAI_API_KEY || "no-key-needed",
});
const MODEL = process.env.OPENAI_MODEL || "gpt-4o-mini";

async function readJson(req) {
  const parts = [];
  for await (const part of req) parts.push(part);
  return JSON.parse(Buffer.concat(parts).toString("utf8"));
}

const server = http.createServer(async (req, res) => {
  if (req.method !== "POST" || req.url !== "/stream") {
    res.writeHead(404).end();
    return;
  }
  const { messages } = await readJson(req);
  res.writeHead(200, { "Content-Type": "text/event-stream" });
  const stream = await client.chat.completions.create({ model: MODEL, messages, stream: true });
  for await (const chunk of stream) {
    const text = chunk.choices[0]?.delta?.content;
    if (text) res.write(`data: ${JSON.stringify({ text })}\n\n`);
  }
  res.end("data: [DONE]\n\n");
});

server.listen(Number(process.env.PORT), "127.0.0.1");
