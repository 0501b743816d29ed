// Every object of the config schema is strict: a misspelt key anywhere is an error naming its path,
// while every key the schema knows (the README's examples included) is still taken.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { ConfigError, type ConfigInput, resolveConfig } from '../../src/config/config.ts'

const ADDR = `0x${'1'.repeat(40)}`
const prices = () => ({ input: '0.10', output: '0.20' })

/** A config with a value for every key of every section. */
const full = {
  dataDir: '/tmp/x',
  listen: ['/ip4/127.0.0.1/tcp/0'],
  bootstrap: ['/ip4/127.0.0.1/tcp/4001'],
  heartbeatIntervalMs: 1000,
  logLevel: 'warn',
  gateway: {
    port: 30123,
    host: '127.0.0.1',
    adminEmail: 'admin@example.com',
    pricing: {
      default: prices(),
      models: { m: prices() },
      x402: { '/v1/chat/completions': '0.01' },
      units: { image: '0.05', transcription: '0.01', speechPer1kChars: '0.02' },
    },
    providers: {
      venice: { apiKey: 'k', baseUrl: 'http://127.0.0.1:9', models: { a: 'b' }, price: prices(), enabled: true },
    },
    routing: { priceWeightMs: 1, cooldownBaseMs: 1, cooldownMaxMs: 2 },
    rateLimit: { capacity: 1, refillPerSecond: 1 },
    registrationLimit: { perAddress: { capacity: 1, refillPerSecond: 1 }, global: { capacity: 2, refillPerSecond: 1 } },
    passwordHashing: { maxConcurrent: 2, maxQueuedChecks: 8, maxQueuedHashes: 4 },
    publicUrl: 'https://api.example.com',
    metricsAccess: 'admin',
    models: { maxUploadBytes: 1, downloadTtlSeconds: 60 },
  },
  node: {
    models: [{ path: 'a.gguf', id: 'a' }],
    threads: 1,
    slots: 1,
    maxQueue: 1,
    maxQueueWaitMs: 1000,
    contextSize: 128,
    gpu: 'off',
    payoutAddress: ADDR,
    acceptDeploys: false,
    trustedGateways: ['12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'],
    modelMemoryBytes: 1,
    metricsPort: 0,
    upstreams: [{ baseUrl: 'http://127.0.0.1:8000/v1', model: 'm', id: 'i', contextSize: 128, slots: 1 }],
  },
  chain: {
    network: 'local',
    rpcUrl: 'http://127.0.0.1:8545',
    chainId: 31337,
    usdc: ADDR,
    escrow: ADDR,
    fromBlock: 0,
    confirmations: 0,
    pollIntervalMs: 100,
    settleIntervalMs: 1000,
    signerKeyFile: '/tmp/key',
    payoutAddress: ADDR,
  },
  x402: {
    facilitatorUrl: 'http://127.0.0.1:9',
    facilitatorKeyFile: '/tmp/fkey',
    payTo: ADDR,
    assetName: 'USD Coin',
    assetVersion: '2',
    maxTimeoutSeconds: 60,
    settleTimeoutMs: 1000,
  },
}

/** `full` with `key` added to the object at `path`. */
function withExtra(path: Array<string | number>, key: string): ConfigInput {
  const copy = structuredClone(full) as Record<string, unknown>
  let at = copy as Record<string | number, unknown>
  for (const p of path) at = at[p] as Record<string | number, unknown>
  at[key] = 1
  return copy as ConfigInput
}

describe('config: strict objects', () => {
  it('takes every key the schema knows', () => {
    const c = resolveConfig({ flags: full as ConfigInput })
    expect(c.gateway.port).toBe(30123)
    expect(c.node.upstreams[0]?.model).toBe('m')
    expect(c.chain?.escrow).toBe(ADDR)
    expect(c.x402?.payTo).toBe(ADDR)
    expect(c.gateway.publicUrl).toBe('https://api.example.com')
    expect(c.gateway.registrationLimit?.global?.capacity).toBe(2)
    expect(c.gateway.passwordHashing?.maxQueuedHashes).toBe(4)
    expect(c.node.trustedGateways).toHaveLength(1)
  })

  it.each([
    [[], 'gatewy'],
    [['gateway'], 'prot'],
    [['gateway', 'pricing'], 'defaults'],
    [['gateway', 'pricing', 'default'], 'inputs'],
    [['gateway', 'pricing', 'models', 'm'], 'outptu'],
    [['gateway', 'pricing', 'units'], 'images'],
    [['gateway', 'providers', 'venice'], 'apikey'],
    [['gateway', 'providers', 'venice', 'price'], 'in'],
    [['gateway', 'routing'], 'priceWeight'],
    [['gateway', 'rateLimit'], 'burst'],
    [['gateway', 'registrationLimit'], 'perAdress'],
    [['gateway', 'registrationLimit', 'perAddress'], 'burst'],
    [['gateway', 'passwordHashing'], 'maxConcurent'],
    [['gateway', 'models'], 'maxUpload'],
    [['node'], 'slot'],
    [['node', 'models', 0], 'idd'],
    [['node', 'upstreams', 0], 'baseURL'],
    [['chain'], 'chainID'],
    [['x402'], 'payto'],
  ] as Array<[Array<string | number>, string]>)('refuses an unknown key in %j: %s', (path, key) => {
    const run = () => resolveConfig({ flags: withExtra(path, key) })
    expect(run).toThrow(ConfigError)
    expect(run).toThrow(`config: unknown key ${[...path, key].join('.')}`)
  })

  it('names the file the unknown key came from, and every unknown key at once', () => {
    const file = join(import.meta.dirname, 'fixtures', 'typo.json')
    expect(() => resolveConfig({ file })).toThrow(`config: unknown keys gateway.prot, node.slot (in ${file})`)
  })

  it("the README's config examples are valid", () => {
    const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8')
    const blocks = [...readme.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => JSON.parse(m[1] as string) as unknown)
    const configs = blocks.filter(
      (b): b is ConfigInput =>
        // dev.json (what `npm start` writes) is not a config
        typeof b === 'object' && b !== null && !('gatewayUrl' in b),
    )
    expect(configs.length).toBeGreaterThan(0)
    for (const c of configs) {
      const escrowed = JSON.parse(JSON.stringify(c).replaceAll('"0x…"', `"${ADDR}"`)) as ConfigInput
      expect(() => resolveConfig({ flags: escrowed })).not.toThrow()
    }
  })
})
