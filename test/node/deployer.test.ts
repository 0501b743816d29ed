// The node's Deployer, asked directly over /cluster/deploy/1.0.0 by a peer of the mesh (as any peer
// can): it checks what it is told against what the CID holds, and never serves what fails a check.
import { randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningNode, startNode } from '../../node/node.ts'
import {
  DEPLOY_PROTOCOL,
  type DeployRequest,
  DeployRequestSchema,
  type DeployResponse,
  DeployResponseSchema,
  decodeFrames,
  encodeFrame,
} from '../../protocols/index.ts'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { sendBytes } from '../../src/mesh/streams.ts'
import { ContentStore } from '../../src/storage/content.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

describe('Deployer: what a deploy request is checked against', () => {
  let node: RunningNode
  let peer: MeshPeer
  let store: ContentStore
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    const p = await tempDir('deployer-peer')
    const n = await tempDir('deployer-node')
    cleanups.push(p.remove, n.remove)
    peer = await createMeshPeer({ dataDir: p.path, listen: ['/ip4/127.0.0.1/tcp/0'] })
    store = await ContentStore.open({ dataDir: p.path, libp2p: peer })
    node = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: peer.getMultiaddrs().map(String),
      models: [],
      gpu: false,
      modelMemoryBytes: 8 * 1024 * 1024,
    })
    await waitFor(() => peer.getConnections().some((c) => c.remotePeer.toString() === node.peerId), 10_000, 'connected')
  })

  afterAll(async () => {
    await node?.stop()
    await store?.stop()
    await peer?.stop()
    for (const c of cleanups) await c()
  })

  const ask = async (request: DeployRequest): Promise<DeployResponse> => {
    const stream = await peer.dialProtocol(peerIdFromString(node.peerId), DEPLOY_PROTOCOL)
    await sendBytes(stream, encodeFrame(DeployRequestSchema, request))
    await stream.close()
    for await (const answer of decodeFrames(stream, DeployResponseSchema)) return answer
    throw new Error('no answer')
  }
  const model = (over: Partial<Extract<DeployRequest, { type: 'deploy' }>['model']>) => ({
    id: 'probe',
    version: 1,
    cid: 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku',
    sizeBytes: 1000,
    sha256: '0'.repeat(64),
    ...over,
  })
  const stateOf = (cid: string) => node.deployer.pending().find((m) => m.cid === cid)

  it('refuses a model bigger than its room, and a CID that does not parse', async () => {
    expect(await ask({ type: 'deploy', model: model({ sizeBytes: 9 * 1024 * 1024 }), providers: [] })).toMatchObject({
      type: 'refused',
      code: 'no_room',
    })
    expect(await ask({ type: 'deploy', model: model({ cid: 'bafyNOTAREALCIDATALL' }), providers: [] })).toMatchObject({
      type: 'refused',
      code: 'invalid_request',
    })
    expect(await ask({ type: 'undeploy', modelId: 'never-deployed' })).toMatchObject({
      type: 'refused',
      code: 'not_deployed',
    })
  })

  it('fails a deploy whose claimed size is not what the CID holds, before fetching the weights', async () => {
    const { cid } = await store.add(
      (async function* () {
        yield randomBytes(3 * 1024 * 1024)
      })(),
    )
    const answer = await ask({
      type: 'deploy',
      model: model({ id: 'liar', cid: cid.toString(), sizeBytes: 100 }),
      providers: peer.getMultiaddrs().map(String),
    })
    expect(answer).toEqual({ type: 'accepted', state: 'fetching' })
    await waitFor(() => stateOf(cid.toString())?.state === 'failed', 10_000, 'the deploy to fail')
    expect(stateOf(cid.toString())?.error).toMatch(/holds 3145728 bytes, not the 100/)
    expect(node.engines.has('liar')).toBe(false)
  })

  it('fails weights that are not a GGUF, or whose sha256 differs, and serves nothing', async () => {
    const bytes = randomBytes(2 * 1024 * 1024)
    const { cid } = await store.add(
      (async function* () {
        yield bytes
      })(),
    )
    const wrongHash = await ask({
      type: 'deploy',
      model: model({ id: 'wrong-hash', cid: cid.toString(), sizeBytes: bytes.length }),
      providers: peer.getMultiaddrs().map(String),
    })
    expect(wrongHash.type).toBe('accepted')
    await waitFor(() => stateOf(cid.toString())?.state === 'failed', 10_000, 'the sha256 check')
    expect(stateOf(cid.toString())?.error).toMatch(/sha256 of the fetched weights is [0-9a-f]{64}, expected 0{64}/)
    // The same CID again, with the right hash: fetched (from its blocks, already here), then the GGUF check fails.
    const { createHash } = await import('node:crypto')
    const again = await ask({
      type: 'deploy',
      model: model({
        id: 'not-gguf',
        cid: cid.toString(),
        sizeBytes: bytes.length,
        sha256: createHash('sha256').update(bytes).digest('hex'),
      }),
      providers: [],
    })
    expect(again).toEqual({ type: 'accepted', state: 'fetching' })
    await waitFor(
      () => stateOf(cid.toString())?.state === 'failed' && /GGUF/.test(stateOf(cid.toString())?.error ?? ''),
      10_000,
      'the GGUF check',
    )
    expect(stateOf(cid.toString())?.error).toBe('the weights are not a usable GGUF: not a GGUF file (bad magic)')
    expect(node.engines.size).toBe(0)
    // Failed deployments are shown in the capabilities record, with why.
    expect(node.deployer.pending().every((m) => m.state === 'failed' && m.error != null)).toBe(true)
  })
})
