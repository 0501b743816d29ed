// Token-bucket rate limits: one bucket per API key (or per client address when there is none),
// reported on every response in X-RateLimit-* headers; an empty bucket answers 429.

export interface RateLimitConfig {
  /** Requests a bucket holds (the burst). @default 100 */
  capacity?: number
  /** Requests added back per second. @default 10 */
  refillPerSecond?: number
}

export interface Take {
  allowed: boolean
  limit: number
  remaining: number
  /** Unix seconds when the bucket is full again. */
  reset: number
  /** Seconds until one request is allowed again (when not allowed). */
  retryAfter: number
}

interface Bucket {
  tokens: number
  at: number
}

/** Buckets idle long enough to be full again are dropped, so the map stays bounded by active clients. */
const SWEEP_EVERY = 10_000

export class TokenBuckets {
  readonly capacity: number
  readonly refillPerSecond: number
  private readonly buckets = new Map<string, Bucket>()
  private takes = 0

  constructor(
    config: RateLimitConfig = {},
    private readonly now: () => number = Date.now,
  ) {
    this.capacity = config.capacity ?? 100
    this.refillPerSecond = config.refillPerSecond ?? 10
  }

  take(id: string, cost = 1): Take {
    const now = this.now()
    if (++this.takes % SWEEP_EVERY === 0) this.sweep(now)
    const b = this.buckets.get(id) ?? { tokens: this.capacity, at: now }
    b.tokens = Math.min(this.capacity, b.tokens + ((now - b.at) / 1000) * this.refillPerSecond)
    b.at = now
    const allowed = b.tokens >= cost
    if (allowed) b.tokens -= cost
    this.buckets.set(id, b)
    const missing = this.capacity - b.tokens
    return {
      allowed,
      limit: this.capacity,
      remaining: Math.floor(b.tokens),
      reset: Math.ceil((now + (missing / this.refillPerSecond) * 1000) / 1000),
      retryAfter: allowed ? 0 : Math.max(1, Math.ceil((cost - b.tokens) / this.refillPerSecond)),
    }
  }

  private sweep(now: number): void {
    for (const [id, b] of this.buckets) {
      if (b.tokens + ((now - b.at) / 1000) * this.refillPerSecond >= this.capacity) this.buckets.delete(id)
    }
  }
}
