// The wire codec: what one peer encodes another must decode identically, whatever the chunking,
// and anything malformed, off-schema or oversized must surface as one of our two typed errors so
// the stream handlers can answer or drop it (never hang, never crash on a zod/lp error).
import { describe, expect, it } from 'vitest'
import {
  type Capabilities,
  CapabilitiesSchema,
  type ClusterEvent,
  ClusterEventSchema,
  type DeploymentEvent,
  DeploymentEventSchema,
  decodeFrames,
  decodeGossip,
  encodeFrame,
  encodeGossip,
  type Heartbeat,
  HeartbeatSchema,
  type InferenceRequestFrame,
  InferenceRequestFrameSchema,
  type InferenceResponseFrame,
  InferenceResponseFrameSchema,
  InvalidMessageError,
  MAX_FRAME_BYTES,
  MAX_GOSSIP_BYTES,
  MessageTooLargeError,
} from '../../protocols/index.ts'

const enc = new TextEncoder()

const request: InferenceRequestFrame = {
  type: 'request',
  id: 'req-1',
  model: 'tiny/llama@q8_0',
  messages: [
    { role: 'system', content: 'be brief' },
    // Multi-byte UTF-8 so that byte-wise splitting cuts inside characters.
    { role: 'user', content: 'héllo wörld — 你好 🚀' },
  ],
  sampling: { maxTokens: 16, temperature: 0.7, topP: 0.9, stop: ['\n\n'], seed: 42 },
}
const delta: InferenceResponseFrame = { type: 'delta', text: 'Bonjour 🚀', tokens: 2 }
const done: InferenceResponseFrame = {
  type: 'done',
  finishReason: 'stop',
  usage: { promptTokens: 12, completionTokens: 3 },
  receipt: {
    v: 1,
    requestId: 'req-1',
    model: 'tiny',
    modelSha256: '',
    promptTokens: 12,
    completionTokens: 3,
    gateway: '12D3KooWGateway',
    node: '12D3KooWNode',
    issuedAt: 1,
    signature: 'c2ln',
  },
}
const error: InferenceResponseFrame = { type: 'error', code: 'busy', message: 'node busy' }
const responses = [delta, done, error]

/** A length prefix followed by raw (unchecked) body bytes, as a misbehaving peer would send. */
function rawFrame(body: string | Uint8Array): Uint8Array {
  const bytes = typeof body === 'string' ? enc.encode(body) : body
  return concat([varint(bytes.byteLength), bytes])
}

function varint(n: number): Uint8Array {
  const out: number[] = []
  let v = n
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80)
    v = Math.floor(v / 0x80)
  }
  out.push(v)
  return Uint8Array.from(out)
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.byteLength
  }
  return out
}

async function* chunks(...parts: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) {
    // A macrotask between chunks, as on a socket, so the decoder really resumes mid-frame.
    await new Promise((r) => setImmediate(r))
    yield p
  }
}

async function collect<T>(gen: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const v of gen) out.push(v)
  return out
}

