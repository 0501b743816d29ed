// Gossip between real libp2p peers on loopback: the bus must deliver valid messages, and must make
// gossipsub reject (not deliver, not forward, score down) anything malformed or forged, because the
// Directory trusts whatever the bus hands it. Also: a data dir keeps its peer id, and a Directory
// fetches capabilities over a stream when a heartbeat announces a version it lacks.
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest'
import {
  type Capabilities,
  CapabilitiesSchema,
  type Heartbeat,
  HeartbeatSchema,
  MAX_GOSSIP_BYTES,
  TOPICS,
} from '../../protocols/index.ts'
import { PEER_KEY_FILE } from '../../src/mesh/constants.ts'
import { Directory } from '../../src/mesh/directory.ts'
import { GossipBus } from '../../src/mesh/gossip.ts'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { fetchCapabilities, serveCapabilities } from '../../src/mesh/streams.ts'

const HEARTBEAT_TOPIC = TOPICS.heartbeat
const enc = new TextEncoder()

const dirs: string[] = []
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'cluster-gossip-test-'))
  dirs.push(d)
  return d
}

/** Peers (and buses) started by the current test; stopped after it. */
let scoped: Array<{ stop: () => unknown }> = []
async function startPeer(dataDir?: string): Promise<MeshPeer> {
  const peer = await createMeshPeer({ dataDir: dataDir ?? (await tempDir()), listen: ['/ip4/127.0.0.1/tcp/0'] })
  scoped.push(peer)
  return peer
}
function bus(peer: MeshPeer): GossipBus {
  const b = new GossipBus(peer.services.pubsub)
  scoped.push({ stop: () => b.close() })
  return b
}

async function stopAll(list: Array<{ stop: () => unknown }>): Promise<void> {
  // Buses were pushed after their peers: close them first.
  for (const s of list.reverse()) await s.stop()
}

afterEach(async () => {
  const list = scoped
  scoped = []
  await stopAll(list)
})

afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })))
})

