// The libp2p peer every role runs: TCP + WebSockets, noise, yamux, identify, ping, gossipsub
// (StrictSign, scored) and a kad-dht on a private protocol id. One factory, configured from MeshConfig.
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { type GossipSub, gossipsub } from '@libp2p/gossipsub'
import { createPeerScoreParams, createTopicScoreParams } from '@libp2p/gossipsub/score'
import { identify } from '@libp2p/identify'
import type { Libp2p, PrivateKey } from '@libp2p/interface'
import { type KadDHT, kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { type Ping, ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { createLibp2p } from 'libp2p'
import { DHT_PROTOCOL, TOPICS } from '../../protocols/index.ts'
import { createLogger } from '../log.ts'
import { type BootstrapLog, keepBootstrapped } from './bootstrap.ts'
import { coalesceSocketWrites } from './coalesce.ts'
import { BOOTSTRAP_REDIAL_MS, BOOTSTRAP_WARN_AFTER_MS, DEFAULT_LISTEN } from './constants.ts'
import { withEncrypterHooks } from './encrypter-hooks.ts'
import { stopWithoutThrowing } from './noise-frames.ts'
import { loadOrCreatePeerKey } from './peer-key.ts'
import { endReadersAfterBufferedData } from './stream-end.ts'
import { sendWindowUpdatesAtHalf } from './window-updates.ts'

export interface MeshConfig {
  /** Where the peer key lives. */
  dataDir: string
  /** Multiaddrs to listen on. @default DEFAULT_LISTEN */
  listen?: string[]
  /**
   * Peers to stay connected to (redialled while unreachable): multiaddrs, or paths of a peer's
   * peer.json, re-read at every redial so a peer that restarted on another port is found again.
   */
  bootstrap?: string[]
  /** Redial period for bootstrap peers. @default BOOTSTRAP_REDIAL_MS */
  bootstrapRedialMs?: number
  /** No bootstrap peer reachable for this long is logged (warn, once per outage). @default BOOTSTRAP_WARN_AFTER_MS */
  bootstrapWarnAfterMs?: number
  /** Where the mesh tells the operator what needs them (bootstrap outages). @default a pino logger to stderr */
  log?: BootstrapLog
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
    // One socket write per run of code rather than one per buffer of each frame (see coalesce.ts),
    // and no exception thrown at the end of every chunk received (noise-frames.ts).
    connectionEncrypters: [withEncrypterHooks(noise(), { raw: coalesceSocketWrites, secured: stopWithoutThrowing })],
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
  let log = config.log
  keepBootstrapped(peer, config.bootstrap ?? [], {
    redialMs: config.bootstrapRedialMs ?? BOOTSTRAP_REDIAL_MS,
    warnAfterMs: config.bootstrapWarnAfterMs ?? BOOTSTRAP_WARN_AFTER_MS,
    // Made only if an outage is ever told (most peers never have one).
    log: () => {
      log ??= createLogger({ role: 'mesh' })
      return log
    },
  })
  return peer
}