describe('inference frames', () => {
  it('round-trips a request frame', async () => {
    const bytes = encodeFrame(InferenceRequestFrameSchema, request)
    expect(await collect(decodeFrames(chunks(bytes), InferenceRequestFrameSchema))).toEqual([request])
  })

  it.each(responses.map((f) => [f.type, f] as const))('round-trips a %s frame', async (_type, frame) => {
    const bytes = encodeFrame(InferenceResponseFrameSchema, frame)
    expect(await collect(decodeFrames(chunks(bytes), InferenceResponseFrameSchema))).toEqual([frame])
  })

  it('decodes frames split at every byte boundary', async () => {
    const all = concat(responses.map((f) => encodeFrame(InferenceResponseFrameSchema, f)))
    const singleBytes = Array.from(all, (b) => Uint8Array.of(b))
    expect(await collect(decodeFrames(chunks(...singleBytes), InferenceResponseFrameSchema))).toEqual(responses)

    // Every two-piece split too: catches a decoder that only works when a cut falls on a frame edge.
    const req = encodeFrame(InferenceRequestFrameSchema, request)
    for (let cut = 1; cut < req.byteLength; cut++) {
      const got = await collect(
        decodeFrames(chunks(req.subarray(0, cut), req.subarray(cut)), InferenceRequestFrameSchema),
      )
      expect(got, `cut at ${cut}`).toEqual([request])
    }
  })

  it('decodes several frames arriving in one chunk, in order', async () => {
    const frames = [delta, { type: 'delta', text: '', tokens: 0 } as const, delta, done]
    const oneChunk = concat(frames.map((f) => encodeFrame(InferenceResponseFrameSchema, f)))
    expect(await collect(decodeFrames(chunks(oneChunk), InferenceResponseFrameSchema))).toEqual(frames)
  })

  it('yields the valid frames before the bad one, then throws InvalidMessageError', async () => {
    const got: unknown[] = []
    const bytes = concat([encodeFrame(InferenceResponseFrameSchema, delta), rawFrame('{not json')])
    await expect(async () => {
      for await (const f of decodeFrames(chunks(bytes), InferenceResponseFrameSchema)) got.push(f)
    }).rejects.toBeInstanceOf(InvalidMessageError)
    expect(got).toEqual([delta])
  })

  it.each([
    ['not JSON', rawFrame('{"type":"delta",')],
    ['invalid UTF-8', rawFrame(Uint8Array.of(0x22, 0xff, 0xfe, 0x22))],
    ['an empty frame', rawFrame('')],
  ])('rejects %s with InvalidMessageError', async (_what, bytes) => {
    await expect(collect(decodeFrames(chunks(bytes), InferenceResponseFrameSchema))).rejects.toBeInstanceOf(
      InvalidMessageError,
    )
  })

  it.each([
    ['temperature above 2', { ...request, sampling: { temperature: 3 } }, InferenceRequestFrameSchema],
    ['no messages', { ...request, messages: [] }, InferenceRequestFrameSchema],
    ['a bad model id', { ...request, model: 'a model with spaces' }, InferenceRequestFrameSchema],
    ['an unknown role', { ...request, messages: [{ role: 'tool', content: 'x' }] }, InferenceRequestFrameSchema],
    ['an unknown frame type', { type: 'progress', percent: 50 }, InferenceResponseFrameSchema],
    ['done without usage', { type: 'done', finishReason: 'stop' }, InferenceResponseFrameSchema],
    ['an unknown finish reason', { ...done, finishReason: 'timeout' }, InferenceResponseFrameSchema],
    ['negative tokens', { type: 'delta', text: 'x', tokens: -1 }, InferenceResponseFrameSchema],
    ['an unknown error code', { type: 'error', code: 'teapot', message: '' }, InferenceResponseFrameSchema],
  ] as const)('rejects a frame with %s (off-schema) with InvalidMessageError', async (_what, value, schema) => {
    const bytes = rawFrame(JSON.stringify(value))
    const err = await collect(decodeFrames(chunks(bytes), schema as typeof InferenceResponseFrameSchema)).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(InvalidMessageError)
    // encodeFrame checks the same schema, so our own peers cannot produce it either.
    expect(() => encodeFrame(schema as typeof InferenceResponseFrameSchema, value as never)).toThrow()
  })

  it('encodeFrame refuses a frame over the limit with MessageTooLargeError', () => {
    const huge: InferenceResponseFrame = { type: 'delta', text: 'x'.repeat(MAX_FRAME_BYTES), tokens: 1 }
    expect(() => encodeFrame(InferenceResponseFrameSchema, huge)).toThrow(MessageTooLargeError)
  })

  it('the limit is inclusive on both sides (a custom maxBytes)', async () => {
    const frame: InferenceResponseFrame = { type: 'delta', text: 'abcdef', tokens: 1 }
    const size = enc.encode(JSON.stringify(frame)).byteLength
    const bytes = encodeFrame(InferenceResponseFrameSchema, frame, size)
    expect(await collect(decodeFrames(chunks(bytes), InferenceResponseFrameSchema, size))).toEqual([frame])
    expect(() => encodeFrame(InferenceResponseFrameSchema, frame, size - 1)).toThrow(MessageTooLargeError)
    await expect(collect(decodeFrames(chunks(bytes), InferenceResponseFrameSchema, size - 1))).rejects.toBeInstanceOf(
      MessageTooLargeError,
    )
  })

  it('decodeFrames throws MessageTooLargeError from the length prefix alone, before any body arrives', async () => {
    let bodyRequested = false
    // The source hands out the prefix and then never produces another byte: a decoder that waited
    // for the body would hang here.
    async function* prefixThenSilence(): AsyncGenerator<Uint8Array> {
      yield varint(MAX_FRAME_BYTES + 1)
      bodyRequested = true
      await new Promise(() => undefined)
    }
    const outcome = await Promise.race([
      collect(decodeFrames(prefixThenSilence(), InferenceRequestFrameSchema)).then(
        () => 'resolved',
        (e: unknown) => e,
      ),
      new Promise((r) => setTimeout(() => r('hung'), 1000)),
    ])
    expect(outcome).toBeInstanceOf(MessageTooLargeError)
    expect(bodyRequested).toBe(false)
  })

  it('a runaway varint length is MessageTooLargeError too', async () => {
    const endless = new Uint8Array(12).fill(0xff)
    await expect(collect(decodeFrames(chunks(endless), InferenceRequestFrameSchema))).rejects.toBeInstanceOf(
      MessageTooLargeError,
    )
  })

  it('a stream ending inside a frame body or length prefix is InvalidMessageError', async () => {
    const whole = encodeFrame(InferenceResponseFrameSchema, done)
    for (const cut of [2, 5, whole.byteLength - 1]) {
      await expect(
        collect(decodeFrames(chunks(whole.subarray(0, cut)), InferenceResponseFrameSchema)),
        `cut at ${cut}`,
      ).rejects.toBeInstanceOf(InvalidMessageError)
    }
    // A complete frame then a dangling partial length prefix: still an error, not a silent end.
    const partialPrefix = varint(300).subarray(0, 1)
    await expect(
      collect(decodeFrames(chunks(whole, partialPrefix), InferenceResponseFrameSchema)),
    ).rejects.toBeInstanceOf(InvalidMessageError)
  })

  // Known bug (protocols/codec.ts:62): it-length-prefixed consumes the prefix before it has the body,
  // so a stream that ends right after a whole length prefix leaves its buffer empty and ends
  // silently; decodeFrames reports "no frames" instead of a truncated one.
  it('a stream ending right after a complete length prefix (no body byte) is InvalidMessageError', async () => {
    const whole = encodeFrame(InferenceResponseFrameSchema, delta)
    expect(whole[0]).toBeLessThan(0x80) // a one-byte prefix: the cut below is exactly after it
    await expect(
      collect(decodeFrames(chunks(whole.subarray(0, 1)), InferenceResponseFrameSchema)),
    ).rejects.toBeInstanceOf(InvalidMessageError)
    await expect(
      collect(
        decodeFrames(
          chunks(encodeFrame(InferenceResponseFrameSchema, delta), whole.subarray(0, 1)),
          InferenceResponseFrameSchema,
        ),
      ),
    ).rejects.toBeInstanceOf(InvalidMessageError)
  })

  it('an empty stream yields nothing and does not throw', async () => {
    expect(await collect(decodeFrames(chunks(), InferenceResponseFrameSchema))).toEqual([])
  })
})

