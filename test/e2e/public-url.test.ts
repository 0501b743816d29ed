// A gateway reached through a proxy hands out URLs under its public address (gateway.publicUrl), not
// under the address the proxy used to reach it: the x402 resource a payment is for, the wallet-link
// message's domain, and model download links. Real gateway, real dev chain (anvil), loopback only.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type DevChain, startDevChain, testAccounts } from '../../src/chain/devchain.ts'
import { resolveConfig } from '../../src/config/config.ts'
import { parsePublicUrl } from '../../src/config/public-url.ts'
import { fundedUser, tempDir, tinyModelPath } from '../helpers/fixtures.ts'
import { uploadModel } from '../helpers/models.ts'
import { x402Sections } from '../helpers/x402-gateway.ts'

const LOOP = ['/ip4/127.0.0.1/tcp/0']
const PUBLIC = 'https://api.example.com'

describe('gateway.publicUrl', () => {
  let chain: DevChain
  let gw: RunningGateway
  let key: string
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    chain = await startDevChain()
    cleanups.push(() => chain.stop())
    const d = await tempDir('public-url')
    cleanups.push(d.remove)
    gw = await startGateway({ dataDir: d.path, listen: LOOP, port: 0, publicUrl: PUBLIC, ...x402Sections(chain) })
    cleanups.unshift(() => gw.stop())
    key = await fundedUser(gw, 'proxied@example.com')
  }, 60_000)

  afterAll(async () => {
    for (const c of cleanups) await c()
  })

  it('the x402 resource of a 402 is under the public URL', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'any', messages: [{ role: 'user', content: 'hi' }] }),
    })
    expect(res.status).toBe(402)
    const header = res.headers.get('payment-required')
    expect(header).toBeTruthy()
    const required = JSON.parse(Buffer.from(header as string, 'base64').toString('utf8')) as {
      resource?: { url?: string }
    }
    expect(required.resource?.url).toBe(`${PUBLIC}/v1/chat/completions`)
  })

  it("the wallet-link message names the public URL's domain, not the one the request came to", async () => {
    const wallet = testAccounts()[7] as { address: string }
    const res = await fetch(`${gw.url}/api/user/wallet/challenge`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify({ address: wallet.address }),
    })
    expect(res.status).toBe(200)
    const { message } = (await res.json()) as { message: string }
    expect(message.split('\n')[0]).toContain('api.example.com')
    expect(message).toContain(`URI: ${PUBLIC}`)
    expect(message).not.toContain('127.0.0.1')
  })

  it('a model download link points at the public URL', async () => {
    const up = await uploadModel(
      gw.url,
      key,
      { name: 'Proxied Tiny', category: 'chat' },
      { path: await tinyModelPath() },
    )
    expect(up.status).toBe(201)
    const { id } = (await up.json()) as { id: string }
    const res = await fetch(`${gw.url}/api/models/${id}/download`, { headers: { authorization: `Bearer ${key}` } })
    expect(res.status).toBe(200)
    const { url } = (await res.json()) as { url: string }
    expect(url.startsWith(`${PUBLIC}/api/models/${id}/versions/1/file?`)).toBe(true)
    // Behind the proxy that URL reaches this gateway: the same path and query here serve the file.
    const file = await fetch(`${gw.url}${new URL(url).pathname}${new URL(url).search}`)
    expect(file.status).toBe(200)
    expect((await file.arrayBuffer()).byteLength).toBeGreaterThan(0)
  })

  it('a public URL that is more than an origin is refused, at start and in the config', async () => {
    for (const bad of [
      'https://api.example.com/v1',
      'ftp://api.example.com',
      'https://u:p@api.example.com',
      'https://:p@api.example.com',
      'https://api.example.com/?x=1',
      'nope',
    ]) {
      expect(() => parsePublicUrl(bad)).toThrow(/publicUrl/)
      await expect(startGateway({ dataDir: '/nonexistent/never-created', publicUrl: bad })).rejects.toThrow(/publicUrl/)
      expect(() => resolveConfig({ flags: { gateway: { publicUrl: bad } } as never })).toThrow(/publicUrl/)
    }
    expect(parsePublicUrl('http://gw.internal:8080/').origin).toBe('http://gw.internal:8080')
    expect(resolveConfig({ flags: { gateway: { publicUrl: PUBLIC } } as never }).gateway.publicUrl).toBe(PUBLIC)
  })
})
