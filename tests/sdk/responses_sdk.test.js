// The Responses and Conversations APIs of Staple, driven by the official `openai` npm package, in
// front of tools/fake_openai (which answers "echo(N): <last user content>", N being the number of
// chat messages it received, calls a tool on "TOOL:<name> {args}" and answers a tool message with
// "tool result: <output>").
// Run: STAPLE_BIN=$PWD/build/staple FAKE_OPENAI_BIN=$PWD/build/fake_openai \
//        node --test tests/sdk/responses_sdk.test.js
// (ctest runs it as sdk.openai_node_responses once `npm ci --prefix tests/sdk` installed the
// packages).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import { HAVE_BINARIES, MODEL, Stack, messageText, roleTexts } from './harness.js';

const UNKNOWN_RESPONSE = `resp_${'0'.repeat(48)}`;

const WEATHER_TOOL = {
  type: 'function',
  name: 'get_weather',
  description: 'The current weather of a city',
  parameters: {
    type: 'object',
    properties: { city: { type: 'string' } },
    required: ['city'],
    additionalProperties: false,
  },
  strict: true,
};

// The texts of the output_text parts of a response's message items.
function outputText(response) {
  return response.output
    .filter((item) => item.type === 'message')
    .flatMap((item) => item.content)
    .filter((part) => part.type === 'output_text')
    .map((part) => part.text)
    .join('');
}

// An item as [type, role, text] (function calls as [type, name, arguments], their outputs as
// [type, call_id, output]).
function itemSummary(item) {
  if (item.type === 'message') {
    return [item.type, item.role, item.content.map((part) => part.text ?? '').join('')];
  }
  if (item.type === 'function_call') return [item.type, item.name, item.arguments];
  if (item.type === 'function_call_output') return [item.type, item.call_id, item.output];
  return [item.type];
}

async function collect(page) {
  const items = [];
  for await (const item of page) items.push(item);
  return items;
}