async function waitFor(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

async function connect(from: MeshPeer, to: MeshPeer): Promise<void> {
  const addr = to.getMultiaddrs()[0]
  if (addr == null) throw new Error('peer has no listen address')
  await from.dial(addr)
}

/** The router's score of a peer: on the implementation, though not on the exported GossipSub type. */
function scoreOf(peer: MeshPeer, of: string): number {
  return (peer.services.pubsub as unknown as { getScore(id: string): number }).getScore(of)
}

function heartbeatOf(peer: MeshPeer, over: Partial<Heartbeat> = {}): Heartbeat {
  return {
    v: 1,
    peerId: peer.peerId.toString(),
    incarnation: 1,
    seq: 0,
    sentAt: Date.now(),
    intervalMs: 1000,
    state: 'serving',
    load: { active: 0, queued: 0, slots: 1, maxQueue: 4 },
    capabilitiesVersion: 0,
    models: ['tiny'],
    ...over,
  }
}

// Shared so that seq only grows: a Directory ignores a heartbeat older than the one it holds.
let seq = 0

/** Publishes a fresh heartbeat every 100 ms until `done()`: a gossipsub mesh forms asynchronously. */
async function beatUntil(
  b: GossipBus,
  peer: MeshPeer,
  done: () => boolean,
  over: Partial<Heartbeat> = {},
): Promise<void> {
  await waitFor(async () => {
    if (done()) return true
    await b.publish('heartbeat', HeartbeatSchema, heartbeatOf(peer, { ...over, seq: seq++ }))
    await new Promise((r) => setTimeout(r, 100))
    return done()
  }, 'a heartbeat to arrive')
}

describe('GossipBus between two peers', () => {
  let receiver: MeshPeer
  let receiverBus: GossipBus
  const delivered: Array<{ hb: Heartbeat; from: string }> = []

  beforeAll(async () => {
    receiver = await createMeshPeer({ dataDir: await tempDir(), listen: ['/ip4/127.0.0.1/tcp/0'] })
    receiverBus = new GossipBus(receiver.services.pubsub)
    receiverBus.subscribe('heartbeat', HeartbeatSchema, (hb, from) => delivered.push({ hb, from }))
  })

  afterAll(async () => {
    receiverBus?.close()
    await receiver?.stop()
  })

  it('delivers a valid heartbeat published on one peer to the handler on the other', async () => {
    const sender = await startPeer()
    const senderBus = bus(sender)
    await connect(sender, receiver)
    const senderId = sender.peerId.toString()
    const fromSender = (): Array<{ hb: Heartbeat; from: string }> => delivered.filter((d) => d.from === senderId)

    await beatUntil(senderBus, sender, () => fromSender().length > 0, { models: ['tiny', 'big'] })

    const first = fromSender()[0]!
    expect(first.hb).toMatchObject({
      v: 1,
      peerId: senderId,
      incarnation: 1,
      models: ['tiny', 'big'],
      state: 'serving',
    })
    expect(receiverBus.stats.received[HEARTBEAT_TOPIC]).toBeGreaterThanOrEqual(1)
    expect(receiverBus.stats.rejected[HEARTBEAT_TOPIC] ?? 0).toBe(0)
    expect(senderBus.stats.published[HEARTBEAT_TOPIC]).toBeGreaterThanOrEqual(1)
    expect(scoreOf(receiver, senderId)).toBeGreaterThanOrEqual(0)
  })

  const otherPeerId = async (): Promise<string> => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()

  // Each case uses a fresh sender: gossipsub stops listening to a peer once its score is below
  // the graylist threshold, which several rejections in a row would reach.
  it.each([
    ['not JSON', async () => enc.encode('this is not json {')],
    [
      'off-schema (intervalMs 10)',
      async (s: MeshPeer) => enc.encode(JSON.stringify(heartbeatOf(s, { intervalMs: 10 }))),
    ],
    [
      'off-schema (a capabilities record on the heartbeat topic)',
      async (s: MeshPeer) => enc.encode(JSON.stringify({ v: 1, peerId: s.peerId.toString(), version: 1 })),
    ],
    [
      'oversized (valid JSON padded past MAX_GOSSIP_BYTES)',
      async (s: MeshPeer) => {
        const json = JSON.stringify(heartbeatOf(s))
        return enc.encode(json + ' '.repeat(MAX_GOSSIP_BYTES + 1024 - json.length))
      },
    ],
    [
      "a heartbeat claiming another peer's id",
      async (s: MeshPeer) => enc.encode(JSON.stringify(heartbeatOf(s, { peerId: await otherPeerId() }))),
    ],
  ] as const)('rejects a raw message that is %s: not delivered, counted, sender scored down', async (_what, make) => {
    const sender = await startPeer()
    const senderId = sender.peerId.toString()
    await connect(sender, receiver)
    // Raw publishes are fire-and-forget: first make sure the sender knows the receiver subscribes.
    await waitFor(
      () => sender.services.pubsub.getSubscribers(HEARTBEAT_TOPIC).some((p) => p.equals(receiver.peerId)),
      'the sender to see the subscription',
    )
    const rejectedBefore = receiverBus.stats.rejected[HEARTBEAT_TOPIC] ?? 0
    const bytes = await make(sender)
    const result = await sender.services.pubsub.publish(HEARTBEAT_TOPIC, bytes)
    expect(result.recipients.map((p) => p.toString())).toContain(receiver.peerId.toString())

    await waitFor(
      () => (receiverBus.stats.rejected[HEARTBEAT_TOPIC] ?? 0) > rejectedBefore,
      'the receiver to reject the message',
    )
    // Score is cached for up to a gossipsub heartbeat (1 s).
    await waitFor(() => scoreOf(receiver, senderId) < 0, 'the sender score to drop', 5000)
    expect(delivered.filter((d) => d.from === senderId)).toEqual([])
    expect(receiverBus.stats.received[HEARTBEAT_TOPIC] ?? 0).toBe(delivered.length)
  })
})

describe('peer identity', () => {
  it('the same data dir gives the same peer id across restarts; another data dir a different one', async () => {
    const dir = await tempDir()
    const first = await createMeshPeer({ dataDir: dir, listen: ['/ip4/127.0.0.1/tcp/0'] })
    const firstId = first.peerId.toString()
    await first.stop()
    const mode = (await stat(join(dir, PEER_KEY_FILE))).mode & 0o777
    expect(mode).toBe(0o600)

    const again = await startPeer(dir)
    expect(again.peerId.toString()).toBe(firstId)
    const other = await startPeer()
    expect(other.peerId.toString()).not.toBe(firstId)
    expect(other.peerId.type).toBe('Ed25519')
  })
})

describe('capabilities over streams', () => {
  function capabilitiesOf(peer: MeshPeer, version: number): Capabilities {
    return {
      v: 1,
      peerId: peer.peerId.toString(),
      incarnation: 1,
      version,
      models: [{ id: 'tiny', contextSize: 512, state: 'ready', tasks: ['chat'] }],
      hardware: { cpu: { model: 'test', cores: 2 }, ramBytes: 1 << 30, gpus: [] },
      prices: [{ model: 'tiny', inputPerMillion: '1000', outputPerMillion: '2000' }],
      payoutAddress: `0x${'ab'.repeat(20)}`,
      software: { name: 'cluster', version: 'test' },
    }
  }

  it('fetchCapabilities returns the record a peer serves, and fails against a peer serving none', async () => {
    const node = await startPeer()
    const client = await startPeer()
    const silent = await startPeer()
    const record = capabilitiesOf(node, 4)
    await serveCapabilities(node, () => record)
    await connect(client, node)
    await connect(client, silent)

    expect(CapabilitiesSchema.parse(await fetchCapabilities(client, node.peerId.toString()))).toEqual(record)
    await expect(fetchCapabilities(client, silent.peerId.toString(), 2000)).rejects.toThrow()
  })

  it("a Directory fetches a node's capabilities when its heartbeat announces a newer version", async () => {
    const node = await startPeer()
    const gateway = await startPeer()
    const nodeBus = bus(node)
    const gatewayBus = bus(gateway)
    let version = 2
    await serveCapabilities(node, () => capabilitiesOf(node, version))

    const fetcher = vi.fn((id: string) => fetchCapabilities(gateway, id))
    const directory = new Directory({ fetchCapabilities: fetcher })
    directory.start(gatewayBus)
    scoped.push({ stop: () => directory.stop() })
    const versions: Array<number | undefined> = []
    directory.on('node:capabilities', (e) => versions.push(e.capabilities?.version))

    await connect(gateway, node)
    const nodeId = node.peerId.toString()
    await beatUntil(nodeBus, node, () => directory.get(nodeId)?.capabilities != null, { capabilitiesVersion: 2 })

    expect(directory.get(nodeId)?.capabilities).toEqual(capabilitiesOf(node, 2))
    expect(fetcher).toHaveBeenCalledWith(nodeId)
    // Nothing went over the capabilities topic: the record can only have come from the stream.
    expect(nodeBus.stats.published[TOPICS.capabilities]).toBeUndefined()

    // The node changes its record; the next heartbeats announce it and the gateway catches up.
    version = 3
    await beatUntil(nodeBus, node, () => directory.get(nodeId)?.capabilities?.version === 3, {
      capabilitiesVersion: 3,
    })
    expect(versions).toEqual([2, 3])
    // Heartbeats announcing a version already held do not fetch again.
    const calls = fetcher.mock.calls.length
    await nodeBus.publish('heartbeat', HeartbeatSchema, heartbeatOf(node, { seq: seq++, capabilitiesVersion: 3 }))
    await new Promise((r) => setTimeout(r, 200))
    expect(fetcher.mock.calls.length).toBe(calls)
  })
})
