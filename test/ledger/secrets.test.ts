// Account secrets: a password check that throws or says yes to the wrong password, an API key with
// too little entropy, a gateway secret that changes between restarts (every key stops working) or
// is silently weak, and a seal that accepts a tampered value are each a break-in or an outage.
import { createHmac } from 'node:crypto'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  API_KEY_PREFIX,
  GatewaySecret,
  hashPassword,
  keyPrefix,
  looksLikeApiKey,
  newApiKey,
  verifyPassword,
} from '../../src/ledger/secrets.ts'

const KEY_RE = /^sk-cluster-[A-Za-z0-9_-]{43}$/
const HEX64 = '0123456789abcdef'.repeat(4)

describe('hashPassword / verifyPassword', () => {
  it('accepts the right password and refuses a wrong one', async () => {
    const stored = await hashPassword('correct horse battery staple')
    expect(stored).toMatch(/^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9_-]+\$[A-Za-z0-9_-]+$/)
    expect(await verifyPassword('correct horse battery staple', stored)).toBe(true)
    expect(await verifyPassword('correct horse battery stapl', stored)).toBe(false)
    expect(await verifyPassword('Correct horse battery staple', stored)).toBe(false)
    expect(await verifyPassword('', stored)).toBe(false)
  })

  it('normalises unicode (NFKC): the ligature "ﬁ" and "fi" are the same password', async () => {
    const stored = await hashPassword('ﬁle-säve')
    expect(await verifyPassword('file-säve', stored)).toBe(true)
    // composed vs decomposed ä
    expect(await verifyPassword('file-sa\u0308ve', stored)).toBe(true)
    expect(await verifyPassword('file-save', stored)).toBe(false)
  })

  it('salts: two hashes of the same password differ, and both verify', async () => {
    const [a, b] = await Promise.all([hashPassword('same'), hashPassword('same')])
    expect(a).not.toBe(b)
    expect(a.split('$')[4]).not.toBe(b.split('$')[4]) // different salt
    expect(await verifyPassword('same', a)).toBe(true)
    expect(await verifyPassword('same', b)).toBe(true)
  })

  it('a stored hash with the wrong shape is false, not a throw', async () => {
    const stored = await hashPassword('pw')
    for (const bad of ['', 'garbage', 'scrypt$1$2', `bcrypt${stored.slice('scrypt'.length)}`, `${stored}$extra`]) {
      await expect(verifyPassword('pw', bad), bad).resolves.toBe(false)
    }
  })

  // BUG: verifyPassword passes N/r/p from the stored string straight to scrypt, which throws on
  // invalid parameters — the promise rejects instead of resolving false.
  it('a stored hash with invalid scrypt parameters is false, not a throw', async () => {
    const [, , , , salt, hash] = (await hashPassword('pw')).split('$')
    for (const bad of [
      `scrypt$abc$8$1$${salt}$${hash}`, // N not a number
      `scrypt$3$8$1$${salt}$${hash}`, // N not a power of two
      `scrypt$${2 ** 30}$8$1$${salt}$${hash}`, // N beyond maxmem
    ]) {
      await expect(verifyPassword('pw', bad), bad).resolves.toBe(false)
    }
  })

  // BUG (fail-open): with an empty hash part, scrypt derives a 0-byte key and timingSafeEqual of two
  // empty buffers is true — ANY password verifies against e.g. "scrypt$$$$$".
  it('a stored hash with an empty or truncated hash part never verifies', async () => {
    const [, n, r, p, salt, hash] = (await hashPassword('pw')).split('$')
    for (const bad of [
      'scrypt$$$$$',
      `scrypt$${n}$${r}$${p}$${salt}$`,
      `scrypt$${n}$${r}$${p}$${salt}$${hash?.slice(0, 2)}`,
    ]) {
      await expect(verifyPassword('definitely not the password', bad), bad).resolves.toBe(false)
    }
  })
})