describe('Responses API through Staple', { skip: !HAVE_BINARIES }, () => {
  const stack = new Stack();
  let client;

  before(async () => {
    await stack.start('staple-sdk-responses-');
    client = new OpenAI({
      apiKey: 'client-own-key',
      baseURL: stack.baseURL,
      maxRetries: 0,
      timeout: 10000,
    });
  });

  after(() => stack.stop());

  test('a plain response', async () => {
    const response = await client.responses.create({ model: MODEL, input: 'hi' });
    assert.equal(response.object, 'response');
    assert.match(response.id, /^resp_/);
    assert.equal(response.status, 'completed');
    assert.ok(response.output_text.length > 0, 'empty output_text');
    assert.equal(response.output_text, 'echo(1): hi');
    assert.equal(response.output.length, 1);
    assert.equal(response.output[0].type, 'message');
    assert.equal(response.output[0].role, 'assistant');
    assert.match(response.output[0].id, /^msg_/);
    assert.ok(response.usage.input_tokens > 0);
    assert.ok(response.usage.output_tokens > 0);
    assert.equal(response.usage.total_tokens,
                 response.usage.input_tokens + response.usage.output_tokens);
    assert.deepEqual(roleTexts(await stack.lastChatMessages()), [['user', 'hi']]);
  });

  test('instructions go upstream as a system message', async () => {
    const response = await client.responses.create({
      model: MODEL,
      instructions: 'Be brief.',
      input: 'hello',
    });
    assert.equal(response.output_text, 'echo(2): hello');
    assert.deepEqual(roleTexts(await stack.lastChatMessages()),
                     [['system', 'Be brief.'], ['user', 'hello']]);
  });

  test('previous_response_id chained twice sends the whole chain upstream', async () => {
    const first = await client.responses.create({ model: MODEL, input: 'first' });
    assert.equal(first.output_text, 'echo(1): first');
    const second = await client.responses.create({
      model: MODEL,
      input: 'second',
      previous_response_id: first.id,
    });
    assert.equal(second.previous_response_id, first.id);
    assert.equal(second.output_text, 'echo(3): second');
    const third = await client.responses.create({
      model: MODEL,
      input: 'third',
      previous_response_id: second.id,
    });
    assert.equal(third.previous_response_id, second.id);
    assert.equal(third.output_text, 'echo(5): third');
    assert.deepEqual(roleTexts(await stack.lastChatMessages()), [
      ['user', 'first'],
      ['assistant', 'echo(1): first'],
      ['user', 'second'],
      ['assistant', 'echo(3): second'],
      ['user', 'third'],
    ]);
  });

  test('stream: true is consumed by the event iterator', async () => {
    const stream = await client.responses.create({ model: MODEL, input: 'streamed', stream: true });
    const events = [];
    for await (const event of stream) events.push(event);

    const types = events.map((event) => event.type);
    assert.equal(types[0], 'response.created', types.join(','));
    assert.equal(types[types.length - 1], 'response.completed', types.join(','));
    assert.ok(types.includes('response.output_item.added'), types.join(','));
    assert.ok(types.includes('response.output_text.delta'), types.join(','));
    assert.ok(types.includes('response.output_text.done'), types.join(','));
    assert.ok(types.includes('response.output_item.done'), types.join(','));
    for (let i = 1; i < events.length; ++i) {
      assert.ok(events[i].sequence_number > events[i - 1].sequence_number,
                `sequence_number ${events[i].sequence_number} after ` +
                  `${events[i - 1].sequence_number} (${types[i]})`);
    }

    const created = events[0].response;
    assert.match(created.id, /^resp_/);
    assert.equal(created.status, 'in_progress');
    const deltas = events
      .filter((event) => event.type === 'response.output_text.delta')
      .map((event) => event.delta);
    assert.equal(deltas.join(''), 'echo(1): streamed');
    assert.ok(deltas.length > 1, `only ${deltas.length} text deltas`);

    const completed = events[events.length - 1].response;
    assert.equal(completed.id, created.id);
    assert.equal(completed.status, 'completed');
    assert.equal(outputText(completed), 'echo(1): streamed');
    assert.ok(completed.usage.output_tokens > 0);

    // A streamed response is stored like any other.
    const retrieved = await client.responses.retrieve(completed.id);
    assert.equal(retrieved.output_text, 'echo(1): streamed');
  });

  test('responses.stream() gives the final response', async () => {
    const stream = client.responses.stream({ model: MODEL, input: 'again' });
    const deltas = [];
    stream.on('response.output_text.delta', (event) => deltas.push(event.delta));
    const final = await stream.finalResponse();
    assert.match(final.id, /^resp_/);
    assert.equal(final.status, 'completed');
    assert.equal(final.output_text, 'echo(1): again');
    assert.equal(deltas.join(''), 'echo(1): again');
  });

  test('a streamed response can be continued', async () => {
    const final = await client.responses.stream({ model: MODEL, input: 'one' }).finalResponse();
    const next = await client.responses
      .stream({ model: MODEL, input: 'two', previous_response_id: final.id })
      .finalResponse();
    assert.equal(next.output_text, 'echo(3): two');
    assert.deepEqual(roleTexts(await stack.lastChatMessages()),
                     [['user', 'one'], ['assistant', 'echo(1): one'], ['user', 'two']]);
  });

  test('responses.retrieve returns the stored response', async () => {
    const created = await client.responses.create({ model: MODEL, input: 'keep me' });
    const retrieved = await client.responses.retrieve(created.id);
    assert.equal(retrieved.id, created.id);
    assert.equal(retrieved.object, 'response');
    assert.equal(retrieved.status, 'completed');
    assert.equal(retrieved.output_text, 'echo(1): keep me');
    assert.deepEqual(retrieved.output, created.output);
  });

  test('responses.inputItems.list lists the input items in order', async () => {
    const created = await client.responses.create({
      model: MODEL,
      input: [
        { role: 'user', content: 'alpha' },
        { role: 'assistant', content: 'beta' },
        { role: 'user', content: [{ type: 'input_text', text: 'gamma' }] },
      ],
    });
    assert.equal(created.output_text, 'echo(3): gamma');

    const ascending = await collect(client.responses.inputItems.list(created.id, { order: 'asc' }));
    assert.deepEqual(ascending.map(itemSummary), [
      ['message', 'user', 'alpha'],
      ['message', 'assistant', 'beta'],
      ['message', 'user', 'gamma'],
    ]);
    for (const item of ascending) assert.ok(item.id, JSON.stringify(item));
    assert.equal(ascending[0].content[0].type, 'input_text');
    assert.equal(ascending[1].content[0].type, 'output_text');

    const descending = await collect(
      client.responses.inputItems.list(created.id, { order: 'desc' }));
    assert.deepEqual(descending.map((item) => item.id), ascending.map((item) => item.id).reverse());

    // One item per page: the SDK follows `after` through has_more.
    const paged = await collect(
      client.responses.inputItems.list(created.id, { order: 'asc', limit: 1 }));
    assert.deepEqual(paged.map((item) => item.id), ascending.map((item) => item.id));
  });

  test('responses.delete, then retrieve is a NotFoundError', async () => {
    const created = await client.responses.create({ model: MODEL, input: 'forget me' });
    await client.responses.delete(created.id);
    await assert.rejects(client.responses.retrieve(created.id), (error) => {
      assert.ok(error instanceof OpenAI.NotFoundError, error.constructor.name);
      assert.equal(error.status, 404);
      return true;
    });
    await assert.rejects(client.responses.delete(created.id), OpenAI.NotFoundError);
  });

  test('an unknown previous_response_id is a NotFoundError', async () => {
    const known = await client.responses.create({ model: MODEL, input: 'known' });
    const next = await client.responses.create({
      model: MODEL,
      input: 'next',
      previous_response_id: known.id,
    });
    assert.equal(next.status, 'completed');
    await stack.clearRequests();
    await assert.rejects(
      client.responses.create({ model: MODEL, input: 'x', previous_response_id: UNKNOWN_RESPONSE }),
      (error) => {
        assert.ok(error instanceof OpenAI.NotFoundError, error.constructor.name);
        assert.equal(error.status, 404);
        assert.equal(error.code, 'previous_response_not_found');
        assert.equal(error.param, 'previous_response_id');
        return true;
      },
    );
    await assert.rejects(client.responses.retrieve(UNKNOWN_RESPONSE), OpenAI.NotFoundError);
    assert.equal((await stack.chatBodies()).length, 0, 'the refused request went upstream');
  });

  test('previous_response_id and conversation together are a BadRequestError', async () => {
    const first = await client.responses.create({ model: MODEL, input: 'first' });
    const conversation = await client.conversations.create({});
    await stack.clearRequests();
    await assert.rejects(
      client.responses.create({
        model: MODEL,
        input: 'x',
        previous_response_id: first.id,
        conversation: conversation.id,
      }),
      (error) => {
        assert.ok(error instanceof OpenAI.BadRequestError, error.constructor.name);
        assert.equal(error.status, 400);
        return true;
      },
    );
    assert.equal((await stack.chatBodies()).length, 0, 'the refused request went upstream');
  });

  test('two responses in a conversation, then conversations.items.list', async () => {
    const conversation = await client.conversations.create({
      items: [{ type: 'message', role: 'user', content: 'my colour is blue' }],
      metadata: { topic: 'colours' },
    });
    assert.match(conversation.id, /^conv_/);
    assert.equal(conversation.object, 'conversation');
    assert.deepEqual(conversation.metadata, { topic: 'colours' });
    const retrieved = await client.conversations.retrieve(conversation.id);
    assert.equal(retrieved.id, conversation.id);
    assert.deepEqual(retrieved.metadata, { topic: 'colours' });

    const first = await client.responses.create({
      model: MODEL,
      input: 'one',
      conversation: conversation.id,
    });
    assert.equal(first.conversation?.id, conversation.id);
    assert.equal(first.output_text, 'echo(2): one');
    assert.deepEqual(roleTexts(await stack.lastChatMessages()),
                     [['user', 'my colour is blue'], ['user', 'one']]);

    const second = await client.responses.create({
      model: MODEL,
      input: 'two',
      conversation: { id: conversation.id },
    });
    assert.equal(second.output_text, 'echo(4): two');
    assert.deepEqual(roleTexts(await stack.lastChatMessages()), [
      ['user', 'my colour is blue'],
      ['user', 'one'],
      ['assistant', 'echo(2): one'],
      ['user', 'two'],
    ]);

    const items = await collect(client.conversations.items.list(conversation.id, { order: 'asc' }));
    assert.deepEqual(items.map(itemSummary), [
      ['message', 'user', 'my colour is blue'],
      ['message', 'user', 'one'],
      ['message', 'assistant', 'echo(2): one'],
      ['message', 'user', 'two'],
      ['message', 'assistant', 'echo(4): two'],
    ]);
    assert.equal(items[2].id, first.output[0].id);
    assert.equal(items[4].id, second.output[0].id);

    const descending = await collect(
      client.conversations.items.list(conversation.id, { order: 'desc' }));
    assert.deepEqual(descending.map((item) => item.id), items.map((item) => item.id).reverse());

    // Two items per page: the SDK follows last_id through has_more.
    const paged = await collect(
      client.conversations.items.list(conversation.id, { order: 'asc', limit: 2 }));
    assert.deepEqual(paged.map((item) => item.id), items.map((item) => item.id));
  });

  test('a function tool round trip', async () => {
    const call = await client.responses.create({
      model: MODEL,
      input: 'TOOL:get_weather {"city":"Paris"}',
      tools: [WEATHER_TOOL],
    });
    assert.equal(call.status, 'completed');
    const calls = call.output.filter((item) => item.type === 'function_call');
    assert.equal(calls.length, 1, JSON.stringify(call.output));
    assert.equal(calls[0].name, 'get_weather');
    assert.deepEqual(JSON.parse(calls[0].arguments), { city: 'Paris' });
    assert.match(calls[0].call_id, /^call_/);
    assert.match(calls[0].id, /^fc_/);
    assert.equal(call.output_text, '');

    // The tool went upstream in the Chat Completions shape.
    const upstreamCall = await stack.lastChatBody();
    assert.equal(upstreamCall.tools.length, 1);
    assert.equal(upstreamCall.tools[0].type, 'function');
    assert.equal(upstreamCall.tools[0].function.name, 'get_weather');
    assert.deepEqual(upstreamCall.tools[0].function.parameters, WEATHER_TOOL.parameters);

    const answer = await client.responses.create({
      model: MODEL,
      previous_response_id: call.id,
      input: [{ type: 'function_call_output', call_id: calls[0].call_id, output: 'sunny, 21 C' }],
      tools: [WEATHER_TOOL],
    });
    assert.equal(answer.status, 'completed');
    assert.equal(answer.output_text, 'tool result: sunny, 21 C');

    const messages = await stack.lastChatMessages();
    assert.equal(messages.length, 3, JSON.stringify(messages));
    assert.deepEqual([messages[0].role, messageText(messages[0])],
                     ['user', 'TOOL:get_weather {"city":"Paris"}']);
    assert.equal(messages[1].role, 'assistant');
    assert.equal(messages[1].tool_calls.length, 1);
    assert.equal(messages[1].tool_calls[0].id, calls[0].call_id);
    assert.equal(messages[1].tool_calls[0].function.name, 'get_weather');
    assert.deepEqual(JSON.parse(messages[1].tool_calls[0].function.arguments), { city: 'Paris' });
    assert.equal(messages[2].role, 'tool');
    assert.equal(messages[2].tool_call_id, calls[0].call_id);
    assert.equal(messageText(messages[2]), 'sunny, 21 C');

    const inputItems = await collect(client.responses.inputItems.list(answer.id, { order: 'asc' }));
    assert.deepEqual(inputItems.map(itemSummary),
                     [['function_call_output', calls[0].call_id, 'sunny, 21 C']]);
  });

  test('a streamed function call', async () => {
    const stream = client.responses.stream({
      model: MODEL,
      input: 'TOOL:get_weather {"city":"Rome"}',
      tools: [WEATHER_TOOL],
    });
    const deltas = [];
    stream.on('response.function_call_arguments.delta', (event) => deltas.push(event.delta));
    const final = await stream.finalResponse();
    assert.equal(final.status, 'completed');
    const calls = final.output.filter((item) => item.type === 'function_call');
    assert.equal(calls.length, 1, JSON.stringify(final.output));
    assert.equal(calls[0].name, 'get_weather');
    assert.deepEqual(JSON.parse(calls[0].arguments), { city: 'Rome' });
    assert.ok(deltas.length >= 2, `${deltas.length} argument deltas`);
    assert.equal(deltas.join(''), calls[0].arguments);

    const answer = await client.responses.create({
      model: MODEL,
      previous_response_id: final.id,
      input: [{ type: 'function_call_output', call_id: calls[0].call_id, output: 'rain' }],
      tools: [WEATHER_TOOL],
    });
    assert.equal(answer.output_text, 'tool result: rain');
  });
});
