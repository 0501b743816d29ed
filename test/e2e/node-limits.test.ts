// A node's limits seen from the outside: a full node answers "busy" and the gateway says 503 with
// why; a corrupt model file is refused with a clear error instead of taking the process down.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { InvalidModelError } from '../../src/models/gguf.ts'
import { fundedUser, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'

const MODEL = 'tiny-limits'

describe('node limits', () => {
  let gw: RunningGateway
  let node: RunningNode
  let apiKey: string
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    const g = await tempDir('lim-gw')
    const n = await tempDir('lim-node')
    cleanups.push(g.remove, n.remove)
    gw = await startGateway({ dataDir: g.path, listen: ['/ip4/127.0.0.1/tcp/0'], port: 0 })
    node = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [{ path: await tinyModelPath(), id: MODEL }],
      threads: 1,
      slots: 1,
      maxQueue: 0,
      gpu: false,
      heartbeatIntervalMs: 300,
    })
    await waitFor(() => gw.directory.nodesServing(MODEL).length === 1, 15_000, 'the node')
    apiKey = await fundedUser(gw, 'limits@example.com')
  })

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    await Promise.all(cleanups.map((f) => f()))
  })

  it('a node with every slot taken and no queue room → 503 saying the nodes are at capacity', async () => {
    const controller = new AbortController()
    const long = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({
        model: MODEL,
        messages: [{ role: 'user', content: 'go' }],
        max_tokens: 3000,
        temperature: 0,
        seed: 3,
        stream: true,
      }),
      signal: controller.signal,
    })
    expect(long.status).toBe(200)
    const reader = long.body?.getReader()
    await reader?.read() // the first chunk: it is generating now
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'me too' }], max_tokens: 4 }),
    })
    controller.abort()
    expect(res.status).toBe(503)
    const body = (await res.json()) as { error: { message: string; code: string } }
    expect(body.error.code).toBe('no_nodes_available')
    expect(body.error.message).toContain('at capacity')
    // Once the slot is free again, requests are served.
    const scheduler = [...node.schedulers.values()][0]
    await waitFor(() => scheduler?.load().active === 0, 5_000, 'the slot to free')
    const ok = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'now' }], max_tokens: 4 }),
    })
    expect(ok.status).toBe(200)
  })

  it('a corrupt or truncated GGUF is refused before llama.cpp sees it, and this process lives on', async () => {
    const d = await tempDir('lim-bad')
    cleanups.push(d.remove)
    const garbage = join(d.path, 'garbage.gguf')
    await writeFile(garbage, Buffer.from('GGUF this is not really a model file at all'))
    await expect(
      startNode({ dataDir: join(d.path, 'n1'), models: [{ path: garbage }], gpu: false, threads: 1 }),
    ).rejects.toBeInstanceOf(InvalidModelError)
    const { readFile } = await import('node:fs/promises')
    const whole = await readFile(await tinyModelPath())
    const truncated = join(d.path, 'truncated.gguf')
    await writeFile(truncated, whole.subarray(0, Math.floor(whole.length / 2)))
    await expect(
      startNode({ dataDir: join(d.path, 'n2'), models: [{ path: truncated }], gpu: false, threads: 1 }),
    ).rejects.toBeInstanceOf(InvalidModelError)
    // Still serving.
    const res = await fetch(`${gw.url}/health`)
    expect(res.status).toBe(200)
  })
})
