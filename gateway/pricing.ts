// Prices: per-model token prices (what API-key calls are billed at) and the x402 per-request
// table from the docs. Configured in dollars, held as smallest units.
import { formatUsd, parseUsd, type TokenPrice } from '../src/payments/money.ts'

export interface PricingConfig {
  /** Dollars per million tokens for models without their own entry. @default 0.10 in, 0.20 out */
  default?: { input: string; output: string } | undefined
  /** Dollars per million tokens, per model id. */
  models?: Record<string, { input: string; output: string }> | undefined
  /** Dollars per x402 request, per endpoint path. @default the docs' table */
  x402?: Record<string, string> | undefined
  /** Dollars per unit of work that is not tokens, for API keys. @default the docs' x402 prices */
  units?: { [K in keyof UnitPrices<string>]?: string | undefined } | undefined
}

/** Prices of work that is not counted in tokens. */
export interface UnitPrices<T> {
  /** Per image generated. */
  image: T
  /** Per transcription request. */
  transcription: T
  /** Per 1,000 characters of speech input (started thousands count whole). */
  speechPer1kChars: T
}

const DEFAULT_UNITS: UnitPrices<string> = { image: '0.02', transcription: '0.006', speechPer1kChars: '0.015' }

/** The docs' x402 price table (its first "Pricing" table, under "402 Response"). */
export const DEFAULT_X402_PRICES: Record<string, string> = {
  '/v1/chat/completions': '0.003',
  '/v1/embeddings': '0.0005',
  '/v1/images/generations': '0.02',
  '/v1/audio/transcriptions': '0.006',
  '/v1/audio/speech': '0.015',
  '/v1/rerank': '0.001',
}

const toPrice = (p: { input: string; output: string }): TokenPrice => ({
  inputPerMillion: parseUsd(p.input),
  outputPerMillion: parseUsd(p.output),
})

export class Pricing {
  private readonly fallback: TokenPrice
  private readonly perModel: Map<string, TokenPrice>
  readonly x402: Map<string, bigint>
  readonly units: UnitPrices<bigint>

  constructor(config: PricingConfig = {}) {
    this.fallback = toPrice(config.default ?? { input: '0.10', output: '0.20' })
    this.perModel = new Map(Object.entries(config.models ?? {}).map(([id, p]) => [id, toPrice(p)]))
    this.x402 = new Map(
      Object.entries({ ...DEFAULT_X402_PRICES, ...(config.x402 ?? {}) }).map(([path, usd]) => [path, parseUsd(usd)]),
    )
    const units = config.units ?? {}
    this.units = {
      image: parseUsd(units.image ?? DEFAULT_UNITS.image),
      transcription: parseUsd(units.transcription ?? DEFAULT_UNITS.transcription),
      speechPer1kChars: parseUsd(units.speechPer1kChars ?? DEFAULT_UNITS.speechPer1kChars),
    }
  }

  /** What `chars` characters of speech cost (each started thousand counts whole). */
  speechCost(chars: number): bigint {
    return BigInt(Math.max(1, Math.ceil(chars / 1000))) * this.units.speechPer1kChars
  }

  priceOf(model: string): TokenPrice {
    return this.perModel.get(model) ?? this.fallback
  }

  /** The body of GET /api/pricing, for the models given (those served now and those configured). */
  describe(models: string[]): Record<string, unknown> {
    const ids = [...new Set([...models, ...this.perModel.keys()])].sort()
    return {
      currency: 'USDC',
      unit: 'per 1M tokens',
      default: this.row(this.fallback),
      models: ids.map((id) => ({ model: id, ...this.row(this.priceOf(id)) })),
      x402: [...this.x402].map(([endpoint, price]) => ({ endpoint, price: formatUsd(price), token: 'USDC' })),
      units: {
        image: formatUsd(this.units.image),
        transcription: formatUsd(this.units.transcription),
        speechPer1kChars: formatUsd(this.units.speechPer1kChars),
      },
    }
  }

  private row(p: TokenPrice): { input: string; output: string } {
    return { input: formatUsd(p.inputPerMillion), output: formatUsd(p.outputPerMillion) }
  }
}
