// The hand-written delta check must accept exactly what DeltaFrameSchema accepts and return what it
// returns: compared on valid frames, their mutations and random JSON values (seeded), and through
// decodeFrames with the response union, where a frame it does not take must still get zod's answer.
import { describe, expect, it } from 'vitest'
import {
  checkDeltaFrame,
  DeltaFrameSchema,
  decodeFrames,
  encodeOwnFrame,
  InferenceResponseFrameSchema,
  InvalidMessageError,
  MAX_FRAME_BYTES,
} from '../../protocols/index.ts'
import { rng } from '../helpers/fixtures.ts'

const random = rng(20261122)
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T

/** Numbers around every bound of `count`, and ones JSON cannot carry (the check sees them anyway). */
const numbers = [
  0,
  -0,
  1,
  7,
  -1,
  0.5,
  1.0000001,
  Number.MAX_SAFE_INTEGER,
  Number.MAX_SAFE_INTEGER + 1,
  Number.MAX_SAFE_INTEGER + 2,
  2 ** 60,
  1e21,
  -1e21,
  Number.MIN_SAFE_INTEGER,
  Number.EPSILON,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
]
const strings = ['', 'delta', 'Delta', 'delta ', 'done', ' haiku', '\u0000', '🙂', 'x'.repeat(3000)]

function randomValue(depth = 0): unknown {
  switch (Math.floor(random() * (depth > 2 ? 5 : 7))) {
    case 0:
      return pick(numbers)
    case 1:
      return pick(strings)
    case 2:
      return pick([null, true, false, undefined])
    case 3:
      return Math.floor(random() * 1000) - 100
    case 4:
      return random() * 100
    case 5:
      return Array.from({ length: Math.floor(random() * 3) }, () => randomValue(depth + 1))
    default: {
      const o: Record<string, unknown> = {}
      for (let i = Math.floor(random() * 4); i > 0; i--) {
        o[pick(['type', 'text', 'tokens', 'promptTokens', 'extra', '__proto__', 'code'])] = randomValue(depth + 1)
      }
      return o
    }
  }
}

function validDelta(): Record<string, unknown> {
  const d: Record<string, unknown> = {
    type: 'delta',
    text: pick(strings),
    tokens: Math.floor(random() * 5),
  }
  if (random() < 0.5) d.promptTokens = Math.floor(random() * 5000)
  return d
}

/** One change to a valid frame: a field replaced, removed or added. */
function mutate(frame: Record<string, unknown>): unknown {
  const f = { ...frame }
  const key = pick(['type', 'text', 'tokens', 'promptTokens', 'extra', 'whole'])
  const r = random()
  if (key === 'whole') return pick([null, [], [f], 'delta', 0, JSON.stringify(f)])
  if (r < 0.25) delete f[key]
  else if (r < 0.5) f[key] = pick(numbers)
  else if (r < 0.7) f[key] = pick(strings)
  else f[key] = randomValue(1)
  return f
}

function expectSameAsZod(value: unknown): void {
  const zod = DeltaFrameSchema.safeParse(value)
  const fast = checkDeltaFrame(value)
  expect(fast !== undefined, JSON.stringify(value)).toBe(zod.success)
  if (zod.success) {
    expect(fast).toStrictEqual(zod.data)
    expect(Object.keys(fast as object)).toEqual(Object.keys(zod.data))
  }
}

describe('checkDeltaFrame ≡ DeltaFrameSchema', () => {
  it('on valid frames, with extra keys dropped', () => {
    for (let i = 0; i < 2000; i++) {
      const d = validDelta()
      expectSameAsZod(d)
      expectSameAsZod({ ...d, extra: randomValue() })
    }
  })

  it('on every bound of the counts', () => {
    for (const n of numbers) {
      expectSameAsZod({ type: 'delta', text: '', tokens: n })
      expectSameAsZod({ type: 'delta', text: '', tokens: 1, promptTokens: n })
    }
    expectSameAsZod({ type: 'delta', text: '', tokens: 1, promptTokens: undefined })
  })

  it('on mutated frames', () => {
    let accepted = 0
    for (let i = 0; i < 20_000; i++) {
      const m = mutate(validDelta())
      expectSameAsZod(m)
      if (DeltaFrameSchema.safeParse(m).success) accepted++
    }
    // Both outcomes were exercised.
    expect(accepted).toBeGreaterThan(1000)
    expect(accepted).toBeLessThan(19_000)
  })

  it('on random values and their JSON round trip', () => {
    for (let i = 0; i < 20_000; i++) {
      const v = randomValue()
      expectSameAsZod(v)
      const json = JSON.stringify(v)
      if (json !== undefined) expectSameAsZod(JSON.parse(json))
    }
  })
})

describe('decodeFrames with the delta check', () => {
  async function decode(values: unknown[]): Promise<unknown[]> {
    const bytes = values.map((v) => encodeOwnFrame(v))
    const out: unknown[] = []
    for await (const f of decodeFrames(bytes, InferenceResponseFrameSchema, MAX_FRAME_BYTES, checkDeltaFrame)) {
      out.push(f)
    }
    return out
  }

  it('gives what zod gives for every frame of the union', async () => {
    const frames = [
      { type: 'delta', text: 'a', tokens: 1, promptTokens: 3, extra: true },
      { type: 'error', code: 'busy', message: 'no slot' },
      { type: 'delta', text: 'b', tokens: 1 },
    ]
    expect(await decode(frames)).toStrictEqual(frames.map((f) => InferenceResponseFrameSchema.parse(f)))
  })

  it('a delta it refuses is refused with the schema message', async () => {
    const err = await decode([{ type: 'delta', text: 'a', tokens: -1 }]).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(InvalidMessageError)
    expect((err as Error).message).toMatch(/^schema mismatch at tokens/)
  })
})
