// Money is the one place dollars become integers: a parse that rounds, a format that drops a digit
// or a cost that rounds down would each silently mint or lose money. These pin the exact grammar,
// the exact output and the one rounding rule (up), including amounts far beyond a double's 2^53.
import { describe, expect, it } from 'vitest'
import {
  costOf,
  formatUsd,
  MoneyFormatError,
  parseUsd,
  TOKENS_PER_PRICE_UNIT,
  USDC_DECIMALS,
} from '../../src/payments/money.ts'
import { rng } from '../helpers/fixtures.ts'

/** A uniform-ish bigint in [0, max) from 32-bit chunks. */
function randomBigint(next: () => number, max: bigint): bigint {
  let v = 0n
  for (let i = 0; i < 3; i++) v = (v << 32n) | BigInt(Math.floor(next() * 2 ** 32))
  return v % max
}

/** Ceil division written differently from the code under test (quotient, then bump on remainder). */
function ceilDiv(n: bigint, d: bigint): bigint {
  const q = n / d
  return n % d === 0n ? q : q + 1n
}

describe('parseUsd', () => {
  it.each([
    ['0', 0n],
    ['5', 5_000_000n],
    ['5.00', 5_000_000n],
    ['5.5', 5_500_000n],
    ['0.000001', 1n],
    ['0.1', 100_000n],
    ['12.34', 12_340_000n],
    ['000.5', 500_000n],
    ['123456789012345.123456', 123_456_789_012_345_123_456n],
    ['999999999999999.999999', 999_999_999_999_999_999_999n],
  ])('parses %j exactly', (text, expected) => {
    expect(parseUsd(text)).toBe(expected)
  })

  it('keeps every digit of amounts far beyond Number.MAX_SAFE_INTEGER', () => {
    const v = parseUsd('123456789012345.123456')
    expect(v > BigInt(Number.MAX_SAFE_INTEGER)).toBe(true)
    expect(v.toString()).toBe('123456789012345123456')
  })

  it('tolerates surrounding whitespace (the input is trimmed)', () => {
    expect(parseUsd('  7.25\n')).toBe(7_250_000n)
  })

  it.each([
    '',
    ' ',
    '-1',
    '+1',
    '1e3',
    '1E3',
    '1,00',
    '1,000.00',
    '1.0000001', // 7 decimals: refused, not rounded
    'abc',
    '0x10',
    '١٢', // Arabic-Indic digits: \d without the u flag is ASCII only
    '１２', // fullwidth digits
    '1.', // a bare trailing point is refused
    '.5', // a bare leading point is refused
    '1.2.3',
    '1 000',
    'NaN',
    'Infinity',
    '1234567890123456', // 16 whole digits: beyond the 15 the grammar allows
  ])('refuses %j with MoneyFormatError', (text) => {
    expect(() => parseUsd(text)).toThrow(MoneyFormatError)
  })
})

describe('formatUsd', () => {
  it.each([
    [0n, '0.00'],
    [1_500_000n, '1.50'],
    [150n, '0.00015'],
    [1n, '0.000001'],
    [-3000n, '-0.003'],
    [12_340_000n, '12.34'],
    [-12_340_000n, '-12.34'],
    [5_000_000n, '5.00'],
    [123_456_789_012_345_123_456n, '123456789012345.123456'],
  ])('formats %s as %j', (amount, text) => {
    expect(formatUsd(amount)).toBe(text)
  })

  it('minDecimals 0 shows only the digits needed', () => {
    expect(formatUsd(0n, 0)).toBe('0')
    expect(formatUsd(5_000_000n, 0)).toBe('5')
    expect(formatUsd(1_500_000n, 0)).toBe('1.5')
    expect(formatUsd(1n, 0)).toBe('0.000001')
    expect(formatUsd(-2_000_000n, 0)).toBe('-2')
  })

  it('minDecimals 6 always shows all six', () => {
    expect(formatUsd(0n, 6)).toBe('0.000000')
    expect(formatUsd(1_500_000n, 6)).toBe('1.500000')
    expect(formatUsd(150n, 6)).toBe('0.000150')
    expect(formatUsd(-3000n, 6)).toBe('-0.003000')
  })
})