const PEER = '12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf'

function heartbeat(over: Partial<Heartbeat> = {}): Heartbeat {
  return {
    v: 1,
    peerId: PEER,
    incarnation: 3,
    seq: 17,
    sentAt: 1_700_000_000_000,
    intervalMs: 2000,
    state: 'serving',
    load: { active: 1, queued: 0, slots: 4, maxQueue: 32 },
    capabilitiesVersion: 2,
    models: ['tiny', 'llama-3.2-1b:q8_0'],
    ...over,
  }
}

function capabilities(over: Partial<Capabilities> = {}): Capabilities {
  return {
    v: 1,
    peerId: PEER,
    incarnation: 3,
    version: 2,
    models: [
      {
        id: 'tiny',
        name: 'Tiny',
        sha256: 'a'.repeat(64),
        contextSize: 512,
        quantization: 'q8_0',
        state: 'ready',
        tasks: ['chat', 'completion'],
      },
    ],
    hardware: { cpu: { model: 'x86', cores: 2 }, ramBytes: 24 * 2 ** 30, gpus: [] },
    prices: [{ model: 'tiny', inputPerMillion: '100', outputPerMillion: '250' }],
    payoutAddress: '0x000000000000000000000000000000000000dEaD',
    software: { name: 'cluster', version: '0.1.0' },
    ...over,
  }
}

