// Secrets of accounts: scrypt password hashes (memory-hard), API keys (256 random bits, looked up
// by an HMAC under the gateway secret, never stored in plain text), and sealing of the login key.
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  randomBytes,
  type ScryptOptions,
  scrypt as scryptCb,
  timingSafeEqual,
} from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

export const API_KEY_PREFIX = 'sk-cluster-'
/** How many characters of a key listings show. */
const SHOWN_PREFIX = API_KEY_PREFIX.length + 6

// N = 2^15, r = 8: 32 MiB per hash, ~50–100 ms here. Stored with the hash so it can be raised later.
const SCRYPT = { N: 1 << 15, r: 8, p: 1, keylen: 32, maxmem: 64 * 1024 * 1024 }

function scrypt(password: string, salt: Buffer, keylen: number, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scryptCb(password.normalize('NFKC'), salt, keylen, options, (err, key) => (err ? reject(err) : resolve(key))),
  )
}

/** Too many password checks are waiting already: answer busy rather than queue without end. */
export class KdfBusyError extends Error {
  override name = 'KdfBusyError'
}

export interface KdfLimits {
  /** Password hashes (scrypt, 32 MiB each) running at once. @default 2 */
  maxConcurrent?: number | undefined
  /** Password checks (logins) that may wait for a slot; more are refused. @default 64 */
  maxQueuedChecks?: number | undefined
  /** Password hashes (sign-ups) that may wait for a slot; more sign-ups are refused. @default 8 */
  maxQueuedHashes?: number | undefined
}

/**
 * A bound on the scrypts running at once, so a flood waits here instead of running hundreds of
 * 32 MiB hashes (and filling libuv's thread pool ahead of everything else). Checks (logins) go
 * before hashes (sign-ups), and hashes never take the last slot: a login waits for at most the
 * hashes already running, never behind the queue of sign-ups. Sign-ups beyond a short queue are
 * refused by the caller (kdfAdmitsHash), not queued.
 */
class KdfGate {
  private max = 2
  private maxQueuedChecks = 64
  private maxQueuedHashes = 8
  private running = 0
  private hashing = 0
  private readonly checks: Array<() => void> = []
  private readonly hashes: Array<() => void> = []

  configure(limits: KdfLimits): void {
    if (limits.maxConcurrent != null) this.max = Math.max(1, Math.floor(limits.maxConcurrent))
    if (limits.maxQueuedChecks != null) this.maxQueuedChecks = Math.max(0, Math.floor(limits.maxQueuedChecks))
    if (limits.maxQueuedHashes != null) this.maxQueuedHashes = Math.max(0, Math.floor(limits.maxQueuedHashes))
    this.pump()
  }

  /** Slots hashes may hold: all but one (kept for checks), unless there is only one. */
  private get hashShare(): number {
    return this.max > 1 ? this.max - 1 : 1
  }

  /** Whether a hash would start now. */
  private hashStartsNow(): boolean {
    return this.hashes.length === 0 && this.running < this.max && this.hashing < this.hashShare
  }

  /** Whether a hash asked for now would start or find room in the (short) queue: sign-ups are refused otherwise. */
  admitsHash(): boolean {
    return this.hashStartsNow() || this.hashes.length < this.maxQueuedHashes
  }

  /** Starts `fn` now if a slot is free (synchronously), else when one is. */
  run<T>(kind: 'check' | 'hash', fn: () => Promise<T>): Promise<T> {
    const start = async (): Promise<T> => {
      try {
        return await fn()
      } finally {
        this.running--
        if (kind === 'hash') this.hashing--
        this.pump()
      }
    }
    if (kind === 'check' ? this.running < this.max : this.hashStartsNow()) {
      this.claim(kind)
      return start()
    }
    if (kind === 'check' && this.checks.length >= this.maxQueuedChecks) {
      return Promise.reject(new KdfBusyError('too many password checks waiting'))
    }
    // The slot is claimed by pump() when it wakes the waiter, so nothing can take it in between.
    return new Promise<void>((resolve) => (kind === 'check' ? this.checks : this.hashes).push(resolve)).then(start)
  }

  private claim(kind: 'check' | 'hash'): void {
    this.running++
    if (kind === 'hash') this.hashing++
  }

  private pump(): void {
    while (this.running < this.max) {
      const check = this.checks.shift()
      if (check != null) {
        this.claim('check')
        check()
        continue
      }
      if (this.hashes.length === 0 || this.hashing >= this.hashShare) break
      this.claim('hash')
      this.hashes.shift()?.()
    }
  }
}

