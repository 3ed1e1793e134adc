// One call through the proxy with the Node OpenAI or Anthropic SDK, set up as the README says.
// Usage: node sdk_call.mjs <openai|anthropic> <proxy url> <maxRetries>
// Prints one JSON line: {"text": ...} for an answer, {"error": {...}} for an API error.
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

const [family, proxyUrl, maxRetries] = process.argv.slice(2);
const defaultHeaders = { "X-Budget-Component": "framework-app", "X-Budget-Session": "run-1" };
const options = { apiKey: "sk-component-key", defaultHeaders, maxRetries: Number(maxRetries) };

async function call() {
  if (family === "openai") {
    const client = new OpenAI({ baseURL: `${proxyUrl}/v1`, ...options });
    const reply = await client.chat.completions.create({
      model: "gpt-4o-mini", messages: [{ role: "user", content: "hello" }],
    });
    return reply.choices[0].message.content;
  }
  const client = new Anthropic({ baseURL: `${proxyUrl}/anthropic`, ...options });
  const reply = await client.messages.create({
    model: "claude-3-5-haiku-latest", max_tokens: 100,
    messages: [{ role: "user", content: "hello" }],
  });
  return reply.content[0].text;
}

try {
  console.log(JSON.stringify({ text: await call() }));
} catch (err) {
  if (!(err instanceof OpenAI.APIError || err instanceof Anthropic.APIError)) throw err;
  console.log(JSON.stringify({ error: {
    name: err.constructor.name, status: err.status, type: err.error?.type ?? null,
    shouldRetry: err.headers?.get("x-should-retry") ?? null,
    retryAfter: err.headers?.get("retry-after") ?? null,
  } }));
}
