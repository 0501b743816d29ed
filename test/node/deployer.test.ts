// The node's Deployer, asked directly over /cluster/deploy/1.0.0 by a peer of the mesh (as any peer
// can): it takes only weights a signed registry record vouches for under that name, checks what it
// fetches against the record, and never serves what fails a check. Undeploying frees the disk the
// deployment took (file and blocks) unless another id on the same weights still uses it. Only
// gateways the node trusts (its bootstrap peers, node.trustedGateways) are heard, and a model
// deployed by one of them is undeployed or replaced only by that one.
import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
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
  type ModelRecord,
} from '../../protocols/index.ts'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { loadOrCreatePeerKey } from '../../src/mesh/peer-key.ts'
import { sendBytes } from '../../src/mesh/streams.ts'
import { signModelRecord } from '../../src/models/registry.ts'
import { ContentStore, parseCid } from '../../src/storage/content.ts'
import { smallModelPath, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'

type Model = Extract<DeployRequest, { type: 'deploy' }>['model']
const SOME_CID = 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'

/** Bytes of the files under `dir`, all the way down. */
async function diskUse(dir: string): Promise<number> {
  let total = 0
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name)).catch(() => ({ size: 0 }))).size
  }
  return total
}

describe('Deployer: what a deploy request is checked against, and the disk a deployment takes', () => {
  let node: RunningNode
  let nodeDir: string
  let peer: MeshPeer
  let store: ContentStore
  let key: PrivateKey
  /** A gateway the node trusts (node.trustedGateways) that is not its bootstrap peer. */
  let other: MeshPeer
  /** Any peer of the mesh: not a gateway the node trusts. */
  let stranger: MeshPeer
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    const p = await tempDir('deployer-peer')
    const n = await tempDir('deployer-node')
    nodeDir = n.path
    cleanups.push(p.remove, n.remove)
    // This peer plays a gateway: it signs registry records and asks the node to deploy them.
    key = await loadOrCreatePeerKey(p.path)
    peer = await createMeshPeer({ dataDir: p.path, privateKey: key, listen: ['/ip4/127.0.0.1/tcp/0'] })
    store = await ContentStore.open({ dataDir: p.path, libp2p: peer })
    const o = await tempDir('deployer-other')
    const s = await tempDir('deployer-stranger')
    cleanups.push(o.remove, s.remove)
    const otherKey = await loadOrCreatePeerKey(o.path)
    other = await createMeshPeer({ dataDir: o.path, privateKey: otherKey, listen: ['/ip4/127.0.0.1/tcp/0'] })
    stranger = await createMeshPeer({
      dataDir: s.path,
      privateKey: await loadOrCreatePeerKey(s.path),
      listen: ['/ip4/127.0.0.1/tcp/0'],
    })
    node = await startNode({
      trustedGateways: [peerIdFromPrivateKey(otherKey).toString()],
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: peer.getMultiaddrs().map(String),
      models: [],
      gpu: false,
      // Room for a few small models (55 MB each), not for 'big'.
      modelMemoryBytes: 256 * 1024 * 1024,
    })
    await waitFor(() => peer.getConnections().some((c) => c.remotePeer.toString() === node.peerId), 10_000, 'connected')
  })

  afterAll(async () => {
    await node?.stop()
    await store?.stop()
    await peer?.stop()
    await other?.stop()
    await stranger?.stop()
    for (const c of cleanups) await c()
  })

  const ask = async (request: DeployRequest, from: MeshPeer = peer): Promise<DeployResponse> => {
    const target = from === peer ? peerIdFromString(node.peerId) : node.multiaddrs().map((a) => multiaddr(a))
    const stream = await from.dialProtocol(target, DEPLOY_PROTOCOL)
    await sendBytes(stream, encodeFrame(DeployRequestSchema, request))
    await stream.close()
    for await (const answer of decodeFrames(stream, DeployResponseSchema)) return answer
    throw new Error('no answer')
  }
  const model = (over: Partial<Model>): Model => ({
    id: 'probe',
    version: 1,
    cid: SOME_CID,
    sizeBytes: 1000,
    sha256: '0'.repeat(64),
    ...over,
  })
  /** The registry record that vouches for `m`, signed by `signer` (this peer by default). */
  const recordOf = (m: Model, signer: PrivateKey = key): Promise<ModelRecord> =>
    signModelRecord(signer, {
      v: 1,
      ...m,
      name: m.id,
      category: 'chat',
      description: '',
      owner: 'usr_test',
      gateway: peerIdFromPrivateKey(signer).toString(),
      gguf: { name: m.id, architecture: 'llama', parameters: 1, quantization: 'Q8_0', contextLength: 1 },
      createdAt: Date.now(),
    })
  const deploy = async (m: Model, providers: string[] = []): Promise<DeployResponse> =>
    ask({ type: 'deploy', model: m, providers, records: [await recordOf(m)] })
  const stateOf = (cid: string, id?: string) =>
    node.deployer.pending().find((m) => m.cid === cid && (id == null || m.id === id))
  const addRandom = async (bytes: Buffer) =>
    (
      await store.add(
        (async function* () {
          yield bytes
        })(),
      )
    ).cid.toString()

  it('refuses a model bigger than its room, a CID that does not parse, and an undeploy of nothing', async () => {
    expect(await deploy(model({ id: 'big', sizeBytes: 257 * 1024 * 1024 }))).toMatchObject({
      type: 'refused',
      code: 'no_room',
    })
    expect(await deploy(model({ cid: 'bafyNOTAREALCIDATALL' }))).toMatchObject({
      type: 'refused',
      code: 'invalid_request',
    })
    expect(await ask({ type: 'undeploy', modelId: 'never-deployed' })).toMatchObject({
      type: 'refused',
      code: 'not_deployed',
    })
  })

  it('takes only what a signed record vouches for: not another model, not a forged or mismatched one', async () => {
    const wanted = model({ id: 'wanted' })
    // A record for something else.
    expect(
      await ask({ type: 'deploy', model: wanted, providers: [], records: [await recordOf(model({ id: 'other' }))] }),
    ).toMatchObject({ type: 'refused', message: expect.stringMatching(/registry has no version 1 of wanted/) })
    // A record altered after signing.
    const altered = { ...(await recordOf(wanted)), sizeBytes: 999 }
    expect(await ask({ type: 'deploy', model: wanted, providers: [], records: [altered] })).toMatchObject({
      type: 'refused',
    })
    // A claim that differs from its record.
    const record = await recordOf(wanted)
    expect(
      await ask({ type: 'deploy', model: { ...wanted, sizeBytes: 12 }, providers: [], records: [record] }),
    ).toMatchObject({ type: 'refused' })
    // 'owned' belongs to another gateway: this peer's version 2 of it does not count.
    const other = await generateKeyPair('Ed25519')
    const v1 = await recordOf(model({ id: 'owned' }), other)
    const v2 = model({ id: 'owned', version: 2, cid: 'bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy' })
    expect(await ask({ type: 'deploy', model: v2, providers: [], records: [v1, await recordOf(v2)] })).toMatchObject({
      type: 'refused',
      message: expect.stringMatching(/registry has no version 2 of owned/),
    })
  })

  it('fails a deploy whose claimed size is not what the CID holds, before fetching the weights', async () => {
    const cid = await addRandom(randomBytes(3 * 1024 * 1024))
    const answer = await deploy(model({ id: 'liar', cid, sizeBytes: 100 }), peer.getMultiaddrs().map(String))
    expect(answer).toEqual({ type: 'accepted', state: 'fetching' })
    await waitFor(() => stateOf(cid)?.state === 'failed', 10_000, 'the deploy to fail')
    expect(stateOf(cid)?.error).toMatch(/holds 3145728 bytes, not the 100/)
    expect(node.engines.has('liar')).toBe(false)
  })

  it('fails weights that are not a GGUF, or whose sha256 differs, and serves nothing', async () => {
    const bytes = randomBytes(2 * 1024 * 1024)
    const cid = await addRandom(bytes)
    const wrongHash = await deploy(
      model({ id: 'wrong-hash', cid, sizeBytes: bytes.length }),
      peer.getMultiaddrs().map(String),
    )
    expect(wrongHash.type).toBe('accepted')
    await waitFor(() => stateOf(cid, 'wrong-hash')?.state === 'failed', 10_000, 'the sha256 check')
    expect(stateOf(cid, 'wrong-hash')?.error).toMatch(/sha256 of the fetched weights is [0-9a-f]{64}, expected 0{64}/)
    // The same CID again, with the right hash: fetched (its blocks are here now), then the GGUF check fails.
    const sha256 = createHash('sha256').update(bytes).digest('hex')
    expect(await deploy(model({ id: 'not-gguf', cid, sizeBytes: bytes.length, sha256 }))).toEqual({
      type: 'accepted',
      state: 'fetching',
    })
    await waitFor(() => /GGUF/.test(stateOf(cid, 'not-gguf')?.error ?? ''), 10_000, 'the GGUF check')
    expect(stateOf(cid, 'not-gguf')?.error).toBe('the weights are not a usable GGUF: not a GGUF file (bad magic)')
    expect(node.engines.size).toBe(0)
    // Failed deployments are shown in the capabilities record, with why.
    const pending = node.deployer.pending()
    expect(pending.length).toBeGreaterThanOrEqual(2)
    expect(pending.every((m) => m.state === 'failed' && m.error != null)).toBe(true)
  })

  it('serves two ids backed by the same CID, each loaded and undeployed on its own, from one file', async () => {
    const bytes = await readFile(await tinyModelPath())
    const cid = await addRandom(bytes)
    const sha256 = createHash('sha256').update(bytes).digest('hex')
    const one = model({ id: 'same-weights-one', cid, sizeBytes: bytes.length, sha256 })
    const two = model({ id: 'same-weights-two', cid, sizeBytes: bytes.length, sha256 })
    // Asked at once: one fetches the file, the other waits for it and finds it whole.
    const answers = await Promise.all([deploy(one, peer.getMultiaddrs().map(String)), deploy(two)])
    expect(answers).toEqual([
      { type: 'accepted', state: 'fetching' },
      { type: 'accepted', state: 'fetching' },
    ])
    await waitFor(
      () => node.engines.has('same-weights-one') && node.engines.has('same-weights-two'),
      20_000,
      'both ids served',
    )
    expect(node.engines.get('same-weights-one')).not.toBe(node.engines.get('same-weights-two'))
    expect(node.deployer.origin('same-weights-two')).toEqual({ cid, version: 1 })
    // The same id and CID again is the deployment already there.
    expect(await deploy(two)).toEqual({ type: 'accepted', state: 'ready' })
    // The same weights under a digest that is not theirs: refused by the check, as a fetch would be.
    const liar = model({ id: 'same-weights-liar', cid, sizeBytes: bytes.length, sha256: 'f'.repeat(64) })
    expect(await deploy(liar)).toEqual({ type: 'accepted', state: 'fetching' })
    await waitFor(() => stateOf(cid, 'same-weights-liar')?.state === 'failed', 10_000, 'the digest check')
    expect(node.engines.has('same-weights-liar')).toBe(false)

    expect(await ask({ type: 'undeploy', modelId: 'same-weights-one' })).toEqual({
      type: 'accepted',
      state: 'unloaded',
    })
    expect(node.engines.has('same-weights-one')).toBe(false)
    expect(node.engines.has('same-weights-two')).toBe(true)
    expect(node.deployer.origin('same-weights-two')).toEqual({ cid, version: 1 })
    expect(await ask({ type: 'undeploy', modelId: 'same-weights-two' })).toEqual({
      type: 'accepted',
      state: 'unloaded',
    })
    expect(node.engines.size).toBe(0)
  }, 60_000)

  it('undeploy frees the file and the blocks, once no other id on the same CID uses them', async () => {
    const bytes = await readFile(await smallModelPath())
    const cid = await addRandom(bytes)
    const sha256 = createHash('sha256').update(bytes).digest('hex')
    const file = join(nodeDir, 'models', `${cid}.gguf`)
    const before = await diskUse(nodeDir)
    const one = model({ id: 'disk-one', cid, sizeBytes: bytes.length, sha256 })
    const two = model({ id: 'disk-two', cid, sizeBytes: bytes.length, sha256 })
    expect(await deploy(one, peer.getMultiaddrs().map(String))).toMatchObject({ type: 'accepted' })
    await waitFor(() => node.engines.has('disk-one'), 30_000, 'disk-one served')
    expect(await deploy(two)).toMatchObject({ type: 'accepted' })
    await waitFor(() => node.engines.has('disk-two'), 30_000, 'disk-two served')
    // While deployed: the file llama.cpp reads, and the blocks the node provides to others.
    expect(existsSync(file)).toBe(true)
    expect(await node.store.hasAll(parseCid(cid))).toBe(true)
    const deployed = await diskUse(nodeDir)
    expect(deployed - before).toBeGreaterThan(1.9 * bytes.length)
    expect(deployed - before).toBeLessThan(2.1 * bytes.length)

    // One of two ids on these weights leaves: the other keeps its file and blocks.
    expect(await ask({ type: 'undeploy', modelId: 'disk-one' })).toEqual({ type: 'accepted', state: 'unloaded' })
    expect(node.engines.has('disk-two')).toBe(true)
    expect(existsSync(file)).toBe(true)
    expect(await node.store.hasAll(parseCid(cid))).toBe(true)

    // The last one leaves: both copies go.
    expect(await ask({ type: 'undeploy', modelId: 'disk-two' })).toEqual({ type: 'accepted', state: 'unloaded' })
    expect(existsSync(file)).toBe(false)
    expect(existsSync(`${file}.part`)).toBe(false)
    expect(await node.store.hasAll(parseCid(cid))).toBe(false)
    expect(await diskUse(nodeDir)).toBeLessThan(before + 0.05 * bytes.length)
    // Deployed again, it is fetched again (the peer still provides it) and served.
    expect(await deploy(one, peer.getMultiaddrs().map(String))).toMatchObject({ type: 'accepted' })
    await waitFor(() => node.engines.has('disk-one'), 30_000, 'disk-one served again')
    expect(existsSync(file)).toBe(true)
    expect(await ask({ type: 'undeploy', modelId: 'disk-one' })).toMatchObject({ type: 'accepted' })
    expect(existsSync(file)).toBe(false)
  }, 120_000)

  it('takes deploys and undeploys only from gateways it trusts; a model only its deploying gateway undeploys', async () => {
    const bytes = await readFile(await tinyModelPath())
    const cid = await addRandom(bytes)
    const sha256 = createHash('sha256').update(bytes).digest('hex')
    const mine = model({ id: 'trust-mine', cid, sizeBytes: bytes.length, sha256 })
    const record = await recordOf(mine)
    const request: DeployRequest = {
      type: 'deploy',
      model: mine,
      providers: peer.getMultiaddrs().map(String),
      records: [record],
    }

    // A peer that is not a trusted gateway: refused, nothing starts.
    expect(await ask(request, stranger)).toMatchObject({
      type: 'refused',
      code: 'forbidden',
      message: expect.stringMatching(/not a gateway this node trusts/),
    })
    expect(stateOf(cid, 'trust-mine')).toBeUndefined()
    expect(node.engines.has('trust-mine')).toBe(false)

    // The bootstrap gateway deploys it.
    expect(await ask(request)).toEqual({ type: 'accepted', state: 'fetching' })
    await waitFor(() => node.engines.has('trust-mine'), 20_000, 'trust-mine served')

    // The stranger cannot undeploy it, nor can a trusted gateway that did not deploy it (or replace it).
    expect(await ask({ type: 'undeploy', modelId: 'trust-mine' }, stranger)).toMatchObject({
      type: 'refused',
      code: 'forbidden',
    })
    expect(await ask({ type: 'undeploy', modelId: 'trust-mine' }, other)).toMatchObject({
      type: 'refused',
      code: 'forbidden',
      message: expect.stringMatching(/deployed on this node by another gateway/),
    })
    expect(await ask(request, other)).toMatchObject({ type: 'refused', code: 'forbidden' })
    expect(node.engines.has('trust-mine')).toBe(true)
    // Who asked is kept with the deployment, on disk.
    const kept = JSON.parse(await readFile(join(nodeDir, 'deployments.json'), 'utf8')) as Array<{
      id?: string
      by?: string
    }>
    expect(kept.find((d) => d.id === 'trust-mine')?.by).toBe(peer.peerId.toString())

    // A trusted gateway (node.trustedGateways) deploys a model of its own, and undeploys it.
    const theirs = model({ id: 'trust-theirs', cid, sizeBytes: bytes.length, sha256 })
    expect(
      await ask({ type: 'deploy', model: theirs, providers: [], records: [await recordOf(theirs)] }, other),
    ).toEqual({ type: 'accepted', state: 'fetching' })
    await waitFor(() => node.engines.has('trust-theirs'), 20_000, 'trust-theirs served')
    expect(await ask({ type: 'undeploy', modelId: 'trust-theirs' })).toMatchObject({ code: 'forbidden' })
    expect(await ask({ type: 'undeploy', modelId: 'trust-theirs' }, other)).toEqual({
      type: 'accepted',
      state: 'unloaded',
    })

    // The deploying gateway undeploys its own.
    expect(await ask({ type: 'undeploy', modelId: 'trust-mine' })).toEqual({ type: 'accepted', state: 'unloaded' })
    expect(node.engines.has('trust-mine')).toBe(false)
  }, 60_000)
})
