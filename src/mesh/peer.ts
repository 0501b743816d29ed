// The libp2p peer every role runs: TCP + WebSockets, noise, yamux, identify, ping, gossipsub
// (StrictSign, scored) and a kad-dht on a private protocol id. One factory, configured from MeshConfig.
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { type GossipSub, gossipsub } from '@libp2p/gossipsub'
import { createPeerScoreParams, createTopicScoreParams } from '@libp2p/gossipsub/score'
import { identify } from '@libp2p/identify'
import { KEEP_ALIVE, type Libp2p, type PrivateKey } from '@libp2p/interface'
import { type KadDHT, kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { type Ping, ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'
import { DHT_PROTOCOL, TOPICS } from '../../protocols/index.ts'
import { withCoalescedWrites } from './coalesce.ts'
import { BOOTSTRAP_REDIAL_MS, DEFAULT_LISTEN } from './constants.ts'
import { loadOrCreatePeerKey } from './peer-key.ts'
import { endReadersAfterBufferedData } from './stream-end.ts'
import { sendWindowUpdatesAtHalf } from './window-updates.ts'

export interface MeshConfig {
  /** Where the peer key lives. */
  dataDir: string
  /** Multiaddrs to listen on. @default DEFAULT_LISTEN */
  listen?: string[]
  /** Multiaddrs of peers to stay connected to (redialled while unreachable). */
  bootstrap?: string[]
  /** Redial period for bootstrap peers. @default BOOTSTRAP_REDIAL_MS */
  bootstrapRedialMs?: number
  /** The peer's key, when the caller signs with it too; else loaded from (or created in) dataDir. */
  privateKey?: PrivateKey
}

export type MeshServices = {
  identify: unknown
  ping: Ping
  pubsub: GossipSub
  dht: KadDHT
}

export type MeshPeer = Libp2p<MeshServices>

const LOOPBACK = ['/ip4/127.0.0.1/ipcidr/8', '/ip6/::1/ipcidr/128']

/** Penalise invalid messages on our topics; nothing else about a topic moves a peer's score. */
function topicScores(): ReturnType<typeof createTopicScoreParams> {
  return createTopicScoreParams({
    topicWeight: 1,
    timeInMeshWeight: 0,
    timeInMeshQuantum: 1000,
    timeInMeshCap: 1,
    firstMessageDeliveriesWeight: 0,
    firstMessageDeliveriesDecay: 0.5,
    firstMessageDeliveriesCap: 1,
    meshMessageDeliveriesWeight: 0,
    meshMessageDeliveriesDecay: 0.5,
    meshMessageDeliveriesCap: 1,
    meshMessageDeliveriesThreshold: 1,
    meshMessageDeliveriesWindow: 10,
    meshMessageDeliveriesActivation: 1000,
    meshFailurePenaltyWeight: 0,
    meshFailurePenaltyDecay: 0.5,
    invalidMessageDeliveriesWeight: -10,
    invalidMessageDeliveriesDecay: 0.9,
  })
}

export async function createMeshPeer(config: MeshConfig): Promise<MeshPeer> {
  sendWindowUpdatesAtHalf()
  endReadersAfterBufferedData()
  const privateKey = config.privateKey ?? (await loadOrCreatePeerKey(config.dataDir))
  const topics = Object.fromEntries(Object.values(TOPICS).map((t) => [t, topicScores()]))
  const peer = await createLibp2p({
    privateKey,
    addresses: { listen: config.listen ?? DEFAULT_LISTEN },
    transports: [tcp(), webSockets()],
    // One socket write per tick rather than one per buffer of each frame (see coalesce.ts).
    connectionEncrypters: [withCoalescedWrites(noise())],
    streamMuxers: [yamux()],
    connectionManager: {
      // Every peer of a local mesh is 127.0.0.1: without this, libp2p refuses the 6th
      // connection per second from "one host".
      allow: LOOPBACK,
    },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        globalSignaturePolicy: 'StrictSign',
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
        // Our own validators bound each message; this bounds a whole RPC frame.
        maxInboundDataLength: 4 * 1024 * 1024,
        scoreParams: createPeerScoreParams({
          topics,
          IPColocationFactorWhitelist: new Set(['127.0.0.1', '::1']),
        }),
      }),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        clientMode: false,
        // Keep private (loopback, LAN) addresses: a local mesh has nothing else.
        peerInfoMapper: passthroughMapper,
        initialQuerySelfInterval: 0,
        allowQueryWithZeroPeers: true,
      }),
    },
  })
  keepBootstrapped(peer, config.bootstrap ?? [], config.bootstrapRedialMs ?? BOOTSTRAP_REDIAL_MS)
  return peer
}

/** Dials each bootstrap address now and again whenever it is not connected, until the peer stops. */
function keepBootstrapped(peer: MeshPeer, list: string[], redialMs: number): void {
  if (list.length === 0) return
  const addrs: Multiaddr[] = list.map((a) => multiaddr(a))
  let timer: NodeJS.Timeout | undefined
  const tick = async (): Promise<void> => {
    await Promise.all(
      addrs.map(async (ma) => {
        const id = ma.getComponents().findLast((c) => c.name === 'p2p')?.value
        if (id != null && id === peer.peerId.toString()) return
        if (id != null && peer.getConnections().some((c) => c.remotePeer.toString() === id)) return
        try {
          const conn = await peer.dial(ma, { signal: AbortSignal.timeout(Math.max(redialMs, 1000)) })
          await peer.peerStore.merge(conn.remotePeer, { tags: { [KEEP_ALIVE]: { value: 1 } } })
        } catch {
          // Unreachable for now: the next tick tries again.
        }
      }),
    )
  }
  const loop = (): void => {
    if (peer.status !== 'started') return
    void tick().finally(() => {
      if (peer.status === 'started') timer = setTimeout(loop, redialMs)
    })
  }
  peer.addEventListener('start', loop, { once: true })
  peer.addEventListener('stop', () => clearTimeout(timer), { once: true })
  if (peer.status === 'started') loop()
}
