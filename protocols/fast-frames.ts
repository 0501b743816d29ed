// Hand-written checks for the frames that arrive once per token, accepting exactly what their zod
// schema accepts and returning what it returns (unknown keys dropped). zod stays the definition:
// a value these do not accept goes to zod, which rejects it with its message (or accepts it, if a
// check here were ever stricter). test/protocols/fast-frames.test.ts compares both on random input.
import type { DeltaFrame } from './schemas.ts'

/** `count` in schemas.ts: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER). */
const isCount = (v: unknown): v is number =>
  typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= Number.MAX_SAFE_INTEGER

/** DeltaFrameSchema's output for `value`, or undefined when it is not a valid delta frame. */
export function checkDeltaFrame(value: unknown): DeltaFrame | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined
  const v = value as Record<string, unknown>
  const { type, text, tokens, promptTokens } = v
  if (type !== 'delta' || typeof text !== 'string' || !isCount(tokens)) return undefined
  if (promptTokens === undefined)
    return 'promptTokens' in v ? { type, text, tokens, promptTokens } : { type, text, tokens }
  if (!isCount(promptTokens)) return undefined
  return { type, text, tokens, promptTokens }
}
