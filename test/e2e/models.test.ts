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

// Two users upload the same public GGUF under two names: one CID, two models. A deployment belongs
// to a (model id, CID) pair, so deploying one says nothing about the other, and the other can be
// deployed on the same node (loaded again under its own id) and served under its own name.
describe('two models with the same weights (one CID)', () => {
  let gw: RunningGateway
  let node: RunningNode
  let keyA: string
  let keyB: string
  let cid: string
  let nodeDir: string
  const dirs: Array<{ remove: () => Promise<void> }> = []
  const dir = async (name: string): Promise<string> => {
    const d = await tempDir(name)
    dirs.push(d)
    return d.path
  }
  const details = async (id: string) =>
    (await (await fetch(`${gw.url}/api/models/public/${id}`)).json()) as {
      deployments: Array<Record<string, unknown>>
      stats: { nodes: number }
    }
  const deployedBy = async (key: string) =>
    (
      (await (await fetch(`${gw.url}/api/user/stats`, { headers: { authorization: `Bearer ${key}` } })).json()) as {
        modelsDeployed: number
      }
    ).modelsDeployed
  const listedIds = async () =>
    (
      (await (await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${keyB}` } })).json()) as {
        data: Array<{ id: string }>
      }
    ).data.map((m) => m.id)
  const chat = (key: string, model: string) =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
    })
  const deploy = (key: string, id: string) =>
    fetch(`${gw.url}/api/models/${id}/deploy`, { method: 'POST', headers: { authorization: `Bearer ${key}` } })

  beforeAll(async () => {
    gw = await startGateway({ dataDir: await dir('twins-gw'), listen: LOOP, port: 0 })
    nodeDir = await dir('twins-node')
    node = await startNode({
      dataDir: nodeDir,
      listen: LOOP,
      bootstrap: gw.multiaddrs(),
      models: [],
      threads: 1,
      slots: 1,
      gpu: false,
      heartbeatIntervalMs: 200,
    })
    await waitFor(() => gw.directory.get(node.peerId)?.capabilities != null, 10_000, 'the node in the Directory')
    keyA = await fundedUser(gw, 'twin-a@example.com')
    keyB = await fundedUser(gw, 'twin-b@example.com')
  }, 60_000)

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    await Promise.all(dirs.map((d) => d.remove()))
  })

  it('uploads the same file under two names by two users: two models, one CID', async () => {
    const path = await tinyModelPath()
    const a = await uploadModel(gw.url, keyA, { name: 'twin-a' }, { path })
    const b = await uploadModel(gw.url, keyB, { name: 'twin-b' }, { path })
    expect([a.status, b.status]).toEqual([201, 201])
    const ra = (await a.json()) as { id: string; cid: string }
    const rb = (await b.json()) as { id: string; cid: string }
    expect(rb.cid).toBe(ra.cid)
    cid = ra.cid
  })

  it('deploying one does not show the other as deployed, counted, listed or served', async () => {
    expect((await deploy(keyA, 'twin-a')).status).toBe(202)
    await waitFor(() => gw.directory.nodesServing('twin-a').length === 1, 30_000, 'twin-a served')
    await waitFor(async () => (await details('twin-a')).stats.nodes === 1, 5_000, 'twin-a ready in its details')
    expect((await details('twin-a')).deployments).toEqual([{ nodeId: node.peerId, version: 1, cid, state: 'ready' }])

    const b = await details('twin-b')
    expect(b.deployments).toEqual([])
    expect(b.stats.nodes).toBe(0)
    expect(await deployedBy(keyA)).toBe(1)
    expect(await deployedBy(keyB)).toBe(0)
    expect(await listedIds()).toContain('twin-a')
    expect(await listedIds()).not.toContain('twin-b')
    const res = await chat(keyB, 'twin-b')
    expect(res.status).toBe(404)
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('model_not_found')
  }, 60_000)

  it('the other deploys on the same node and serves chat under its own id; each is counted once', async () => {
    const res = await deploy(keyB, 'twin-b')
    expect(res.status).toBe(202)
    expect(await res.json()).toMatchObject({ nodeId: node.peerId, model: 'twin-b', version: 1, cid })
    await waitFor(() => gw.directory.nodesServing('twin-b').length === 1, 30_000, 'twin-b served')
    await waitFor(async () => (await details('twin-b')).stats.nodes === 1, 5_000, 'twin-b ready in its details')
    expect((await details('twin-b')).deployments).toEqual([{ nodeId: node.peerId, version: 1, cid, state: 'ready' }])
    expect((await details('twin-a')).deployments).toEqual([{ nodeId: node.peerId, version: 1, cid, state: 'ready' }])
    expect(await deployedBy(keyA)).toBe(1)
    expect(await deployedBy(keyB)).toBe(1)
    expect(await listedIds()).toEqual(expect.arrayContaining(['twin-a', 'twin-b']))
    expect(node.engines.get('twin-a')).not.toBe(node.engines.get('twin-b'))

    const out = await chat(keyB, 'twin-b')
    expect(out.status).toBe(200)
    expect(((await out.json()) as { model: string }).model).toBe('twin-b')
    // Both are on the only node: a second deploy of either is the documented conflict, naming it.
    const again = await deploy(keyA, 'twin-a')
    expect(again.status).toBe(409)
    expect(((await again.json()) as { error: string }).error).toMatch(/Version 1 of 'twin-a' is already deployed/)
  }, 60_000)

  it('undeploying one leaves the other serving; each download names its own model', async () => {
    const res = await fetch(`${gw.url}/api/models/twin-a/undeploy`, {
      method: 'POST',
      headers: { authorization: `Bearer ${keyA}` },
    })
    expect(res.status).toBe(200)
    expect(await res.json()).toMatchObject({ nodes: [{ nodeId: node.peerId, status: 'undeployed' }] })
    await waitFor(() => gw.directory.nodesServing('twin-a').length === 0, 5_000, 'twin-a gone')
    expect(gw.directory.nodesServing('twin-b').length).toBe(1)
    await waitFor(async () => (await details('twin-a')).deployments.length === 0, 5_000, 'twin-a details empty')
    expect((await details('twin-b')).deployments).toEqual([{ nodeId: node.peerId, version: 1, cid, state: 'ready' }])
    expect(await deployedBy(keyA)).toBe(0)
    expect(await deployedBy(keyB)).toBe(1)
    expect((await chat(keyB, 'twin-b')).status).toBe(200)
    const kept = JSON.parse(await readFile(join(nodeDir, 'deployments.json'), 'utf8')) as Array<{ id: string }>
    expect(kept.map((d) => d.id)).toEqual(['twin-b'])

    const bytes = await readFile(await tinyModelPath())
    for (const id of ['twin-a', 'twin-b']) {
      const link = (await (await fetch(`${gw.url}/api/models/${id}/download`)).json()) as { url: string; cid: string }
      expect(link.cid).toBe(cid)
      const file = await fetch(link.url)
      expect(file.headers.get('content-disposition')).toBe(`attachment; filename="${id}-v1.gguf"`)
      expect(Buffer.from(await file.arrayBuffer()).equals(bytes)).toBe(true)
    }
  }, 60_000)
})
