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

/** `scrypt$N$r$p$salt$hash`, base64url parts. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16)
  const { N, r, p, keylen, maxmem } = SCRYPT
  const hash = await scrypt(password, salt, keylen, { N, r, p, maxmem })
  return ['scrypt', N, r, p, salt.toString('base64url'), hash.toString('base64url')].join('$')
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string]
  const expected = Buffer.from(hash, 'base64url')
  // A short or empty stored hash would compare equal to a short derived key: refuse it outright.
  if (expected.length < 16) return false
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