const deployment: DeploymentEvent = {
  v: 1,
  type: 'model:deployed',
  peerId: PEER,
  incarnation: 3,
  model: { id: 'tiny', cid: 'bafkreigh2akiscaildc' },
  at: 1_700_000_000_000,
}

const clusterEvent: ClusterEvent = {
  v: 1,
  type: 'inference:complete',
  requestId: 'req-1',
  model: 'tiny',
  nodePeerId: PEER,
  usage: { promptTokens: 10, completionTokens: 5 },
  finishReason: 'length',
  ttftMs: 12,
  durationMs: 340,
  at: 1_700_000_000_000,
}

describe('gossip payloads', () => {
  it.each([
    ['heartbeat', HeartbeatSchema, heartbeat()],
    ['leaving heartbeat', HeartbeatSchema, heartbeat({ state: 'leaving', models: [] })],
    ['capabilities', CapabilitiesSchema, capabilities()],
    ['capabilities without payout', CapabilitiesSchema, capabilities({ payoutAddress: '' })],
    ['deployment', DeploymentEventSchema, deployment],
    ['cluster event', ClusterEventSchema, clusterEvent],
  ] as const)('round-trips a %s', (_what, schema, value) => {
    const s = schema as typeof HeartbeatSchema
    const bytes = encodeGossip(s, value as Heartbeat)
    expect(bytes).toBeInstanceOf(Uint8Array)
    expect(decodeGossip(s, bytes)).toEqual(value)
  })

  it('refuses to encode a payload over MAX_GOSSIP_BYTES', () => {
    // 256 model ids of 256 characters each (the schema's own bounds) exceed 64 KiB once encoded.
    const models = Array.from({ length: 256 }, (_, i) => `${i}`.padStart(256, 'm'))
    expect(() => encodeGossip(HeartbeatSchema, heartbeat({ models }))).toThrow(MessageTooLargeError)
  })

  it('refuses to decode a payload over MAX_GOSSIP_BYTES, even one that is otherwise valid', () => {
    const valid = JSON.stringify(heartbeat())
    // JSON whitespace padding keeps it parseable: only the size can be the reason.
    const padded = enc.encode(valid + ' '.repeat(MAX_GOSSIP_BYTES + 1 - valid.length))
    expect(padded.byteLength).toBe(MAX_GOSSIP_BYTES + 1)
    expect(() => decodeGossip(HeartbeatSchema, padded)).toThrow(MessageTooLargeError)
    // One byte less and the same payload decodes: the bound is exactly MAX_GOSSIP_BYTES.
    expect(decodeGossip(HeartbeatSchema, padded.subarray(0, MAX_GOSSIP_BYTES))).toEqual(heartbeat())
  })

  it.each([
    ['not JSON', 'hello'],
    ['invalid UTF-8', Uint8Array.of(0x7b, 0xff, 0x7d)],
    ['JSON of the wrong shape', '[1,2,3]'],
    ['a heartbeat for another topic', JSON.stringify(deployment)],
  ])('rejects %s with InvalidMessageError', (_what, body) => {
    const bytes = typeof body === 'string' ? enc.encode(body) : body
    expect(() => decodeGossip(HeartbeatSchema, bytes)).toThrow(InvalidMessageError)
  })
})

