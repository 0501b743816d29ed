// The one formatter of request-body errors (gateway/errors.ts parseFields): "'<field>' is required."
// only for an absent field, else what a present one must be, with `param` naming it; the chat schema's
// OpenAI rules for message content and the wire's limits; 403 for a key that is not allowed.
import { describe, expect, it } from 'vitest'
import { z } from 'zod'
import { ApiError, forbidden, paramOf, parseFields } from '../../gateway/errors.ts'
import { MAX_CONTENT_CHARS, MAX_MESSAGES, parseChatRequest } from '../../gateway/openai.ts'
import { InferenceRequestFrameSchema } from '../../protocols/index.ts'

const refusal = (parse: () => unknown): { status: number; message: string; param: string | null } => {
  try {
    parse()
  } catch (err) {
    if (!(err instanceof ApiError)) throw err
    return { status: err.status, message: err.message, param: err.param }
  }
  throw new Error('accepted')
}

const base = { model: 'm', messages: [{ role: 'user', content: 'hi' }] }
const chat = (body: unknown) => refusal(() => parseChatRequest(body))

describe('parseFields', () => {
  const Schema = z.object({
    email: z.string().max(254).pipe(z.email('must be a valid email address')),
    count: z.number().int().min(1).max(4).nullish(),
    flag: z.boolean().optional(),
    kind: z.enum(['a', 'b']).optional(),
    items: z
      .array(z.object({ name: z.string() }))
      .max(2)
      .optional(),
  })
  const parse = (body: unknown) => refusal(() => parseFields(Schema, body))

  it('says "required" only for an absent field', () => {
    expect(parse({})).toEqual({ status: 400, message: "'email' is required.", param: 'email' })
    expect(parse({ email: 'a@b.co', items: [{}] })).toEqual({
      status: 400,
      message: "'items[0].name' is required.",
      param: 'items[0].name',
    })
  })

  it.each([
    [{ email: 5 }, "'email' must be a string.", 'email'],
    [{ email: null }, "'email' must be a string.", 'email'],
    [{ email: 'nope' }, "'email' must be a valid email address.", 'email'],
    [{ email: 'a@b.co', count: 2.5 }, "'count' must be an integer between 1 and 4.", 'count'],
    [{ email: 'a@b.co', count: 'two' }, "'count' must be an integer between 1 and 4.", 'count'],
    [{ email: 'a@b.co', count: 9 }, "'count' must be an integer between 1 and 4.", 'count'],
    [{ email: 'a@b.co', flag: 'yes' }, "'flag' must be true or false.", 'flag'],
    [{ email: 'a@b.co', kind: 'c' }, '\'kind\' must be one of "a", "b".', 'kind'],
    [{ email: 'a@b.co', items: 'x' }, "'items' must be an array.", 'items'],
    [{ email: 'a@b.co', items: [{ name: 1 }] }, "'items[0].name' must be a string.", 'items[0].name'],
    [
      { email: 'a@b.co', items: [{ name: 'a' }, { name: 'b' }, { name: 'c' }] },
      "'items' must have at most 2 items.",
      'items',
    ],
  ])('a present field of the wrong type or value: %j → %s', (body, message, param) => {
    expect(parse(body)).toEqual({ status: 400, message, param })
  })

  it('a body that is not an object', () => {
    for (const body of [null, [], 'x', 5]) {
      expect(parse(body)).toEqual({ status: 400, message: 'The request body must be a JSON object.', param: null })
    }
  })

  it('names paths as OpenAI does', () => {
    expect(paramOf(['messages', 0, 'content'])).toBe('messages[0].content')
    expect(paramOf(['documents', 3])).toBe('documents[3]')
    expect(paramOf([])).toBe('')
  })
})

