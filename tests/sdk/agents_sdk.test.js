// The OpenAI Agents SDK (@openai/agents, on its Responses API model) through Staple in front of
// tools/fake_openai, which calls a tool when the user writes "TOOL:<name> {args}" and answers a
// tool message with "tool result: <output>".
// Run: STAPLE_BIN=$PWD/build/staple FAKE_OPENAI_BIN=$PWD/build/fake_openai \
//        node --test tests/sdk/agents_sdk.test.js
// (ctest runs it as sdk.openai_agents once `npm ci --prefix tests/sdk` installed the packages).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  Agent,
  run,
  setDefaultOpenAIClient,
  setOpenAIAPI,
  setTracingDisabled,
  tool,
} from '@openai/agents';
import OpenAI from 'openai';
import { z } from 'zod';

import { HAVE_BINARIES, MODEL, Stack, messageText } from './harness.js';

describe('OpenAI Agents SDK through Staple', { skip: !HAVE_BINARIES }, () => {
  const stack = new Stack();
  const toolCalls = [];
  let agent;

  before(async () => {
    await stack.start('staple-sdk-agents-');
    setDefaultOpenAIClient(new OpenAI({
      apiKey: 'client-own-key',
      baseURL: stack.baseURL,
      maxRetries: 0,
      timeout: 10000,
    }));
    setOpenAIAPI('responses');
    setTracingDisabled(true);

    const getWeather = tool({
      name: 'get_weather',
      description: 'The current weather of a city',
      parameters: z.object({ city: z.string() }),
      execute: async ({ city }) => {
        toolCalls.push({ city });
        return `sunny in ${city}`;
      },
    });
    // An explicit model name: the SDK's default (a gpt-5 model) would add reasoning settings.
    agent = new Agent({
      name: 'Weather',
      instructions: 'Answer questions about the weather.',
      model: MODEL,
      tools: [getWeather],
    });
  });

  after(() => stack.stop());

  // The last chat request's messages without the system message of the instructions.
  async function lastConversation() {
    const messages = await stack.lastChatMessages();
    assert.equal(messages[0].role, 'system', JSON.stringify(messages));
    assert.equal(messageText(messages[0]), 'Answer questions about the weather.');
    return messages.slice(1);
  }

  // Checks that `messages` hold the tool exchange of the first run, in order.
  function assertToolExchange(messages) {
    assert.equal(messages[0].role, 'user');
    assert.equal(messageText(messages[0]), 'TOOL:get_weather {"city":"Paris"}');
    assert.equal(messages[1].role, 'assistant');
    assert.equal(messages[1].tool_calls?.length, 1, JSON.stringify(messages[1]));
    const call = messages[1].tool_calls[0];
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris' });
    assert.equal(messages[2].role, 'tool');
    assert.equal(messages[2].tool_call_id, call.id);
    assert.equal(messageText(messages[2]), 'sunny in Paris');
  }

  let first;

  test('a run calls the tool and finishes with its result', async () => {
    toolCalls.length = 0;
    first = await run(agent, 'TOOL:get_weather {"city":"Paris"}');

    assert.deepEqual(toolCalls, [{ city: 'Paris' }]);
    assert.equal(typeof first.finalOutput, 'string');
    assert.ok(first.finalOutput.includes('sunny in Paris'), first.finalOutput);
    assert.equal(first.finalOutput, 'tool result: sunny in Paris');

    const types = first.newItems.map((item) => item.type);
    assert.deepEqual(types, ['tool_call_item', 'tool_call_output_item', 'message_output_item']);
    assert.match(first.lastResponseId ?? '', /^resp_/);

    // Two model calls went upstream: the tool call, then its output.
    const bodies = (await stack.chatBodies()).slice(-2);
    assert.equal(bodies.length, 2);
    assert.equal(bodies[0].tools?.[0]?.function?.name, 'get_weather');
    const messages = await lastConversation();
    assert.equal(messages.length, 3, JSON.stringify(messages));
    assertToolExchange(messages);
  });

  test('a second run continues through previousResponseId', async () => {
    assert.ok(first?.lastResponseId, 'the first run did not finish');
    toolCalls.length = 0;
    const second = await run(agent, 'and tomorrow?', { previousResponseId: first.lastResponseId });

    assert.deepEqual(toolCalls, []);
    assert.match(second.finalOutput, /^echo\(\d+\): and tomorrow\?$/);
    assert.notEqual(second.lastResponseId, first.lastResponseId);

    // The upstream saw the earlier exchange, then the new question.
    const messages = await lastConversation();
    assert.equal(messages.length, 5, JSON.stringify(messages));
    assertToolExchange(messages);
    assert.equal(messages[3].role, 'assistant');
    assert.equal(messageText(messages[3]), 'tool result: sunny in Paris');
    assert.equal(messages[4].role, 'user');
    assert.equal(messageText(messages[4]), 'and tomorrow?');
    assert.equal(second.finalOutput, `echo(6): and tomorrow?`);
  });

  test('a streamed run calls the tool too', async () => {
    toolCalls.length = 0;
    const result = await run(agent, 'TOOL:get_weather {"city":"Oslo"}', { stream: true });
    const eventTypes = new Set();
    for await (const event of result) eventTypes.add(event.type);
    await result.completed;

    assert.deepEqual(toolCalls, [{ city: 'Oslo' }]);
    assert.equal(result.finalOutput, 'tool result: sunny in Oslo');
    assert.ok(eventTypes.has('raw_model_stream_event'), [...eventTypes].join(','));
    assert.ok(eventTypes.has('run_item_stream_event'), [...eventTypes].join(','));
  });
});