const kdf = new KdfGate()

/** Sets the bound on concurrent password hashing (process-wide: scrypt's memory and threads are). */
export function configureKdf(limits: KdfLimits): void {
  kdf.configure(limits)
}

/** Whether a password hash asked for now would start or find room in the short queue: else refuse the sign-up. */
export function kdfAdmitsHash(): boolean {
  return kdf.admitsHash()
}

/** `scrypt$N$r$p$salt$hash`, base64url parts. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16)
  const { N, r, p, keylen, maxmem } = SCRYPT
  const hash = await kdf.run('hash', () => scrypt(password, salt, keylen, { N, r, p, maxmem }))
  return ['scrypt', N, r, p, salt.toString('base64url'), hash.toString('base64url')].join('$')
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string]
  const expected = Buffer.from(hash, 'base64url')
  // A short or empty stored hash would compare equal to a short derived key: refuse it outright.
  if (expected.length < 16) return false
  // Outside the try: a KdfBusyError is the caller's to answer (busy), not a wrong password.
  return kdf.run('check', async () => {
    try {
      const actual = await scrypt(password, Buffer.from(salt, 'base64url'), expected.length, {
        N: Number(n),
        r: Number(r),
        p: Number(p),
        maxmem: SCRYPT.maxmem,
      })
      return actual.length === expected.length && timingSafeEqual(actual, expected)
    } catch {
      return false // parameters scrypt refuses: not a hash we made
    }
  })
}

/** A new API key: `sk-cluster-` + 256 random bits, base64url. */
export function newApiKey(): string {
  return `${API_KEY_PREFIX}${randomBytes(32).toString('base64url')}`
}

export function keyPrefix(key: string): string {
  return key.slice(0, SHOWN_PREFIX)
}

export function looksLikeApiKey(key: string): boolean {
  return /^sk-cluster-[A-Za-z0-9_-]{43}$/.test(key)
}

/**
 * The gateway's secret: 32 bytes from CLUSTER_GATEWAY_SECRET (hex) or `<data-dir>/gateway.secret`
 * (created with mode 0600). It keys the API-key lookup HMAC and seals login keys.
 */
export class GatewaySecret {
  private constructor(private readonly secret: Buffer) {}

  static async load(dataDir: string, env: NodeJS.ProcessEnv = process.env): Promise<GatewaySecret> {
    const fromEnv = env.CLUSTER_GATEWAY_SECRET
    if (fromEnv) {
      if (!/^[0-9a-fA-F]{64}$/.test(fromEnv)) throw new Error('CLUSTER_GATEWAY_SECRET must be 64 hex characters')
      return new GatewaySecret(Buffer.from(fromEnv, 'hex'))
    }
    const file = join(dataDir, 'gateway.secret')
    let existing: Buffer | undefined
    try {
      existing = await readFile(file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    if (existing != null) {
      if (existing.length !== 32) {
        throw new Error(
          `${file} is ${existing.length} bytes, not 32: restore it from a backup rather than run with a weak secret`,
        )
      }
      return new GatewaySecret(existing)
    }
    const secret = randomBytes(32)
    await writeFile(file, secret, { mode: 0o600, flag: 'wx' })
    return new GatewaySecret(secret)
  }

  /** What the ledger stores and looks a key up by. */
  lookup(apiKey: string): string {
    return createHmac('sha256', this.secret).update(apiKey).digest('base64url')
  }

  /** AES-256-GCM under a key derived from the secret: iv.tag.ciphertext, base64url. */
  seal(plain: string): string {
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', this.sealKey(), iv)
    const body = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()])
    return [iv, cipher.getAuthTag(), body].map((b) => b.toString('base64url')).join('.')
  }

  unseal(sealed: string): string {
    const [iv, tag, body] = sealed.split('.').map((p) => Buffer.from(p, 'base64url'))
    if (iv == null || tag == null || body == null) throw new Error('malformed sealed value')
    const decipher = createDecipheriv('aes-256-gcm', this.sealKey(), iv)
    decipher.setAuthTag(tag)
    return Buffer.concat([decipher.update(body), decipher.final()]).toString('utf8')
  }

  /** A MAC over `data` for one purpose (signed URLs), base64url; keys differ per purpose. */
  mac(purpose: string, data: string): string {
    const key = createHmac('sha256', this.secret).update(`cluster/mac/${purpose}`).digest()
    return createHmac('sha256', key).update(data).digest('base64url')
  }

  private sealKey(): Buffer {
    return createHmac('sha256', this.secret).update('cluster/seal/v1').digest()
  }
}
