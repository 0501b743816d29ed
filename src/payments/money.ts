// Money: integer amounts in USDC's smallest unit (6 decimals) as bigint, and the one place that
// converts them to and from dollar strings and rounds a cost. Never a float.

export const USDC_DECIMALS = 6
const UNIT = 10n ** BigInt(USDC_DECIMALS)
/** Prices are quoted per this many tokens. */
export const TOKENS_PER_PRICE_UNIT = 1_000_000n

export class MoneyFormatError extends Error {
  override name = 'MoneyFormatError'
}

/**
 * Parses a non-negative dollar amount ("5", "5.00", "0.000001") into smallest units. Refuses
 * signs, exponents, separators and more than 6 decimals rather than rounding them away.
 */
export function parseUsd(text: string): bigint {
  const m = /^(\d{1,15})(?:\.(\d{1,6}))?$/.exec(text.trim())
  if (m == null) {
    throw new MoneyFormatError(`"${text.slice(0, 40)}" is not an amount in dollars (e.g. "5.00", at most 6 decimals)`)
  }
  const whole = BigInt(m[1] as string)
  const frac = BigInt((m[2] ?? '').padEnd(USDC_DECIMALS, '0'))
  return whole * UNIT + frac
}

/**
 * Formats smallest units as dollars with at least `minDecimals` (2, as the docs show "0.00") and
 * as many more as needed to be exact: 1_500_000n → "1.50", 150n → "0.00015", -3000n → "-0.003".
 */
export function formatUsd(amount: bigint, minDecimals = 2): string {
  const negative = amount < 0n
  const abs = negative ? -amount : amount
  const whole = abs / UNIT
  let frac = (abs % UNIT).toString().padStart(USDC_DECIMALS, '0').replace(/0+$/, '')
  if (frac.length < minDecimals) frac = frac.padEnd(minDecimals, '0')
  return `${negative ? '-' : ''}${whole}${frac.length > 0 ? `.${frac}` : ''}`
}

export interface TokenPrice {
  /** Smallest units per million prompt tokens. */
  inputPerMillion: bigint
  /** Smallest units per million completion tokens. */
  outputPerMillion: bigint
}

/**
 * The cost of a call: (input × input price + output × output price) per million tokens, rounded
 * UP to the smallest unit — the one rounding rule, so a call is never charged less than it used.
 */
export function costOf(usage: { promptTokens: number; completionTokens: number }, price: TokenPrice): bigint {
  const micro =
    BigInt(usage.promptTokens) * price.inputPerMillion + BigInt(usage.completionTokens) * price.outputPerMillion
  return (micro + TOKENS_PER_PRICE_UNIT - 1n) / TOKENS_PER_PRICE_UNIT
}

/** The smaller of two amounts (Math.min is for numbers only). */
export const minAmount = (a: bigint, b: bigint): bigint => (a < b ? a : b)
