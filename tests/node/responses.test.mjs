// The Vercel AI SDK's default OpenAI provider (the Responses API) against the gateway, whose
// base URL tests/test_responses_node.py passes in GATEWAY_URL (the emulator behind it).
import assert from "node:assert/strict";
import { test } from "node:test";

import { createOpenAI } from "@ai-sdk/openai";
import { APICallError, generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const openai = createOpenAI({ baseURL: `${process.env.GATEWAY_URL}/api/v1`, apiKey: "not-checked-locally" });

test("generateText answers from a dedicated endpoint", async () => {
  const { text, finishReason, response } = await generateText({
    model: openai("llama-chat"),
    system: "Be brief.",
    prompt: "Hello",
    maxRetries: 0,
  });
  assert.equal(text, "You said: Hello");
  assert.equal(finishReason, "stop");
  assert.match(response.id, /^resp_/);
});

test("streamText streams text deltas and usage from a serverless endpoint", async () => {
  const result = streamText({ model: openai("mistral-large"), prompt: "one two three", maxRetries: 0 });
  const pieces = [];
  for await (const piece of result.textStream) pieces.push(piece);
  assert.equal(pieces.join(""), "You said: one two three");
  assert.equal(pieces.length, 5); // one per word, as the endpoint sent them
  const usage = await result.usage;
  assert.equal(usage.outputTokens, 5);
  assert.equal(await result.finishReason, "stop");
});

test("a zod-typed tool is called and its result answered", async () => {
  const cities = [];
  const { text, steps } = await generateText({
    model: openai("mistral-large"),
    prompt: "Paris",
    tools: {
      getWeather: tool({
        description: "The weather in a city",
        inputSchema: z.object({ city: z.string() }),
        execute: async ({ city }) => {
          cities.push(city);
          return `sunny in ${city}`;
        },
      }),
    },
    stopWhen: stepCountIs(3),
    maxRetries: 0,
  });
  assert.deepEqual(cities, ["Paris"]);
  assert.equal(steps.length, 2);
  assert.match(text, /^Tool said: .*sunny in Paris/);
});

test("generateObject returns an object valid against its zod schema", async () => {
  const schema = z.object({ name: z.string().min(1), age: z.number().int().min(18).max(130) });
  const { object } = await generateObject({ model: openai("mistral-large"), schema, prompt: "Ada", maxRetries: 0 });
  assert.deepEqual(schema.parse(object), object);
});

test("an unknown model is a 404 with the OpenAI error body", async () => {
  await assert.rejects(
    generateText({ model: openai("gpt-x"), prompt: "x", maxRetries: 0 }),
    (error) => APICallError.isInstance(error) && error.statusCode === 404 && /gpt-x/.test(error.message),
  );
});

test("a conversation carried on from an earlier answer needs store: false (no stored items)", async () => {
  const model = openai("mistral-large");
  const first = await generateText({ model, prompt: "Hi", maxRetries: 0 });
  const messages = [{ role: "user", content: "Hi" }, ...first.response.messages, { role: "user", content: "Again" }];
  // By default the SDK refers to the earlier answer by its id, which a stateless gateway cannot resolve.
  await assert.rejects(
    generateText({ model, messages, maxRetries: 0 }),
    (error) => APICallError.isInstance(error) && error.statusCode === 400 && /store = false/.test(error.message),
  );
  const { text } = await generateText({
    model,
    messages,
    providerOptions: { openai: { store: false } },
    maxRetries: 0,
  });
  assert.equal(text, "You said: Again");
});