describe('API keys', () => {
  it('newApiKey has the documented format', () => {
    const key = newApiKey()
    expect(key).toMatch(KEY_RE)
    expect(key.startsWith(API_KEY_PREFIX)).toBe(true)
    // 43 base64url chars = 256 bits
    expect(Buffer.from(key.slice(API_KEY_PREFIX.length), 'base64url')).toHaveLength(32)
  })

  it('200 keys are all distinct and all well-formed', () => {
    const keys = Array.from({ length: 200 }, () => newApiKey())
    expect(new Set(keys).size).toBe(200)
    for (const k of keys) expect(k).toMatch(KEY_RE)
  })

  it('looksLikeApiKey accepts exactly the key format', () => {
    expect(looksLikeApiKey(newApiKey())).toBe(true)
    expect(looksLikeApiKey(`sk-cluster-${'A'.repeat(43)}`)).toBe(true)
    expect(looksLikeApiKey(`sk-cluster-${'_-'.repeat(21)}a`)).toBe(true)
    for (const bad of [
      '',
      'sk-cluster-',
      `sk-cluster-${'A'.repeat(42)}`,
      `sk-cluster-${'A'.repeat(44)}`,
      `sk-cluster-${'A'.repeat(42)}=`,
      `sk-cluster-${'A'.repeat(42)}+`,
      `sk-${'A'.repeat(51)}`,
      `SK-CLUSTER-${'A'.repeat(43)}`,
      ` ${newApiKey()}`,
      `${newApiKey()}\n`,
    ]) {
      expect(looksLikeApiKey(bad), JSON.stringify(bad)).toBe(false)
    }
  })

  it('keyPrefix shows only the first characters', () => {
    const key = newApiKey()
    const shown = keyPrefix(key)
    expect(key.startsWith(shown)).toBe(true)
    expect(shown.startsWith(API_KEY_PREFIX)).toBe(true)
    expect(shown).toHaveLength(API_KEY_PREFIX.length + 6)
    // the prefix reveals at most 6 of the 43 secret characters
    expect(key.length - shown.length).toBe(37)
  })
})

