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
    return this.draw(id, cost, true)
  }

  /** Gives back what a take took (the bucket holds no more than its capacity). */
  refund(id: string, cost = 1): void {
    const b = this.buckets.get(id)
    if (b != null) b.tokens = Math.min(this.capacity, b.tokens + cost)
  }

  /** What `take` would answer, without taking anything. */
  peek(id: string, cost = 1): Take {
    return this.draw(id, cost, false)
  }

  private draw(id: string, cost: number, consume: boolean): Take {
    const now = this.now()
    if (++this.takes % SWEEP_EVERY === 0) this.sweep(now)
    const b = this.buckets.get(id) ?? { tokens: this.capacity, at: now }
    b.tokens = Math.min(this.capacity, b.tokens + ((now - b.at) / 1000) * this.refillPerSecond)
    b.at = now
    const allowed = b.tokens >= cost
    if (allowed && consume) b.tokens -= cost
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

export interface RegistrationLimitsConfig {
  /** Sign-ups per client address (IPv6: per /64). @default 20, one back every 3 minutes */
  perAddress?: RateLimitConfig | undefined
  /** Sign-ups across all addresses. @default a burst of 20, then 2 per second */
  global?: RateLimitConfig | undefined
}

/**
 * Sign-ups have buckets of their own: each costs a memory-hard password hash and creates an
 * account, so they are limited far below other requests — per client address and in all.
 */
export class RegistrationLimits {
  readonly perAddress: TokenBuckets
  readonly global: TokenBuckets

  constructor(config: RegistrationLimitsConfig = {}, now: () => number = Date.now) {
    this.perAddress = new TokenBuckets(config.perAddress ?? { capacity: 20, refillPerSecond: 1 / 180 }, now)
    this.global = new TokenBuckets(config.global ?? { capacity: 20, refillPerSecond: 2 }, now)
  }

  /** Takes one sign-up from both buckets, or from neither: the answer is the refusing bucket's (else the address's). */
  take(address: string): Take {
    const r = takeFromAll([
      [this.perAddress, addressKey(address)],
      [this.global, 'all'],
    ])
    return ('refused' in r ? r.refused[0] : r.taken[0]) as Take
  }
}

/**
 * Takes one from every (buckets, key), or from none: the refusing buckets' answers (nothing taken),
 * or each bucket's answer and a refund that gives them all back.
 */
export function takeFromAll(
  pairs: ReadonlyArray<readonly [TokenBuckets, string]>,
): { refused: Take[] } | { taken: Take[]; refund: () => void } {
  const refused = pairs.map(([b, key]) => b.peek(key)).filter((t) => !t.allowed)
  if (refused.length > 0) return { refused }
  return {
    taken: pairs.map(([b, key]) => b.take(key)),
    refund: () => {
      for (const [b, key] of pairs) b.refund(key)
    },
  }
}

/** The bucket of a client address: IPv4 as it is, IPv6 by its /64 (one host usually holds a whole /64). */
export function addressKey(address: string): string {
  if (!address.includes(':') || /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(address)) return address
  const [head = '', tail = ''] = address.toLowerCase().split('%')[0]?.split('::') ?? []
  const left = head === '' ? [] : head.split(':')
  const right = tail === '' ? [] : tail.split(':')
  const groups = address.includes('::')
    ? [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right]
    : left
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`
}

/** How many times more failures an email may take from all addresses together than from one. */
export const LOGIN_FAILURES_PER_EMAIL_FACTOR = 10

/**
 * Failed password logins. Counted per (email, client address) and per address with the configured
 * allowance, so one address can neither guess at a password for long nor lock its owner out: the
 * owner, from another address, still logs in. And per email across all addresses with
 * LOGIN_FAILURES_PER_EMAIL_FACTOR times that burst at the same refill, which keeps guessing spread
 * over many addresses at the rate one address gets; locking an owner out takes that many failures
 * from that many addresses instead of five from anywhere.
 *
 * An attempt takes its token from every bucket before the password is checked (the check takes a
 * while, and attempts sent together must not all pass a bucket with one token left); a login that
 * succeeds gives them back.
 */
export class LoginFailures {
  readonly perPair: TokenBuckets
  readonly perEmail: TokenBuckets

  constructor(config: RateLimitConfig = {}, now: () => number = Date.now) {
    const capacity = config.capacity ?? 5
    const refillPerSecond = config.refillPerSecond ?? 1 / 180
    this.perPair = new TokenBuckets({ capacity, refillPerSecond }, now)
    this.perEmail = new TokenBuckets({ capacity: capacity * LOGIN_FAILURES_PER_EMAIL_FACTOR, refillPerSecond }, now)
  }

  private buckets(email: string, address: string): Array<[TokenBuckets, string]> {
    const who = addressKey(address)
    const mail = email.trim().toLowerCase()
    return [
      [this.perPair, `${mail}\n${who}`],
      [this.perPair, `address:${who}`],
      [this.perEmail, mail],
    ]
  }

  /**
   * Takes one attempt from every bucket of (email, address): a refund to call if the login succeeds,
   * or the seconds to wait when a bucket is empty (then nothing is taken).
   */
  attempt(email: string, address: string): { refund: () => void } | { retryAfter: number } {
    const r = takeFromAll(this.buckets(email, address))
    if ('refused' in r) return { retryAfter: Math.max(...r.refused.map((t) => t.retryAfter)) }
    return { refund: r.refund }
  }
}
