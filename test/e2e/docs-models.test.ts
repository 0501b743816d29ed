// The docs' Models examples, run as written with the real curl against a started gateway and a
// node with no model of its own (only the base URL and YOUR_KEY are replaced). The docs upload a
// file named my-model.safetensors: what matters is its content, and ours is a GGUF.
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { copyFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { fundedUser, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { uploadModel } from '../helpers/models.ts'

const BASE = 'https://api.clusterprotocol.ai'

describe('the docs’ Models examples, as written', () => {
  let gw: RunningGateway
  let node: RunningNode
  let key = ''
  let cwd = ''
  const cleanups: Array<() => Promise<void>> = []
  const run = (example: string): Promise<{ code: number; out: string }> =>
    new Promise((resolve) => {
      const script = example.replaceAll(BASE, gw.url).replaceAll('sk-cluster-YOUR_KEY', key).replaceAll('\\ -', '-')
      execFile('bash', ['-c', script], { cwd }, (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: `${stdout}${stderr}` }),
      )
    })

  beforeAll(async () => {
    const g = await tempDir('docs-models-gw')
    const n = await tempDir('docs-models-node')
    const w = await tempDir('docs-models-cwd')
    cleanups.push(g.remove, n.remove, w.remove)
    cwd = w.path
    gw = await startGateway({ dataDir: g.path, listen: ['/ip4/127.0.0.1/tcp/0'], port: 0 })
    node = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [],
      threads: 1,
      gpu: false,
      heartbeatIntervalMs: 200,
    })
    key = await fundedUser(gw, 'docs-models@example.com')
    await copyFile(await tinyModelPath(), join(cwd, 'my-model.safetensors'))
    await waitFor(() => gw.directory.get(node.peerId)?.capabilities != null, 10_000, 'the node')
  })

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    for (const c of cleanups) await c()
  })

  it('Upload a Model', async () => {
    const { code, out } = await run(
      'curl -s -X POST https://api.clusterprotocol.ai/api/models/upload \\ -H "Authorization: Bearer sk-cluster-YOUR_KEY" \\ -F "file=@my-model.safetensors" \\ -F "name=my-custom-model" \\ -F "category=chat" \\ -F "description=A fine-tuned model for customer support"',
    )
    expect(code).toBe(0)
    expect(JSON.parse(out)).toMatchObject({ id: 'my-custom-model', version: 1, name: 'my-custom-model' })
  })

  it('List Models', async () => {
    const { out } = await run('curl -s https://api.clusterprotocol.ai/api/models/public')
    const body = JSON.parse(out) as { models: Array<{ id: string; description: string; category: string }> }
    expect(body.models).toEqual([
      expect.objectContaining({
        id: 'my-custom-model',
        category: 'chat',
        description: 'A fine-tuned model for customer support',
      }),
    ])
  })

  it('Deploy a Model: { "status": "deploying", "nodeId": … }', async () => {
    // The docs deploy llama-3.1-70b: a model of that name is uploaded first — by the operator (an admin):
    // it is a provider model's name, which a user's upload may not take.
    const user = await uploadModel(gw.url, key, { name: 'llama-3.1-70b' }, { path: await tinyModelPath() })
    expect(user.status).toBe(409)
    const admin = readFileSync(gw.adminKeyFile as string, 'utf8').trim()
    const up = await uploadModel(gw.url, admin, { name: 'llama-3.1-70b' }, { path: await tinyModelPath() })
    expect(up.status).toBe(201)
    const { code, out } = await run(
      'curl -s -X POST https://api.clusterprotocol.ai/api/models/llama-3.1-70b/deploy \\\n-H "Authorization: Bearer sk-cluster-YOUR_KEY"',
    )
    expect(code).toBe(0)
    expect(JSON.parse(out)).toMatchObject({ status: 'deploying', nodeId: node.peerId })
    await waitFor(() => gw.directory.nodesServing('llama-3.1-70b').length === 1, 30_000, 'llama-3.1-70b served')
  })
})
