// Config resolution (file < env < flags) and the chain section: Base presets, required fields, and the
// gateway's signing key from the environment or a private file, never from the config itself.
import { chmod, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { loadSignerKey, SignerKeyError } from '../../src/chain/escrow.ts'
import { ConfigError, gatewayExtras, resolveConfig } from '../../src/config/config.ts'
import { tempDir } from '../helpers/fixtures.ts'

const ESCROW = '0x1111111111111111111111111111111111111111'
const KEY = `0x${'ab'.repeat(32)}`

describe('config', () => {
  const cleanups: Array<() => Promise<void>> = []
  afterAll(async () => {
    for (const c of cleanups) await c()
  })

  it('flags win over env, env over the file', async () => {
    const dir = await tempDir('cluster-config-')
    cleanups.push(dir.remove)
    const file = join(dir.path, 'cluster.json')
    await writeFile(file, JSON.stringify({ dataDir: '/from-file', gateway: { port: 1000 }, node: { slots: 2 } }))
    const c = resolveConfig({ file, env: { PORT: '2000', CLUSTER_DATA_DIR: '/from-env' }, flags: { dataDir: '/flag' } })
    expect(c.dataDir).toBe('/flag')
    expect(c.gateway.port).toBe(2000)
    expect(c.node.slots).toBe(2)
    expect(c.chain).toBeUndefined()
  })

  it('model limits for the gateway, deploy settings for the node', () => {
    const c = resolveConfig({
      flags: {
        gateway: { models: { maxUploadBytes: 1024, downloadTtlSeconds: 60 } },
        node: { acceptDeploys: false, modelMemoryBytes: 2048 },
      },
    })
    expect(gatewayExtras(c).models).toEqual({ maxUploadBytes: 1024, downloadTtlSeconds: 60 })
    expect(c.node).toMatchObject({ acceptDeploys: false, modelMemoryBytes: 2048 })
    expect(resolveConfig({}).node.acceptDeploys).toBe(true)
    expect(() => resolveConfig({ flags: { gateway: { models: { maxUploadBytes: 0 } } } })).toThrow(ConfigError)
  })

  it('providers, routing and unit prices for the gateway; a misspelt provider field is refused', () => {
    const c = resolveConfig({
      flags: {
        gateway: {
          providers: { venice: { baseUrl: 'http://127.0.0.1:9000/api/v1', models: { mine: 'theirs' } } },
          routing: { priceWeightMs: 5, cooldownBaseMs: 1000 },
          pricing: { units: { image: '0.05' } },
        },
      },
    })
    const extras = gatewayExtras(c)
    expect(extras.providers?.venice).toEqual({ baseUrl: 'http://127.0.0.1:9000/api/v1', models: { mine: 'theirs' } })
    expect(extras.routing).toEqual({ priceWeightMs: 5, cooldownBaseMs: 1000 })
    expect(extras.pricing?.units).toEqual({ image: '0.05' })
    expect(() => resolveConfig({ flags: { gateway: { providers: { venice: { apikey: 'x' } as never } } } })).toThrow(
      ConfigError,
    )
    expect(() => resolveConfig({ flags: { gateway: { providers: { venice: { baseUrl: 'ftp://x' } } } } })).toThrow(
      ConfigError,
    )
  })

  it('network "base" names Base mainnet and its USDC; only the escrow and the RPC are needed', () => {
    const c = resolveConfig({
      flags: { chain: { network: 'base', rpcUrl: 'https://mainnet.base.org', escrow: ESCROW } },
    })
    expect(c.chain).toMatchObject({
      chainId: 8453,
      usdc: '0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913',
      escrow: ESCROW,
      confirmations: 2,
      fromBlock: 0,
    })
  })

  it('the network may be named as CAIP-2 (eip155:8453)', () => {
    const c = resolveConfig({
      flags: { chain: { network: 'eip155:8453', rpcUrl: 'https://x.example', escrow: ESCROW } },
    })
    expect(c.chain).toMatchObject({ network: 'base', chainId: 8453 })
    expect(() =>
      resolveConfig({
        flags: { chain: { network: 'eip155:1' as 'base', rpcUrl: 'https://x.example', escrow: ESCROW } },
      }),
    ).toThrow(/chain\.network/)
  })

  it('refuses a chain id that contradicts the network, a local chain without its addresses, and bad addresses', () => {
    expect(() =>
      resolveConfig({ flags: { chain: { network: 'base', chainId: 1, rpcUrl: 'https://x.example', escrow: ESCROW } } }),
    ).toThrow(/chain\.chainId: base is chain 8453/)
    expect(() => resolveConfig({ flags: { chain: { rpcUrl: 'http://127.0.0.1:8545', escrow: ESCROW } } })).toThrow(
      ConfigError,
    )
    expect(() =>
      resolveConfig({ flags: { chain: { network: 'base', rpcUrl: 'https://x.example', escrow: '0x12' } } }),
    ).toThrow(/chain\.escrow/)
    expect(() => resolveConfig({ flags: { chain: { network: 'base', rpcUrl: 'ftp://x', escrow: ESCROW } } })).toThrow(
      /chain\.rpcUrl/,
    )
    const local = resolveConfig({
      flags: { chain: { rpcUrl: 'http://127.0.0.1:8545', chainId: 31337, usdc: ESCROW, escrow: ESCROW } },
    })
    expect(local.chain?.confirmations).toBe(0)
  })

  it('the signing key comes from CLUSTER_GATEWAY_KEY, else a file only its owner can read', async () => {
    const dir = await tempDir('cluster-key-')
    cleanups.push(dir.remove)
    expect(await loadSignerKey({ env: { CLUSTER_GATEWAY_KEY: KEY } })).toBe(KEY)
    await expect(loadSignerKey({ env: { CLUSTER_GATEWAY_KEY: 'nope' } })).rejects.toThrow(SignerKeyError)
    await expect(loadSignerKey({ env: {} })).rejects.toThrow(/CLUSTER_GATEWAY_KEY/)
    const file = join(dir.path, 'gateway.key')
    await writeFile(file, `${KEY}\n`, { mode: 0o600 })
    expect(await loadSignerKey({ env: {}, file })).toBe(KEY)
    await chmod(file, 0o644)
    await expect(loadSignerKey({ env: {}, file })).rejects.toThrow(/readable by others/)
    await writeFile(join(dir.path, 'bad.key'), 'not a key', { mode: 0o600 })
    const err = await loadSignerKey({ env: {}, file: join(dir.path, 'bad.key') }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(SignerKeyError)
    // The error says where, never what: the file's content is not echoed.
    expect((err as Error).message).not.toContain('not a key')
    await expect(loadSignerKey({ env: {}, file: join(dir.path, 'missing.key') })).rejects.toThrow(/ENOENT/)
  })
})