describe('HeartbeatSchema', () => {
  it('accepts the boundary intervals', () => {
    expect(HeartbeatSchema.safeParse(heartbeat({ intervalMs: 50 })).success).toBe(true)
    expect(HeartbeatSchema.safeParse(heartbeat({ intervalMs: 60_000 })).success).toBe(true)
  })

  it.each([
    ['an interval below 50 ms', { intervalMs: 49 }],
    ['an interval above 60 s', { intervalMs: 60_001 }],
    ['a fractional interval', { intervalMs: 1000.5 }],
    ['a negative seq', { seq: -1 }],
    ['a fractional incarnation', { incarnation: 1.5 }],
    ['a negative capabilities version', { capabilitiesVersion: -1 }],
    ['a negative load count', { load: { active: -1, queued: 0, slots: 1, maxQueue: 1 } }],
    ['a load without maxQueue', { load: { active: 0, queued: 0, slots: 1 } as Heartbeat['load'] }],
    ['an unknown state', { state: 'paused' as Heartbeat['state'] }],
    ['an empty peer id', { peerId: '' }],
    ['an over-long peer id', { peerId: 'p'.repeat(129) }],
    ['version 2', { v: 2 as 1 }],
    ['a model id with spaces', { models: ['bad model'] }],
    ['more than 256 models', { models: Array.from({ length: 257 }, (_, i) => `m${i}`) }],
  ] as const)('rejects %s', (_what, over) => {
    expect(HeartbeatSchema.safeParse(heartbeat(over as unknown as Partial<Heartbeat>)).success).toBe(false)
    expect(() =>
      decodeGossip(HeartbeatSchema, enc.encode(JSON.stringify(heartbeat(over as unknown as Partial<Heartbeat>)))),
    ).toThrow(InvalidMessageError)
  })
})

describe('CapabilitiesSchema', () => {
  it.each([
    ['too short', '0x1234'],
    ['without 0x', '000000000000000000000000000000000000dEaD'.padStart(42, '0')],
    ['with a non-hex digit', `0x${'g'.repeat(40)}`],
    ['too long', `0x${'a'.repeat(41)}`],
    ['a name', 'alice.eth'],
  ])('rejects a payout address %s', (_what, payoutAddress) => {
    expect(CapabilitiesSchema.safeParse(capabilities({ payoutAddress })).success).toBe(false)
  })

  it('accepts a checksummed, a lowercase and an empty payout address', () => {
    for (const payoutAddress of ['0x000000000000000000000000000000000000dEaD', `0x${'ab'.repeat(20)}`, '']) {
      expect(CapabilitiesSchema.safeParse(capabilities({ payoutAddress })).success, payoutAddress).toBe(true)
    }
  })

  it.each([
    [
      'a price that is not an integer string',
      { prices: [{ model: 'tiny', inputPerMillion: '1.5', outputPerMillion: '1' }] },
    ],
    ['a bad sha256', { models: [{ ...capabilities().models[0]!, sha256: 'ABC' }] }],
    ['an unknown model state', { models: [{ ...capabilities().models[0]!, state: 'dead' }] }],
  ] as const)('rejects %s', (_what, over) => {
    expect(CapabilitiesSchema.safeParse(capabilities(over as unknown as Partial<Capabilities>)).success).toBe(false)
  })
})