describe('chat request schema', () => {
  it.each([
    [{ temperature: 'hot' }, "'temperature' must be a number between 0 and 2.", 'temperature'],
    [{ temperature: 3 }, "'temperature' must be a number between 0 and 2.", 'temperature'],
    [{ max_tokens: 2.5 }, "'max_tokens' must be an integer between 1 and 1000000.", 'max_tokens'],
    [{ stream: 'yes' }, "'stream' must be true or false.", 'stream'],
    [{ seed: 'x' }, "'seed' must be an integer between 0 and 4294967295.", 'seed'],
    [{ model: 5 }, "'model' must be a string.", 'model'],
    [{ provider: null }, "'provider' must be a string.", 'provider'],
    [{ messages: 'hi' }, "'messages' must be an array.", 'messages'],
    [{ n: 2 }, "'n' must be 1 (only one choice is supported).", 'n'],
  ])('%j → %s', (extra, message, param) => {
    expect(chat({ ...base, ...extra })).toEqual({ status: 400, message, param })
  })

  it('absent model or messages are "required"', () => {
    expect(chat({ messages: base.messages }).message).toBe("'model' is required.")
    expect(chat({ model: 'm' }).message).toBe("'messages' is required.")
  })

  it('content is required on system, user and tool messages; an assistant may omit it only with tool_calls', () => {
    for (const role of ['system', 'developer', 'user']) {
      expect(chat({ model: 'm', messages: [{ role }] })).toEqual({
        status: 400,
        message: "'messages[0].content' is required.",
        param: 'messages[0].content',
      })
      const nulled = chat({ model: 'm', messages: [{ role, content: null }] })
      expect(nulled.param).toBe('messages[0].content')
      expect(nulled.message).toMatch(/^'messages\[0\]\.content' must be a string or an array of content parts/)
    }
    expect(chat({ model: 'm', messages: [{ role: 'tool', tool_call_id: 'c1' }] }).param).toBe('messages[0].content')
    expect(chat({ model: 'm', messages: [{ role: 'tool', content: 'x' }] })).toEqual({
      status: 400,
      message: "'messages[0].tool_call_id' is required on a tool message.",
      param: 'messages[0].tool_call_id',
    })
    for (const assistant of [{ role: 'assistant' }, { role: 'assistant', content: null, tool_calls: [] }]) {
      expect(chat({ model: 'm', messages: [{ role: 'user', content: 'x' }, assistant] })).toEqual({
        status: 400,
        message: "'messages[1].content' is required unless the message has tool_calls.",
        param: 'messages[1].content',
      })
    }
    const call = { id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }
    for (const assistant of [
      { role: 'assistant', content: null, tool_calls: [call] },
      { role: 'assistant', tool_calls: [call] },
    ]) {
      const messages = [{ role: 'user', content: 'x' }, assistant, { role: 'tool', tool_call_id: 'c1', content: 'y' }]
      expect(parseChatRequest({ model: 'm', messages }).messages).toHaveLength(3)
    }
  })

  it('a text part needs its text; other kinds of part pass as they are', () => {
    const content = (parts: unknown[]) => chat({ model: 'm', messages: [{ role: 'user', content: parts }] })
    expect(content([{ type: 'text' }])).toEqual({
      status: 400,
      message: "'messages[0].content[0].text' is required.",
      param: 'messages[0].content[0].text',
    })
    expect(
      content([
        { type: 'text', text: 'a' },
        { type: 'text', text: 5 },
      ]),
    ).toEqual({
      status: 400,
      message: "'messages[0].content[1].text' must be a string.",
      param: 'messages[0].content[1].text',
    })
    const parts = [
      { type: 'text', text: 'What is here?' },
      { type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } },
    ]
    expect(parseChatRequest({ model: 'm', messages: [{ role: 'user', content: parts }] }).messages[0]?.content).toEqual(
      parts,
    )
  })

  it('the wire limits are said by field name, at exactly the wire bounds', () => {
    const frame = (messages: Array<{ role: 'user'; content: string }>) =>
      InferenceRequestFrameSchema.safeParse({ type: 'request', id: 'r', model: 'm', messages, sampling: {} }).success
    const atLimit = 'x'.repeat(MAX_CONTENT_CHARS)
    expect(frame([{ role: 'user', content: atLimit }])).toBe(true)
    expect(frame([{ role: 'user', content: `${atLimit}x` }])).toBe(false)
    expect(parseChatRequest({ model: 'm', messages: [{ role: 'user', content: atLimit }] }).messages).toHaveLength(1)
    expect(chat({ model: 'm', messages: [{ role: 'user', content: `${atLimit}x` }] })).toEqual({
      status: 400,
      message: `'messages[0].content' must be at most ${MAX_CONTENT_CHARS} characters long.`,
      param: 'messages[0].content',
    })
    // Text parts are joined on the wire: their total counts.
    const half = 'x'.repeat(MAX_CONTENT_CHARS / 2)
    const parts = [
      { type: 'text', text: half },
      { type: 'text', text: `${half}x` },
    ]
    expect(chat({ model: 'm', messages: [{ role: 'user', content: parts }] }).param).toBe('messages[0].content')

    const many = (n: number) => Array.from({ length: n }, () => ({ role: 'user' as const, content: 'x' }))
    expect(frame(many(MAX_MESSAGES))).toBe(true)
    expect(frame(many(MAX_MESSAGES + 1))).toBe(false)
    expect(parseChatRequest({ model: 'm', messages: many(MAX_MESSAGES) }).messages).toHaveLength(MAX_MESSAGES)
    expect(chat({ model: 'm', messages: many(MAX_MESSAGES + 1) })).toEqual({
      status: 400,
      message: `'messages' must contain at most ${MAX_MESSAGES} messages.`,
      param: 'messages',
    })
    expect(chat({ ...base, stop: 'x'.repeat(513) }).param).toBe('stop')
    expect(chat({ ...base, max_tokens: 1_000_001 }).param).toBe('max_tokens')
  })
})

describe('forbidden', () => {
  it('is a 403 FORBIDDEN (401 stays for a missing or invalid key)', () => {
    const err = forbidden('This needs an admin API key.')
    expect(err.status).toBe(403)
    expect(err.toDocs()).toEqual({ error: 'This needs an admin API key.', code: 'FORBIDDEN' })
    expect(err.toOpenAI().error).toMatchObject({ code: 'forbidden', param: null })
  })
})
