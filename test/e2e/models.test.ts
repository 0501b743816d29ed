// Models over IPFS end to end, on loopback, nothing of ours faked: a GGUF uploaded to a gateway is
// deployed to a node that never had it (fetched over bitswap), served through the official openai
// client, downloaded through a signed URL byte for byte, listed by a second gateway, versioned,
// and undeployed — with the deploy/undeploy events on gossip.
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import type { DeploymentEvent } from '../../protocols/index.ts'
import { fundedUser, smallModelPath, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { uploadModel } from '../helpers/models.ts'

const LOOP = ['/ip4/127.0.0.1/tcp/0']

describe('models over IPFS: upload → deploy → chat → download → second gateway', () => {
  let gw: RunningGateway
  let gw2: RunningGateway
  let node: RunningNode
  let apiKey: string
  const dirs: Array<{ remove: () => Promise<void> }> = []
  const events: DeploymentEvent[] = []
  const dir = async (name: string): Promise<string> => {
    const d = await tempDir(name)
    dirs.push(d)
    return d.path
  }
  let uploaded: { id: string; version: number; cid: string; size: number; sha256: string }
  let nodeDir: string

  beforeAll(async () => {
    gw = await startGateway({ dataDir: await dir('models-gw'), listen: LOOP, port: 0 })
    nodeDir = await dir('models-node')
    // A node with no model at all: it only serves what it is told to deploy.
    node = await startNode({
      dataDir: nodeDir,
      listen: LOOP,
      bootstrap: gw.multiaddrs(),
      models: [],
      threads: 1,
      slots: 2,
      gpu: false,
      heartbeatIntervalMs: 200,
    })
    gw.directory.on('deployment', (e) => events.push(e))
    await waitFor(() => gw.directory.get(node.peerId)?.capabilities != null, 10_000, 'the node in the Directory')
    apiKey = await fundedUser(gw, 'models@example.com')
  }, 60_000)

  afterAll(async () => {
    await Promise.allSettled([node?.stop(), gw2?.stop()])
    await gw?.stop()
    await Promise.all(dirs.map((d) => d.remove()))
  })

  it('uploads a GGUF: id, version 1, CID, size and the metadata read from the file', async () => {
    const path = await smallModelPath()
    const res = await uploadModel(
      gw.url,
      apiKey,
      { name: 'My Small Model', category: 'chat', description: 'random weights' },
      { path },
    )
    expect(res.status).toBe(201)
    uploaded = (await res.json()) as typeof uploaded
    const bytes = await readFile(path)
    expect(uploaded).toMatchObject({ id: 'my-small-model', version: 1, size: bytes.length })
    expect(uploaded.sha256).toBe(createHash('sha256').update(bytes).digest('hex'))
    expect(uploaded.cid).toMatch(/^bafy/)

    const listed = (await (await fetch(`${gw.url}/api/models/public`)).json()) as {
      models: Array<Record<string, unknown>>
    }
    const model = listed.models.find((m) => m.id === 'my-small-model')
    expect(model).toMatchObject({
      name: 'My Small Model',
      category: 'chat',
      description: 'random weights',
      architecture: 'llama',
      quantization: 'Q8_0',
      contextLength: 4096,
      size: bytes.length,
      version: 1,
      cid: uploaded.cid,
      stats: { nodes: 0, inferences: 0 },
      deployments: [],
    })
    expect(model?.parameters).toBeGreaterThan(50_000_000)
    expect(model?.pricing).toMatchObject({ currency: 'USDC' })
  })

  it('deploys to a node that never had it: fetched over IPFS, loaded, announced, then served to the openai client', async () => {
    const res = await fetch(`${gw.url}/api/models/my-small-model/deploy`, {
      method: 'POST',
      headers: { authorization: `Bearer ${apiKey}` },
    })
    expect(res.status).toBe(202)
    expect(await res.json()).toEqual({
      status: 'deploying',
      nodeId: node.peerId,
      model: 'my-small-model',
      version: 1,
      cid: uploaded.cid,
    })
    await waitFor(() => gw.directory.nodesServing('my-small-model').length === 1, 60_000, 'the model served')
    await waitFor(() => events.some((e) => e.type === 'model:deployed'), 5_000, 'model:deployed')
    expect(events.find((e) => e.type === 'model:deployed')).toMatchObject({
      peerId: node.peerId,
      model: { id: 'my-small-model', cid: uploaded.cid, version: 1 },
    })
    // The node's copy is the uploaded file, byte for byte.
    const onNode = await readFile(join(nodeDir, 'models', `${uploaded.cid}.gguf`))
    expect(createHash('sha256').update(onNode).digest('hex')).toBe(uploaded.sha256)

    // Serving is known from the heartbeat; the details follow the node's capabilities record, a beat later.
    const detailsOf = async () =>
      (await (await fetch(`${gw.url}/api/models/public/my-small-model`)).json()) as Record<string, unknown>
    await waitFor(
      async () => ((await detailsOf()).deployments as Array<{ state: string }>)[0]?.state === 'ready',
      5_000,
      'the details to say ready',
    )
    const details = await detailsOf()
    expect(details.deployments).toEqual([{ nodeId: node.peerId, version: 1, cid: uploaded.cid, state: 'ready' }])
    expect(details.stats).toMatchObject({ nodes: 1 })
    const mine = (await (
      await fetch(`${gw.url}/api/user/stats`, { headers: { authorization: `Bearer ${apiKey}` } })
    ).json()) as {
      modelsDeployed: number
    }
    expect(mine.modelsDeployed).toBe(1)
    const stats = (await (await fetch(`${gw.url}/api/stats`)).json()) as { totalModels: number }
    expect(stats.totalModels).toBe(1)

    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey, maxRetries: 0 })
    const completion = await client.chat.completions.create({
      model: 'my-small-model',
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 4,
    })
    expect(completion.model).toBe('my-small-model')
    expect(completion.usage?.completion_tokens).toBeGreaterThan(0)
    await waitFor(
      async () =>
        (
          (await (await fetch(`${gw.url}/api/models/public/my-small-model`)).json()) as {
            stats: { inferences: number }
          }
        ).stats.inferences === 1,
      5_000,
      'the inference counted',
    )
  }, 90_000)

  it('downloads through a signed URL that streams from IPFS, whole and by range', async () => {
    const res = await fetch(`${gw.url}/api/models/my-small-model/download`)
    expect(res.status).toBe(200)
    const link = (await res.json()) as { url: string; cid: string; size: number; expiresAt: string }
    expect(link).toMatchObject({ cid: uploaded.cid, size: uploaded.size })
    expect(Date.parse(link.expiresAt)).toBeGreaterThan(Date.now())
    const whole = await fetch(link.url)
    expect(whole.status).toBe(200)
    expect(whole.headers.get('content-length')).toBe(String(uploaded.size))
    const bytes = Buffer.from(await whole.arrayBuffer())
    expect(bytes.equals(await readFile(await smallModelPath()))).toBe(true)

    const part = await fetch(link.url, { headers: { range: 'bytes=1048570-1048589' } })
    expect(part.status).toBe(206)
    expect(part.headers.get('content-range')).toBe(`bytes 1048570-1048589/${uploaded.size}`)
    expect(Buffer.from(await part.arrayBuffer()).equals(bytes.subarray(1048570, 1048590))).toBe(true)
    const tail = await fetch(link.url, { headers: { range: 'bytes=-10' } })
    expect(Buffer.from(await tail.arrayBuffer()).equals(bytes.subarray(bytes.length - 10))).toBe(true)
    const outside = await fetch(link.url, { headers: { range: `bytes=${uploaded.size}-` } })
    expect(outside.status).toBe(416)
  })

  it('a new upload under the same name is version 2; the history lists both', async () => {
    const res = await uploadModel(gw.url, apiKey, { name: 'my small model' }, { path: await tinyModelPath() })
    expect(res.status).toBe(201)
    const v2 = (await res.json()) as typeof uploaded
    expect(v2).toMatchObject({ id: 'my-small-model', version: 2 })
    expect(v2.cid).not.toBe(uploaded.cid)
    const history = (await (await fetch(`${gw.url}/api/models/my-small-model/versions`)).json()) as {
      versions: Array<{ version: number; cid: string; createdAt: string }>
    }
    expect(history.versions.map((v) => [v.version, v.cid])).toEqual([
      [2, v2.cid],
      [1, uploaded.cid],
    ])
    expect(Number.isNaN(Date.parse(history.versions[0]?.createdAt ?? ''))).toBe(false)
  })

  it('deploying version 2 where version 1 serves swaps them: v1 keeps serving until v2 is ready', async () => {
    const v2 = (
      (await (await fetch(`${gw.url}/api/models/my-small-model/versions`)).json()) as {
        versions: Array<{ cid: string }>
      }
    ).versions[0]?.cid as string
    const res = await fetch(`${gw.url}/api/models/my-small-model/deploy`, {
      method: 'POST',
      headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ version: 2, nodeId: node.peerId }),
    })
    expect(res.status).toBe(202)
    expect(await res.json()).toMatchObject({ status: 'deploying', version: 2, cid: v2 })
    // Accepted while version 1 still serves (loading version 2 takes longer than this answer).
    expect(node.engines.get('my-small-model')?.describe().cid).toBe(uploaded.cid)
    const models = () => gw.directory.get(node.peerId)?.capabilities?.models ?? []
    await waitFor(
      () => models().length === 1 && models()[0]?.cid === v2 && models()[0]?.state === 'ready',
      30_000,
      'version 2 alone on the node',
    )
    expect(models()[0]).toMatchObject({ id: 'my-small-model', version: 2 })
    await waitFor(
      () => events.some((e) => e.type === 'model:undeployed' && e.model.cid === uploaded.cid),
      5_000,
      'version 1 retired',
    )
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey, maxRetries: 0 })
    const out = await client.chat.completions.create({
      model: 'my-small-model',
      messages: [{ role: 'user', content: 'again' }],
      max_tokens: 2,
    })
    expect(out.model).toBe('my-small-model')
  }, 60_000)

  it('a second gateway that joins later lists the same models and versions (synced, signatures checked)', async () => {
    gw2 = await startGateway({ dataDir: await dir('models-gw2'), listen: LOOP, port: 0, bootstrap: node.multiaddrs() })
    await waitFor(
      async () => {
        const r = await fetch(`${gw2.url}/api/models/my-small-model/versions`)
        return r.status === 200 && ((await r.json()) as { versions: unknown[] }).versions.length === 2
      },
      15_000,
      'the second gateway to sync',
    )
    const one = (await (await fetch(`${gw.url}/api/models/public/my-small-model`)).json()) as Record<string, unknown>
    const two = (await (await fetch(`${gw2.url}/api/models/public/my-small-model`)).json()) as Record<string, unknown>
    for (const key of ['id', 'name', 'owner', 'version', 'cid', 'size', 'architecture', 'parameters']) {
      expect(two[key]).toEqual(one[key])
    }
    // It serves the weights too: its Helia fetches the blocks from the mesh.
    const link = (await (await fetch(`${gw2.url}/api/models/my-small-model/download?version=1`)).json()) as {
      url: string
    }
    const bytes = Buffer.from(await (await fetch(link.url)).arrayBuffer())
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(uploaded.sha256)
  }, 60_000)

  it('undeploys: the node unloads it and says so on gossip; only the owner or an admin may', async () => {
    const other = await fundedUser(gw, 'someone-else@example.com')
    const denied = await fetch(`${gw.url}/api/models/my-small-model/undeploy`, {
      method: 'POST',
      headers: { authorization: `Bearer ${other}` },
    })
    expect(denied.status).toBe(403)
    const res = await fetch(`${gw.url}/api/models/my-small-model/undeploy`, {
      method: 'POST',
      headers: { authorization: `Bearer ${apiKey}` },
    })
    expect(res.status).toBe(200)
    expect(await res.json()).toMatchObject({
      status: 'undeployed',
      nodes: [{ nodeId: node.peerId, status: 'undeployed' }],
    })
    await waitFor(
      () => events.filter((e) => e.type === 'model:undeployed').length === 2,
      5_000,
      'model:undeployed for version 2',
    )
    await waitFor(() => gw.directory.nodesServing('my-small-model').length === 0, 5_000, 'the model gone')
    const kept = JSON.parse(await readFile(join(nodeDir, 'deployments.json'), 'utf8')) as unknown[]
    expect(kept).toEqual([])
    const mine = (await (
      await fetch(`${gw.url}/api/user/stats`, { headers: { authorization: `Bearer ${apiKey}` } })
    ).json()) as {
      modelsDeployed: number
    }
    expect(mine.modelsDeployed).toBe(0)
  })
})