describe('GatewaySecret', () => {
  let dir: string
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cluster-secret-'))
  })
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('creates gateway.secret (32 bytes, mode 0600) and returns the same secret on reload', async () => {
    const first = await GatewaySecret.load(dir, {})
    const file = join(dir, 'gateway.secret')
    const st = await stat(file)
    expect(st.mode & 0o777).toBe(0o600)
    const bytes = await readFile(file)
    expect(bytes).toHaveLength(32)

    const key = newApiKey()
    const sealed = first.seal(key)
    const second = await GatewaySecret.load(dir, {})
    expect(second.lookup(key)).toBe(first.lookup(key))
    expect(second.unseal(sealed)).toBe(key)
    // the lookup is HMAC-SHA256 under the file's bytes
    expect(first.lookup(key)).toBe(createHmac('sha256', bytes).update(key).digest('base64url'))
    expect(await readFile(file)).toEqual(bytes) // reload did not rewrite it
  })

  it('two data dirs get different secrets, and their lookups differ', async () => {
    const other = await mkdtemp(join(tmpdir(), 'cluster-secret-'))
    try {
      const a = await GatewaySecret.load(dir, {})
      const b = await GatewaySecret.load(other, {})
      const key = newApiKey()
      expect(a.lookup(key)).not.toBe(b.lookup(key))
      expect(() => b.unseal(a.seal(key))).toThrow()
    } finally {
      await rm(other, { recursive: true, force: true })
    }
  })

  it('uses CLUSTER_GATEWAY_SECRET (64 hex) when set, and writes no file', async () => {
    const s = await GatewaySecret.load(dir, { CLUSTER_GATEWAY_SECRET: HEX64 })
    const key = newApiKey()
    expect(s.lookup(key)).toBe(createHmac('sha256', Buffer.from(HEX64, 'hex')).update(key).digest('base64url'))
    await expect(stat(join(dir, 'gateway.secret'))).rejects.toMatchObject({ code: 'ENOENT' })
    const again = await GatewaySecret.load(dir, { CLUSTER_GATEWAY_SECRET: HEX64.toUpperCase() })
    expect(again.lookup(key)).toBe(s.lookup(key))
  })

  it('the env secret wins over an existing file', async () => {
    const fromFile = await GatewaySecret.load(dir, {})
    const fromEnv = await GatewaySecret.load(dir, { CLUSTER_GATEWAY_SECRET: HEX64 })
    const key = newApiKey()
    expect(fromEnv.lookup(key)).not.toBe(fromFile.lookup(key))
  })

  it.each([
    ['too short', 'abcd'],
    ['63 hex', HEX64.slice(1)],
    ['66 hex (33 bytes)', `${HEX64}ab`],
    ['not hex', 'zz'.repeat(32)],
    ['hex with a gap', `${HEX64.slice(0, 10)} ${HEX64.slice(11)}`],
  ])('rejects a bad CLUSTER_GATEWAY_SECRET: %s', async (_what, value) => {
    await expect(GatewaySecret.load(dir, { CLUSTER_GATEWAY_SECRET: value })).rejects.toThrow(/64 hex/)
  })

  // BUG: Buffer.from(hex) silently stops at the first non-hex character / odd trailing nibble, so
  // anything whose first 64 chars are hex passes the "must be 64 hex characters" check.
  it.each([
    ['65 hex (odd, last nibble dropped)', `${HEX64}a`],
    ['64 hex + junk', `${HEX64}zz`],
  ])('rejects a bad CLUSTER_GATEWAY_SECRET that Buffer.from truncates to 32 bytes: %s', async (_what, value) => {
    await expect(GatewaySecret.load(dir, { CLUSTER_GATEWAY_SECRET: value })).rejects.toThrow(/64 hex/)
  })

  // BUG: the file path does no length check, so an empty or truncated gateway.secret (e.g. a crash
  // between create and write) silently becomes a weak/empty HMAC and sealing key.
  it.each([
    ['empty', 0],
    ['truncated', 7],
  ])('refuses a gateway.secret file that is not 32 bytes: %s', async (_what, size) => {
    await writeFile(join(dir, 'gateway.secret'), Buffer.alloc(size, 1), { mode: 0o600 })
    await expect(GatewaySecret.load(dir, {})).rejects.toThrow()
  })

  it('seal/unseal round trips, and sealing is randomised', async () => {
    const s = await GatewaySecret.load(dir, {})
    for (const plain of [newApiKey(), '', 'ünïcødé ✓', 'x'.repeat(5000)]) {
      const sealed = s.seal(plain)
      expect(sealed.split('.')).toHaveLength(3)
      expect(sealed).not.toContain(plain.length > 0 ? plain : '\0')
      expect(s.unseal(sealed)).toBe(plain)
    }
    const key = newApiKey()
    expect(s.seal(key)).not.toBe(s.seal(key))
  })

  it('unseal of a tampered or malformed value throws', async () => {
    const s = await GatewaySecret.load(dir, {})
    const sealed = s.seal(newApiKey())
    const [iv, tag, body] = sealed.split('.') as [string, string, string]
    const flip = (part: string, at: number): string => {
      const b = Buffer.from(part, 'base64url')
      b[at % b.length] = (b[at % b.length] ?? 0) ^ 0x01
      return b.toString('base64url')
    }
    for (const bad of [
      [flip(iv, 0), tag, body].join('.'),
      [iv, flip(tag, 5), body].join('.'),
      [iv, tag, flip(body, 0)].join('.'),
      [iv, tag, flip(body, 40)].join('.'),
      [iv, tag].join('.'),
      'garbage',
    ]) {
      expect(() => s.unseal(bad), bad).toThrow()
    }
    expect(s.unseal(sealed)).toMatch(KEY_RE) // the untouched value still opens
  })

  it('lookup is deterministic per secret and differs between secrets', async () => {
    const a = await GatewaySecret.load(dir, { CLUSTER_GATEWAY_SECRET: HEX64 })
    const b = await GatewaySecret.load(dir, { CLUSTER_GATEWAY_SECRET: 'f'.repeat(64) })
    const key = newApiKey()
    expect(a.lookup(key)).toBe(a.lookup(key))
    expect(a.lookup(key)).not.toBe(b.lookup(key))
    expect(a.lookup(key)).not.toBe(a.lookup(newApiKey()))
    expect(a.lookup(key)).not.toContain(key.slice(API_KEY_PREFIX.length))
  })
})