describe('round trip', () => {
  it.each([
    ['0', '0.00'],
    ['5', '5.00'],
    ['5.00', '5.00'],
    ['5.5', '5.50'],
    ['0.000001', '0.000001'],
    ['0.00015', '0.00015'],
    ['12.34', '12.34'],
    ['100.100100', '100.1001'],
    ['123456789012345.123456', '123456789012345.123456'],
  ])('formatUsd(parseUsd(%j)) is %j', (text, canonical) => {
    expect(formatUsd(parseUsd(text))).toBe(canonical)
    // and the canonical form is a fixed point
    expect(formatUsd(parseUsd(canonical))).toBe(canonical)
  })

  it('parseUsd(formatUsd(n)) === n for 5,000 seeded random amounts of every magnitude', () => {
    const next = rng(0xc0ffee)
    const max = 10n ** BigInt(15 + USDC_DECIMALS) // the largest amount the grammar can express, + 1
    let checked = 0
    for (let i = 0; i < 5_000; i++) {
      // Spread over magnitudes: 1 unit up to 10^21 units, so small and huge both appear.
      const digits = 1 + Math.floor(next() * 21)
      const n = randomBigint(next, 10n ** BigInt(digits)) % max
      for (const minDecimals of [0, 2, 6]) {
        const text = formatUsd(n, minDecimals)
        expect(parseUsd(text), `${n} via ${text}`).toBe(n)
        expect(formatUsd(parseUsd(text), minDecimals)).toBe(text)
      }
      checked++
    }
    expect(checked).toBe(5_000)
  })
})

describe('costOf', () => {
  const price = (inputPerMillion: bigint, outputPerMillion: bigint) => ({ inputPerMillion, outputPerMillion })

  it('rounds a fraction of a unit UP: 1 token at 1 unit per million costs 1 unit', () => {
    expect(costOf({ promptTokens: 1, completionTokens: 0 }, price(1n, 0n))).toBe(1n)
    expect(costOf({ promptTokens: 0, completionTokens: 1 }, price(0n, 1n))).toBe(1n)
    expect(costOf({ promptTokens: 999_999, completionTokens: 0 }, price(1n, 1n))).toBe(1n)
    expect(costOf({ promptTokens: 1_000_001, completionTokens: 0 }, price(1n, 1n))).toBe(2n)
  })

  it('0 tokens cost 0', () => {
    expect(costOf({ promptTokens: 0, completionTokens: 0 }, price(5_000_000n, 15_000_000n))).toBe(0n)
  })

  it('exact multiples of a million are not bumped', () => {
    expect(TOKENS_PER_PRICE_UNIT).toBe(1_000_000n)
    expect(costOf({ promptTokens: 1_000_000, completionTokens: 0 }, price(7n, 0n))).toBe(7n)
    expect(costOf({ promptTokens: 2_000_000, completionTokens: 3_000_000 }, price(3n, 5n))).toBe(21n)
    // 500k × 2 + 500k × 2 = 2,000,000 micro-units → exactly 2
    expect(costOf({ promptTokens: 500_000, completionTokens: 500_000 }, price(2n, 2n))).toBe(2n)
    // prompt and completion fractions are summed before rounding, not rounded separately
    expect(costOf({ promptTokens: 500_000, completionTokens: 500_000 }, price(1n, 1n))).toBe(1n)
  })

  it('huge token counts and prices lose no precision against a BigInt reference', () => {
    const tokens = Number.MAX_SAFE_INTEGER // 2^53 − 1
    const p = price(123_456_789n, 987_654_321n)
    const expected = ceilDiv(BigInt(tokens) * 123_456_789n + BigInt(tokens) * 987_654_321n, 1_000_000n)
    expect(costOf({ promptTokens: tokens, completionTokens: tokens }, p)).toBe(expected)
    // A float computation would be off here, so this cannot pass by accident.
    const viaFloat = BigInt(Math.ceil((tokens * 123_456_789 + tokens * 987_654_321) / 1_000_000))
    expect(viaFloat).not.toBe(expected)
  })

  it('matches the reference for 3,000 seeded random usages and prices', () => {
    const next = rng(42)
    for (let i = 0; i < 3_000; i++) {
      const promptTokens = Math.floor(next() * (i % 3 === 0 ? Number.MAX_SAFE_INTEGER : 200_000))
      const completionTokens = Math.floor(next() * (i % 5 === 0 ? 2 ** 40 : 50_000))
      const p = price(randomBigint(next, 100_000_000n), randomBigint(next, 100_000_000n))
      const micro = BigInt(promptTokens) * p.inputPerMillion + BigInt(completionTokens) * p.outputPerMillion
      const cost = costOf({ promptTokens, completionTokens }, p)
      expect(cost).toBe(ceilDiv(micro, 1_000_000n))
      // never charged less than used, and never a whole unit more
      expect(cost * 1_000_000n >= micro).toBe(true)
      expect((cost - 1n) * 1_000_000n < micro || cost === 0n).toBe(true)
    }
  })
})
